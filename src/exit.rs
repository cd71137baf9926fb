//! Configuration from the environment, the report at exit, and `fork`.
//!
//! Owns `LEAKSCOPE_REPORT`, `LEAKSCOPE_REPORT_SIGNAL`, `LEAKSCOPE_UNWIND`,
//! `LEAKSCOPE_LEAK_CHECK` and `LEAKSCOPE_ERROR_EXITCODE` (`LEAKSCOPE_SAMPLE_BYTES` is
//! read by [`crate::sample`] before the first block is made, and a bad value
//! is warned about here), the `atexit` hook that writes the report (also
//! after `std::process::exit`), and the `fork` hooks
//! that keep the child from inheriting a held lock. [`init`] runs once, inside
//! the first allocation, with the thread's re-entrancy flag up: it may allocate
//! (untracked) but must not block on anything the allocation path holds.
//! Nothing here panics the host program: bad input and write errors are one
//! line on stderr.

use crate::{blocks, callsite, report, scope, thread, unwind};
use std::ffi::CStr;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// Where the exit report goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    Stderr,
    Stdout,
    /// JSON document; `%p` in the path becomes the process id.
    Json(String),
    /// Text report; `%p` in the path becomes the process id.
    Text(String),
}

impl Dest {
    /// Parses a `LEAKSCOPE_REPORT` value.
    pub(crate) fn parse(value: &str) -> Result<Dest, String> {
        match value.trim() {
            "" => Err(
                "LEAKSCOPE_REPORT is empty: expected stderr, stdout, <path>.json or <path>"
                    .to_owned(),
            ),
            "stderr" => Ok(Dest::Stderr),
            "stdout" => Ok(Dest::Stdout),
            v if v.ends_with(".json") => Ok(Dest::Json(v.to_owned())),
            v => Ok(Dest::Text(v.to_owned())),
        }
    }
}

static DEST: parking_lot::Mutex<Option<Dest>> = parking_lot::const_mutex(None);
static HOOKED: AtomicBool = AtomicBool::new(false);
static REPORTED: AtomicBool = AtomicBool::new(false);
static UNTRACKED: AtomicU64 = AtomicU64::new(0);
/// `LEAKSCOPE_LEAK_CHECK` (on unless `no`).
static LEAK_CHECK: AtomicBool = AtomicBool::new(true);
/// `LEAKSCOPE_ERROR_EXITCODE` (0: not set).
static ERROR_EXITCODE: AtomicI32 = AtomicI32::new(0);

/// Parses `LEAKSCOPE_LEAK_CHECK`.
pub(crate) fn parse_leak_check(value: &str) -> Result<bool, String> {
    match value.trim() {
        "" | "yes" | "full" | "1" | "on" | "true" => Ok(true),
        "no" | "0" | "off" | "false" => Ok(false),
        v => Err(format!(
            "LEAKSCOPE_LEAK_CHECK={v:?} is not yes or no; the leak check stays on"
        )),
    }
}

/// Parses `LEAKSCOPE_ERROR_EXITCODE`: an exit status from 1 to 255.
pub(crate) fn parse_exitcode(value: &str) -> Result<i32, String> {
    match value.trim().parse::<i32>() {
        Ok(n) if (1..=255).contains(&n) => Ok(n),
        _ => Err(format!(
            "LEAKSCOPE_ERROR_EXITCODE={value:?} is not an exit status from 1 to 255; ignoring it"
        )),
    }
}

/// A block went untracked for lack of table memory.
pub(crate) fn note_untracked() {
    UNTRACKED.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn untracked_count() -> u64 {
    UNTRACKED.load(Ordering::Relaxed)
}

/// One line on stderr, straight to the file descriptor: no lock, no buffer.
pub(crate) fn warn(msg: &str) {
    let line = format!("leakscope: {msg}\n");
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writes from a valid buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            break;
        }
        rest = rest.get(n as usize..).unwrap_or(&[]);
    }
}

fn env(name: &CStr) -> Option<String> {
    // SAFETY: getenv takes a NUL-terminated name and returns null or a
    // NUL-terminated string, which is copied at once.
    unsafe {
        let p = libc::getenv(name.as_ptr());
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// Reads the environment and installs the hooks. Runs once, from the first
/// allocation, with this thread's allocations untracked.
pub(crate) fn init() {
    match env(c"LEAKSCOPE_UNWIND").as_deref().map(str::trim) {
        None | Some("") | Some("fp") => {}
        Some("dwarf") => unwind::set_dwarf(true),
        Some(other) => warn(&format!(
            "LEAKSCOPE_UNWIND={other:?} is not fp or dwarf; using frame pointers"
        )),
    }
    if crate::sample::bad_value() {
        let value = env(c"LEAKSCOPE_SAMPLE_BYTES").unwrap_or_default();
        warn(&format!(
            "LEAKSCOPE_SAMPLE_BYTES={value:?} is not a byte count (like 524288 or 512k); ignoring it"
        ));
    }
    if let Some(value) = env(c"LEAKSCOPE_LEAK_CHECK") {
        match parse_leak_check(&value) {
            Ok(on) => LEAK_CHECK.store(on, Ordering::Relaxed),
            Err(msg) => warn(&msg),
        }
    }
    if let Some(value) = env(c"LEAKSCOPE_ERROR_EXITCODE") {
        match parse_exitcode(&value) {
            Ok(n) => {
                ERROR_EXITCODE.store(n, Ordering::Relaxed);
                hook_exit();
            }
            Err(msg) => warn(&msg),
        }
    }
    if let Some(value) = env(c"LEAKSCOPE_REPORT") {
        match Dest::parse(&value) {
            Ok(dest) => {
                *DEST.lock() = Some(dest);
                hook_exit();
                report_signal_from_env();
            }
            Err(msg) => warn(&format!("{msg}; no report will be written")),
        }
    }
    // SAFETY: the handlers are `extern "C"` functions that only take and release
    // the tracker's spin locks (the child's also settles young-block entries).
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork_child)) };
}

/// With `LEAKSCOPE_REPORT` set: the report is also written on
/// `LEAKSCOPE_REPORT_SIGNAL` (SIGUSR2 unless it says otherwise or `none`).
fn report_signal_from_env() {
    let signal = match env(c"LEAKSCOPE_REPORT_SIGNAL") {
        None => Some(libc::SIGUSR2),
        Some(v) => match crate::live::parse_signal(&v) {
            Ok(s) => s,
            Err(msg) => {
                warn(&format!("{msg}; using SIGUSR2"));
                Some(libc::SIGUSR2)
            }
        },
    };
    if let Some(signal) = signal {
        if let Err(e) = crate::live::install(signal) {
            warn(&format!(
                "no report on signal {signal}: {e} (LEAKSCOPE_REPORT_SIGNAL picks another, or none)"
            ));
        }
    }
}

/// Writes the report when the process exits (text to stderr unless
/// `LEAKSCOPE_REPORT` says where), also after `std::process::exit`.
pub fn report_on_exit() {
    thread::untracked(|| {
        DEST.lock().get_or_insert(Dest::Stderr);
        hook_exit();
    });
}

fn hook_exit() {
    if !HOOKED.swap(true, Ordering::AcqRel) {
        // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds.
        if unsafe { libc::atexit(at_exit) } != 0 {
            warn("could not register the exit report (atexit failed)");
        }
    }
}

extern "C" fn at_exit() {
    if REPORTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let done = std::panic::catch_unwind(|| thread::untracked(write_exit_report));
    if done.is_err() {
        warn("the exit report failed");
    }
}

fn write_exit_report() {
    let dest = dest();
    let code = ERROR_EXITCODE.load(Ordering::Relaxed);
    if dest.is_none() && code == 0 {
        return;
    }
    let report = report_now();
    let leaks = report.leak_check.as_ref().filter(|lc| lc.has_leaks());
    match dest {
        Some(dest) => write_report(dest, &report),
        // No report asked for: one line says why the status is what it is.
        None => {
            if let Some(lc) = leaks {
                warn(&format!(
                    "{} bytes in {} blocks definitely lost, {} bytes in {} blocks indirectly lost (LEAKSCOPE_REPORT=stderr shows where); exit status {code}",
                    lc.definitely_lost.bytes,
                    lc.definitely_lost.blocks,
                    lc.indirectly_lost.bytes,
                    lc.indirectly_lost.blocks
                ));
            }
        }
    }
    if code != 0 && leaks.is_some() {
        // As valgrind's --error-exitcode: the status says leaks were found.
        let _ = std::io::stdout().flush();
        // SAFETY: fflush(NULL) flushes every C stream; _exit ends the process
        // without running the remaining exit handlers again.
        unsafe {
            libc::fflush(std::ptr::null_mut());
            libc::_exit(code);
        }
    }
}

/// The report, with the full leak check unless `LEAKSCOPE_LEAK_CHECK=no`
/// (or sampling mode).
pub(crate) fn report_now() -> report::Report {
    if LEAK_CHECK.load(Ordering::Relaxed) && crate::sample::current() == 0 {
        crate::leak_check()
    } else {
        report::snapshot()
    }
}

/// Where `LEAKSCOPE_REPORT` (or `report_on_exit`) sends the report.
pub(crate) fn dest() -> Option<Dest> {
    DEST.lock().clone()
}

pub(crate) fn write_report(dest: Dest, report: &report::Report) {
    let pid = std::process::id().to_string();
    let (path, body) = match dest {
        Dest::Stderr => {
            let _ = std::io::stderr().write_all(report.to_string().as_bytes());
            return;
        }
        Dest::Stdout => {
            let mut out = std::io::stdout();
            let _ = out
                .write_all(report.to_string().as_bytes())
                .and_then(|_| out.flush());
            return;
        }
        Dest::Json(path) => (path.replace("%p", &pid), report.to_json()),
        Dest::Text(path) => (path.replace("%p", &pid), report.to_string()),
    };
    if let Err(e) = std::fs::write(&path, body) {
        warn(&format!("cannot write the report to {path}: {e}"));
    }
}

extern "C" fn before_fork() {
    // Locks are taken in the order the allocation path nests them.
    scope::lock_for_fork();
    callsite::lock_for_fork();
    blocks::lock_for_fork();
    crate::sync::lock_for_fork();
}

extern "C" fn after_fork_child() {
    after_fork();
    blocks::settle_after_fork();
}

extern "C" fn after_fork() {
    // SAFETY: `before_fork` took exactly these locks in this process (or in the
    // parent this child was forked from), and nothing used them since.
    unsafe {
        crate::sync::unlock_after_fork();
        blocks::unlock_after_fork();
        callsite::unlock_after_fork();
        scope::unlock_after_fork();
    }
}

#[cfg(test)]
mod tests {
    use super::Dest;

    #[test]
    fn parses_report_destinations() {
        assert_eq!(Dest::parse("stderr"), Ok(Dest::Stderr));
        assert_eq!(Dest::parse(" stdout "), Ok(Dest::Stdout));
        assert_eq!(
            Dest::parse("/tmp/r-%p.json"),
            Ok(Dest::Json("/tmp/r-%p.json".into()))
        );
        assert_eq!(Dest::parse("leaks.txt"), Ok(Dest::Text("leaks.txt".into())));
        assert!(Dest::parse("  ").is_err());
    }
}
