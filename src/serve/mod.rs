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
pub(crate) mod live;
pub(crate) mod signal;
pub(crate) mod timeline;

pub use exit::report_on_exit;
pub use live::{serve_report, ReportServer};
pub use signal::report_on_signal;

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
