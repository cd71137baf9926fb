//! Reports on signals: the report signal (`kill -USR2`), and the report a
//! process killed by SIGTERM, SIGINT, SIGQUIT or SIGHUP writes before it dies.
//!
//! Owns the handlers, the pipe they write to and the thread that reads it.
//! A handler only writes one byte to the pipe (the report signal's `!`, or
//! the number of the fatal signal): the thread builds and writes the report,
//! outside any signal handler and any allocation, with its allocations
//! untracked. A fatal signal's report is written as at exit, then the signal
//! is raised again with its default action, so the process dies by it and a
//! shell sees the same status as without leakscope.
//!
//! leakscope is a guest: it takes a signal only where the program left the
//! default action, and its handlers stand aside when the program installs
//! one of its own later and chains to the one before (tokio's `ctrl_c`,
//! signal-hook): a handler that is no longer the installed one does nothing.

use crate::alloc::thread;
use crate::check::roots::Caller;
use crate::check::stop;
use crate::report::warn::warn;
use crate::serve::env::Dest;
use crate::serve::exit;
use crate::serve::live::Previous;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// The write end of the pipe the handlers write to (-1: none yet).
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// The process whose thread reads the pipe. A child `fork` made inherits
/// the handlers and the pipe but not the thread: a byte it wrote would ask
/// its parent's thread for the parent's report, or the parent's death.
static WATCH_PID: AtomicI32 = AtomicI32::new(0);

/// The byte that asks for a report; a fatal signal writes its number (< 32).
const REPORT: u8 = b'!';

/// The signals whose default action ends the process and that get a report
/// first, as valgrind writes its leak report when one kills the program.
pub(crate) const FATAL: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGHUP];

/// Threads running one of these handlers now. The report waits until none
/// is: a handler's frames (and the kernel's signal frame under them) lie
/// below the frames the signal interrupted, over dead stack, and a check
/// that stopped a thread there would read what they left unwritten of that
/// dead stack as roots (a vector lost in a function that had returned was
/// called still reachable, about one SIGTERM in ten).
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// What a handler found to do.
enum Notified {
    /// The byte is written: this process's thread acts on it.
    Written,
    /// `sig`'s installed action is no longer this handler (a later handler
    /// chained to this one: it decides).
    NotOurs,
    /// A child made by `fork`, whose parent's thread reads the pipe.
    Forked,
}

/// Writes `byte` to the pipe, if this process's thread reads it and `sig`'s
/// installed action is still `handler`. Async-signal-safe: errno is saved
/// and put back; write(2) on a pipe never blocks here (a full pipe means a
/// report is pending anyway).
fn notify(sig: i32, handler: usize, byte: u8) -> Notified {
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    // SAFETY: errno is this thread's; the write is from a one-byte buffer.
    let done = unsafe {
        let errno = *libc::__errno_location();
        let fd = PIPE_WRITE.load(Ordering::Relaxed);
        let done = if !stop::current_action(sig).is_ok_and(|a| a == handler) {
            Notified::NotOurs
        } else if fd < 0 || libc::getpid() != WATCH_PID.load(Ordering::Relaxed) {
            Notified::Forked
        } else {
            libc::write(fd, [byte].as_ptr().cast(), 1);
            Notified::Written
        };
        *libc::__errno_location() = errno;
        done
    };
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    done
}

/// Waits (a second at most) until no thread runs a handler of ours, so
/// that the report's check finds every thread in the program's own frames
/// (see [`IN_HANDLER`]). What is left is the handler's return itself, a
/// few instructions: a stop signal sent then is taken once the kernel has
/// put the interrupted frames back, unless the thread is preempted there.
fn wait_for_handlers() {
    for _ in 0..100_000 {
        if IN_HANDLER.load(Ordering::SeqCst) == 0 {
            return;
        }
        // SAFETY: no preconditions.
        unsafe { libc::sched_yield() };
    }
}

extern "C" fn on_report_signal(sig: libc::c_int) {
    notify(sig, on_report_signal as *const () as usize, REPORT);
}

/// A fatal signal: the thread it interrupted goes no further in the
/// program's code (without us the process would be gone), but waits here,
/// parked, while the report is written and the signal then ends the
/// process: ten seconds at most, and not at all inside the tracker or the
/// Rust allocator (see [`stop::park_until_death`]). A forked child, which
/// has no thread to write its report, dies by the signal at once, as
/// without us.
extern "C" fn on_fatal_signal(
    sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    match notify(sig, on_fatal_signal as *const () as usize, sig as u8) {
        Notified::Written if !thread::inside_allocator() => {
            stop::park_until_death(ctx as usize, 10)
        }
        Notified::Written => {}
        Notified::NotOurs => {}
        // SAFETY: the default action, and the signal again: it stays
        // pending (blocked in its handler) until this handler returns.
        Notified::Forked => unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        },
    }
}

/// Writes the report each time the process gets `signal` (`libc::SIGUSR2`,
/// say): where `LEAKSCOPE_REPORT` says, or to stderr; with the full leak
/// check unless `LEAKSCOPE_LEAK_CHECK=no`. Fails, changing nothing, if the
/// program already handles that signal. With `LEAKSCOPE_REPORT` set, this
/// is done for `LEAKSCOPE_REPORT_SIGNAL` (SIGUSR2 unless it says otherwise)
/// without any code.
pub fn report_on_signal(signal: i32) -> std::io::Result<()> {
    thread::untracked(|| install(signal))
}

/// Installs the report signal's handler (and the pipe and thread, the first
/// time). Makes no Rust allocation (it runs inside the first allocation
/// when `LEAKSCOPE_REPORT` asks for it).
pub(crate) fn install(signal: i32) -> std::io::Result<()> {
    take(signal, on_report_signal as *const () as usize, 0)
}

/// With `LEAKSCOPE_REPORT` set: the fatal signals that still have their
/// default action get a report before the process dies. Ignored signals
/// (`nohup`, a background job's SIGINT) and the program's own handlers are
/// left alone.
pub(crate) fn install_fatal() {
    let handler = on_fatal_signal as *const () as usize;
    for sig in FATAL {
        if stop::current_action(sig).is_ok_and(|a| a == libc::SIG_DFL) {
            if let Err(e) = take(sig, handler, libc::SA_SIGINFO) {
                warn(&format!(
                    "no report when signal {sig} ends the program: {e}"
                ));
            }
        }
    }
}

/// Makes `handler` (of the signature `flags` says) the action of `signal`
/// unless the program has one (an `AlreadyExists` error), starting the
/// pipe and its thread the first time.
fn take(signal: i32, handler: usize, flags: i32) -> std::io::Result<()> {
    if stop::signal_owner(signal, handler)? {
        return Ok(());
    }
    if PIPE_WRITE.load(Ordering::Acquire) < 0 {
        start_watch()?;
    }
    stop::set_handler(signal, handler, flags, false)
}

/// The pipe and the thread that reads it.
fn start_watch() -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors; the write end never blocks.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) };
    let read = fds[0];
    if let Err(e) = crate::serve::spawn_own(c"leakscope-sig", move || watch(read)) {
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return Err(e);
    }
    // SAFETY: no preconditions.
    WATCH_PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    PIPE_WRITE.store(fds[1], Ordering::Release);
    Ok(())
}

/// Parses `LEAKSCOPE_REPORT_SIGNAL`: `none`, a name (`USR2`, `SIGUSR1`) or
/// a number. `Ok(None)`: no signal.
pub(crate) fn parse_signal(value: &str) -> Result<Option<i32>, String> {
    let v = value.trim();
    let name = v.strip_prefix("SIG").unwrap_or(v);
    match name {
        "none" | "NONE" | "" => Ok(None),
        "USR1" => Ok(Some(libc::SIGUSR1)),
        "USR2" => Ok(Some(libc::SIGUSR2)),
        "HUP" => Ok(Some(libc::SIGHUP)),
        n => match n.parse::<i32>() {
            Ok(s) if s > 0 && s <= libc::SIGRTMAX() && s != libc::SIGKILL && s != libc::SIGSTOP => {
                Ok(Some(s))
            }
            _ => Err(format!(
                "LEAKSCOPE_REPORT_SIGNAL={value:?} is not a signal (USR2, USR1, HUP, a number, or none)"
            )),
        },
    }
}

/// The signal thread: a report per byte from a handler; after a fatal
/// signal's report, that signal again, with its default action.
fn watch(fd: i32) {
    let mut previous = Previous::default();
    loop {
        let mut bytes = [0u8; 64];
        // SAFETY: reads into a buffer of ours.
        let n = unsafe { libc::read(fd, bytes.as_mut_ptr().cast(), bytes.len()) };
        if n == 0 {
            break;
        }
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let got = bytes.get(..n as usize).unwrap_or(&[]);
        wait_for_handlers();
        if let Some(&sig) = got.iter().find(|&&b| b != REPORT) {
            die_by(sig as i32);
        }
        // A panic in one report must not end the thread. (After one,
        // `previous` is at worst the report before: still a valid base.)
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut report = exit::report_now(Caller::OWN_THREAD);
            previous.mark(&mut report);
            exit::write_report(&exit::dest().unwrap_or_else(|| vec![Dest::Stderr]), &report);
        }));
    }
}

/// Writes the exit report (once: not again at exit), then ends the process
/// by `sig` with its default action, as it would have died without us.
fn die_by(sig: i32) {
    let _ = std::panic::catch_unwind(|| thread::untracked(|| exit::report_before_death(sig)));
    exit::die(sig);
}

#[cfg(test)]
mod tests {
    use super::parse_signal;

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(parse_signal("USR2"), Ok(Some(libc::SIGUSR2)));
        assert_eq!(parse_signal("SIGUSR1"), Ok(Some(libc::SIGUSR1)));
        assert_eq!(parse_signal(" 10 "), Ok(Some(10)));
        assert_eq!(parse_signal("none"), Ok(None));
        assert!(parse_signal("9").is_err());
        assert!(parse_signal("USR3").is_err());
    }
}
