//! Request scopes: which scope run each block was opened in.
//!
//! Owns scope names (interned to ids), run records (one per open run, pooled
//! and reused, never freed, so a block's stale reference to a closed run is
//! harmless: the generation check turns it away), the guards and the future
//! adaptor. The allocation path calls only [`record_alloc`] and
//! [`record_free`], which take a run's spin lock and never allocate through the
//! global allocator. Everything else runs with the thread's allocations
//! untracked, outside the allocation path.

use crate::sync::{MetaAlloc, SpinLock};
use crate::thread;
use hashbrown::HashTable;
use once_cell::sync::Lazy;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

// ---------------------------------------------------------------- scope names

pub(crate) struct ScopeEntry {
    pub(crate) name: String,
    pub(crate) runs: AtomicU64,
}

#[derive(Default)]
struct Names {
    by_name: HashMap<String, u32>,
    /// Index `id - 1`; id 0 means "no scope".
    list: Vec<&'static ScopeEntry>,
}

static NAMES: Lazy<RwLock<Names>> = Lazy::new(Default::default);

fn intern_name(name: &str) -> u32 {
    if let Some(&id) = NAMES.read().by_name.get(name) {
        return id;
    }
    let mut names = NAMES.write();
    if let Some(&id) = names.by_name.get(name) {
        return id;
    }
    let entry: &'static ScopeEntry = Box::leak(Box::new(ScopeEntry {
        name: name.to_owned(),
        runs: AtomicU64::new(0),
    }));
    names.list.push(entry);
    let id = names.list.len() as u32;
    names.by_name.insert(name.to_owned(), id);
    id
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
    NAMES
        .read()
        .list
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u32 + 1, *e))
        .collect()
}

// ---------------------------------------------------------------- run records

/// Per call-site counts of one run.
#[derive(Clone, Copy, Default)]
struct SiteRun {
    site: u32,
    allocated_blocks: u64,
    allocated_bytes: u64,
    live_blocks: u64,
    live_bytes: u64,
}

struct RunData {
    /// Bumped when the run closes, so frees of its blocks after that are ignored.
    gen: u32,
    scope: u32,
    open: bool,
    sites: HashTable<SiteRun, MetaAlloc>,
    next_free: u32,
}

/// One open scope run. Records are pooled and never freed.
pub(crate) struct RunRecord {
    data: SpinLock<RunData>,
    /// The next outer run on the thread that has this one entered.
    parent: AtomicPtr<RunRecord>,
    slot: u32,
}

const RUN_CHUNK: usize = 256;
const RUN_CHUNKS: usize = 256;

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

fn run_record(slot: u32) -> Option<&'static RunRecord> {
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
            data: SpinLock::new(RunData {
                gen: 1,
                scope: 0,
                open: false,
                sites: HashTable::new_in(MetaAlloc {}),
                next_free: 0,
            }),
            parent: AtomicPtr::new(std::ptr::null_mut()),
            slot: (index * RUN_CHUNK + i) as u32,
        };
        // SAFETY: `i < RUN_CHUNK`, inside the allocation made for RUN_CHUNK records.
        unsafe { p.add(i).write(record) };
    }
    p
}

/// Takes a record from the pool, or `None` when 65,535 runs are open at once.
fn acquire_record() -> Option<&'static RunRecord> {
    let mut free = FREE.lock();
    if free.head != 0 {
        let rec = run_record(free.head)?;
        free.head = rec.data.lock().next_free;
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

fn release_record(rec: &'static RunRecord) {
    let mut free = FREE.lock();
    rec.data.lock().next_free = free.head;
    free.head = rec.slot;
}

fn site_hash(site: u32) -> u64 {
    crate::sync::mix(site as u64)
}

/// The tag of a block allocated now in `run`: (scope id, run slot, generation).
/// Allocation path: takes the run's spin lock, grows its table in libc memory.
#[inline]
pub(crate) fn record_alloc(run: *const RunRecord, site: u32, size: usize) -> (u32, u32, u32) {
    // SAFETY: a thread's current run is a pooled record, never freed.
    let Some(rec) = (unsafe { run.as_ref() }) else {
        return (0, 0, 0);
    };
    let mut d = rec.data.lock();
    let h = site_hash(site);
    let size = size as u64;
    match d.sites.find_mut(h, |s| s.site == site) {
        Some(s) => {
            s.allocated_blocks += 1;
            s.allocated_bytes += size;
            s.live_blocks += 1;
            s.live_bytes += size;
        }
        None => {
            if d.sites.try_reserve(1, |s| site_hash(s.site)).is_ok() {
                let s = SiteRun {
                    site,
                    allocated_blocks: 1,
                    allocated_bytes: size,
                    live_blocks: 1,
                    live_bytes: size,
                };
                d.sites.insert_unique(h, s, |s| site_hash(s.site));
            }
        }
    }
    (d.scope, rec.slot, d.gen)
}

/// A block of run (`slot`, `gen`) at `site` is freed. Allocation path.
#[inline]
pub(crate) fn record_free(slot: u32, gen: u32, site: u32, size: usize) {
    let Some(rec) = run_record(slot) else { return };
    let mut d = rec.data.lock();
    if !d.open || d.gen != gen {
        return;
    }
    if let Some(s) = d.sites.find_mut(site_hash(site), |s| s.site == site) {
        s.live_blocks = s.live_blocks.saturating_sub(1);
        s.live_bytes = s.live_bytes.saturating_sub(size as u64);
    }
}

/// Opens a run of scope `name`.
fn open_run(name: &str) -> Option<&'static RunRecord> {
    thread::untracked(|| {
        let id = intern_name(name);
        if let Some(e) = scope_entry(id) {
            e.runs.fetch_add(1, Ordering::Relaxed);
        }
        let rec = acquire_record()?;
        let mut d = rec.data.lock();
        d.scope = id;
        d.open = true;
        d.sites.clear();
        drop(d);
        Some(rec)
    })
}

/// Closes a run and says what it left behind.
fn close_run(rec: &'static RunRecord) -> ScopeSummary {
    thread::untracked(|| {
        let mut d = rec.data.lock();
        let mut summary = ScopeSummary {
            name: scope_entry(d.scope)
                .map(|e| e.name.clone())
                .unwrap_or_default(),
            ..ScopeSummary::default()
        };
        for s in d.sites.iter() {
            summary.allocated_blocks += s.allocated_blocks;
            summary.allocated_bytes += s.allocated_bytes;
            summary.outstanding_blocks += s.live_blocks;
            summary.outstanding_bytes += s.live_bytes;
            summary.by_callsite.push(CallsiteCount {
                callsite: s.site,
                allocated_blocks: s.allocated_blocks,
                allocated_bytes: s.allocated_bytes,
                outstanding_blocks: s.live_blocks,
                outstanding_bytes: s.live_bytes,
            });
        }
        d.open = false;
        d.gen = d.gen.wrapping_add(1);
        d.sites.clear();
        drop(d);
        release_record(rec);
        summary.by_callsite.sort_by(|a, b| {
            (b.outstanding_bytes, b.allocated_bytes, a.callsite).cmp(&(
                a.outstanding_bytes,
                a.allocated_bytes,
                b.callsite,
            ))
        });
        summary
    })
}

/// Makes `rec` the innermost run on this thread.
fn enter(rec: &'static RunRecord) {
    rec.parent
        .store(thread::current_run() as *mut RunRecord, Ordering::Relaxed);
    thread::set_current_run(rec);
}

/// Takes `rec` off this thread's stack of runs, wherever it is in it, so that
/// guards dropped out of order never leave a closed run current.
fn leave(rec: &'static RunRecord) {
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
        self.close().unwrap_or_default()
    }

    fn close(&mut self) -> Option<ScopeSummary> {
        let rec = self.rec.take()?;
        leave(rec);
        Some(close_run(rec))
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        self.close();
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
pub fn scope(name: &str) -> ScopeGuard {
    let rec = open_run(name);
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
    let _guard = scope(name);
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
            this.rec = open_run(&this.name);
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
            close_run(rec);
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
            rec.data.lock_for_fork();
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
            unsafe { rec.data.force_unlock() };
        }
    }
    // SAFETY: forwarded contract; `lock_for_fork` took this lock.
    unsafe { FREE.force_unlock() };
    // SAFETY: forwarded contract; `lock_for_fork` forgot a write guard of NAMES.
    unsafe { NAMES.force_unlock_write() };
}
