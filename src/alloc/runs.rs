//! Scope runs as the allocation path sees them: run records and the
//! per-run counts a block updates.
//!
//! Owns the run records (one per open run, pooled and reused, never freed,
//! so a block's stale reference to a closed run is harmless: the generation
//! check turns it away), which thread has a run entered, and each run's
//! per-call-site counts. The allocation path calls [`record_alloc`],
//! [`record_free`], [`record_free_moved`] and [`note_moved`], which take at
//! most a run's spin lock and never allocate through the global allocator.
//! Opening and closing runs ([`open`], [`close`]) runs outside the
//! allocation path and allocates nothing, but for a counted run's summary
//! (made untracked). `track_scope`'s runs need no record: [`LightRun`].
//! Scope names, guards and futures are the scope layer's; here a scope is
//! its id.

use crate::alloc::meta::{bump, CacheAligned, MetaAlloc, SpinLock};
use crate::alloc::sample::Weight;
use crate::alloc::thread;
use hashbrown::HashTable;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Scope ids a block can carry (1 to this less one; 0 means "no scope"):
/// the shared block table's entries keep them in 16 bits, and each thread
/// has a counter per id.
pub(crate) const MAX_SCOPES: usize = crate::alloc::callsite::MAX_SITES;

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
pub(crate) struct SiteRun {
    pub(crate) site: u32,
    pub(crate) allocated_blocks: u64,
    pub(crate) allocated_bytes: u64,
    pub(crate) freed_blocks: u64,
    pub(crate) freed_bytes: u64,
}

struct Locked {
    /// Blocks and bytes other threads freed, per slot of the fixed table.
    remote_freed: [(u64, u64); RUN_SITES],
    /// Call-sites that did not fit in the fixed table.
    spilled: HashTable<SiteRun, MetaAlloc>,
    /// Blocks of this run moved to the shared block table while it was open
    /// (their entries there carry only the run slot, see [`MOVED`]): a free
    /// of one found here is this run's; the set is emptied at the close.
    /// Addresses are kept hidden ([`crate::alloc::meta::hide`]).
    moved: HashTable<usize, MetaAlloc>,
}

/// The generation a block table entry gives for a block listed in its run's
/// `moved` set. Never a run's own generation: those start at 1 and skip 0.
pub(crate) const MOVED: u32 = 0;

/// Generations wrap within 30 bits. A block freed exactly 2^30 - 1 runs of
/// its record later would be taken for one of the run open then.
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
    /// close (a guard's `finish`). A run that can never be asked for one
    /// (a future's, a span's, `track_scope`'s) does not: its blocks carry
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
const _: () = assert!(RUN_CHUNK * RUN_CHUNKS <= 1 << 16 && MAX_SCOPES <= 1 << 16);

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
    /// [`LOCAL`] was touched on this thread (see [`local`]).
    static LOCAL_READY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on this thread's free records. The first touch registers the
/// list's destructor, which may allocate: that one is untracked, so that
/// opening and closing a run needs no re-entrancy flag.
#[inline]
fn local<R>(f: impl FnOnce(&LocalRecords) -> R) -> Option<R> {
    if !LOCAL_READY.try_with(Cell::get).unwrap_or(true) {
        thread::untracked(|| {
            let _ = LOCAL.try_with(|_| ());
        });
        let _ = LOCAL_READY.try_with(|r| r.set(true));
    }
    LOCAL.try_with(f).ok()
}

/// Takes a record from this thread's list or the shared pool, or `None` when
/// 65,535 runs are open at once.
fn acquire_record() -> Option<&'static RunRecord> {
    let mine = local(|l| {
        let rec = run_record(l.head.get())?;
        l.head.set(rec.next_free.load(Ordering::Relaxed));
        l.len.set(l.len.get().saturating_sub(1));
        Some(rec)
    });
    if let Some(Some(rec)) = mine {
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
    let kept = local(|l| {
        if l.len.get() >= LOCAL_RECORDS {
            return false;
        }
        rec.next_free.store(l.head.get(), Ordering::Relaxed);
        l.head.set(rec.slot);
        l.len.set(l.len.get() + 1);
        true
    });
    if kept != Some(true) {
        release_shared(rec);
    }
}

fn release_shared(rec: &'static RunRecord) {
    let mut free = FREE.lock();
    rec.next_free.store(free.head, Ordering::Relaxed);
    free.head = rec.slot;
}

fn site_hash(site: u32) -> u64 {
    crate::alloc::meta::mix(site as u64)
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
pub(crate) fn record_alloc(
    run: *const RunRecord,
    site: u32,
    (units, bytes): Weight,
) -> (u32, u32, u32) {
    if let Some(light) = as_light(run) {
        return (light.scope, 0, 0);
    }
    // SAFETY: a thread's current run, untagged, is a pooled record, never freed.
    let Some(rec) = (unsafe { run.as_ref() }) else {
        return (0, 0, 0);
    };
    if !rec.counts.load(Ordering::Relaxed) {
        // No run tag: the block's free then costs the run nothing.
        return (rec.scope.load(Ordering::Relaxed), 0, 0);
    }
    match rec.find(site, true) {
        Some(slot) => {
            bump(&slot.allocated_blocks, units);
            bump(&slot.allocated_bytes, bytes);
        }
        None => spill_alloc(rec, site, (units, bytes)),
    }
    (
        rec.scope.load(Ordering::Relaxed),
        rec.slot,
        rec.gen.load(Ordering::Relaxed),
    )
}

#[cold]
fn spill_alloc(rec: &RunRecord, site: u32, (units, bytes): Weight) {
    let mut l = rec.locked.lock();
    if let Some(s) = spilled(&mut l, site) {
        s.allocated_blocks += units;
        s.allocated_bytes += bytes;
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

/// A block of run (`slot`, `gen`) at `site` is freed by the thread with
/// token `me`. Allocation path.
#[inline]
pub(crate) fn record_free(slot: u32, gen: u32, site: u32, (units, bytes): Weight, me: usize) {
    let Some(rec) = run_record(slot) else { return };
    // A generation only grows: once the run has closed, its blocks' frees are
    // ignored without taking its lock (a response freed after its request).
    if rec.gen.load(Ordering::Relaxed) != gen {
        return;
    }
    if me != 0 && rec.owner.load(Ordering::Relaxed) == me {
        // The owner: it alone closes the run, so the generation it read stays.
        if let Some(s) = rec.find(site, false) {
            bump(&s.own_freed_blocks, units);
            bump(&s.own_freed_bytes, bytes);
            return;
        }
    }
    remote_free(rec, gen, site, (units, bytes));
}

fn remote_free(rec: &RunRecord, gen: u32, site: u32, w: Weight) {
    let mut l = rec.locked.lock();
    if rec.gen.load(Ordering::Relaxed) != gen {
        return;
    }
    count_locked_free(rec, &mut l, site, w);
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
    let hidden = crate::alloc::meta::hide(addr);
    if l.moved.find(h, |&a| a == hidden).is_some() {
        return true;
    }
    if l.moved
        .try_reserve(1, |&a| addr_hash(crate::alloc::meta::hide(a)))
        .is_err()
    {
        return false;
    }
    l.moved
        .insert_unique(h, hidden, |&a| addr_hash(crate::alloc::meta::hide(a)));
    true
}

/// A block at `addr` whose entry said it was moved out of run `slot`'s
/// young blocks is freed: it counts in the run if the run still lists it
/// (a run lists only its own blocks, and forgets them all when it closes).
pub(crate) fn record_free_moved(slot: u32, addr: usize, site: u32, w: Weight) {
    let Some(rec) = run_record(slot) else { return };
    let mut l = rec.locked.lock();
    let hidden = crate::alloc::meta::hide(addr);
    let listed = l.moved.find_entry(addr_hash(addr), |&a| a == hidden).ok();
    if let Some(e) = listed {
        e.remove();
        count_locked_free(rec, &mut l, site, w);
    }
}

fn addr_hash(addr: usize) -> u64 {
    crate::alloc::meta::mix(addr as u64)
}

/// Counts a free of one of `rec`'s blocks, with its lock held.
fn count_locked_free(rec: &RunRecord, l: &mut Locked, site: u32, (units, bytes): Weight) {
    if let Some(s) = rec.find(site, false) {
        let i = rec.index_of(s);
        if let Some(r) = l.remote_freed.get_mut(i) {
            r.0 += units;
            r.1 += bytes;
        }
    } else if let Some(s) = l.spilled.find_mut(site_hash(site), |s| s.site == site) {
        s.freed_blocks += units;
        s.freed_bytes += bytes;
    }
}

/// Opens a run of scope id `scope`; with `counts`, one that counts its
/// blocks per call-site for a summary at its close. `None` when 65,535 runs
/// are open at once.
pub(crate) fn open(scope: u32, counts: bool) -> Option<&'static RunRecord> {
    // Allocates nothing: records come from metadata memory.
    let rec = acquire_record()?;
    rec.scope.store(scope, Ordering::Relaxed);
    rec.counts.store(counts, Ordering::Relaxed);
    Some(rec)
}

/// Closes a run; with `summarize` (and a run that counts), returns its scope
/// id and what each call-site allocated and freed in it (the summary is
/// made untracked).
pub(crate) fn close(rec: &'static RunRecord, summarize: bool) -> Option<(u32, Vec<SiteRun>)> {
    if !rec.counts.load(Ordering::Relaxed) {
        // Nothing counted, no block tagged with it: no other thread can be
        // in it. (Only guards are asked for a summary, and they count.)
        // Allocates nothing.
        next_gen(rec);
        release_record(rec);
        return None;
    }
    thread::untracked(|| {
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
        summarize.then_some((scope, counts))
    })
}

/// Moves a closing run's record to its next generation, never MOVED. Only
/// the owner writes it.
fn next_gen(rec: &RunRecord) {
    let next = rec.gen.load(Ordering::Relaxed).wrapping_add(1) & GEN_MASK;
    rec.gen
        .store(if next == MOVED { 1 } else { next }, Ordering::Release);
}

/// Makes `rec` the innermost run on this thread, and this thread its owner.
pub(crate) fn enter(rec: &'static RunRecord) {
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
    unlink(rec, rec.parent.load(Ordering::Relaxed));
}

/// Takes `run` (whose parent is `parent`) off this thread's stack of runs.
#[inline]
fn unlink(run: *const RunRecord, parent: *const RunRecord) {
    let cur = thread::current_run();
    if std::ptr::eq(cur, run) {
        thread::set_current_run(parent);
        return;
    }
    unlink_inside(cur, run, parent);
}

/// [`unlink`] of a run that is not the innermost (runs left out of order).
#[cold]
fn unlink_inside(mut cur: *const RunRecord, run: *const RunRecord, parent: *const RunRecord) {
    while !cur.is_null() {
        let up = parent_of(cur);
        if std::ptr::eq(up, run) {
            set_parent(cur, parent);
            return;
        }
        cur = up;
    }
}

// ---------------------------------------------------------------- light runs

/// A run of `track_scope`: it lives on its caller's stack while the closure
/// runs, counts nothing per call-site, and its blocks carry its scope id
/// alone, so it needs no record: entering and leaving it are a few stores.
/// On a thread's stack of runs it is a pointer to it with bit 0 set.
pub(crate) struct LightRun {
    scope: u32,
    parent: Cell<*const RunRecord>,
}

const LIGHT: usize = 1;

/// The light run `run` (a run on this thread's stack) stands for, if it does.
#[inline]
fn as_light<'a>(run: *const RunRecord) -> Option<&'a LightRun> {
    if run as usize & LIGHT == 0 {
        return None;
    }
    // SAFETY: a tagged run on a thread's stack of runs is a LightRun on the
    // frame of a `track_scope` still running on that thread: it leaves the
    // stack (`LightEntered`'s drop) before that frame returns or unwinds.
    unsafe { ((run as usize & !LIGHT) as *const LightRun).as_ref() }
}

/// The run below `run` on this thread's stack of runs.
fn parent_of(run: *const RunRecord) -> *const RunRecord {
    if let Some(l) = as_light(run) {
        return l.parent.get();
    }
    // SAFETY: untagged runs on a thread's stack are pooled records, never freed.
    unsafe { run.as_ref() }.map_or(std::ptr::null(), |r| r.parent.load(Ordering::Relaxed))
}

fn set_parent(run: *const RunRecord, parent: *const RunRecord) {
    if let Some(l) = as_light(run) {
        l.parent.set(parent);
        return;
    }
    // SAFETY: as in `parent_of`.
    if let Some(r) = unsafe { run.as_ref() } {
        r.parent.store(parent as *mut RunRecord, Ordering::Relaxed);
    }
}

impl LightRun {
    #[inline]
    pub(crate) fn new(scope: u32) -> LightRun {
        LightRun {
            scope,
            parent: Cell::new(std::ptr::null()),
        }
    }

    #[inline]
    fn tagged(&self) -> *const RunRecord {
        (self as *const LightRun as usize | LIGHT) as *const RunRecord
    }

    /// Makes this run the innermost on this thread until the guard drops.
    #[inline]
    pub(crate) fn enter(&self) -> LightEntered<'_> {
        self.parent.set(thread::current_run());
        thread::set_current_run(self.tagged());
        LightEntered(self)
    }
}

/// An entered [`LightRun`]; leaves it when dropped.
pub(crate) struct LightEntered<'a>(&'a LightRun);

impl Drop for LightEntered<'_> {
    #[inline]
    fn drop(&mut self) {
        unlink(self.0.tagged(), self.0.parent.get());
    }
}

/// Holds the run records' locks across `fork` so the child never inherits one held.
pub(crate) fn lock_for_fork() {
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
}
