//! Request scopes: which scope run each block was opened in.
//!
//! Owns scope names (interned to ids), run records (one per open run, pooled
//! and reused, never freed, so a block's stale reference to a closed run is
//! harmless: the generation check turns it away), the guards and the future
//! adaptor. The allocation path calls only [`record_alloc`] and
//! [`record_free`], which take a run's spin lock and never allocate through the
//! global allocator. Everything else runs with the thread's allocations
//! untracked, outside the allocation path.

use crate::sync::{bump, CacheAligned, MetaAlloc, SpinLock};
use crate::thread;
use hashbrown::HashTable;
use once_cell::sync::Lazy;
use parking_lot::RwLock;
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

// ---------------------------------------------------------------- scope names

pub(crate) struct ScopeEntry {
    pub(crate) id: u32,
    pub(crate) name: String,
    /// Runs opened on threads without counters of their own (see
    /// [`thread::count_run`]); reports add every thread's counts.
    pub(crate) runs: AtomicU64,
}

#[derive(Default)]
struct Names {
    by_name: HashMap<String, &'static ScopeEntry>,
    /// Index `id - 1`; id 0 means "no scope".
    list: Vec<&'static ScopeEntry>,
}

static NAMES: Lazy<RwLock<Names>> = Lazy::new(Default::default);

const NAME_CACHE: usize = 32;

/// Distinct scope names kept (ids 1 to this less one); later names are
/// counted under [`OTHER_SCOPES`].
pub(crate) const MAX_SCOPE_NAMES: usize = crate::callsite::MAX_SITES;
const OTHER_SCOPES: &str = "(other scopes)";

thread_local! {
    /// Names this thread opened lately, so that a request's scope costs no
    /// shared lock: direct-mapped by a hash of the name, checked by content.
    static RECENT_NAMES: [Cell<*const ScopeEntry>; NAME_CACHE] =
        const { [const { Cell::new(std::ptr::null()) }; NAME_CACHE] };
}

/// The cache index of `name`: eight bytes a step, since a request pays for
/// each step in a chain of multiplies.
fn name_hash(name: &str) -> usize {
    let mut words = name.as_bytes().chunks_exact(8);
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut h = name.len() as u64;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = step(h, u64::from_le_bytes(b));
    }
    let tail =
        (words.remainder().iter().enumerate()).fold(0u64, |w, (i, &b)| w | (b as u64) << (8 * i));
    h = step(h, tail);
    (h >> 32) as usize % NAME_CACHE
}

fn intern_name(name: &str) -> &'static ScopeEntry {
    let i = name_hash(name);
    let cached = RECENT_NAMES.try_with(|c| c.get(i).map_or(std::ptr::null(), Cell::get));
    // SAFETY: the cache holds only leaked, never-freed entries.
    if let Some(e) = cached.ok().and_then(|p| unsafe { p.as_ref() }) {
        if e.name == name {
            return e;
        }
    }
    let e = intern_name_slow(name);
    let _ = RECENT_NAMES.try_with(|c| c.get(i).map(|cell| cell.set(e)));
    e
}

fn intern_name_slow(name: &str) -> &'static ScopeEntry {
    // One guard at a time: a second read lock taken while a writer waits
    // would deadlock.
    let found = NAMES.read().by_name.get(name).copied();
    if let Some(e) = found {
        return e;
    }
    let mut names = NAMES.write();
    if let Some(&e) = names.by_name.get(name) {
        return e;
    }
    // Bounded: past the cap, new names share one entry (ids must fit the
    // per-thread scope counters).
    if names.list.len() + 2 >= MAX_SCOPE_NAMES && name != OTHER_SCOPES {
        drop(names);
        return intern_name_slow(OTHER_SCOPES);
    }
    let id = names.list.len() as u32 + 1;
    let entry: &'static ScopeEntry = Box::leak(Box::new(ScopeEntry {
        id,
        name: name.to_owned(),
        runs: AtomicU64::new(0),
    }));
    names.list.push(entry);
    names.by_name.insert(name.to_owned(), entry);
    entry
}

/// The entry of scope id `id` (ids start at 1).
pub(crate) fn scope_entry(id: u32) -> Option<&'static ScopeEntry> {
    NAMES
        .read()
        .list
        .get((id as usize).checked_sub(1)?)
        .copied()
}

/// Every scope name seen so far, with its id.
pub(crate) fn scope_entries() -> Vec<(u32, &'static ScopeEntry)> {
    NAMES.read().list.iter().map(|e| (e.id, *e)).collect()
}

// ---------------------------------------------------------------- run records
//
// A run is written by one thread at a time: the thread that has it entered
// (its owner), since only that thread allocates into it. The owner counts its
// allocations, and its own frees of the run's blocks, in the run's fixed site
// table with plain loads and stores: no lock, no locked instruction. A block
// freed by any other thread is counted under the run's lock, in separate
// fields, and so is closing the run: the lock orders those frees against the
// close, so a free never lands in a run that was closed and reused.

/// Call-sites a run counts without a lock; more spill into a locked table.
const RUN_SITES: usize = 64;
// `RunRecord::used` has a bit per entry.
const _: () = assert!(RUN_SITES <= 64);
/// How far the fixed table is probed before spilling.
const PROBES: usize = 8;

/// One call-site's counts in one run's fixed table. `key` is the call-site
/// id + 1 (0: empty). Only the owner writes these, with plain stores.
#[derive(Default)]
struct SiteSlot {
    key: AtomicU32,
    allocated_blocks: AtomicU64,
    allocated_bytes: AtomicU64,
    own_freed_blocks: AtomicU64,
    own_freed_bytes: AtomicU64,
}

/// Counts kept under the lock: for call-sites past the fixed table, and for
/// frees by other threads than the owner.
#[derive(Clone, Copy, Default)]
struct SiteRun {
    site: u32,
    allocated_blocks: u64,
    allocated_bytes: u64,
    freed_blocks: u64,
    freed_bytes: u64,
}

struct Locked {
    /// Blocks and bytes other threads freed, per slot of the fixed table.
    remote_freed: [(u64, u64); RUN_SITES],
    /// Call-sites that did not fit in the fixed table.
    spilled: HashTable<SiteRun, MetaAlloc>,
    /// Blocks of this run moved to the shared block table while it was open
    /// (their entries there carry only the run slot, see [`MOVED`]): a free
    /// of one found here is this run's; the set is emptied at the close.
    /// Addresses are kept hidden ([`crate::sync::hide`]).
    moved: HashTable<usize, MetaAlloc>,
}

/// The generation a block table entry gives for a block listed in its run's
/// `moved` set. Never a run's own generation: those start at 1 and skip 0.
pub(crate) const MOVED: u32 = 0;

/// Generations wrap within 30 bits, as sampling mode's block headers keep
/// them. A block freed exactly 2^30 - 1 runs of its record later would be
/// taken for one of the run open then.
pub(crate) const GEN_MASK: u32 = (1 << 30) - 1;

/// Above this many, a closed run's `moved` set gives its memory back.
const MOVED_KEEP: usize = 1024;

/// One scope run. Records are pooled and never freed.
pub(crate) struct RunRecord {
    slot: u32,
    /// Bumped when the run closes, so frees of its blocks after that are ignored.
    gen: AtomicU32,
    scope: AtomicU32,
    /// Whether this run counts its blocks per call-site, for a summary at its
    /// close ([`ScopeGuard::finish`]). A run that can never be asked for one
    /// (a future's, a span's, [`track_scope`]'s) does not: its blocks carry
    /// only the scope, which is all the per-scope figures need.
    counts: AtomicBool,
    /// Token of the thread that has this run entered now (0: none).
    owner: AtomicUsize,
    /// The next outer run on the thread that has this one entered.
    parent: AtomicPtr<RunRecord>,
    /// Written by the owner on every allocation: on lines of their own, away
    /// from `gen` and `owner`, which other threads read on every free.
    sites: CacheAligned<[SiteSlot; RUN_SITES]>,
    /// Which entries of `sites` this run claimed (bit i: entry i); written
    /// by the owner when it claims one, so a close visits only those.
    used: AtomicU64,
    locked: CacheAligned<SpinLock<Locked>>,
    /// The next record in whichever free list holds this one.
    next_free: AtomicU32,
}

const RUN_CHUNK: usize = 64;
const RUN_CHUNKS: usize = 1024;
// Sampling mode's block headers keep run slots and scope ids in 16 bits.
const _: () = assert!(RUN_CHUNK * RUN_CHUNKS <= 1 << 16 && MAX_SCOPE_NAMES <= 1 << 16);

static RUNS: [AtomicPtr<RunRecord>; RUN_CHUNKS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; RUN_CHUNKS];

struct FreeList {
    head: u32,
    /// Slots handed out so far; slot 0 means "no run".
    high: u32,
}

static FREE: SpinLock<FreeList> = SpinLock::new(FreeList { head: 0, high: 0 });
/// A copy of `FreeList::high` readable without the lock (for the fork handlers).
static FREE_HIGH: AtomicU32 = AtomicU32::new(0);

/// The record in `slot`; `None` for slot 0, which means "no run".
#[inline]
fn run_record(slot: u32) -> Option<&'static RunRecord> {
    if slot == 0 {
        return None;
    }
    let slot = slot as usize;
    let chunk = RUNS.get(slot / RUN_CHUNK)?.load(Ordering::Acquire);
    if chunk.is_null() {
        return None;
    }
    // SAFETY: a published chunk holds RUN_CHUNK initialised records, never freed;
    // the offset is below RUN_CHUNK.
    Some(unsafe { &*chunk.add(slot % RUN_CHUNK) })
}

fn new_chunk(index: usize) -> *mut RunRecord {
    let layout = std::alloc::Layout::array::<RunRecord>(RUN_CHUNK)
        .unwrap_or(std::alloc::Layout::new::<RunRecord>());
    // SAFETY: the layout is non-zero-sized.
    let p = unsafe { std::alloc::GlobalAlloc::alloc(&MetaAlloc {}, layout) }.cast::<RunRecord>();
    if p.is_null() {
        return p;
    }
    for i in 0..RUN_CHUNK {
        let record = RunRecord {
            slot: (index * RUN_CHUNK + i) as u32,
            gen: AtomicU32::new(1),
            scope: AtomicU32::new(0),
            counts: AtomicBool::new(false),
            owner: AtomicUsize::new(0),
            parent: AtomicPtr::new(std::ptr::null_mut()),
            sites: CacheAligned(std::array::from_fn(|_| SiteSlot::default())),
            used: AtomicU64::new(0),
            locked: CacheAligned(SpinLock::new(Locked {
                remote_freed: [(0, 0); RUN_SITES],
                spilled: HashTable::new_in(MetaAlloc {}),
                moved: HashTable::new_in(MetaAlloc {}),
            })),
            next_free: AtomicU32::new(0),
        };
        // SAFETY: `i < RUN_CHUNK`, inside the allocation made for RUN_CHUNK records.
        unsafe { p.add(i).write(record) };
    }
    p
}

/// Records a thread keeps for its next runs, so that opening and closing a
/// run takes no shared lock.
const LOCAL_RECORDS: u32 = 16;

/// A thread's own free records: a list through `next_free`, and its length.
struct LocalRecords {
    head: Cell<u32>,
    len: Cell<u32>,
}

impl Drop for LocalRecords {
    /// Gives the records back to the shared pool when the thread ends.
    fn drop(&mut self) {
        let mut slot = self.head.replace(0);
        while let Some(rec) = run_record(slot) {
            slot = rec.next_free.load(Ordering::Relaxed);
            release_shared(rec);
        }
    }
}

thread_local! {
    static LOCAL: LocalRecords = const { LocalRecords { head: Cell::new(0), len: Cell::new(0) } };
}

/// Takes a record from this thread's list or the shared pool, or `None` when
/// 65,535 runs are open at once.
fn acquire_record() -> Option<&'static RunRecord> {
    let local = LOCAL.try_with(|l| {
        let rec = run_record(l.head.get())?;
        l.head.set(rec.next_free.load(Ordering::Relaxed));
        l.len.set(l.len.get().saturating_sub(1));
        Some(rec)
    });
    if let Ok(Some(rec)) = local {
        return Some(rec);
    }
    let mut free = FREE.lock();
    if free.head != 0 {
        let rec = run_record(free.head)?;
        free.head = rec.next_free.load(Ordering::Relaxed);
        return Some(rec);
    }
    let slot = free.high.checked_add(1)?;
    let index = slot as usize / RUN_CHUNK;
    let cell = RUNS.get(index)?;
    if cell.load(Ordering::Relaxed).is_null() {
        let chunk = new_chunk(index);
        if chunk.is_null() {
            return None;
        }
        cell.store(chunk, Ordering::Release);
    }
    free.high = slot;
    FREE_HIGH.store(slot, Ordering::Relaxed);
    run_record(slot)
}

/// Returns a closed run's record: to this thread's list while it is short,
/// else (or once the thread's locals are gone) to the shared pool.
fn release_record(rec: &'static RunRecord) {
    let kept = LOCAL.try_with(|l| {
        if l.len.get() >= LOCAL_RECORDS {
            return false;
        }
        rec.next_free.store(l.head.get(), Ordering::Relaxed);
        l.head.set(rec.slot);
        l.len.set(l.len.get() + 1);
        true
    });
    if kept != Ok(true) {
        release_shared(rec);
    }
}

fn release_shared(rec: &'static RunRecord) {
    let mut free = FREE.lock();
    rec.next_free.store(free.head, Ordering::Relaxed);
    free.head = rec.slot;
}

fn site_hash(site: u32) -> u64 {
    crate::sync::mix(site as u64)
}

impl RunRecord {
    /// The fixed-table slot of call-site `site`; with `claim`, an empty slot is
    /// taken for it. `None`: the site is (or goes) in the spilled table.
    #[inline]
    fn find(&self, site: u32, claim: bool) -> Option<&SiteSlot> {
        let key = site.wrapping_add(1);
        let start = site_hash(site) as usize;
        for i in 0..PROBES {
            let slot = self.sites.get((start + i) % RUN_SITES)?;
            match slot.key.load(Ordering::Acquire) {
                k if k == key => return Some(slot),
                0 if claim => {
                    // Counters of an empty slot are zero; publishing the key is
                    // all it takes (only the owner claims).
                    slot.key.store(key, Ordering::Release);
                    let bit = 1u64 << ((start + i) % RUN_SITES);
                    self.used
                        .store(self.used.load(Ordering::Relaxed) | bit, Ordering::Relaxed);
                    return Some(slot);
                }
                0 => return None,
                _ => {}
            }
        }
        None
    }

    fn index_of(&self, slot: &SiteSlot) -> usize {
        (slot as *const SiteSlot as usize - self.sites.as_ptr() as usize)
            / std::mem::size_of::<SiteSlot>()
    }
}

/// The tag of a block allocated now in `run` by its owner: (scope id, run
/// slot, generation). Allocation path: no lock unless the run has more
/// call-sites than its fixed table holds.
#[inline]
pub(crate) fn record_alloc(run: *const RunRecord, site: u32, size: usize) -> (u32, u32, u32) {
    // SAFETY: a thread's current run is a pooled record, never freed.
    let Some(rec) = (unsafe { run.as_ref() }) else {
        return (0, 0, 0);
    };
    if !rec.counts.load(Ordering::Relaxed) {
        // No run tag: the block's free then costs the run nothing.
        return (rec.scope.load(Ordering::Relaxed), 0, 0);
    }
    let size = size as u64;
    match rec.find(site, true) {
        Some(slot) => {
            bump(&slot.allocated_blocks, 1);
            bump(&slot.allocated_bytes, size);
        }
        None => spill_alloc(rec, site, size),
    }
    (
        rec.scope.load(Ordering::Relaxed),
        rec.slot,
        rec.gen.load(Ordering::Relaxed),
    )
}

#[cold]
fn spill_alloc(rec: &RunRecord, site: u32, size: u64) {
    let mut l = rec.locked.lock();
    if let Some(s) = spilled(&mut l, site) {
        s.allocated_blocks += 1;
        s.allocated_bytes += size;
    }
}

/// The spilled counts of `site`, made on first use (`None` if libc is out of
/// memory).
fn spilled(l: &mut Locked, site: u32) -> Option<&mut SiteRun> {
    let h = site_hash(site);
    if l.spilled.find(h, |s| s.site == site).is_none() {
        l.spilled.try_reserve(1, |s| site_hash(s.site)).ok()?;
        let s = SiteRun {
            site,
            ..SiteRun::default()
        };
        l.spilled.insert_unique(h, s, |s| site_hash(s.site));
    }
    l.spilled.find_mut(h, |s| s.site == site)
}

/// Sampling mode: the tag ([`crate::tracker::run_tag`]) and scope id of blocks
/// made now in `run`, which the calling thread is entering. Claims the run's
/// entry for unsampled blocks first, so that a free on another thread finds it
/// even before the owner writes the counts it keeps aside there.
pub(crate) fn enter_tag(run: *const RunRecord) -> (u64, u32) {
    // SAFETY: a thread's current run is a pooled record, never freed.
    let Some(rec) = (unsafe { run.as_ref() }) else {
        return (0, 0);
    };
    let scope = rec.scope.load(Ordering::Relaxed);
    if !rec.counts.load(Ordering::Relaxed) {
        // The scope alone (never 0): the thread still keeps counts aside.
        return (crate::tracker::run_tag(0, 0, scope), scope);
    }
    rec.find(crate::callsite::OTHER, true);
    (
        crate::tracker::run_tag(rec.slot, rec.gen.load(Ordering::Relaxed), scope),
        scope,
    )
}

/// Sampling mode: counts of `run`'s unsampled blocks that its owner (the
/// calling thread) made and freed, kept aside until now.
pub(crate) fn absorb(run: *const RunRecord, p: thread::Pending) {
    // SAFETY: as in `enter_tag`.
    let Some(rec) = (unsafe { run.as_ref() }) else {
        return;
    };
    if !rec.counts.load(Ordering::Relaxed) {
        return;
    }
    let site = crate::callsite::OTHER;
    if let Some(s) = rec.find(site, true) {
        bump(&s.allocated_blocks, p.alloc_blocks);
        bump(&s.allocated_bytes, p.alloc_bytes);
        bump(&s.own_freed_blocks, p.freed_blocks);
        bump(&s.own_freed_bytes, p.freed_bytes);
        return;
    }
    let mut l = rec.locked.lock();
    if let Some(s) = spilled(&mut l, site) {
        s.allocated_blocks += p.alloc_blocks;
        s.allocated_bytes += p.alloc_bytes;
        s.freed_blocks += p.freed_blocks;
        s.freed_bytes += p.freed_bytes;
    }
}

/// A block of run (`slot`, `gen`) at `site` is freed by the thread with
/// token `me`. Allocation path.
#[inline]
pub(crate) fn record_free(slot: u32, gen: u32, site: u32, size: usize, me: usize) {
    let Some(rec) = run_record(slot) else { return };
    // A generation only grows: once the run has closed, its blocks' frees are
    // ignored without taking its lock (a response freed after its request).
    if rec.gen.load(Ordering::Relaxed) != gen {
        return;
    }
    let size = size as u64;
    if me != 0 && rec.owner.load(Ordering::Relaxed) == me {
        // The owner: it alone closes the run, so the generation it read stays.
        if let Some(s) = rec.find(site, false) {
            bump(&s.own_freed_blocks, 1);
            bump(&s.own_freed_bytes, size);
            return;
        }
    }
    remote_free(rec, gen, site, size);
}

fn remote_free(rec: &RunRecord, gen: u32, site: u32, size: u64) {
    let mut l = rec.locked.lock();
    if rec.gen.load(Ordering::Relaxed) != gen {
        return;
    }
    count_locked_free(rec, &mut l, site, size);
}

/// A block at `addr` of run (`slot`, `gen`) moves to the shared block table,
/// where its entry keeps only the slot: lists it in the run, if the run is
/// still open. Returns whether it did (if not, the entry drops the tag).
/// Allocation path: takes the run's lock, grows the set in libc's memory.
pub(crate) fn note_moved(slot: u32, gen: u32, addr: usize) -> bool {
    let Some(rec) = run_record(slot) else {
        return false;
    };
    let mut l = rec.locked.lock();
    if rec.gen.load(Ordering::Relaxed) != gen {
        return false;
    }
    let h = addr_hash(addr);
    let hidden = crate::sync::hide(addr);
    if l.moved.find(h, |&a| a == hidden).is_some() {
        return true;
    }
    if l.moved
        .try_reserve(1, |&a| addr_hash(crate::sync::hide(a)))
        .is_err()
    {
        return false;
    }
    l.moved
        .insert_unique(h, hidden, |&a| addr_hash(crate::sync::hide(a)));
    true
}

/// A block at `addr` whose entry said it was moved out of run `slot`'s
/// young blocks is freed: it counts in the run if the run still lists it
/// (a run lists only its own blocks, and forgets them all when it closes).
pub(crate) fn record_free_moved(slot: u32, addr: usize, site: u32, size: usize) {
    let Some(rec) = run_record(slot) else { return };
    let mut l = rec.locked.lock();
    let hidden = crate::sync::hide(addr);
    let listed = l.moved.find_entry(addr_hash(addr), |&a| a == hidden).ok();
    if let Some(e) = listed {
        e.remove();
        count_locked_free(rec, &mut l, site, size as u64);
    }
}

fn addr_hash(addr: usize) -> u64 {
    crate::sync::mix(addr as u64)
}

/// Counts a free of one of `rec`'s blocks, with its lock held.
fn count_locked_free(rec: &RunRecord, l: &mut Locked, site: u32, size: u64) {
    if let Some(s) = rec.find(site, false) {
        let i = rec.index_of(s);
        if let Some(r) = l.remote_freed.get_mut(i) {
            r.0 += 1;
            r.1 += size;
        }
    } else if let Some(s) = l.spilled.find_mut(site_hash(site), |s| s.site == site) {
        s.freed_blocks += 1;
        s.freed_bytes += size;
    }
}

/// Opens a run of scope `name`; with `counts`, one that counts its blocks
/// per call-site for a [`ScopeSummary`].
pub(crate) fn open_run(name: &str, counts: bool) -> Option<&'static RunRecord> {
    thread::untracked(|| {
        let entry = intern_name(name);
        // Per thread, so that threads serving the same route do not fight
        // over one counter; the shared one is for threads without counters.
        if !thread::count_run(entry.id) {
            entry.runs.fetch_add(1, Ordering::Relaxed);
        }
        let rec = acquire_record()?;
        rec.scope.store(entry.id, Ordering::Relaxed);
        rec.counts.store(counts, Ordering::Relaxed);
        Some(rec)
    })
}

/// Closes a run; with `summarize`, says what it left behind.
pub(crate) fn close_run(rec: &'static RunRecord, summarize: bool) -> Option<ScopeSummary> {
    thread::untracked(|| {
        if !rec.counts.load(Ordering::Relaxed) {
            // Nothing counted, no block tagged with it: no other thread can
            // be in it. (Only guards are asked for a summary, and they count.)
            next_gen(rec);
            release_record(rec);
            return None;
        }
        let mut l = rec.locked.lock();
        let mut counts: Vec<SiteRun> = Vec::new();
        let Locked {
            remote_freed,
            spilled,
            moved,
        } = &mut *l;
        // Only the entries this run claimed (most runs touch a few of 64).
        // Only an owner claims entries, and no thread owns a closing run:
        // no locked swap needed.
        let mut used = rec.used.load(Ordering::Relaxed);
        rec.used.store(0, Ordering::Relaxed);
        while used != 0 {
            let i = used.trailing_zeros() as usize;
            used &= used - 1;
            let (Some(s), Some(remote)) = (rec.sites.get(i), remote_freed.get_mut(i)) else {
                continue;
            };
            let key = s.key.load(Ordering::Relaxed);
            if key == 0 {
                continue;
            }
            if summarize {
                counts.push(SiteRun {
                    site: key - 1,
                    allocated_blocks: s.allocated_blocks.load(Ordering::Relaxed),
                    allocated_bytes: s.allocated_bytes.load(Ordering::Relaxed),
                    freed_blocks: s.own_freed_blocks.load(Ordering::Relaxed) + remote.0,
                    freed_bytes: s.own_freed_bytes.load(Ordering::Relaxed) + remote.1,
                });
            }
            for c in [
                &s.allocated_blocks,
                &s.allocated_bytes,
                &s.own_freed_blocks,
                &s.own_freed_bytes,
            ] {
                c.store(0, Ordering::Relaxed);
            }
            s.key.store(0, Ordering::Relaxed);
            *remote = (0, 0);
        }
        if summarize {
            counts.extend(spilled.iter().copied());
        }
        spilled.clear();
        if moved.capacity() > MOVED_KEEP {
            *moved = HashTable::new_in(MetaAlloc {});
        } else {
            moved.clear();
        }
        next_gen(rec);
        let scope = rec.scope.load(Ordering::Relaxed);
        drop(l);
        release_record(rec);
        summarize.then(|| summary(scope, &counts))
    })
}

/// Moves a closing run's record to its next generation, never MOVED. Only
/// the owner writes it.
fn next_gen(rec: &RunRecord) {
    let next = rec.gen.load(Ordering::Relaxed).wrapping_add(1) & GEN_MASK;
    rec.gen
        .store(if next == MOVED { 1 } else { next }, Ordering::Release);
}

fn summary(scope: u32, counts: &[SiteRun]) -> ScopeSummary {
    let mut summary = ScopeSummary {
        name: scope_entry(scope)
            .map(|e| e.name.clone())
            .unwrap_or_default(),
        ..ScopeSummary::default()
    };
    for s in counts {
        let c = CallsiteCount {
            callsite: s.site,
            allocated_blocks: s.allocated_blocks,
            allocated_bytes: s.allocated_bytes,
            outstanding_blocks: s.allocated_blocks.saturating_sub(s.freed_blocks),
            outstanding_bytes: s.allocated_bytes.saturating_sub(s.freed_bytes),
        };
        summary.allocated_blocks += c.allocated_blocks;
        summary.allocated_bytes += c.allocated_bytes;
        summary.outstanding_blocks += c.outstanding_blocks;
        summary.outstanding_bytes += c.outstanding_bytes;
        summary.by_callsite.push(c);
    }
    summary.by_callsite.sort_by(|a, b| {
        (b.outstanding_bytes, b.allocated_bytes, a.callsite).cmp(&(
            a.outstanding_bytes,
            a.allocated_bytes,
            b.callsite,
        ))
    });
    summary
}

/// Makes `rec` the innermost run on this thread, and this thread its owner.
fn enter(rec: &'static RunRecord) {
    rec.parent
        .store(thread::current_run() as *mut RunRecord, Ordering::Relaxed);
    rec.owner.store(thread::token(), Ordering::Relaxed);
    thread::set_current_run(rec);
}

/// Enters `rec` on this thread unless a thread has it entered already
/// (tracing may enter one span on two threads at once; a run has one owner).
#[cfg(feature = "tracing")]
pub(crate) fn try_enter(rec: &'static RunRecord) -> bool {
    let me = thread::token();
    if rec
        .owner
        .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    enter(rec);
    true
}

/// Takes `rec` off this thread's stack of runs, wherever it is in it, so that
/// guards dropped out of order never leave a closed run current.
pub(crate) fn leave(rec: &'static RunRecord) {
    rec.owner.store(0, Ordering::Relaxed);
    let parent = rec.parent.load(Ordering::Relaxed);
    let mut cur = thread::current_run();
    if std::ptr::eq(cur, rec) {
        thread::set_current_run(parent);
        return;
    }
    // SAFETY: runs on this thread's stack are pooled records, never freed.
    while let Some(r) = unsafe { cur.as_ref() } {
        let up = r.parent.load(Ordering::Relaxed);
        if std::ptr::eq(up, rec) {
            r.parent.store(parent, Ordering::Relaxed);
            return;
        }
        cur = up;
    }
}

// ---------------------------------------------------------------- public API

/// Counts of one call-site within one scope run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallsiteCount {
    /// The call-site id, as in [`crate::Report`] and its JSON.
    pub callsite: u32,
    pub allocated_blocks: u64,
    pub allocated_bytes: u64,
    /// Still live when the scope closed.
    pub outstanding_blocks: u64,
    pub outstanding_bytes: u64,
}

/// What one run of a scope allocated and left behind.
///
/// Counts the blocks that belong to this run: allocated while it was the
/// innermost open scope on the allocating thread (blocks of nested scopes
/// belong to those). "Outstanding" means still live when the scope closed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeSummary {
    pub name: String,
    pub allocated_blocks: u64,
    pub allocated_bytes: u64,
    pub outstanding_blocks: u64,
    pub outstanding_bytes: u64,
    /// Largest outstanding first.
    pub by_callsite: Vec<CallsiteCount>,
}

/// An open scope run on this thread; closes when finished or dropped.
#[must_use = "the scope closes when this guard is dropped"]
pub struct ScopeGuard {
    rec: Option<&'static RunRecord>,
    /// Tied to the thread that opened it.
    _not_send: PhantomData<*const ()>,
}

impl ScopeGuard {
    /// Closes the scope and returns what this run allocated and left behind.
    pub fn finish(mut self) -> ScopeSummary {
        self.close(true).unwrap_or_default()
    }

    fn close(&mut self, summarize: bool) -> Option<ScopeSummary> {
        let rec = self.rec.take()?;
        leave(rec);
        close_run(rec, summarize)
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        self.close(false);
    }
}

impl std::fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeGuard").finish_non_exhaustive()
    }
}

/// Opens a scope named `name` on this thread until the guard is finished or
/// dropped. Every block allocated meanwhile on this thread (outside any inner
/// scope) is tagged with this run.
///
/// The run counts its blocks per call-site, for [`ScopeGuard::finish`]'s
/// summary. [`track_scope`] and [`scoped`] give the same per-scope figures in
/// the report for less: their runs are never asked for a summary, so they
/// count nothing per call-site.
pub fn scope(name: &str) -> ScopeGuard {
    enter_scope(name, true)
}

/// [`scope`], with a run that counts per call-site only if `counts`.
pub(crate) fn enter_scope(name: &str, counts: bool) -> ScopeGuard {
    let rec = open_run(name, counts);
    if let Some(rec) = rec {
        enter(rec);
    }
    ScopeGuard {
        rec,
        _not_send: PhantomData,
    }
}

/// Runs `f` inside a scope named `name`. A panic in `f` still closes the scope.
pub fn track_scope<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let _guard = enter_scope(name, false);
    f()
}

/// A future whose polls (and drop) run inside one run of a scope: see [`scoped`].
#[must_use = "futures do nothing unless polled"]
pub struct Scoped<F> {
    inner: ManuallyDrop<F>,
    name: String,
    rec: Option<&'static RunRecord>,
    opened: bool,
}

// SAFETY: the run record is a pooled, lock-protected structure any thread may
// use; only `inner` decides whether the future may move between threads.
unsafe impl<F: Send> Send for Scoped<F> {}

/// Wraps `fut` so that every block allocated while it is polled, on whichever
/// thread polls it, is tagged with one run of scope `name`. The run opens at the
/// first poll and closes when the future is dropped.
pub fn scoped<F: Future>(name: &str, fut: F) -> Scoped<F> {
    Scoped {
        inner: ManuallyDrop::new(fut),
        name: thread::untracked(|| name.to_owned()),
        rec: None,
        opened: false,
    }
}

/// Like [`scoped`], with the run opened now and entered while `make` builds
/// the future: what `make` allocates belongs to the run too (a tower
/// service's `call` does its synchronous work there).
pub fn scoped_with<F: Future>(name: &str, make: impl FnOnce() -> F) -> Scoped<F> {
    let rec = open_run(name, false);
    let fut = {
        let _entered = Entered::new(rec);
        make()
    };
    Scoped {
        inner: ManuallyDrop::new(fut),
        name: String::new(),
        rec,
        opened: true,
    }
}

/// `fut.track_scope("GET /users")`: the method form of [`scoped`].
pub trait TrackScopeExt: Future + Sized {
    fn track_scope(self, name: &str) -> Scoped<Self> {
        scoped(name, self)
    }
}

impl<F: Future> TrackScopeExt for F {}

/// Leaves the run when dropped, so a panicking poll still leaves it.
struct Entered(Option<&'static RunRecord>);

impl Entered {
    fn new(rec: Option<&'static RunRecord>) -> Self {
        if let Some(rec) = rec {
            enter(rec);
        }
        Entered(rec)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(rec) = self.0 {
            leave(rec);
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of
        // `self`, and `Scoped` has no `Unpin` impl of its own beyond the auto
        // impl that requires `F: Unpin`. The other fields are not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        if !this.opened {
            this.opened = true;
            this.rec = open_run(&this.name, false);
        }
        let _entered = Entered::new(this.rec);
        // SAFETY: see above; `inner` stays where it is.
        unsafe { Pin::new_unchecked(&mut *this.inner) }.poll(cx)
    }
}

impl<F> Drop for Scoped<F> {
    fn drop(&mut self) {
        let rec = self.rec.take();
        {
            let _entered = Entered::new(rec);
            // SAFETY: `inner` is dropped exactly once, here, in place (so a
            // pinned future is not moved), and never used again.
            unsafe { ManuallyDrop::drop(&mut self.inner) };
        }
        if let Some(rec) = rec {
            close_run(rec, false);
        }
    }
}

/// Holds the scope locks across `fork` so the child never inherits one held.
pub(crate) fn lock_for_fork() {
    std::mem::forget(NAMES.write());
    FREE.lock_for_fork();
    let high = FREE_HIGH.load(Ordering::Relaxed);
    for slot in 1..=high {
        if let Some(rec) = run_record(slot) {
            rec.locked.lock_for_fork();
        }
    }
}

/// # Safety
/// Pairs with [`lock_for_fork`] in the fork handlers.
pub(crate) unsafe fn unlock_after_fork() {
    let high = FREE_HIGH.load(Ordering::Relaxed);
    for slot in 1..=high {
        if let Some(rec) = run_record(slot) {
            // SAFETY: forwarded contract; `lock_for_fork` locked this record.
            unsafe { rec.locked.force_unlock() };
        }
    }
    // SAFETY: forwarded contract; `lock_for_fork` took this lock.
    unsafe { FREE.force_unlock() };
    // SAFETY: forwarded contract; `lock_for_fork` forgot a write guard of NAMES.
    unsafe { NAMES.force_unlock_write() };
}
