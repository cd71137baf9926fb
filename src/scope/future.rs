//! Async scopes: a future whose every poll runs inside one scope run.
//!
//! Owns [`Scoped`], [`scoped`], [`scoped_with`] and [`TrackScopeExt`], made
//! the way tracing's `Instrumented` is: the run is entered on every poll and
//! on drop, on whichever thread polls, and left when the poll returns (also
//! when it panics).

use crate::alloc::runs::{self, RunRecord};
use crate::alloc::thread;
use crate::scope::guard::{close_run, open_run};
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

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
    /// `scoped(name, self)`: one run of scope `name` for the blocks allocated while it is polled.
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
            runs::enter(rec);
        }
        Entered(rec)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(rec) = self.0 {
            runs::leave(rec);
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
