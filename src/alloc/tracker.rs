//! The allocator wrapper: the hot path, all of it in this file and
//! [`crate::alloc::thread`].
//!
//! Every `alloc`, `alloc_zeroed`, `realloc` and `dealloc` goes to the inner
//! allocator and is then recorded: call-site capture, the block table, the
//! thread's counters and, inside a scope, the run's counts. Nothing here may
//! panic, allocate through the global allocator, or take a lock that could;
//! a thread already inside the tracker (its re-entrancy flag up) passes
//! straight through, and so does a free of a block the tracker never saw.
//!
//! In sampling mode ([`crate::alloc::sample`]) an unsampled block is the
//! inner allocator's, unmarked: its allocation costs the thread's byte
//! countdown and its totals ([`crate::alloc::thread::unsampled_alloc`]), its
//! free a range check ([`crate::alloc::region`]) and the totals. A sampled
//! block, and the tracker's own, live in the region (or are noted outside
//! it), so that a free knows them by address; a sampled block also has its
//! stack and weight in the block table.

use crate::alloc::blocks::{self, Inserted, Meta};
use crate::alloc::sample::Weight;
use crate::alloc::thread::{self, RustAlloc, SiteRef, Tracking};
use crate::alloc::{ignored, meta, own, process, region, runs, sample};
use std::alloc::{GlobalAlloc, Layout, System};
use std::any::TypeId;

/// A global allocator that counts live blocks per call-site and per scope.
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();
/// ```
///
/// Sampling mode, for production: every block is counted in the totals, a
/// stack is kept for about one block per `N` bytes allocated (see
/// [`LeakTracker::sample_bytes`]).
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: leakscope::LeakTracker =
///     leakscope::LeakTracker::system().sample_bytes(512 * 1024);
/// ```
pub struct LeakTracker<A: GlobalAlloc = System> {
    inner: A,
    /// Mean sampling interval in bytes; 0: every block gets its stack.
    sample_bytes: usize,
}

impl LeakTracker<System> {
    /// Tracks on top of the system allocator.
    pub const fn system() -> LeakTracker<System> {
        LeakTracker {
            inner: System,
            sample_bytes: 0,
        }
    }
}

impl<A: GlobalAlloc> LeakTracker<A> {
    /// Tracks on top of `inner` (jemalloc, mimalloc, …).
    pub const fn new(inner: A) -> LeakTracker<A> {
        LeakTracker {
            inner,
            sample_bytes: 0,
        }
    }

    /// Sampling mode: keeps the stack (call-site) of about one block per
    /// `bytes` bytes allocated, chosen by Poisson sampling over bytes, and
    /// weighs each sampled block so that call-site and scope figures are
    /// unbiased estimates (error bounds in docs/guide.md). Process totals and
    /// scope runs stay exact. `0` means full mode. The environment
    /// variable `LEAKSCOPE_SAMPLE_BYTES` overrides this value.
    ///
    /// An unsampled block costs a thread-local countdown and counters, and
    /// nothing in memory; sampled blocks live in a region of address space
    /// of their own, reserved at the first one.
    pub const fn sample_bytes(self, bytes: usize) -> LeakTracker<A> {
        // A const fn cannot drop a generic `self`, so its inner allocator is
        // moved out by hand; `this` is never dropped.
        let this = std::mem::ManuallyDrop::new(self);
        let p = &this as *const std::mem::ManuallyDrop<LeakTracker<A>> as *const LeakTracker<A>;
        // SAFETY: ManuallyDrop is repr(transparent), so `p` points to a live
        // tracker; its `inner` is read once and the original is forgotten.
        let inner = unsafe { std::ptr::read(std::ptr::addr_of!((*p).inner)) };
        LeakTracker {
            inner,
            sample_bytes: bytes,
        }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

impl Default for LeakTracker<System> {
    fn default() -> Self {
        LeakTracker::system()
    }
}

// SAFETY: every block is the inner allocator's, with the caller's layout, or
// (sampling mode) a slot of the region that fits the layout's size and
// alignment; a free or realloc goes back to where the block came from, told
// apart by its address (the region) or a set of addresses (sampled blocks
// outside it). Tracking only reads a block's address and size.
unsafe impl<A: GlobalAlloc + 'static> GlobalAlloc for LeakTracker<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _rust = self.marks_rust().then(RustAlloc::enter);
        // SAFETY: forwarded contract.
        unsafe { self.make(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _rust = self.marks_rust().then(RustAlloc::enter);
        // SAFETY: forwarded contract.
        unsafe { self.make(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _rust = self.marks_rust().then(RustAlloc::enter);
        if region::plain(ptr as usize, layout) {
            thread::unsampled_free(layout.size());
            // SAFETY: forwarded contract: a plain block is the inner allocator's.
            return unsafe { self.below().dealloc(ptr, layout) };
        }
        if sample::sampling(self.sample_bytes) {
            if marked(ptr as usize) {
                // SAFETY: forwarded contract.
                return unsafe { sampled_dealloc(&self.below(), ptr, layout) };
            }
            thread::unsampled_free(layout.size());
            // SAFETY: forwarded contract: an unmarked block is the inner allocator's.
            return unsafe { self.below().dealloc(ptr, layout) };
        }
        // Forget the block before the inner allocator may hand its address to
        // another thread, whose insert must not meet our entry.
        let tracked = on_free(ptr);
        // SAFETY: forwarded contract: a block of the set (never a tracked
        // one) goes back to `Raw`.
        if !tracked && own::any() && unsafe { own::free(ptr, layout) } {
            return;
        }
        // SAFETY: forwarded contract.
        unsafe { self.below().dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _rust = self.marks_rust().then(RustAlloc::enter);
        if region::plain(ptr as usize, layout)
            && thread::unsampled_realloc(Some(layout.size()), new_size)
        {
            // SAFETY: forwarded contract.
            let p = unsafe { self.below().realloc(ptr, layout, new_size) };
            if p.is_null() {
                thread::undo(Some(layout.size()), new_size);
            }
            return p;
        }
        if sample::sampling(self.sample_bytes) {
            let marked = marked(ptr as usize);
            // SAFETY: forwarded contract.
            return unsafe { sampled_realloc(&self.below(), ptr, layout, new_size, marked) };
        }
        // SAFETY: forwarded contract.
        let inner =
            |tracked| unsafe { own::realloc(&self.below(), ptr, layout, new_size, tracked) };
        realloc_tracked(ptr, layout.size(), new_size, inner, track)
    }
}

/// Full mode's realloc of the block at `ptr` (`old_size` bytes, or more)
/// to `new_size` bytes by `inner`, counted: the old block's entry taken out
/// first (for the same reason as in `dealloc`), then, as valgrind counts
/// it, the old block freed and a new one allocated, recorded by `track`. A
/// null result keeps the old block (put back, never counted as freed), but
/// for C's `realloc(p, 0)`, which frees it. Meanwhile the thread's young
/// table shows the leak check the blocks in flight, which no table lists.
/// `inner` is told whether the block was tracked.
#[inline]
pub(crate) fn realloc_tracked(
    ptr: *mut u8,
    old_size: usize,
    new_size: usize,
    inner: impl FnOnce(bool) -> *mut u8,
    track: fn(&Tracking<'_>, usize, usize),
) -> *mut u8 {
    let old = thread::with_tracking(|t| {
        t.young().realloc_begins(ptr as usize, old_size);
        blocks::remove(t.young(), ptr as usize)
    });
    let p = inner(matches!(old, Some(Some(_))));
    thread::with_tracking(|t| {
        let young = t.young();
        young.realloc_returned(p as usize, new_size);
        let old = old.flatten();
        if p.is_null() && new_size != 0 {
            if let Some(meta) = old {
                put_back(t, ptr as usize, meta, count_free);
            }
        } else {
            if let Some(meta) = old {
                count_free(t, ptr as usize, &meta);
            }
            if !p.is_null() {
                track(t, p as usize, new_size);
            }
        }
        young.realloc_ends();
    });
    p
}

impl<A: GlobalAlloc + 'static> LeakTracker<A> {
    /// The allocator the tracker's blocks come from: the inner one, but
    /// that with feature `c-heap` `System`'s blocks are taken from glibc
    /// directly, past the process's `malloc` (the tracker's too, which
    /// would count them again, and costs its checks). Decided when the
    /// tracker's type is compiled.
    #[inline(always)]
    fn below(&self) -> Below<'_, A> {
        if thread::C_HEAP && TypeId::of::<A>() == TypeId::of::<System>() {
            Below::Glibc
        } else {
            Below::Inner(&self.inner)
        }
    }

    /// With feature `c-heap`, an inner allocator other than `System` may
    /// itself call the process's `malloc`: the thread is then marked as in
    /// the Rust allocator, so that the block is counted once.
    #[inline(always)]
    fn marks_rust(&self) -> bool {
        thread::C_HEAP && TypeId::of::<A>() != TypeId::of::<System>()
    }

    /// `alloc` or (`zeroed`) `alloc_zeroed`.
    ///
    /// # Safety
    /// `GlobalAlloc::alloc`'s contract.
    #[inline(always)]
    unsafe fn make(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: forwarded contract.
        let inner = || unsafe { inner_alloc(&self.below(), layout, zeroed) };
        // Only ever true in sampling mode.
        if thread::unsampled_alloc(layout.size()) {
            let p = inner();
            if p.is_null() {
                thread::undo(None, layout.size());
            }
            return p;
        }
        if sample::sampling(self.sample_bytes) {
            // SAFETY: forwarded contract.
            return unsafe { sampled_alloc(&self.below(), layout, zeroed) };
        }
        let p = inner();
        if p.is_null() {
            // Refused: the tracker's own block is made good from `Raw`
            // (never tracked); the program's stays refused.
            return own::alloc(layout, zeroed);
        }
        on_alloc(p, layout.size());
        p
    }
}

/// See [`LeakTracker::below`].
enum Below<'a, A> {
    Glibc,
    Inner(&'a A),
}

// SAFETY: forwards every call to one allocator, chosen for the tracker's
// type, so a block always goes back to the allocator it came from.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Below<'_, A> {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match self {
                Below::Glibc => meta::Raw.alloc(layout),
                Below::Inner(a) => a.alloc(layout),
            }
        }
    }

    #[inline(always)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match self {
                Below::Glibc => meta::Raw.alloc_zeroed(layout),
                Below::Inner(a) => a.alloc_zeroed(layout),
            }
        }
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe {
            match self {
                Below::Glibc => meta::Raw.dealloc(ptr, layout),
                Below::Inner(a) => a.dealloc(ptr, layout),
            }
        }
    }

    #[inline(always)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match self {
                Below::Glibc => meta::Raw.realloc(ptr, layout, new_size),
                Below::Inner(a) => a.realloc(ptr, layout, new_size),
            }
        }
    }
}

/// Puts the entry of a block whose realloc failed back in the table; `gone`
/// counts an entry that can no longer be tracked as freed.
fn put_back(t: &Tracking<'_>, addr: usize, meta: Meta, gone: impl Fn(&Tracking<'_>, usize, &Meta)) {
    match blocks::insert(t.young(), addr, meta) {
        Inserted::New => {}
        Inserted::Replaced(at, stale) => gone(t, at, &stale),
        Inserted::Dropped => {
            process::note_untracked();
            gone(t, addr, &meta);
        }
    }
}

#[inline]
fn on_alloc(p: *mut u8, size: usize) {
    thread::with_tracking(|t| track(t, p as usize, size));
}

/// Counts the free of the block at `p`; whether it was tracked.
#[inline]
pub(crate) fn on_free(p: *mut u8) -> bool {
    thread::with_tracking(|t| {
        blocks::remove(t.young(), p as usize)
            .map(|meta| count_free(t, p as usize, &meta))
            .is_some()
    })
    .unwrap_or(false)
}

/// Records a new live block at `addr`, made by Rust's global allocator.
#[inline]
fn track(t: &Tracking<'_>, addr: usize, size: usize) {
    record(t, addr, size, t.callsite());
}

/// Records a new live block at `addr`, made by the process's `malloc`
/// family: its stack walked by CFI ([`Tracking::c_callsite`]).
#[allow(dead_code)] // the C path's; built where `c_heap` is
pub(crate) fn track_c(t: &Tracking<'_>, addr: usize, size: usize) {
    record(t, addr, size, t.c_callsite());
}

/// Records a new live block at `addr`, made at `site`.
#[inline(always)]
fn record(t: &Tracking<'_>, addr: usize, size: usize, site: SiteRef) {
    let meta = new_meta(t, site.id, size, (1, size as u64));
    let scope = meta.scope;
    match blocks::insert(t.young(), addr, meta) {
        Inserted::New => {}
        Inserted::Replaced(at, stale) => count_free(t, at, &stale),
        Inserted::Dropped => {
            // Not in the table, so never counted as freed: not counted at all
            // (a run that counted it already keeps it as outstanding).
            process::note_untracked();
            return;
        }
    }
    t.total_alloc(size);
    t.site_alloc(site, 1, size as u64);
    if scope != 0 {
        t.scope_alloc(scope, (1, size as u64));
    }
}

/// The table entry of a new block of `size` bytes from call-site `site`,
/// counted with weight `w` in the thread's current run.
#[inline]
fn new_meta(t: &Tracking<'_>, site: u32, size: usize, w: Weight) -> Meta {
    let run = t.current_run();
    let (scope, run_slot, run_gen) = if run.is_null() {
        (0, 0, 0)
    } else {
        runs::record_alloc(run, site, w)
    };
    Meta {
        size,
        site,
        scope,
        run_slot,
        run_gen,
    }
}

/// Counts a tracked block at `addr` (full mode) as freed.
#[inline]
fn count_free(t: &Tracking<'_>, addr: usize, meta: &Meta) {
    ignored::on_free(addr);
    t.total_free(meta.size);
    forget(t, addr, meta, (1, meta.size as u64));
}

/// Takes a freed block's weight `w` off its call-site, scope and run.
#[inline]
fn forget(t: &Tracking<'_>, addr: usize, meta: &Meta, w: Weight) {
    t.site_free(meta.site, w.0, w.1);
    if meta.scope != 0 {
        t.scope_free(meta.scope, w);
    }
    if meta.run_slot != 0 {
        if meta.run_gen == runs::MOVED {
            runs::record_free_moved(meta.run_slot, addr, meta.site, w);
        } else {
            runs::record_free(meta.run_slot, meta.run_gen, meta.site, w, t.token());
        }
    }
}

// ---------------------------------------------------------------- sampling mode

/// What a new block is, in sampling mode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The tracker's own (made while the thread is inside it): in the
    /// region, never counted, so its free counts nothing either.
    Own,
    /// Counted in the totals, not sampled: the inner allocator's, unmarked.
    Plain,
    /// Counted and sampled: in the region (or noted outside it), with its
    /// stack in the block table.
    Sampled,
}

/// Slow path: what the next block of `size` bytes is (the sampler counts it).
#[cold]
#[inline(never)]
fn decide(size: usize, mean: usize) -> Kind {
    thread::with_tracking(|t| {
        if t.sampled(size, mean) {
            Kind::Sampled
        } else {
            Kind::Plain
        }
    })
    .unwrap_or(Kind::Own)
}

/// `inner`'s `alloc`, or (`zeroed`) its `alloc_zeroed`.
///
/// # Safety
/// `GlobalAlloc::alloc`'s contract.
#[inline(always)]
unsafe fn inner_alloc<A: GlobalAlloc>(inner: &A, layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe {
        if zeroed {
            inner.alloc_zeroed(layout)
        } else {
            inner.alloc(layout)
        }
    }
}

/// Makes a block of `layout` where a block of `kind` lives; the kind it
/// became (a sampled block that could be put nowhere known is plain).
///
/// # Safety
/// `GlobalAlloc::alloc`'s contract.
unsafe fn place<A: GlobalAlloc>(
    inner: &A,
    layout: Layout,
    zeroed: bool,
    kind: Kind,
) -> (*mut u8, Kind) {
    // SAFETY: forwarded contract.
    let plain = || unsafe { inner_alloc(inner, layout, zeroed) };
    if kind == Kind::Plain {
        return (plain(), kind);
    }
    let p = region::alloc(layout, zeroed);
    if !p.is_null() {
        return (p, kind);
    }
    let p = plain();
    if p.is_null() || region::note_outside(p as usize, layout) {
        return (p, kind);
    }
    // libc could not grow the set: the block is counted, unmarked, as plain.
    process::note_untracked();
    (p, Kind::Plain)
}

/// Counts a new block of `kind` at `addr`.
fn note_new(addr: usize, size: usize, kind: Kind, mean: usize) {
    match kind {
        Kind::Own => {}
        Kind::Plain => {
            let _ = thread::with_tracking(|t| t.count_alloc(size));
        }
        Kind::Sampled => {
            let _ = thread::with_tracking(|t| {
                t.count_alloc(size);
                thread::observe_peak();
                track_sampled(t, addr, size, mean);
            });
        }
    }
}

/// # Safety
/// `GlobalAlloc::alloc`'s contract.
#[cold]
#[inline(never)]
unsafe fn sampled_alloc<A: GlobalAlloc>(inner: &A, layout: Layout, zeroed: bool) -> *mut u8 {
    let mean = sample::current();
    let kind = decide(layout.size(), mean);
    // SAFETY: forwarded contract.
    let (p, kind) = unsafe { place(inner, layout, zeroed, kind) };
    if !p.is_null() {
        note_new(p as usize, layout.size(), kind, mean);
    }
    p
}

/// Whether the block at `addr` (not surely [`region::plain`]) is sampled
/// (or the tracker's own): in the region, or noted outside it.
#[inline(always)]
fn marked(addr: usize) -> bool {
    region::holds(addr) || region::outside(addr, false)
}

/// # Safety
/// `GlobalAlloc::dealloc`'s contract, for a [`marked`] block.
#[cold]
#[inline(never)]
unsafe fn sampled_dealloc<A: GlobalAlloc>(inner: &A, ptr: *mut u8, layout: Layout) {
    let mean = sample::current();
    let addr = ptr as usize;
    // Its entry goes before its memory can be handed out again.
    let _ = thread::with_tracking(|t| {
        // No entry: the tracker's own block, never counted.
        if let Some(meta) = blocks::remove(t.young(), addr) {
            t.count_free(layout.size());
            forget(t, addr, &meta, sample::weight(meta.size, mean));
        }
    });
    if region::holds(addr) {
        region::free(addr);
    } else {
        region::outside(addr, true);
        // SAFETY: forwarded contract: an outside block is the inner allocator's.
        unsafe { inner.dealloc(ptr, layout) };
    }
}

/// # Safety
/// `GlobalAlloc::realloc`'s contract; `marked` says whether the block is.
#[cold]
#[inline(never)]
unsafe fn sampled_realloc<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    marked: bool,
) -> *mut u8 {
    let mean = sample::current();
    let addr = ptr as usize;
    // SAFETY: `realloc`'s contract: `new_size`, rounded up to the
    // alignment, does not overflow isize; the alignment is a layout's.
    let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
    let kind = decide(new_size, mean);
    if !region::holds(addr) && (kind == Kind::Plain || !region::fits(new_layout)) {
        // Neither block is in the region: the inner allocator reallocs, in
        // place where it can. The old block's marks come off first, as in
        // full mode, and go back if it refuses.
        let old = marked.then(|| {
            region::outside(addr, true);
            thread::with_tracking(|t| blocks::remove(t.young(), addr)).flatten()
        });
        // SAFETY: forwarded contract.
        let p = unsafe { inner.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if let Some(entry) = old {
                if region::note_outside(addr, layout) {
                    if let Some(meta) = entry {
                        let _ = thread::with_tracking(|t| {
                            put_back(t, addr, meta, |t, at, m| {
                                forget(t, at, m, sample::weight(m.size, mean))
                            })
                        });
                    }
                }
            }
            return p;
        }
        let _ = thread::with_tracking(|t| match old {
            None => t.count_free(layout.size()),
            Some(None) => {}
            Some(Some(meta)) => {
                t.count_free(layout.size());
                forget(t, addr, &meta, sample::weight(meta.size, mean));
            }
        });
        let kind = if kind != Kind::Plain && !region::note_outside(p as usize, new_layout) {
            process::note_untracked();
            Kind::Plain
        } else {
            kind
        };
        note_new(p as usize, new_size, kind, mean);
        return p;
    }
    // The new block lives elsewhere: made, filled, then the old one goes.
    // SAFETY: `new_layout` is non-zero-sized (realloc's contract).
    let (p, kind) = unsafe { place(inner, new_layout, false, kind) };
    if p.is_null() {
        return p;
    }
    // SAFETY: both blocks are live, distinct, and hold this many bytes.
    unsafe { std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size)) };
    if marked {
        // SAFETY: forwarded contract.
        unsafe { sampled_dealloc(inner, ptr, layout) };
    } else {
        thread::unsampled_free(layout.size());
        // SAFETY: forwarded contract: a plain block is the inner allocator's.
        unsafe { inner.dealloc(ptr, layout) };
    }
    note_new(p as usize, new_size, kind, mean);
    p
}

/// Sampling mode: records a new sampled block of `size` bytes at `addr`,
/// with its stack and its weight.
fn track_sampled(t: &Tracking<'_>, addr: usize, size: usize, mean: usize) {
    let site = t.callsite();
    let w = sample::weight(size, mean);
    let meta = new_meta(t, site.id, size, w);
    let scope = meta.scope;
    match blocks::insert(t.young(), addr, meta) {
        Inserted::New => {}
        Inserted::Replaced(at, stale) => forget(t, at, &stale, sample::weight(stale.size, mean)),
        Inserted::Dropped => {
            process::note_untracked();
            return;
        }
    }
    t.site_alloc(site, w.0, w.1);
    if scope != 0 {
        t.scope_alloc(scope, w);
    }
}
