//! Per-thread state: the re-entrancy flag, the thread's counters and its
//! call-site cache.
//!
//! Counters are per thread and merged when a report is made, so two threads do
//! not fight over one cache line on every allocation. Each thread owns a
//! [`Slot`] from a global registry; a slot outlives its thread and is reused by
//! a later one, keeping the counts it holds (they are running totals, so reuse
//! loses nothing). Must never allocate through the global allocator, never
//! panic, and work during and after thread-local destruction.

use crate::alloc::blocks::Young;
use crate::alloc::callsite::{self, Origin, Peak, OTHER};
use crate::alloc::cfi;
use crate::alloc::meta::{bump, leak_zeroed, CacheAligned};
use crate::alloc::runs::RunRecord;
use crate::alloc::sample::{Sampler, Weight};
use crate::alloc::unwind::{self, Capture, Frames, Seen, MAX_FRAMES};
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicU8, Ordering};

/// A thread's running counts for one call-site. Written only by the owning
/// thread (plain load + store, no locked instruction), read by reports from
/// any thread. Process totals are the sum over call-sites, made at report time.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) alloc_blocks: AtomicU64,
    pub(crate) alloc_bytes: AtomicU64,
    pub(crate) free_blocks: AtomicU64,
    pub(crate) free_bytes: AtomicU64,
    /// Scope counters only: runs of the scope this thread opened.
    pub(crate) runs: AtomicU64,
    drift: Drift,
}

/// Live bytes this thread added (or, negative, removed) since it last flushed
/// them into a shared [`Peak`]. Owner-written like [`Counts`].
#[derive(Default)]
pub(crate) struct Drift {
    pending: AtomicI64,
    /// The highest `pending` since the last flush: the shared peak is
    /// looked at only when `pending` rises above it.
    high: AtomicI64,
}

/// Live-byte drift a thread keeps to itself before it touches a shared line.
const FLUSH_BYTES: i64 = 64 * 1024;

impl Counts {
    #[inline]
    fn on_alloc(&self, blocks: u64, bytes: u64) {
        bump(&self.alloc_blocks, blocks);
        bump(&self.alloc_bytes, bytes);
    }

    #[inline]
    fn on_free(&self, blocks: u64, bytes: u64) {
        bump(&self.free_blocks, blocks);
        bump(&self.free_bytes, bytes);
    }
}

impl Drift {
    #[inline]
    fn by(&self, by: i64, peak: &Peak) {
        self.by_lazy(by, || Some(peak));
    }

    /// As [`Drift::by`], with the shared [`Peak`] looked up only when it is
    /// needed: on a new high, or to flush (never on most frees).
    #[inline]
    fn by_lazy<'p>(&self, by: i64, peak: impl Fn() -> Option<&'p Peak>) {
        let mut pending = self.pending.load(Ordering::Relaxed).wrapping_add(by);
        // Between two flushes of this thread, the live bytes it sees are
        // highest where `pending` is: only a new high can be a new peak.
        if pending > self.high.load(Ordering::Relaxed) {
            self.high.store(pending, Ordering::Relaxed);
            if let Some(p) = peak() {
                p.observe(pending);
            }
        }
        if !(-FLUSH_BYTES..FLUSH_BYTES).contains(&pending) {
            if let Some(p) = peak() {
                p.flushed.fetch_add(pending, Ordering::Relaxed);
            }
            pending = 0;
            self.high.store(0, Ordering::Relaxed);
        }
        self.pending.store(pending, Ordering::Relaxed);
    }
}

const CHUNK: usize = 1024;
const CHUNKS: usize = callsite::MAX_SITES / CHUNK;
/// Sets of the call-site cache, of [`CACHE_WAYS`] entries each.
const CACHE_SETS: usize = 128;
/// Four ways: a request's few dozen hot stacks must not evict one another
/// (each miss takes the shared table's lock).
const CACHE_WAYS: usize = 4;

/// A thread's [`Counts`] by id (call-site or scope), in chunks of [`CHUNK`]
/// made on first use. Only the owner makes chunks; anyone may read them.
struct Chunks {
    chunks: [AtomicPtr<[Counts; CHUNK]>; CHUNKS],
}

impl Chunks {
    /// The counts of `id`, made on first use (owner only).
    #[inline]
    fn make(&self, id: u32) -> Option<&Counts> {
        let id = id as usize;
        let cell = self.chunks.get(id / CHUNK)?;
        let mut p = cell.load(Ordering::Acquire);
        if p.is_null() {
            p = leak_zeroed::<[Counts; CHUNK]>();
            if p.is_null() {
                return None;
            }
            // Only the owner stores here, so a plain store publishes it.
            cell.store(p, Ordering::Release);
        }
        // SAFETY: chunks are zeroed `Counts` (valid: all atomics) and never freed.
        unsafe { (*p).get(id % CHUNK) }
    }

    /// The counts of `id` if this thread ever touched it: for reports.
    fn get(&self, id: u32) -> Option<&Counts> {
        let id = id as usize;
        let p = self.chunks.get(id / CHUNK)?.load(Ordering::Acquire);
        // SAFETY: as in `make`: published chunks are valid and never freed.
        (!p.is_null())
            .then(|| unsafe { (*p).get(id % CHUNK) })
            .flatten()
    }
}

/// A stack this thread saw lately. It is known again by its 64-bit hash,
/// depth and innermost return address together: two different stacks alike
/// in all three would share a call-site (the shared table, which every new
/// stack goes through once, compares whole stacks).
#[derive(Clone, Copy)]
struct CacheEntry {
    hash: u64,
    first: usize,
    len: u32,
    id: u32,
    /// The site of `id` (null in a zeroed entry).
    site: *const callsite::Site,
}

/// One thread's counters. Lives for the rest of the process once made,
/// in memory of its own ([`leak_zeroed`] maps it): only the pages a thread
/// touches take memory, so the fields are laid out in order, what every
/// thread touches first (in sampling mode, a thread that is never sampled
/// touches the first page alone), the caches of full mode after.
#[repr(C)]
pub(crate) struct Slot {
    next: AtomicPtr<Slot>,
    in_use: AtomicBool,
    /// Every block this thread allocated and freed (exact in both modes);
    /// its drift feeds [`TOTAL_PEAK`].
    /// (On its own line: other threads walk `next` and read `young`.)
    total: CacheAligned<Counts>,
    /// Per call-site (in sampling mode: sampled blocks, weighted).
    sites: Chunks,
    /// Per scope name: blocks opened in a run of that scope, freed by anyone.
    scopes: Chunks,
    /// The blocks this thread allocated lately (see [`crate::alloc::blocks`]).
    pub(crate) young: Young,
    /// Set-associative cache from stack hash to call-site id, newest entry
    /// of each set first; owner only.
    cache: UnsafeCell<[[CacheEntry; CACHE_WAYS]; CACHE_SETS]>,
    /// Stacks the frame-pointer walk read lately, with their call-sites; owner only.
    seen: Seen<Known>,
    /// Where the DWARF unwinder writes a stack; owner only.
    scratch: UnsafeCell<Frames>,
}

/// A call-site as [`Seen`] keeps it (all-zero: [`OTHER`], no site).
#[derive(Clone, Copy)]
struct Known {
    id: u32,
    site: *const callsite::Site,
    /// This slot's counts of the site (null: not made yet).
    counts: *const Counts,
}

// SAFETY: `cache`, `seen` and `scratch` are touched only by the thread
// that owns the slot (`in_use` hands it to one thread at a time); every
// other field is atomic.
unsafe impl Sync for Slot {}

impl Slot {
    /// This slot's counts for call-site `id` if it ever touched it: for reports.
    pub(crate) fn site_counts(&self, id: u32) -> Option<&Counts> {
        self.sites.get(id)
    }

    /// This slot's counts for scope id `id` if it ever touched it: for reports.
    pub(crate) fn scope_counts(&self, id: u32) -> Option<&Counts> {
        self.scopes.get(id)
    }

    /// Everything this slot's threads allocated and freed: for reports.
    pub(crate) fn total_counts(&self) -> &Counts {
        &self.total
    }

    /// The call-site of a stack [`Seen`] did not know, kept there.
    #[cold]
    fn intern_walked(&'static self, walked: unwind::Walked<'_, Known>) -> SiteRef {
        let mut frames: Frames = [0; MAX_FRAMES];
        let site = self.intern(walked.frames(&mut frames), walked.hash, Origin::Rust);
        walked.keep(Known {
            counts: site.counts.map_or(std::ptr::null(), |c| c as *const _),
            id: site.id,
            site: site.site.map_or(std::ptr::null(), |s| s as *const _),
        });
        site
    }

    /// The call-site of `frames` (whose hash is `hash`), from the cache or
    /// the shared table.
    #[inline]
    fn intern(&'static self, frames: &[usize], hash: u64, origin: Origin) -> SiteRef {
        // SAFETY: the cache is only used by the slot's owner, which is us.
        let cache = unsafe { &mut *self.cache.get() };
        let Some(set) = cache.get_mut(hash as usize % CACHE_SETS) else {
            return SiteRef::other();
        };
        let first = frames.first().copied().unwrap_or(0);
        for entry in set.iter() {
            if entry.hash == hash && entry.len as usize == frames.len() && entry.first == first {
                // SAFETY: a non-null `site` was a `&'static Site` (sites are never freed).
                if let Some(site) = unsafe { entry.site.as_ref() } {
                    return SiteRef {
                        id: entry.id,
                        site: Some(site),
                        counts: self.sites.make(entry.id),
                    };
                }
            }
        }
        let id = callsite::intern(hash, frames, origin);
        let site = callsite::get(id);
        // The oldest entry of the set goes.
        set.copy_within(..CACHE_WAYS - 1, 1);
        set[0] = CacheEntry {
            hash,
            first,
            len: frames.len() as u32,
            id,
            site: site.map_or(std::ptr::null(), |s| s as *const _),
        };
        SiteRef {
            id,
            site,
            counts: self.sites.make(id),
        }
    }
}

static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

/// Every slot ever made, for reports.
pub(crate) fn slots() -> impl Iterator<Item = &'static Slot> {
    let mut p = SLOTS.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: slots are never freed, and `next` links only published slots.
        let s = unsafe { p.as_ref()? };
        p = s.next.load(Ordering::Acquire);
        Some(s)
    })
}

/// Every thread's young-block table (of slots in use or not).
pub(crate) fn young_tables() -> impl Iterator<Item = &'static Young> {
    slots().map(|s| &s.young)
}

/// Takes a free slot, or makes one.
fn acquire_slot() -> Option<&'static Slot> {
    for s in slots() {
        if !s.in_use.load(Ordering::Relaxed)
            && s.in_use
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            // Its stacks were another thread's.
            s.seen.clear();
            return Some(s);
        }
    }
    let p = leak_zeroed::<Slot>();
    // SAFETY: a zeroed Slot is valid (atomics, null pointers, zero cache entries)
    // and never freed.
    let s = unsafe { p.as_ref()? };
    s.in_use.store(true, Ordering::Relaxed);
    crate::alloc::blocks::enlist(&s.young);
    let mut head = SLOTS.load(Ordering::Relaxed);
    loop {
        s.next.store(head, Ordering::Relaxed);
        match SLOTS.compare_exchange_weak(head, p, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Some(s),
            Err(h) => head = h,
        }
    }
}

/// Per-thread state. `const`-initialised and without a destructor, so it is
/// there for every allocation, including during thread-local destruction.
///
/// The sampling fast path looks at the sampler's countdown alone: it is
/// above 0 only in sampling mode, on a thread that has a slot and is not
/// inside the tracker ([`State::enter`] pauses it; losing the slot resets it).
struct State {
    /// The re-entrancy flag: set with [`State::enter`] and [`State::leave`].
    busy: Cell<bool>,
    /// Inside the Rust global allocator ([`RustAlloc`]): a call of the
    /// process's `malloc` family is its inner allocator's, counted already.
    rust: Cell<bool>,
    slot: Cell<Option<&'static Slot>>,
    bounds: Cell<Option<(usize, usize)>>,
    /// The innermost scope run open on this thread (null: none).
    run: Cell<*const RunRecord>,
    release: Cell<u8>,
    /// Sampling mode: where this thread's next sample point is.
    sampler: Cell<Sampler>,
}

impl State {
    /// Counts `size` bytes towards this thread's next sample point; whether
    /// this block is sampled.
    #[inline(always)]
    fn sample(&self, size: usize, mean: usize) -> bool {
        let busy = self.busy.get();
        let mut s = self.sampler.get();
        if busy {
            s.resume();
        }
        let hit = s.take(size, mean);
        if busy {
            s.pause();
        }
        self.sampler.set(s);
        hit
    }

    /// Raises the re-entrancy flag; whether it was up already.
    #[inline(always)]
    fn enter(&self) -> bool {
        let was = self.busy.replace(true);
        if !was {
            self.with_sampler(Sampler::pause);
        }
        was
    }

    /// Puts the flag back as [`State::enter`] found it (`was`).
    #[inline(always)]
    fn leave(&self, was: bool) {
        if !was {
            self.busy.set(false);
            self.with_sampler(Sampler::resume);
        }
    }

    /// The slot is gone: the fast path must not count on it.
    fn forget_slot(&self) {
        self.slot.set(None);
        let busy = self.busy.get();
        self.with_sampler(|s| s.reset(busy));
    }

    #[inline(always)]
    fn with_sampler(&self, f: impl FnOnce(&mut Sampler)) {
        let mut s = self.sampler.get();
        f(&mut s);
        self.sampler.set(s);
    }
}

const RELEASE_NONE: u8 = 0;
const RELEASE_ARMED: u8 = 1;
const RELEASE_DONE: u8 = 2;

thread_local! {
    static STATE: State = const {
        State {
            busy: Cell::new(false),
            rust: Cell::new(false),
            slot: Cell::new(None),
            bounds: Cell::new(None),
            run: Cell::new(std::ptr::null()),
            release: Cell::new(RELEASE_NONE),
            sampler: Cell::new(Sampler::new()),
        }
    };
    /// Gives the slot back when the thread ends.
    static RELEASE: SlotRelease = const { SlotRelease };
}

struct SlotRelease;

impl Drop for SlotRelease {
    fn drop(&mut self) {
        let _ = STATE.try_with(|st| {
            st.release.set(RELEASE_DONE);
            if let Some(slot) = st.slot.get() {
                st.forget_slot();
                slot.in_use.store(false, Ordering::Release);
            }
        });
    }
}

/// A call-site id with its site, looked up once per allocation.
#[derive(Clone, Copy)]
pub(crate) struct SiteRef {
    pub(crate) id: u32,
    pub(crate) site: Option<&'static callsite::Site>,
    /// This thread's counts of the site, if made.
    counts: Option<&'static Counts>,
}

impl SiteRef {
    fn other() -> SiteRef {
        SiteRef {
            id: OTHER,
            site: callsite::get(OTHER),
            counts: None,
        }
    }
}

/// What the allocation path sees of the current thread while tracking.
pub(crate) struct Tracking<'a> {
    state: &'a State,
    slot: &'static Slot,
}

impl Tracking<'_> {
    /// Captures the current stack and returns its call-site. Inlined into
    /// its callers: as a call of its own, its prologue and its result
    /// through memory cost about 20 instructions a block.
    #[inline(always)]
    pub(crate) fn callsite(&self) -> SiteRef {
        let bounds = self.bounds();
        let slot = self.slot;
        // SAFETY: the scratch frames are this slot's owner's, which we are,
        // and nothing else borrows them while this runs.
        let out = unsafe { &mut *slot.scratch.get() };
        match unwind::capture(bounds, &slot.seen, out) {
            // SAFETY: a non-null `site` was a `&'static Site` (sites are never
            // freed), a non-null `counts` this slot's (never freed either).
            Capture::Seen(k) => unsafe {
                SiteRef {
                    id: k.id,
                    site: k.site.as_ref(),
                    counts: k.counts.as_ref(),
                }
            },
            Capture::Walked(walked) => slot.intern_walked(walked),
            Capture::Dwarf { n, hash } => {
                slot.intern(out.get(..n).unwrap_or(&[]), hash, Origin::Rust)
            }
        }
    }

    /// The call-site of a block the process's `malloc` family made for C
    /// code (or for Rust that calls it): its stack walked by CFI, since C
    /// frames keep no frame-pointer chain (a walk by frame pointers skips
    /// the Rust frame that called the C function).
    #[inline]
    #[allow(dead_code)] // the C path's; built where `c_heap` is
    pub(crate) fn c_callsite(&self) -> SiteRef {
        let bounds = self.c_bounds();
        let slot = self.slot;
        // SAFETY: as in `callsite`.
        let out = unsafe { &mut *slot.scratch.get() };
        let n = cfi::walk(out, bounds);
        let frames = out.get(..n).unwrap_or(&[]);
        slot.intern(frames, unwind::hash_frames(frames), Origin::C)
    }

    /// This thread's stack bounds, read once, without a lock: the C path
    /// may run inside libc with its locks held (see
    /// [`unwind::stack_mapping`]).
    #[inline]
    fn c_bounds(&self) -> (usize, usize) {
        self.bounds_by(unwind::stack_mapping)
    }

    /// This thread's stack bounds, read once.
    #[inline]
    fn bounds(&self) -> (usize, usize) {
        self.bounds_by(unwind::current_stack_bounds)
    }

    /// This thread's stack bounds, read by `read` the first time.
    #[inline(always)]
    fn bounds_by(&self, read: fn() -> (usize, usize)) -> (usize, usize) {
        match self.state.bounds.get() {
            Some(b) => b,
            None => {
                let b = read();
                self.state.bounds.set(Some(b));
                b
            }
        }
    }

    /// Counts a block of `size` bytes allocated, in the process totals.
    #[inline]
    pub(crate) fn total_alloc(&self, size: usize) {
        let t = &self.slot.total;
        t.on_alloc(1, size as u64);
        t.drift.by(size as i64, &TOTAL_PEAK);
    }

    #[inline]
    pub(crate) fn total_free(&self, size: usize) {
        let t = &self.slot.total;
        t.on_free(1, size as u64);
        t.drift.by(-(size as i64), &TOTAL_PEAK);
    }

    /// Counts `units` (see [`crate::alloc::sample::block_unit`]) and `bytes` at a call-site.
    #[inline]
    pub(crate) fn site_alloc(&self, site: SiteRef, units: u64, bytes: u64) {
        let counts = site.counts.or_else(|| self.slot.sites.make(site.id));
        if let (Some(c), Some(s)) = (counts, site.site) {
            c.on_alloc(units, bytes);
            c.drift.by(bytes as i64, &s.peak);
        }
    }

    #[inline]
    pub(crate) fn site_free(&self, site: u32, units: u64, bytes: u64) {
        if let Some(c) = self.slot.sites.make(site) {
            c.on_free(units, bytes);
            c.drift
                .by_lazy(-(bytes as i64), || callsite::get(site).map(|s| &s.peak));
        }
    }

    /// Counts a block opened in a run of scope id `scope` (not 0).
    #[inline]
    pub(crate) fn scope_alloc(&self, scope: u32, (units, bytes): Weight) {
        if let Some(c) = self.slot.scopes.make(scope) {
            c.on_alloc(units, bytes);
        }
    }

    #[inline]
    pub(crate) fn scope_free(&self, scope: u32, (units, bytes): Weight) {
        if let Some(c) = self.slot.scopes.make(scope) {
            c.on_free(units, bytes);
        }
    }

    /// Sampling mode: counts a block of `size` bytes made, in the process
    /// totals (the peak follows at sample points: [`observe_peak`]).
    #[inline]
    pub(crate) fn count_alloc(&self, size: usize) {
        self.slot.total.on_alloc(1, size as u64);
    }

    /// Sampling mode: counts a block of `size` bytes freed.
    #[inline]
    pub(crate) fn count_free(&self, size: usize) {
        self.slot.total.on_free(1, size as u64);
    }

    /// Sampling mode: counts `size` bytes towards this thread's next sample
    /// point; whether this block is sampled.
    #[inline]
    pub(crate) fn sampled(&self, size: usize, mean: usize) -> bool {
        self.state.sample(size, mean)
    }

    #[inline]
    pub(crate) fn current_run(&self) -> *const RunRecord {
        self.state.run.get()
    }

    /// This thread's young-block table.
    #[inline]
    pub(crate) fn young(&self) -> &'static Young {
        &self.slot.young
    }

    /// This thread's token: see [`token`].
    #[inline]
    pub(crate) fn token(&self) -> usize {
        self.state as *const State as usize
    }
}

/// Live bytes of the whole process, for the peak.
pub(crate) static TOTAL_PEAK: Peak = Peak::new();

/// One-time set-up ([`crate::alloc::process::start`]: fork handlers, then the
/// layers above: environment, exit report), run by the first allocation with
/// the re-entrancy flag up.
static INIT: AtomicU8 = AtomicU8::new(0);

/// Whether the tracker is also the process's `malloc` family (feature
/// `c-heap`, on Linux with glibc, x86_64: see [`crate::alloc::c_heap`]).
pub(crate) const C_HEAP: bool = cfg!(all(
    feature = "c-heap",
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64"
));

/// Marks a call of the Rust global allocator on this thread while it lives,
/// so that the process's `malloc`, reached through the inner allocator
/// (`System`), does not count the block a second time. Only with
/// [`C_HEAP`].
pub(crate) struct RustAlloc(bool);

impl RustAlloc {
    #[inline(always)]
    pub(crate) fn enter() -> RustAlloc {
        RustAlloc(STATE.try_with(|st| st.rust.replace(true)).unwrap_or(true))
    }
}

impl Drop for RustAlloc {
    #[inline(always)]
    fn drop(&mut self) {
        if !self.0 {
            let _ = STATE.try_with(|st| st.rust.set(false));
        }
    }
}

/// Whether a call of the process's `malloc` family on this thread is the
/// program's own, to be counted: not the tracker's (re-entrancy flag up),
/// nor the Rust global allocator's inner call ([`RustAlloc`]).
#[inline(always)]
#[allow(dead_code)] // the C path's; built where `c_heap` is
pub(crate) fn c_call_counted() -> bool {
    STATE
        .try_with(|st| !st.busy.get() && !st.rust.get())
        .unwrap_or(false)
}

/// Whether this thread is inside the tracker (its re-entrancy flag is up:
/// a report, a check, scope bookkeeping, the allocation path itself).
pub(crate) fn busy() -> bool {
    STATE.try_with(|st| st.busy.get()).unwrap_or(false)
}

/// Whether this thread is inside the tracker or the Rust global allocator
/// (and so may hold their locks, or the inner allocator's). Async-signal-
/// safe: the state is a `const` thread-local with no destructor.
pub(crate) fn inside_allocator() -> bool {
    STATE
        .try_with(|st| st.busy.get() || st.rust.get())
        .unwrap_or(true)
}

/// For the `fork` handlers: the forking thread is inside the tracker from
/// the first handler to the last, so that whatever the other handlers
/// allocate meanwhile (while this layer's locks are held) goes straight to
/// the inner allocator. Returns the flag as it was, for [`leave_fork`].
pub(crate) fn enter_fork() -> bool {
    STATE.try_with(State::enter).unwrap_or(true)
}

pub(crate) fn leave_fork(was: bool) {
    let _ = STATE.try_with(|st| st.leave(was));
}

/// Runs `f` with tracking entered on this thread: the re-entrancy flag is up,
/// so whatever `f` allocates goes straight to the inner allocator. Returns
/// `None`, without running `f`, when the thread is already inside the tracker.
#[inline]
pub(crate) fn with_tracking<R>(f: impl FnOnce(&Tracking<'_>) -> R) -> Option<R> {
    STATE
        .try_with(|st| {
            if st.enter() {
                return None;
            }
            // A thread with a slot got it after the start began.
            let r = match st.slot.get() {
                Some(slot) => Some(f(&Tracking { state: st, slot })),
                None => enter_new_thread(st, f),
            };
            st.leave(false);
            r
        })
        .ok()
        .flatten()
}

/// Starts the tracker now, if it has not started, without an allocation:
/// for a copy that is the process's `malloc` but not the global allocator
/// (a program that links leakscope for its scopes alone, run under
/// `leakscope run`), which no allocation through Rust's allocator starts.
pub(crate) fn start_now() {
    let _ = with_tracking(|_| ());
}

#[cold]
fn init_once() {
    if INIT
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        crate::alloc::process::start();
        INIT.store(2, Ordering::Release);
    }
}

#[cold]
fn enter_new_thread<R>(st: &State, f: impl FnOnce(&Tracking<'_>) -> R) -> Option<R> {
    if INIT.load(Ordering::Relaxed) != 2 {
        init_once();
    }
    if st.release.get() == RELEASE_NONE {
        st.release.set(RELEASE_ARMED);
        // Touching RELEASE registers its destructor; after destruction it fails.
        if RELEASE.try_with(|_| ()).is_err() {
            st.release.set(RELEASE_DONE);
        }
    }
    let slot = acquire_slot()?;
    let r = f(&Tracking { state: st, slot });
    if st.release.get() == RELEASE_DONE {
        // The thread is past its destructors: borrow a slot for this one call.
        st.forget_slot();
        slot.in_use.store(false, Ordering::Release);
    } else {
        st.slot.set(Some(slot));
    }
    Some(r)
}

/// Runs `f` with this thread's allocations untracked (the re-entrancy flag up):
/// for the tracker's own work outside the allocation path, such as reports and
/// scope bookkeeping. Nests.
pub(crate) fn untracked<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let was = self.0;
            let _ = STATE.try_with(|st| st.leave(was));
        }
    }
    let was = STATE.try_with(State::enter).unwrap_or(true);
    let _restore = Restore(was);
    f()
}

/// A number no other running thread has (the address of this thread's state),
/// 0 when the thread's locals are gone. A later thread may get it again.
pub(crate) fn token() -> usize {
    STATE
        .try_with(|st| st as *const State as usize)
        .unwrap_or(0)
}

/// The innermost scope run open on this thread.
#[inline]
pub(crate) fn current_run() -> *const RunRecord {
    STATE
        .try_with(|st| st.run.get())
        .unwrap_or(std::ptr::null())
}

#[inline]
pub(crate) fn set_current_run(run: *const RunRecord) {
    let _ = STATE.try_with(|st| st.run.set(run));
}

/// Counts a run of scope id `scope` opened on this thread: the runs of it
/// this thread's counters now hold; `None` when the thread has no counters
/// (yet, or any more) and the caller must count it.
#[inline]
pub(crate) fn count_run(scope: u32) -> Option<u64> {
    STATE
        .try_with(|st| {
            let c = st.slot.get().and_then(|slot| slot.scopes.make(scope))?;
            let runs = c.runs.load(Ordering::Relaxed).wrapping_add(1);
            c.runs.store(runs, Ordering::Relaxed);
            Some(runs)
        })
        .ok()
        .flatten()
}

/// Scope id `scope`'s runs counted in threads' counters and its
/// outstanding bytes (opened in a run of it, freed by nobody since), summed
/// over every thread. Outside the allocation path.
pub(crate) fn scope_level(scope: u32) -> (u64, u64) {
    let (mut runs, mut allocated, mut freed) = (0u64, 0u64, 0u64);
    for c in slots().filter_map(|slot| slot.scope_counts(scope)) {
        runs = runs.wrapping_add(c.runs.load(Ordering::Relaxed));
        allocated = allocated.wrapping_add(c.alloc_bytes.load(Ordering::Relaxed));
        freed = freed.wrapping_add(c.free_bytes.load(Ordering::Relaxed));
    }
    (runs, allocated.saturating_sub(freed))
}

// ---------------------------------------------------------------- sampling mode's fast path
//
// An unsampled block costs its thread's byte countdown and its process
// totals: nothing else is kept of it, and nothing marks it (see
// `crate::alloc::region`). The totals count every block of the program
// exactly, from the sizes the caller's layouts give.

/// Sampling mode: counts a new block of `size` bytes in this thread's
/// totals and towards its next sample point, when that is all it needs.
/// Otherwise counts nothing and returns `false`: the block reaches the
/// sample point, or is the tracker's own (the thread is inside it), or the
/// thread has no counters yet, or the process is in full mode (or has not
/// decided yet); the caller goes the slow way.
#[inline(always)]
pub(crate) fn unsampled_alloc(size: usize) -> bool {
    unsampled_realloc(None, size)
}

/// [`unsampled_alloc`] of a block of `new` bytes that replaces (a
/// `realloc`) an unsampled block of `old` bytes, counted as freed.
#[inline(always)]
pub(crate) fn unsampled_realloc(old: Option<usize>, new: usize) -> bool {
    STATE
        .try_with(|st| {
            // The countdown covers the block only in sampling mode, on a
            // thread with a slot, outside the tracker (see `State`).
            let mut s = st.sampler.get();
            if !s.skip(new) {
                return false;
            }
            let Some(slot) = st.slot.get() else {
                return false;
            };
            st.sampler.set(s);
            slot.total.on_alloc(1, new as u64);
            if let Some(old) = old {
                slot.total.on_free(1, old as u64);
            }
            true
        })
        .unwrap_or(false)
}

/// Sampling mode: counts the free of an unsampled block of `size` bytes.
#[inline(always)]
pub(crate) fn unsampled_free(size: usize) {
    let counted = STATE
        .try_with(|st| {
            let Some(slot) = st.slot.get() else {
                return false;
            };
            slot.total.on_free(1, size as u64);
            true
        })
        .unwrap_or(false);
    if !counted {
        let _ = with_tracking(|t| t.count_free(size));
    }
}

/// Sampling mode, at a sample point: the process's live bytes now, from
/// every thread's totals, for the peak. Live bytes grow only by
/// allocations, which reach a sample point every interval on average, so
/// the peak seen can be low by about an interval per allocating thread.
#[cold]
pub(crate) fn observe_peak() {
    let live = slots().fold(0u64, |live, s| {
        let t = &s.total;
        live.wrapping_add(t.alloc_bytes.load(Ordering::Relaxed))
            .wrapping_sub(t.free_bytes.load(Ordering::Relaxed))
    });
    if (live as i64) > 0 {
        TOTAL_PEAK.peak.fetch_max(live, Ordering::Relaxed);
    }
}

/// Sampling mode: takes back an [`unsampled_realloc`] (`old`: `None` for
/// an [`unsampled_alloc`]) that the inner allocator could not do.
#[cold]
pub(crate) fn undo(old: Option<usize>, new: usize) {
    let _ = STATE.try_with(|st| {
        if let Some(slot) = st.slot.get() {
            slot.total.on_alloc(u64::MAX, (new as u64).wrapping_neg());
            if let Some(old) = old {
                slot.total.on_free(u64::MAX, (old as u64).wrapping_neg());
            }
        }
    });
}
