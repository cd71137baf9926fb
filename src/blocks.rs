//! The block table: what the tracker knows about every live block it saw.
//!
//! Owns the side table from block address to [`Meta`]. A side table (rather than
//! a header in front of each block) keeps the inner allocator's size classes and
//! in-place `realloc`, passes through frees of blocks the tracker never saw, and
//! lets a report enumerate the live blocks.
//!
//! Two levels. Each thread has a small table of its young blocks ([`Young`]),
//! which it alone writes, with plain stores: most blocks are freed soon, by the
//! thread that made them, and never cost a lock or a locked instruction. A
//! block that stays live is moved, when its place is needed, to the shared
//! table: shards under spin locks, picked by the allocator's 64 MiB region
//! (glibc, jemalloc and mimalloc give each thread its own regions, so threads'
//! blocks mostly land on their own shards). A block freed by another thread
//! is looked for in the shared table, then in the other threads' young
//! tables, where the freeing thread claims it with one compare-and-swap.
//!
//! Must never allocate through the global allocator (the shared table grows in
//! libc's memory) and never hold a lock while calling anything that could
//! re-enter the tracker.

use crate::sync::{mix, MetaAlloc, SpinLock};
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// What the tracker keeps per live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) size: usize,
    pub(crate) site: u32,
    /// Scope name id, 0 when allocated outside any scope.
    pub(crate) scope: u32,
    /// Run record slot and its generation at allocation time (0: no run).
    pub(crate) run_slot: u32,
    pub(crate) run_gen: u32,
}

// ---------------------------------------------------------------- young blocks

/// Entries in a thread's young-block table.
const YOUNG: usize = 512;
/// How far from its home entry a young block may sit.
const WINDOW: usize = 4;
/// Flags in a young entry's address word. User-space addresses never have the
/// top two bits set, so blocks at such addresses go straight to the shared table.
const FREED: usize = 1 << 63;
/// The owner is moving this block to the shared table: wait, then look there.
const MOVING: usize = 1 << 62;
const FLAGS: usize = FREED | MOVING;

/// One young block. `addr` is 0 when empty; the owner writes the other fields
/// before it publishes `addr` (release), and only while `addr` is not live.
#[derive(Default)]
struct YoungEntry {
    addr: AtomicUsize,
    size: AtomicUsize,
    site: AtomicU32,
    scope: AtomicU32,
    run_slot: AtomicU32,
    run_gen: AtomicU32,
}

impl YoungEntry {
    #[inline]
    fn meta(&self) -> Meta {
        Meta {
            size: self.size.load(Ordering::Relaxed),
            site: self.site.load(Ordering::Relaxed),
            scope: self.scope.load(Ordering::Relaxed),
            run_slot: self.run_slot.load(Ordering::Relaxed),
            run_gen: self.run_gen.load(Ordering::Relaxed),
        }
    }

    #[inline]
    fn publish(&self, addr: usize, m: Meta) {
        self.size.store(m.size, Ordering::Relaxed);
        self.site.store(m.site, Ordering::Relaxed);
        self.scope.store(m.scope, Ordering::Relaxed);
        self.run_slot.store(m.run_slot, Ordering::Relaxed);
        self.run_gen.store(m.run_gen, Ordering::Relaxed);
        self.addr.store(addr, Ordering::Release);
    }
}

/// One thread's young blocks: written by the thread that owns it (its slot's
/// owner); other threads only read it and claim entries of blocks they free.
/// All-zero bytes are an empty table.
pub(crate) struct Young {
    entries: [YoungEntry; YOUNG],
}

impl Young {
    #[inline]
    fn entry(&self, home: usize, i: usize) -> &YoungEntry {
        let e = &self.entries;
        e.get((home + i) % YOUNG).unwrap_or(&e[0])
    }

    #[inline]
    fn home(addr: usize) -> usize {
        (mix(addr as u64) >> 24) as usize % YOUNG
    }

    /// The owner takes back its own young block `addr`, if it is here.
    #[inline]
    fn take(&self, addr: usize) -> Option<Meta> {
        let home = Young::home(addr);
        for i in 0..WINDOW {
            let e = self.entry(home, i);
            if e.addr.load(Ordering::Relaxed) == addr {
                let meta = e.meta();
                // Nobody else frees this block now (that would be a double
                // free), so no other thread writes this entry: a plain store.
                e.addr.store(0, Ordering::Release);
                return Some(meta);
            }
        }
        None
    }

    /// Another thread claims young block `addr` that it is freeing.
    fn claim(&self, addr: usize) -> Claim {
        let home = Young::home(addr);
        for i in 0..WINDOW {
            let e = self.entry(home, i);
            let a = e.addr.load(Ordering::Acquire);
            if a == addr | MOVING {
                return Claim::Moving;
            }
            if a != addr {
                continue;
            }
            // Read before the swap: once the entry is marked freed, its owner
            // may reuse it at any time.
            let meta = e.meta();
            return match e.addr.compare_exchange(
                addr,
                addr | FREED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => Claim::Got(meta),
                Err(now) if now == addr | MOVING => Claim::Moving,
                // The owner moved it to the shared table meanwhile.
                Err(_) => Claim::Missing,
            };
        }
        Claim::Missing
    }
}

enum Claim {
    Got(Meta),
    Moving,
    Missing,
}

pub(crate) enum Inserted {
    New,
    /// A block that is no longer tracked, to count as freed: an entry the
    /// table still had for this address (its block was freed without the
    /// tracker seeing it), or a block moved out to the shared table that could
    /// not grow (libc out of memory).
    Replaced(Meta),
    /// The new block itself is not tracked (the shared table could not grow).
    Dropped,
}

/// Records a new block at `addr`, allocated by the thread that owns `own`.
#[inline]
pub(crate) fn insert(own: &Young, addr: usize, meta: Meta) -> Inserted {
    if addr & FLAGS != 0 {
        return match insert_shared(addr, meta) {
            Shared::New => Inserted::New,
            Shared::Replaced(stale) => Inserted::Replaced(stale),
            Shared::Dropped => Inserted::Dropped,
        };
    }
    let home = Young::home(addr);
    for i in 0..WINDOW {
        let e = own.entry(home, i);
        let a = e.addr.load(Ordering::Relaxed);
        if a == 0 || a & FREED != 0 {
            e.publish(addr, meta);
            return Inserted::New;
        }
        if a == addr {
            let stale = e.meta();
            e.publish(addr, meta);
            return Inserted::Replaced(stale);
        }
    }
    move_out(own.entry(home, 0), addr, meta)
}

/// Moves the block of a full window's home entry `e` to the shared table and
/// puts the new block in its place.
#[cold]
fn move_out(e: &YoungEntry, addr: usize, meta: Meta) -> Inserted {
    let old = e.addr.load(Ordering::Relaxed);
    let mut result = Inserted::New;
    // Mark it first, so that a thread freeing it meanwhile waits rather than
    // missing it in both tables. (It may have been freed by another thread
    // since the window was scanned: then there is nothing to move.)
    if old & FLAGS == 0
        && e.addr
            .compare_exchange(old, old | MOVING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        let moved = e.meta();
        result = match insert_shared(old, moved) {
            Shared::New => Inserted::New,
            Shared::Replaced(stale) => Inserted::Replaced(stale),
            Shared::Dropped => {
                crate::exit::note_untracked();
                Inserted::Replaced(moved)
            }
        };
    }
    // Otherwise another thread freed it (the entry says FREED): just reuse it.
    e.publish(addr, meta);
    result
}

/// Forgets the block at `addr`, freed by the thread that owns `own`, and
/// returns what was known of it; `None` for a block the tracker never saw.
#[inline]
pub(crate) fn remove(own: &Young, addr: usize) -> Option<Meta> {
    if addr & FLAGS == 0 {
        if let Some(meta) = own.take(addr) {
            return Some(meta);
        }
    }
    remove_elsewhere(addr)
}

fn remove_elsewhere(addr: usize) -> Option<Meta> {
    if let Some(meta) = remove_shared(addr) {
        return Some(meta);
    }
    if addr & FLAGS != 0 {
        return None;
    }
    let mut spins = 0u32;
    'search: loop {
        for young in crate::thread::young_tables() {
            match young.claim(addr) {
                Claim::Got(meta) => return Some(meta),
                Claim::Missing => {}
                Claim::Moving => {
                    // Its owner is moving it into the shared table right now.
                    spins = spins.wrapping_add(1);
                    if spins % 64 == 0 {
                        // SAFETY: sched_yield has no preconditions and does not allocate.
                        unsafe { libc::sched_yield() };
                    }
                    std::hint::spin_loop();
                    if let Some(meta) = remove_shared(addr) {
                        return Some(meta);
                    }
                    continue 'search;
                }
            }
        }
        break;
    }
    // A block moved to the shared table after the first look there was no
    // longer in its young table when we looked: it is in the shared table now.
    remove_shared(addr)
}

/// Calls `f` for every live block, one shard at a time, then the young
/// tables. `f` runs with a shard locked, so it must not free tracked blocks; it
/// may allocate only while the calling thread's re-entrancy flag is up
/// (allocations then bypass the table). Blocks that move or are freed while
/// this runs may be missed or seen twice; with the other threads quiet, it is
/// exact.
pub(crate) fn for_each(mut f: impl FnMut(usize, &Meta)) {
    for s in &TABLE {
        let t = s.0.lock();
        for (addr, meta) in t.iter() {
            f(*addr, meta);
        }
    }
    for young in crate::thread::young_tables() {
        for e in &young.entries {
            let a = e.addr.load(Ordering::Acquire);
            if a != 0 && a & FLAGS == 0 {
                f(a, &e.meta());
            }
        }
    }
}

// ---------------------------------------------------------------- shared table

const SHARDS: usize = 256;

#[repr(align(64))]
struct Shard(SpinLock<HashTable<(usize, Meta), MetaAlloc>>);

static TABLE: [Shard; SHARDS] =
    [const { Shard(SpinLock::new(HashTable::new_in(MetaAlloc {}))) }; SHARDS];

/// The shard of a block: its allocator region, and 64 KiB within it, so a
/// region's blocks spread over a few shards.
#[inline]
fn shard(addr: usize) -> &'static Shard {
    let region = mix((addr >> 26) as u64) as usize;
    let i = region.wrapping_add((addr >> 16) & 7) % SHARDS;
    // `i < SHARDS`, so this never falls back; the fallback only avoids a panic path.
    TABLE.get(i).unwrap_or(&TABLE[0])
}

#[inline]
fn hash(addr: usize) -> u64 {
    mix(addr as u64)
}

enum Shared {
    New,
    Replaced(Meta),
    /// The table could not grow (libc out of memory).
    Dropped,
}

fn insert_shared(addr: usize, meta: Meta) -> Shared {
    let h = hash(addr);
    let mut t = shard(addr).0.lock();
    // Room first, so that `entry` below never has to grow the table (its own
    // growth would abort on failure instead of reporting it).
    if t.try_reserve(1, |e| hash(e.0)).is_err() {
        return match t.find_mut(h, |e| e.0 == addr) {
            Some(entry) => Shared::Replaced(std::mem::replace(&mut entry.1, meta)),
            None => Shared::Dropped,
        };
    }
    match t.entry(h, |e| e.0 == addr, |e| hash(e.0)) {
        Entry::Occupied(mut e) => Shared::Replaced(std::mem::replace(&mut e.get_mut().1, meta)),
        Entry::Vacant(e) => {
            e.insert((addr, meta));
            Shared::New
        }
    }
}

fn remove_shared(addr: usize) -> Option<Meta> {
    let h = hash(addr);
    let mut t = shard(addr).0.lock();
    t.find_entry(h, |e| e.0 == addr)
        .ok()
        .map(|e| e.remove().0 .1)
}

fn in_shared(addr: usize) -> bool {
    shard(addr)
        .0
        .lock()
        .find(hash(addr), |e| e.0 == addr)
        .is_some()
}

pub(crate) fn lock_for_fork() {
    for s in &TABLE {
        s.0.lock_for_fork();
    }
}

/// # Safety
/// Pairs with [`lock_for_fork`] in the fork handlers.
pub(crate) unsafe fn unlock_after_fork() {
    for s in &TABLE {
        // SAFETY: forwarded contract.
        unsafe { s.0.force_unlock() };
    }
}

/// In a child just forked: a thread of the parent that was moving a young
/// block to the shared table is gone, and would leave the entry marked for
/// ever. Finish its move (the block is in the shared table) or undo it.
pub(crate) fn settle_after_fork() {
    for young in crate::thread::young_tables() {
        for e in &young.entries {
            let a = e.addr.load(Ordering::Acquire);
            if a & MOVING != 0 {
                let addr = a & !FLAGS;
                e.addr
                    .store(if in_shared(addr) { 0 } else { addr }, Ordering::Release);
            }
        }
    }
}
