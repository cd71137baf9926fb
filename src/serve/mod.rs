//! The serve layer: the process's edges.
//!
//! Configuration from the environment, read when the tracker starts
//! ([`env`](mod@env)); the report at exit and the gate's exit status ([`exit`]); and
//! the report of a running program, over HTTP on loopback ([`live`]) or on
//! a signal, and before a fatal signal ends it ([`signal`]); the heap over
//! time ([`timeline`]). Everything here runs outside the allocation path, on the
//! thread that exits or on threads of its own, and never panics the host.

pub(crate) mod env;
pub(crate) mod exit;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub(crate) mod live;
pub(crate) mod signal;
pub(crate) mod timeline;

pub use exit::report_on_exit;
pub use live::{metrics_text, openmetrics_text, serve_report, ReportServer};
pub use signal::report_on_signal;

use crate::alloc::thread;
use std::ffi::CStr;

/// Waits, on one of leakscope's own threads, for the tracker to start (a
/// second at most): whether it did. A copy of leakscope that has not
/// started by then is not the program's tracker (a program that links
/// leakscope without the allocator line, as the `leakscope` command does).
pub(crate) fn tracker_started() -> bool {
    let since = std::time::Instant::now();
    while !crate::alloc::process::started() {
        if since.elapsed() > std::time::Duration::from_secs(1) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

/// One of leakscope's own threads (the report signal's, the timeline's, the
/// live server's), made by [`spawn_own`]. Dropped unjoined, it is detached.
#[derive(Debug)]
pub(crate) struct OwnThread(Option<libc::pthread_t>);

impl OwnThread {
    /// Waits for the thread to end.
    pub(crate) fn join(mut self) {
        if let Some(t) = self.0.take() {
            // SAFETY: a joinable thread of ours, joined once (taken).
            unsafe { libc::pthread_join(t, std::ptr::null_mut()) };
        }
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            // SAFETY: a joinable thread of ours, never joined.
            unsafe { libc::pthread_detach(t) };
        }
    }
}

/// Starts `f` on a thread of leakscope's own, named `name` (15 bytes at
/// most), with the standard signals blocked ([`with_signals_blocked`]),
/// its allocations untracked and marked as ours for the leak check
/// ([`mark_own_thread`](crate::check::stop::mark_own_thread)) from its
/// first instruction. A raw pthread, not `std::thread`: std runs its spawn
/// hooks in the new thread before the closure, and their thread-local
/// registration is a `malloc` glibc makes, counted as the program's block
/// for as long as the thread lives. A panic in `f` ends the thread only.
pub(crate) fn spawn_own<F: FnOnce() + Send + 'static>(
    name: &CStr,
    f: F,
) -> std::io::Result<OwnThread> {
    extern "C" fn start<F: FnOnce()>(arg: *mut libc::c_void) -> *mut libc::c_void {
        thread::untracked(|| {
            crate::check::stop::mark_own_thread();
            // SAFETY: `arg` is the box `spawn_own` leaked for this thread alone.
            let f = unsafe { Box::from_raw(arg.cast::<F>()) };
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        });
        std::ptr::null_mut()
    }
    let arg = thread::untracked(|| Box::into_raw(Box::new(f)));
    let mut t: libc::pthread_t = 0;
    // SAFETY: a joinable thread running `start::<F>` with the box, which
    // it owns from here; on failure the box is ours to take back.
    // (glibc allocates the new thread's TLS here: untracked too.)
    let rc = thread::untracked(|| unsafe {
        with_signals_blocked(|| {
            libc::pthread_create(&mut t, std::ptr::null(), start::<F>, arg.cast())
        })
    });
    if rc != 0 {
        // SAFETY: the thread was not made: the box is still ours.
        thread::untracked(|| drop(unsafe { Box::from_raw(arg) }));
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: a thread we just made; a name of 15 bytes or less.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    unsafe {
        libc::pthread_setname_np(t, name.as_ptr())
    };
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = name;
    Ok(OwnThread(Some(t)))
}

/// Runs `spawn`, which makes one of leakscope's threads, with every standard
/// signal but the faults blocked, so that the thread starts with them
/// blocked (a thread inherits its maker's mask) and a signal sent to the
/// process is never delivered to it: the program's threads get it as they
/// would without us (a program that blocks SIGTERM to read it from a
/// signalfd, say, still reads it). The caller's mask is put back after.
/// Real-time signals stay open: the leak check stops threads with one.
pub(crate) fn with_signals_blocked<R>(spawn: impl FnOnce() -> R) -> R {
    // SAFETY: a sigset_t filled by sigemptyset/sigaddset, and the calling
    // thread's mask, saved and restored; none of these fail with these
    // arguments.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in 1..32 {
            let fault = [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL];
            if !fault.contains(&sig) && sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaddset(&mut set, sig);
            }
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = spawn();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}
