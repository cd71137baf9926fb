//! The allocator wrapper: the hot path, all of it in this file and
//! [`crate::thread`].
//!
//! Every `alloc`, `alloc_zeroed`, `realloc` and `dealloc` goes to the inner
//! allocator and is then recorded: call-site capture, the block table, the
//! thread's counters and, inside a scope, the run's counts. Nothing here may
//! panic, allocate through the global allocator, or take a lock that could;
//! a thread already inside the tracker (its re-entrancy flag up) passes
//! straight through, and so does a free of a block the tracker never saw.

use crate::blocks::{self, Inserted, Meta};
use crate::scope;
use crate::thread::{self, SiteRef, Tracking};
use std::alloc::{GlobalAlloc, Layout, System};

/// A global allocator that counts live blocks per call-site and per scope.
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();
/// ```
pub struct LeakTracker<A: GlobalAlloc = System> {
    inner: A,
}

impl LeakTracker<System> {
    /// Tracks on top of the system allocator.
    pub const fn system() -> LeakTracker<System> {
        LeakTracker { inner: System }
    }
}

impl<A: GlobalAlloc> LeakTracker<A> {
    /// Tracks on top of `inner` (jemalloc, mimalloc, …).
    pub const fn new(inner: A) -> LeakTracker<A> {
        LeakTracker { inner }
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

// SAFETY: every method returns what the inner allocator returned, with the
// same layout contract; tracking only reads the block's address and size.
unsafe impl<A: GlobalAlloc> GlobalAlloc for LeakTracker<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            on_alloc(p, layout.size());
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        if !p.is_null() {
            on_alloc(p, layout.size());
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Forget the block before the inner allocator may hand its address to
        // another thread, whose insert must not meet our entry.
        on_free(ptr);
        // SAFETY: forwarded contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Take the old entry out first, for the same reason as in `dealloc`.
        let old = thread::with_tracking(|t| blocks::remove(t.young(), ptr as usize)).flatten();
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        thread::with_tracking(|t| {
            if p.is_null() {
                // The old block is still there, unchanged: put its entry back
                // (it was never counted as freed, so it is not counted again).
                if let Some(meta) = old {
                    match blocks::insert(t.young(), ptr as usize, meta) {
                        Inserted::New => {}
                        Inserted::Replaced(gone) => count_free(t, &gone),
                        Inserted::Dropped => {
                            crate::exit::note_untracked();
                            count_free(t, &meta);
                        }
                    }
                }
                return;
            }
            // As valgrind counts it: the old block is freed, a new one allocated here.
            if let Some(meta) = old {
                count_free(t, &meta);
            }
            track(t, p as usize, new_size);
        });
        p
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
            count_free(t, &meta);
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
        scope::record_alloc(run, site.id, size)
    };
    let meta = Meta {
        size,
        site: site.id,
        scope,
        run_slot,
        run_gen,
    };
    put(t, addr, meta, site);
}

/// Enters `meta` (of call-site `site`) in the table and the counters.
#[inline]
fn put(t: &Tracking<'_>, addr: usize, meta: Meta, site: SiteRef) {
    match blocks::insert(t.young(), addr, meta) {
        Inserted::New => {}
        Inserted::Replaced(stale) => count_free(t, &stale),
        Inserted::Dropped => {
            crate::exit::note_untracked();
            return;
        }
    }
    t.count_alloc(site, meta.size);
}

#[inline]
fn count_free(t: &Tracking<'_>, meta: &Meta) {
    t.count_free(meta.site, meta.size);
    if meta.run_slot != 0 {
        scope::record_free(meta.run_slot, meta.run_gen, meta.site, meta.size, t.token());
    }
}
