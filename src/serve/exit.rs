//! The report at exit and the CI gate's exit status.
//!
//! Owns where the report goes (`LEAKSCOPE_REPORT`, or [`report_on_exit`]),
//! the `atexit` hook that writes it (also after `std::process::exit`),
//! whether it includes the full leak check, and `LEAKSCOPE_ERROR_EXITCODE`'s
//! exit status when something is lost or a scope keeps growing. Nothing
//! here panics the host program: write errors are one line on stderr.

use crate::alloc::meta::{ForkSafeLock, FORK_RANK_SERVE};
use crate::alloc::thread;
use crate::check::classify::leak_check_then;
use crate::check::roots::Caller;
use crate::check::suppress;
use crate::report::collect::{scopes_from_counters, snapshot_of, Sites};
use crate::report::model::{Report, ScopeStats};
use crate::report::text::{SignedPerRun, Thousands};
use crate::report::warn::warn;
use crate::serve::env::{Dest, Format};
use crate::serve::timeline;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// Where the report goes; a lock the fork handlers hold across `fork`.
static DEST: ForkSafeLock<Option<Vec<Dest>>> = ForkSafeLock::new(FORK_RANK_SERVE, None);
static HOOKED: AtomicBool = AtomicBool::new(false);
static REPORTED: AtomicBool = AtomicBool::new(false);
/// `LEAKSCOPE_LEAK_CHECK` (on unless `no`).
static LEAK_CHECK: AtomicBool = AtomicBool::new(true);
/// `LEAKSCOPE_ERROR_EXITCODE` (0: not set).
static ERROR_EXITCODE: AtomicI32 = AtomicI32::new(0);
/// `LEAKSCOPE_REPORT_ALL_SITES=1`: reports list every call-site seen.
static ALL_SITES: AtomicBool = AtomicBool::new(false);
/// A destination is a DHAT file: reports hold every call-site seen (the
/// other renderings still show theirs).
static DHAT_DEST: AtomicBool = AtomicBool::new(false);

/// `LEAKSCOPE_REPORT`: the report goes to each of `dests` at exit.
pub(crate) fn set_dest(dests: Vec<Dest>) {
    // DHAT's view is of every program point, freed or not.
    if dests
        .iter()
        .any(|d| matches!(d, Dest::File(_, Format::Dhat)))
    {
        DHAT_DEST.store(true, Ordering::Relaxed);
    }
    *DEST.lock() = Some(dests);
    hook_exit();
}

/// `LEAKSCOPE_LEAK_CHECK`: whether the exit report runs the full leak check.
pub(crate) fn set_leak_check(on: bool) {
    LEAK_CHECK.store(on, Ordering::Relaxed);
}

/// `LEAKSCOPE_REPORT_ALL_SITES`: whether reports list every call-site seen.
pub(crate) fn set_all_sites(on: bool) {
    ALL_SITES.store(on, Ordering::Relaxed);
}

/// `LEAKSCOPE_ERROR_EXITCODE`: the exit status when something is lost.
pub(crate) fn set_error_exitcode(code: i32) {
    ERROR_EXITCODE.store(code, Ordering::Relaxed);
    hook_exit();
}

/// Writes the report when the process exits (text to stderr unless
/// `LEAKSCOPE_REPORT` says where), also after `std::process::exit`.
pub fn report_on_exit() {
    thread::untracked(|| {
        DEST.lock().get_or_insert_with(|| vec![Dest::Stderr]);
        hook_exit();
    });
}

extern "C" {
    /// glibc's (and every C++ ABI's) registration of exit handlers.
    fn __cxa_atexit(
        f: extern "C" fn(*mut libc::c_void),
        arg: *mut libc::c_void,
        dso: *mut libc::c_void,
    ) -> libc::c_int;
}

/// Registers the exit report, once. With no object handle, not `atexit`'s
/// (which passes the calling object's): a preloaded copy registers before
/// the loader's own exit handler, and `exit` would then run a handler tied
/// to this shared object from the loader's, inside its destructors'
/// frames (some with no CFI), and the report could not find the frame that
/// called `exit`, below which the stack is not the program's. Unbound, it
/// runs from `exit` itself, as it does in a program that links leakscope.
fn hook_exit() {
    if !HOOKED.swap(true, Ordering::AcqRel) {
        // SAFETY: `at_exit` is an `extern "C"` function that never unwinds.
        if unsafe { __cxa_atexit(at_exit, std::ptr::null_mut(), std::ptr::null_mut()) } != 0 {
            warn("could not register the exit report (atexit failed)");
        }
    }
}

extern "C" fn at_exit(_: *mut libc::c_void) {
    let handler = Caller::here();
    if REPORTED.swap(true, Ordering::AcqRel) {
        // A fatal signal's report is being written: the program would have
        // died by the signal before it got here; it does once the report
        // is out.
        wait_for_the_report();
    } else {
        let caller = Caller::of_exit(handler);
        let done = std::panic::catch_unwind(|| thread::untracked(|| write_exit_report(caller)));
        if done.is_err() {
            warn("the exit report failed");
        }
        REPORT_DONE.store(true, Ordering::Release);
    }
    // A fatal signal came before the exit, or while its report was
    // written: it ends the process, as it would have without leakscope.
    match SIGNALLED.load(Ordering::Acquire) {
        0 => {}
        sig => die(sig),
    }
}

/// Fatal signal `sig` is ending the process: the exit report, written now
/// (once: the exit hook then writes nothing), without the gate's exit
/// status (the process dies by the signal).
pub(crate) fn report_before_death(sig: i32) {
    SIGNALLED.store(sig, Ordering::Release);
    if REPORTED.swap(true, Ordering::AcqRel) {
        // The program is exiting, and writing the exit report: the signal
        // ends the process once it is written.
        wait_for_the_report();
        return;
    }
    if let Some(dests) = dest() {
        write_report(&dests, &report_now(Caller::OWN_THREAD));
    }
    REPORT_DONE.store(true, Ordering::Release);
}

/// The one report of the exit or of a fatal signal is written.
static REPORT_DONE: AtomicBool = AtomicBool::new(false);
/// The fatal signal that asked for a report (0: none): whichever of the
/// exit and the signal thread gets there first ends the process by it.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

/// Ends the process by `sig` with its default action, as it would have
/// died without leakscope.
pub(crate) fn die(sig: i32) -> ! {
    // SAFETY: the default action, then the signal to the whole process;
    // should it come back (blocked everywhere), exit as a shell reports a
    // death by signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig);
    }
}

/// When the program exits while a fatal signal's report is being written,
/// or a fatal signal comes while the exit report is: the second waits for
/// the first's report (up to a minute) rather than end the process half
/// way through it. (After a signal's report, the signal ends the process.)
fn wait_for_the_report() {
    for _ in 0..6000 {
        if REPORT_DONE.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The exit report and the gate; `caller`: the frames that called `exit`.
fn write_exit_report(caller: Caller) {
    let dest = dest();
    let code = ERROR_EXITCODE.load(Ordering::Relaxed);
    if dest.is_none() && code == 0 {
        return;
    }
    let check_on = LEAK_CHECK.load(Ordering::Relaxed);
    // Without a report to write, the gate needs the check alone: no
    // snapshot, nothing symbolized unless a suppression file asks.
    let (report, check) = match &dest {
        Some(_) => {
            let report = report_now(caller);
            let check = report.leak_check.clone();
            (Some(report), check)
        }
        None => (None, check_on.then(|| leak_check_then(caller, |lc| lc))),
    };
    if let (Some(dests), Some(report)) = (&dest, &report) {
        write_report(dests, report);
    }
    if code == 0 {
        return;
    }
    let not_run = match &check {
        None => Some("LEAKSCOPE_LEAK_CHECK=no turns the leak check off".to_owned()),
        Some(lc) => lc.error.clone(),
    };
    let lost = match (&check, not_run) {
        // A gate never passes in silence: it fails, and says why.
        (_, Some(why)) => {
            warn(&format!(
                "the leak check did not run ({why}), so LEAKSCOPE_ERROR_EXITCODE cannot pass the program; exit status {code}"
            ));
            true
        }
        (Some(lc), None) if lc.has_leaks() => {
            if dest.is_none() {
                // No report asked for: one line says why the status is what it is.
                warn(&format!(
                    "{} bytes in {} blocks definitely lost, {} bytes in {} blocks indirectly lost (LEAKSCOPE_REPORT=stderr shows where); exit status {code}",
                    lc.definitely_lost.bytes,
                    lc.definitely_lost.blocks,
                    lc.indirectly_lost.bytes,
                    lc.indirectly_lost.blocks
                ));
            }
            true
        }
        _ => false,
    };
    // The scopes that keep growing, less those a `growth:` line allows.
    let counted;
    let scopes = match &report {
        Some(r) => &r.scopes,
        None => {
            counted = scopes_from_counters();
            &counted
        }
    };
    let allowed = suppress::current();
    let growing: Vec<&ScopeStats> = (scopes.iter())
        .filter(|s| s.growing && !allowed.allows_growth(&s.name))
        .collect();
    for s in &growing {
        warn(&format!(
            "scope {:?} keeps growing: {} bytes per run lately, over {} runs (a growth:<scope> line in LEAKSCOPE_SUPPRESSIONS allows it); exit status {code}",
            s.name,
            SignedPerRun(s.recent_bytes_per_run),
            Thousands(s.runs),
        ));
    }
    if !lost && growing.is_empty() {
        return;
    }
    // As valgrind's --error-exitcode: the status says leaks were found (or
    // could not be looked for), or a scope keeps growing.
    let _ = std::io::stdout().flush();
    // SAFETY: fflush(NULL) flushes every C stream; _exit ends the process
    // without running the remaining exit handlers again.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(code);
    }
}

/// The call-sites a report made now lists: the shown ones (live, or in
/// `also`), or every one with `LEAKSCOPE_REPORT_ALL_SITES=1` or a DHAT
/// destination.
fn sites(also: &[u32]) -> Sites<'_> {
    if ALL_SITES.load(Ordering::Relaxed) || DHAT_DEST.load(Ordering::Relaxed) {
        Sites::All
    } else {
        Sites::Shown { also }
    }
}

/// The JSON document of a report made here: the shown call-sites, or every
/// one with `LEAKSCOPE_REPORT_ALL_SITES=1`.
pub(crate) fn json(report: &Report) -> String {
    if ALL_SITES.load(Ordering::Relaxed) {
        report.to_json_all_sites()
    } else {
        report.to_json()
    }
}

/// The live state as a report shows it, without the leak check.
pub(crate) fn snapshot_now() -> Report {
    let mut report = snapshot_of(sites(&[]));
    report.timeline = timeline::timeline();
    report
}

/// The live state with every call-site seen, freed or not (what a DHAT
/// file shows), without the leak check.
pub(crate) fn snapshot_all_sites() -> Report {
    let mut report = snapshot_of(Sites::All);
    report.timeline = timeline::timeline();
    report
}

/// The live state with the full leak check (which, in sampling mode, says
/// why it did not run); `caller`: the program's frames on this thread.
pub(crate) fn checked_report(caller: Caller) -> Report {
    let mut report = leak_check_then(caller, |lc| {
        let also: Vec<u32> = lc.loss_records.iter().map(|r| r.callsite).collect();
        let mut report = snapshot_of(sites(&also));
        report.attach_leak_check(lc);
        report
    });
    // Outside the check: the sampler may hold the ring while stopped.
    report.timeline = timeline::timeline();
    report
}

/// The report, with the full leak check unless `LEAKSCOPE_LEAK_CHECK=no`;
/// `caller`: the program's frames on this thread.
pub(crate) fn report_now(caller: Caller) -> Report {
    if LEAK_CHECK.load(Ordering::Relaxed) {
        checked_report(caller)
    } else {
        snapshot_now()
    }
}

/// Where `LEAKSCOPE_REPORT` (or `report_on_exit`) sends the report.
pub(crate) fn dest() -> Option<Vec<Dest>> {
    DEST.lock().clone()
}

/// Reports written so far (at exit and on signals): `%n` in a path.
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// `path` with `%p` (the process id) and `%n` (the report's sequence
/// number, from 1) filled in.
fn fill_path(path: &str, n: u64) -> String {
    path.replace("%p", &std::process::id().to_string())
        .replace("%n", &n.to_string())
}

/// Writes `report` to each of `dests` (one sequence number, `%n`, for all).
pub(crate) fn write_report(dests: &[Dest], report: &Report) {
    let n = WRITTEN.fetch_add(1, Ordering::Relaxed) + 1;
    for dest in dests {
        let (path, format) = match dest {
            Dest::Stderr => {
                let _ = std::io::stderr().write_all(report.to_string().as_bytes());
                continue;
            }
            Dest::Stdout => {
                let mut out = std::io::stdout();
                let _ = out
                    .write_all(report.to_string().as_bytes())
                    .and_then(|_| out.flush());
                continue;
            }
            Dest::File(path, format) => (fill_path(path, n), *format),
        };
        let body = match format {
            Format::Json => json(report).into_bytes(),
            Format::Text => report.to_string().into_bytes(),
            Format::Folded => report.to_folded().into_bytes(),
            Format::Html => report.to_html().into_bytes(),
            Format::Dhat => report.to_dhat_json().into_bytes(),
            #[cfg(feature = "formats")]
            Format::Pprof => report.to_pprof(),
            #[cfg(feature = "formats")]
            Format::Flamegraph => {
                let mut svg = Vec::new();
                if let Err(e) = report.write_flamegraph(&mut svg) {
                    warn(&format!("cannot draw the flamegraph for {path}: {e}"));
                    continue;
                }
                svg
            }
            // Refused when the destination was parsed.
            #[cfg(not(feature = "formats"))]
            Format::Pprof | Format::Flamegraph => continue,
        };
        if let Err(e) = write_whole(Path::new(&path), &body) {
            warn(&format!("cannot write the report to {path}: {e}"));
        }
    }
}

/// Writes `body` to `path` whole or not at all: to a temporary name beside
/// it, then renamed over it, so that a full disk, a directory removed
/// meanwhile or a process killed half way never leaves half a report (a
/// reader such as `leakscope diff`, or a CI step, would take it for a bad
/// one). A path that is not a regular file (`/dev/stderr`, a pipe, or a
/// link to one) is written as it is; a symbolic link to a file, where it
/// points; a file in a directory where no other file can be made, in place.
fn write_whole(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let is_link = || std::fs::symlink_metadata(path).is_ok_and(|l| l.file_type().is_symlink());
    let path = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return std::fs::write(path, body),
        Ok(_) if is_link() => std::fs::canonicalize(path)?,
        _ => path.to_owned(),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    match std::fs::write(&temp, body) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && path.is_file() => {
            return std::fs::write(&path, body);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        Ok(()) => {}
    }
    let renamed = std::fs::rename(&temp, &path);
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    renamed
}
