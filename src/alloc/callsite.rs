//! The shared call-site table: one id per distinct allocating stack.
//!
//! Owns the append-only arena of interned stacks and the index from stack to id.
//! Sites are never moved or freed, so a `&'static Site` can be read without a
//! lock once its id is published. Must never allocate through the global
//! allocator: the arena and the index take memory from libc directly.

use crate::alloc::meta::{leak_zeroed, MetaAlloc, SpinLock};
use crate::alloc::unwind::MAX_FRAMES;
use hashbrown::HashTable;
use std::sync::atomic::{
    AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

const CHUNK: usize = 1024;
const CHUNKS: usize = 64;
/// Call-sites kept; stacks beyond this many share the id [`OTHER`].
pub(crate) const MAX_SITES: usize = CHUNK * CHUNKS;
/// The bucket for stacks past the cap or that could not be interned.
pub(crate) const OTHER: u32 = 0;

/// Live bytes of one call-site (or of the whole process) as seen by all
/// threads, and the highest value seen. Threads add their changes in batches
/// (see [`crate::alloc::thread`]), so this stays off the hot path's shared lines.
pub(crate) struct Peak {
    pub(crate) flushed: AtomicI64,
    pub(crate) peak: AtomicU64,
}

impl Peak {
    pub(crate) const fn new() -> Self {
        Peak {
            flushed: AtomicI64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// Notes that this thread sees `pending` bytes more than `flushed` live.
    #[inline]
    pub(crate) fn observe(&self, pending: i64) {
        let live = self.flushed.load(Ordering::Relaxed).saturating_add(pending);
        if live > 0 && live as u64 > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(live as u64, Ordering::Relaxed);
        }
    }
}

/// Which allocator made a call-site's blocks: Rust's global allocator, or
/// the process's `malloc` family (C code, or Rust calling it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Rust = 0,
    C = 1,
}

/// One interned stack. Written once, before its id is published, then read-only
/// (atomics so that the one write needs no aliasing exception).
pub(crate) struct Site {
    hash: AtomicU64,
    len: AtomicU32,
    /// An [`Origin`] (zeroed: Rust).
    origin: AtomicU8,
    frames: [AtomicUsize; MAX_FRAMES],
    pub(crate) peak: Peak,
}

impl Site {
    /// Whether this site holds exactly this stack.
    #[inline]
    pub(crate) fn matches(&self, hash: u64, frames: &[usize]) -> bool {
        self.hash.load(Ordering::Relaxed) == hash
            && self.len.load(Ordering::Relaxed) as usize == frames.len()
            && self
                .frames
                .iter()
                .zip(frames)
                .all(|(a, &b)| a.load(Ordering::Relaxed) == b)
    }

    fn hash(&self) -> u64 {
        self.hash.load(Ordering::Relaxed)
    }

    pub(crate) fn origin(&self) -> Origin {
        match self.origin.load(Ordering::Relaxed) {
            1 => Origin::C,
            _ => Origin::Rust,
        }
    }

    /// The stack's return addresses, innermost first.
    pub(crate) fn frames(&self) -> Vec<usize> {
        let len = self.len.load(Ordering::Relaxed) as usize;
        self.frames
            .iter()
            .take(len)
            .map(|f| f.load(Ordering::Relaxed))
            .collect()
    }
}

static ARENA: [AtomicPtr<[Site; CHUNK]>; CHUNKS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS];
/// Ids handed out so far; id 0 ([`OTHER`]) is reserved from the start.
static COUNT: AtomicU32 = AtomicU32::new(1);
static INDEX: SpinLock<HashTable<u32, MetaAlloc>> = SpinLock::new(HashTable::new_in(MetaAlloc {}));
/// Entries of [`RECENT`].
const RECENT_ENTRIES: usize = 1 << 16;
/// The id of a stack interned or found lately, by its hash: looked at
/// before the index, without its lock, so that threads whose stacks
/// outnumber their own caches (a program with thousands of hot stacks)
/// do not all wait for the index. A site is written once before its id
/// is published, so an id read here is checked against the stack itself.
static RECENT: [AtomicU32; RECENT_ENTRIES] = [const { AtomicU32::new(OTHER) }; RECENT_ENTRIES];

/// Number of ids handed out (ids are `0..count()`).
#[inline]
pub(crate) fn count() -> u32 {
    COUNT.load(Ordering::Acquire)
}

/// The site with this id, if the id was handed out.
#[inline]
pub(crate) fn get(id: u32) -> Option<&'static Site> {
    if id >= count() {
        return if id == OTHER { other() } else { None };
    }
    slot(id)
}

fn other() -> Option<&'static Site> {
    chunk(0).and_then(|c| c.first())
}

#[inline]
fn slot(id: u32) -> Option<&'static Site> {
    let id = id as usize;
    chunk(id / CHUNK).and_then(|c| c.get(id % CHUNK))
}

/// The chunk at `index`, made on first use (zeroed sites are valid, empty sites).
#[inline]
fn chunk(index: usize) -> Option<&'static [Site; CHUNK]> {
    let cell = ARENA.get(index)?;
    let mut p = cell.load(Ordering::Acquire);
    if p.is_null() {
        p = new_chunk(cell);
        if p.is_null() {
            return None;
        }
    }
    // SAFETY: chunks are never freed, and all-zero bytes are a valid `Site`
    // (atomics and integers), so a shared reference for 'static is sound.
    Some(unsafe { &*p })
}

#[cold]
fn new_chunk(cell: &AtomicPtr<[Site; CHUNK]>) -> *mut [Site; CHUNK] {
    let fresh = leak_zeroed::<[Site; CHUNK]>();
    if fresh.is_null() {
        return fresh;
    }
    match cell.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => fresh,
        // Another thread made it first; our zeroed chunk stays unused (rare, small).
        Err(existing) => existing,
    }
}

/// The id of this stack, interning it on first sight.
pub(crate) fn intern(hash: u64, frames: &[usize], origin: Origin) -> u32 {
    let recent = RECENT.get(hash as usize % RECENT_ENTRIES);
    if let Some(r) = recent {
        let id = r.load(Ordering::Relaxed);
        if id != OTHER && get(id).is_some_and(|s| s.matches(hash, frames)) {
            return id;
        }
    }
    let id = intern_locked(hash, frames, origin);
    if let Some(r) = recent {
        r.store(id, Ordering::Relaxed);
    }
    id
}

/// [`intern`] by the index, under its lock.
fn intern_locked(hash: u64, frames: &[usize], origin: Origin) -> u32 {
    let mut index = INDEX.lock();
    let found = index.find(hash, |&id| get(id).is_some_and(|s| s.matches(hash, frames)));
    if let Some(&id) = found {
        return id;
    }
    let id = COUNT.load(Ordering::Relaxed);
    if id as usize >= MAX_SITES
        || index
            .try_reserve(1, |&id| get(id).map_or(0, Site::hash))
            .is_err()
    {
        return OTHER;
    }
    let Some(site) = chunk(id as usize / CHUNK).and_then(|c| c.get(id as usize % CHUNK)) else {
        return OTHER;
    };
    // `id` is not published yet (COUNT is bumped below, under the lock we
    // hold), so no reader sees these stores half done.
    site.hash.store(hash, Ordering::Relaxed);
    site.origin.store(origin as u8, Ordering::Relaxed);
    site.len
        .store(frames.len().min(MAX_FRAMES) as u32, Ordering::Relaxed);
    for (slot, &ip) in site.frames.iter().zip(frames) {
        slot.store(ip, Ordering::Relaxed);
    }
    COUNT.store(id + 1, Ordering::Release);
    index.insert_unique(hash, id, |&id| get(id).map_or(0, Site::hash));
    id
}

/// Holds the index lock across `fork` so the child never inherits it locked.
pub(crate) fn lock_for_fork() {
    INDEX.lock_for_fork();
}

/// # Safety
/// Pairs with [`lock_for_fork`] in the fork handlers.
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: forwarded contract.
    unsafe { INDEX.force_unlock() };
}
