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
//! In sampling mode ([`crate::alloc::sample`]) every block gets an 8-byte
//! header (or its alignment, when larger) in front of it, holding its scope
//! run and whether it was counted and sampled; an unsampled block is counted
//! on the thread's fast path ([`crate::alloc::thread::sampled_alloc`]) and
//! never enters the block table.

use crate::alloc::blocks::{self, Inserted, Meta};
use crate::alloc::callsite::OTHER;
use crate::alloc::thread::{self, FastAlloc, SiteRef, Tracking};
use crate::alloc::{ignored, process, runs, sample};
use std::alloc::{GlobalAlloc, Layout, System};

/// A global allocator that counts live blocks per call-site and per scope.
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();
/// ```
///
/// Sampling mode, for production: every block is counted, a stack is kept
/// for about one block per `N` bytes allocated (see
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
    /// weighs each sampled block so that call-site figures are unbiased
    /// estimates (error bounds in the README). Process totals and every
    /// scope's counts stay exact. `0` means full mode. The environment
    /// variable `LEAKSCOPE_SAMPLE_BYTES` overrides this value.
    ///
    /// In sampling mode each block carries an 8-byte header (or its
    /// alignment, when larger) in front of it.
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

// SAFETY: in full mode every method returns what the inner allocator
// returned, with the same layout contract; tracking only reads the block's
// address and size. In sampling mode the inner allocator's block is larger by
// `header_room(align)` (a multiple of the alignment), the caller gets the
// address that far in, and every free and realloc undoes exactly that.
unsafe impl<A: GlobalAlloc> GlobalAlloc for LeakTracker<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mean = sample::interval(self.sample_bytes);
        if mean != 0 {
            // SAFETY: forwarded contract.
            return unsafe { sampled_alloc(&self.inner, layout, false, mean) };
        }
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            on_alloc(p, layout.size());
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let mean = sample::interval(self.sample_bytes);
        if mean != 0 {
            // SAFETY: forwarded contract.
            return unsafe { sampled_alloc(&self.inner, layout, true, mean) };
        }
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        if !p.is_null() {
            on_alloc(p, layout.size());
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mean = sample::interval(self.sample_bytes);
        if mean != 0 {
            // SAFETY: forwarded contract: `ptr` came from `sampled_alloc`.
            return unsafe { sampled_dealloc(&self.inner, ptr, layout, mean) };
        }
        // Forget the block before the inner allocator may hand its address to
        // another thread, whose insert must not meet our entry.
        on_free(ptr);
        // SAFETY: forwarded contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let mean = sample::interval(self.sample_bytes);
        if mean != 0 {
            // SAFETY: forwarded contract: `ptr` came from `sampled_alloc`.
            return unsafe { sampled_realloc(&self.inner, ptr, layout, new_size, mean) };
        }
        // Take the old entry out first, for the same reason as in `dealloc`.
        let old = thread::with_tracking(|t| blocks::remove(t.young(), ptr as usize)).flatten();
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        thread::with_tracking(|t| {
            if p.is_null() {
                // The old block is still there, unchanged: put its entry back
                // (it was never counted as freed, so it is not counted again).
                if let Some(meta) = old {
                    put_back(t, ptr as usize, meta, count_free);
                }
                return;
            }
            // As valgrind counts it: the old block is freed, a new one allocated here.
            if let Some(meta) = old {
                count_free(t, ptr as usize, &meta);
            }
            track(t, p as usize, new_size);
        });
        p
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

#[inline]
fn on_free(p: *mut u8) {
    thread::with_tracking(|t| {
        if let Some(meta) = blocks::remove(t.young(), p as usize) {
            count_free(t, p as usize, &meta);
        }
    });
}

/// Records a new live block at `addr`.
#[inline]
fn track(t: &Tracking<'_>, addr: usize, size: usize) {
    let site = t.callsite();
    let run = t.current_run();
    let (scope, run_slot, run_gen) = if run.is_null() {
        (0, 0, 0)
    } else {
        runs::record_alloc(run, site.id, size)
    };
    let meta = Meta {
        size,
        site: site.id,
        scope,
        run_slot,
        run_gen,
    };
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
        t.scope_alloc(scope, size);
    }
}

/// Counts a tracked block at `addr` (full mode) as freed.
#[inline]
fn count_free(t: &Tracking<'_>, addr: usize, meta: &Meta) {
    ignored::on_free(addr);
    t.total_free(meta.size);
    t.site_free(meta.site, 1, meta.size as u64);
    if meta.scope != 0 {
        t.scope_free(meta.scope, meta.size);
    }
    if meta.run_slot != 0 {
        if meta.run_gen == runs::MOVED {
            runs::record_free_moved(meta.run_slot, addr, meta.site, meta.size);
        } else {
            runs::record_free(meta.run_slot, meta.run_gen, meta.site, meta.size, t.token());
        }
    }
}

// ---------------------------------------------------------------- sampling mode

/// Bytes of header in front of a block in sampling mode: 8, or the block's
/// alignment when larger, so the caller's address keeps its alignment.
#[inline]
fn header_room(align: usize) -> usize {
    align.max(HEADER)
}

const HEADER: usize = std::mem::size_of::<Header>();

/// In front of every block in sampling mode (the 8 bytes just below the
/// address the caller gets), written once when the block is made. One word:
/// run slot (bits 48-63), scope id (32-47), run generation (2-31) and flags
/// (0-1). Slot, scope and generation together are the run's tag
/// ([`run_tag`]): a free compares it with the current run's in one step.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct Header(u64);

/// The tag of blocks made in run (`slot`, `gen`) of scope id `scope`, as
/// their headers carry it (0: no run). Slots and scope ids are below 2^16,
/// generations below 2^30 (`runs::GEN_MASK`).
#[inline]
pub(crate) fn run_tag(slot: u32, gen: u32, scope: u32) -> u64 {
    (slot as u64 & 0xffff) << 48 | (scope as u64 & 0xffff) << 32 | (gen as u64 & 0x3fff_ffff) << 2
}

const FLAGS: u64 = 3;

impl Header {
    #[inline(always)]
    fn tagged(tag: u64, flags: u64) -> Header {
        Header(tag | flags)
    }

    fn run_slot(self) -> u32 {
        (self.0 >> 48) as u32
    }

    fn run_gen(self) -> u32 {
        (self.0 as u32) >> 2
    }

    fn scope(self) -> u32 {
        (self.0 >> 32) as u32 & 0xffff
    }

    fn flags(self) -> u64 {
        self.0 & FLAGS
    }

    fn tag(self) -> u64 {
        self.0 & !FLAGS
    }
}

/// The block was counted when made (the tracker was not busy), so its free
/// is counted too.
const COUNTED: u64 = 1;
/// The block was sampled: it is in the block table with its call-site.
const SAMPLED: u64 = 2;

/// The inner allocator's layout for a block of `layout` with its header.
#[inline]
fn outer(layout: Layout, size: usize) -> Option<(Layout, usize)> {
    let align = layout.align();
    let room = header_room(align);
    // A layout's size, rounded up to its alignment, must not pass isize::MAX.
    let limit = (isize::MAX as usize)
        .saturating_sub(room)
        .saturating_sub(align - 1);
    if size > limit {
        return None;
    }
    // SAFETY: `align` is a power of two (it is a layout's), and the size
    // rounded up to it stays within isize::MAX (checked above).
    Some((
        unsafe { Layout::from_size_align_unchecked(size + room, align) },
        room,
    ))
}

/// # Safety
/// `GlobalAlloc::alloc`'s contract (`layout` has a non-zero size).
#[inline]
unsafe fn sampled_alloc<A: GlobalAlloc>(
    inner: &A,
    layout: Layout,
    zeroed: bool,
    mean: usize,
) -> *mut u8 {
    let Some((outer, room)) = outer(layout, layout.size()) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `outer` is a valid, non-zero-sized layout.
    let base = unsafe {
        if zeroed {
            inner.alloc_zeroed(outer)
        } else {
            inner.alloc(outer)
        }
    };
    if base.is_null() {
        return base;
    }
    // SAFETY: `room < outer.size()`, so `p` is inside the block.
    let p = unsafe { base.add(room) };
    let h = new_header(p as usize, layout.size(), mean);
    // SAFETY: the 8 bytes below `p` are inside the block (`room >= 8`);
    // the write is unaligned-safe.
    unsafe { p.sub(HEADER).cast::<Header>().write_unaligned(h) };
    p
}

/// Counts a new block at `addr` and returns its header: on this thread's
/// fast path unless the block is sampled.
#[inline(always)]
fn new_header(addr: usize, size: usize, mean: usize) -> Header {
    let slow = |sampled: Option<bool>| {
        thread::with_tracking(|t| {
            let sampled = sampled.unwrap_or_else(|| t.sampled(size, mean));
            track_sampled(t, addr, size, mean, sampled)
        })
        .unwrap_or_default()
    };
    match thread::sampled_alloc(size, mean) {
        FastAlloc::Counted { tag } => Header::tagged(tag, COUNTED),
        FastAlloc::Untracked => Header::default(),
        FastAlloc::Sampled => slow(Some(true)),
        FastAlloc::Slow => slow(None),
    }
}

/// Counts the free of the block at `addr` with header `h`. `taken`: its
/// table entry if the caller already took it out (`Some(None)`: it was not
/// there); `None`: a sampled block's entry is taken out here.
#[inline(always)]
fn forget(addr: usize, size: usize, h: Header, taken: Option<Option<Meta>>, mean: usize) {
    if h.flags() & COUNTED == 0 {
        return;
    }
    let sampled = h.flags() & SAMPLED != 0;
    if !sampled && thread::sampled_free(size, h.tag()) {
        return;
    }
    thread::with_tracking(|t| {
        let entry = match taken {
            Some(entry) => entry,
            None if sampled => blocks::remove(t.young(), addr),
            None => None,
        };
        count_sampled_free(t, size, h, entry, mean);
    });
}

/// # Safety
/// `GlobalAlloc::dealloc`'s contract, for a block from [`sampled_alloc`].
#[inline]
unsafe fn sampled_dealloc<A: GlobalAlloc>(inner: &A, ptr: *mut u8, layout: Layout, mean: usize) {
    // SAFETY: `ptr` came from `sampled_alloc` with this layout, which wrote
    // the header below it.
    let h = unsafe { ptr.sub(HEADER).cast::<Header>().read_unaligned() };
    forget(ptr as usize, layout.size(), h, None, mean);
    // The layout was valid when the block was made, so this cannot fail.
    if let Some((outer, room)) = outer(layout, layout.size()) {
        // SAFETY: the inner block starts `room` below `ptr`, with layout `outer`.
        unsafe { inner.dealloc(ptr.sub(room), outer) }
    }
}

/// # Safety
/// `GlobalAlloc::realloc`'s contract, for a block from [`sampled_alloc`].
unsafe fn sampled_realloc<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    mean: usize,
) -> *mut u8 {
    let (Some((old_outer, room)), Some((new_outer, _))) =
        (outer(layout, layout.size()), outer(layout, new_size))
    else {
        return std::ptr::null_mut();
    };
    // SAFETY: `ptr` came from `sampled_alloc` with this layout.
    let h = unsafe { ptr.sub(HEADER).cast::<Header>().read_unaligned() };
    // A sampled block's entry comes out first, as in full mode.
    let entry = if h.flags() & SAMPLED != 0 {
        thread::with_tracking(|t| blocks::remove(t.young(), ptr as usize)).flatten()
    } else {
        None
    };
    // SAFETY: the inner block starts `room` below `ptr`, with layout
    // `old_outer`; the new size keeps the same room and alignment.
    let base = unsafe { inner.realloc(ptr.sub(room), old_outer, new_outer.size()) };
    if base.is_null() {
        if let Some(meta) = entry {
            thread::with_tracking(|t| {
                put_back(t, ptr as usize, meta, |t, _, m| forget_sampled(t, m, mean))
            });
        }
        return base;
    }
    // SAFETY: `room < new_outer.size()`, so `p` is inside the new block.
    let p = unsafe { base.add(room) };
    forget(ptr as usize, layout.size(), h, Some(entry), mean);
    let new = new_header(p as usize, new_size, mean);
    // SAFETY: the 8 bytes below `p` are inside the new block.
    unsafe { p.sub(HEADER).cast::<Header>().write_unaligned(new) };
    p
}

/// Sampling mode, slow path: counts a new block (`sampled` or not) and says
/// what its header holds.
fn track_sampled(t: &Tracking<'_>, addr: usize, size: usize, mean: usize, sampled: bool) -> Header {
    t.total_alloc(size);
    let site = if sampled {
        t.callsite()
    } else {
        SiteRef {
            id: OTHER,
            site: None,
        }
    };
    let run = t.current_run();
    let (scope, run_slot, run_gen) = if run.is_null() {
        (0, 0, 0)
    } else {
        runs::record_alloc(run, site.id, size)
    };
    if scope != 0 {
        t.scope_alloc(scope, size);
    }
    let mut flags = COUNTED;
    if sampled {
        // The header carries the run tag; the table entry needs none.
        let meta = Meta {
            size,
            site: site.id,
            scope,
            run_slot: 0,
            run_gen: 0,
        };
        match blocks::insert(t.young(), addr, meta) {
            Inserted::New => flags |= SAMPLED,
            Inserted::Replaced(_, stale) => {
                forget_sampled(t, &stale, mean);
                flags |= SAMPLED;
            }
            Inserted::Dropped => process::note_untracked(),
        }
        if flags & SAMPLED != 0 {
            let (units, bytes) = sample::weight(size, mean);
            t.site_alloc(site, units, bytes);
        }
    }
    Header::tagged(run_tag(run_slot, run_gen, scope), flags)
}

/// Sampling mode, slow path: a counted block is freed (`entry`: its table
/// entry, if it was sampled and found).
fn count_sampled_free(t: &Tracking<'_>, size: usize, h: Header, entry: Option<Meta>, mean: usize) {
    t.total_free(size);
    let site = entry.map_or(OTHER, |m| m.site);
    if let Some(meta) = entry {
        forget_sampled(t, &meta, mean);
    }
    if h.scope() != 0 {
        t.scope_free(h.scope(), size);
    }
    if h.run_slot() != 0 {
        runs::record_free(h.run_slot(), h.run_gen(), site, size, t.token());
    }
}

/// Takes a sampled block's weight off its call-site.
fn forget_sampled(t: &Tracking<'_>, meta: &Meta, mean: usize) {
    let (units, bytes) = sample::weight(meta.size, mean);
    t.site_free(meta.site, units, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_gives_back_what_it_was_made_of() {
        let gen = runs::GEN_MASK;
        let h = Header::tagged(run_tag(65_535, gen, 65_534), COUNTED | SAMPLED);
        assert_eq!(
            (h.run_slot(), h.run_gen(), h.scope(), h.flags()),
            (65_535, gen, 65_534, 3)
        );
        assert_eq!(h.tag(), run_tag(65_535, gen, 65_534));
        let h = Header::tagged(run_tag(1, 1, 0), COUNTED);
        assert_eq!(
            (h.run_slot(), h.run_gen(), h.scope(), h.flags()),
            (1, 1, 0, 1)
        );
        assert_eq!(HEADER, 8);
    }
}
