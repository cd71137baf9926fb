//! Configuration from the environment, read once when the tracker starts.
//!
//! Owns `LEAKSCOPE_REPORT`, `LEAKSCOPE_SERVE`, `LEAKSCOPE_REPORT_SIGNAL`, `LEAKSCOPE_UNWIND`,
//! `LEAKSCOPE_LEAK_CHECK`, `LEAKSCOPE_ERROR_EXITCODE`,
//! `LEAKSCOPE_REPORT_ALL_SITES` and `LEAKSCOPE_METRICS_SITES`
//! (`LEAKSCOPE_SAMPLE_BYTES` is read by the allocation layer before the first
//! block is made, and a bad value is warned about here). [`start`] is the
//! hook the allocation layer runs at its start (the first allocation): this
//! layer registers it before `main`, from [`REGISTER`], since no code of the
//! user's calls in here first. It may allocate (untracked) but must not
//! block on anything the allocation path holds. Bad values are one line on
//! stderr, never a panic.

use crate::alloc::{process, sample, unwind};
use crate::report::warn::warn;
use crate::serve::{exit, signal, timeline};
use std::ffi::CStr;

/// Registers [`start`] with the allocation layer before `main` runs (the
/// loader calls every function in `.init_array`), so that the first
/// allocation arms the exit report with no code beyond the allocator line.
/// A hook registered after the start runs at once, so an allocation made
/// by another constructor before this one loses nothing.
#[used]
#[cfg_attr(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    link_section = ".init_array"
)]
#[cfg_attr(target_vendor = "apple", link_section = "__DATA,__mod_init_func")]
static REGISTER: extern "C" fn() = register;

extern "C" fn register() {
    if crate::alloc::thread::untracked(set_up) {
        // Outside `untracked`: starting is an entry into the tracker.
        crate::alloc::thread::start_now();
    }
    scrub_stack();
}

/// [`register`]'s work, with its allocations untracked (leakscope's, not
/// the program's). Returns whether the tracker is to start now.
#[inline(never)]
fn set_up() -> bool {
    if another_malloc_comes_first() {
        warn("this program has its own malloc (it links leakscope, or an allocator that replaces malloc): the preloaded leakscope stands aside");
        return false;
    }
    process::on_start(start);
    // Read now, before the program can change `LD_PRELOAD` for its children.
    let preloaded = crate::report::symbolize::preloaded();
    // Under `leakscope run` (the preload library in `LD_PRELOAD`), the
    // copy that is the process's `malloc` starts now: the preloaded one,
    // where no Rust code allocates (a C program), or a program's own when
    // it links leakscope for its scopes alone (no allocator line), whose
    // every block then comes through `malloc`.
    let start_now = preloaded
        || crate::report::symbolize::ld_preload_lists(|n| n.starts_with("libleakscope_preload"));
    // The timeline's thread starts here, before `main`, not in the start
    // hook: that runs inside the first allocation, no place to make a thread.
    if env(c"LEAKSCOPE_REPORT").is_some_and(|v| !v.trim().is_empty()) {
        timeline::start(timeline_ms());
    }
    if let Some(addr) = env(c"LEAKSCOPE_SERVE").filter(|v| !v.trim().is_empty()) {
        serve(addr.trim());
    }
    start_now
}

/// Zeroes the stack below [`register`]'s frame, where its work ran. A
/// shared object's constructors run before `main`, on the stack that the C
/// start code's frames then take, and some of those frames' slots are never
/// written: a block address the work left there (one it freed, which
/// `malloc` hands out again later) would be read by the exit report's check
/// as a root, and a block the program lost called reachable.
#[inline(never)]
fn scrub_stack() {
    std::hint::black_box([0u8; 64 * 1024]);
}

/// `LEAKSCOPE_SERVE=<loopback address>`: the live server
/// ([`serve_report`](crate::serve::live::serve_report)) for the whole run,
/// with no code; one stderr line says where (the port, when it was 0), or
/// why not. Started from a thread of its own (made here, before `main`:
/// the start hook runs inside an allocation) once the tracker has started;
/// not started within a second, this copy is not the program's tracker
/// (a program that links leakscope without the allocator line, as the
/// `leakscope` command does before it execs a program), and serves nothing.
fn serve(addr: &str) {
    let addr = addr.to_owned();
    let _ = crate::serve::spawn_own(c"leakscope-serve", move || {
        if !crate::serve::tracker_started() {
            return;
        }
        match crate::serve::live::serve_report(addr.as_str()) {
            Ok(server) => {
                warn(&format!(
                    "serving reports on http://{}/ (LEAKSCOPE_SERVE)",
                    server.local_addr()
                ));
                // It serves until the process ends.
                std::mem::forget(server);
            }
            Err(e) => warn(&format!("LEAKSCOPE_SERVE={addr:?}: {e}; not serving")),
        }
    });
}

/// Whether the process's `malloc` is another object's than this copy of
/// leakscope's, which makes it the process's `malloc` (feature `c-heap`):
/// then this copy was preloaded (`leakscope run`) into a program that has
/// its own (one that links leakscope comes first in symbol lookup), and
/// stands aside, so that nothing is counted or reported twice. Asks the
/// loader without allocating.
fn another_malloc_comes_first() -> bool {
    #[cfg(all(
        feature = "c-heap",
        target_os = "linux",
        target_env = "gnu",
        target_arch = "x86_64"
    ))]
    // SAFETY: dlsym and dladdr with a NUL-terminated name and addresses of
    // loaded code; they fill `info` and allocate nothing.
    unsafe {
        let base = |addr: *const libc::c_void| {
            let mut info: libc::Dl_info = std::mem::zeroed();
            (libc::dladdr(addr, &mut info) != 0).then_some(info.dli_fbase as usize)
        };
        let winner = libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr());
        let here = base(register as *const () as *const libc::c_void);
        if !winner.is_null() && here.is_some() && base(winner) != here {
            return true;
        }
    }
    false
}

/// `LEAKSCOPE_TIMELINE_MS`, or the default (a bad value is said in [`start`]).
pub(crate) fn timeline_ms() -> u64 {
    env(c"LEAKSCOPE_TIMELINE_MS")
        .map_or(Ok(timeline::DEFAULT_MS), |v| timeline::parse_ms(&v))
        .unwrap_or(timeline::DEFAULT_MS)
}

/// Where a report goes: `LEAKSCOPE_REPORT` lists one or more, separated
/// by commas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    /// Text.
    Stderr,
    /// Text.
    Stdout,
    /// A file; `%p` in the path becomes the process id, `%n` the report's
    /// sequence number.
    File(String, Format),
}

/// What a report file holds, by the path's suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `.json`: leakscope's JSON document.
    Json,
    /// `.pb.gz`: a pprof profile.
    Pprof,
    /// `.folded`: folded stacks of live bytes.
    Folded,
    /// `.svg`: a flamegraph of live bytes.
    Flamegraph,
    /// `.html`: one self-contained page.
    Html,
    /// `.dhat.json`: DHAT's format, for its viewer.
    Dhat,
    /// Anything else: the text report.
    Text,
}

impl Dest {
    /// Parses a `LEAKSCOPE_REPORT` value: the destinations it names, and a
    /// message for each entry that is not one (the others still stand).
    pub(crate) fn parse(value: &str) -> (Vec<Dest>, Vec<String>) {
        let mut dests = Vec::new();
        let mut errors = Vec::new();
        if value.trim().is_empty() {
            errors.push(
                "LEAKSCOPE_REPORT is empty: expected stderr, stdout or paths (.json, .pb.gz, .folded, .svg, .html, .dhat.json, other: text), separated by commas"
                    .to_owned(),
            );
            return (dests, errors);
        }
        for v in value.split(',').map(str::trim) {
            match Dest::parse_one(v) {
                Ok(d) if !dests.contains(&d) => dests.push(d),
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        (dests, errors)
    }

    fn parse_one(v: &str) -> Result<Dest, String> {
        let format = match v {
            "" => return Err("LEAKSCOPE_REPORT has an empty entry".to_owned()),
            "stderr" => return Ok(Dest::Stderr),
            "stdout" => return Ok(Dest::Stdout),
            v if v.ends_with(".dhat.json") => Format::Dhat,
            v if v.ends_with(".json") => Format::Json,
            v if v.ends_with(".pb.gz") => Format::Pprof,
            v if v.ends_with(".folded") => Format::Folded,
            v if v.ends_with(".svg") => Format::Flamegraph,
            v if v.ends_with(".html") || v.ends_with(".htm") => Format::Html,
            _ => Format::Text,
        };
        if matches!(format, Format::Pprof | Format::Flamegraph) && !cfg!(feature = "formats") {
            return Err(format!(
                "LEAKSCOPE_REPORT: {v} asks for a pprof profile or a flamegraph, and leakscope was built without its `formats` feature"
            ));
        }
        Ok(Dest::File(v.to_owned(), format))
    }
}

/// A yes-or-no value: `1`, `yes`, `on`, `true` or `0`, `no`, `off`, `false`.
fn parse_flag(value: &str) -> Option<bool> {
    match value.trim() {
        "yes" | "1" | "on" | "true" => Some(true),
        "no" | "0" | "off" | "false" => Some(false),
        _ => None,
    }
}

/// Parses `LEAKSCOPE_LEAK_CHECK` (empty or `full`: on).
pub(crate) fn parse_leak_check(value: &str) -> Result<bool, String> {
    match value.trim() {
        "" | "full" => Ok(true),
        v => parse_flag(v).ok_or_else(|| {
            format!("LEAKSCOPE_LEAK_CHECK={v:?} is not yes or no; the leak check stays on")
        }),
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

/// The call-sites the metrics show by default ([`metrics_sites`]).
pub(crate) const METRICS_SITES: usize = 10;

/// `LEAKSCOPE_METRICS_SITES`: for how many functions (those whose
/// call-sites hold the most live bytes) `/metrics` shows them (0 to 100).
pub(crate) fn parse_metrics_sites(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(format!(
            "LEAKSCOPE_METRICS_SITES={value:?} is not a number from 0 to 100; using {METRICS_SITES}"
        )),
    }
}

/// `LEAKSCOPE_METRICS_SITES`, or the default (a bad value is said in [`start`]).
pub(crate) fn metrics_sites() -> usize {
    env(c"LEAKSCOPE_METRICS_SITES")
        .map_or(Ok(METRICS_SITES), |v| parse_metrics_sites(&v))
        .unwrap_or(METRICS_SITES)
}

fn env(name: &CStr) -> Option<String> {
    // SAFETY: getenv takes a NUL-terminated name and returns null or a
    // NUL-terminated string, which is copied at once.
    unsafe {
        let p = libc::getenv(name.as_ptr());
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// Reads the environment and arms the exit report and the report signal.
/// Runs once, when the tracker starts (the first allocation, see
/// [`REGISTER`]), with this thread's allocations untracked.
fn start() {
    match env(c"LEAKSCOPE_UNWIND").as_deref().map(str::trim) {
        None | Some("") => {}
        Some("fp") => unwind::set_dwarf(false),
        Some("dwarf") => unwind::set_dwarf(true),
        Some(other) => warn(&format!(
            "LEAKSCOPE_UNWIND={other:?} is not fp or dwarf; using frame pointers"
        )),
    }
    if sample::bad_value() {
        let value = env(c"LEAKSCOPE_SAMPLE_BYTES").unwrap_or_default();
        warn(&format!(
            "LEAKSCOPE_SAMPLE_BYTES={value:?} is not a byte count (like 524288 or 512k); ignoring it"
        ));
    }
    if let Some(value) = env(c"LEAKSCOPE_LEAK_CHECK") {
        match parse_leak_check(&value) {
            Ok(on) => exit::set_leak_check(on),
            Err(msg) => warn(&msg),
        }
    }
    if let Some(value) = env(c"LEAKSCOPE_ERROR_EXITCODE") {
        match parse_exitcode(&value) {
            Ok(n) => exit::set_error_exitcode(n),
            Err(msg) => warn(&msg),
        }
    }
    if let Some(Err(msg)) = env(c"LEAKSCOPE_TIMELINE_MS").map(|v| timeline::parse_ms(&v)) {
        warn(&msg);
    }
    if let Some(Err(msg)) = env(c"LEAKSCOPE_METRICS_SITES").map(|v| parse_metrics_sites(&v)) {
        warn(&msg);
    }
    if let Some(value) = env(c"LEAKSCOPE_REPORT_ALL_SITES") {
        match parse_flag(&value) {
            Some(on) => exit::set_all_sites(on),
            None => warn(&format!(
                "LEAKSCOPE_REPORT_ALL_SITES={value:?} is not 1 or 0; reports list the live call-sites"
            )),
        }
    }
    if let Some(value) = env(c"LEAKSCOPE_REPORT") {
        let (dests, errors) = Dest::parse(&value);
        let then = if dests.is_empty() {
            "no report will be written"
        } else {
            "the other destinations are written"
        };
        for e in &errors {
            warn(&format!("{e}; {then}"));
        }
        if !dests.is_empty() {
            exit::set_dest(dests);
            report_signal_from_env();
            signal::install_fatal();
        }
    }
}

/// With `LEAKSCOPE_REPORT` set: the report is also written on
/// `LEAKSCOPE_REPORT_SIGNAL` (SIGUSR2 unless it says otherwise or `none`).
fn report_signal_from_env() {
    let signal = match env(c"LEAKSCOPE_REPORT_SIGNAL") {
        None => Some(libc::SIGUSR2),
        Some(v) => match signal::parse_signal(&v) {
            Ok(s) => s,
            Err(msg) => {
                warn(&format!("{msg}; using SIGUSR2"));
                Some(libc::SIGUSR2)
            }
        },
    };
    if let Some(signal) = signal {
        if let Err(e) = signal::install(signal) {
            warn(&format!(
                "no report on signal {signal}: {e} (LEAKSCOPE_REPORT_SIGNAL picks another, or none)"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Dest, Format};

    #[test]
    fn parses_report_destinations() {
        let one = |v| Dest::parse(v).0;
        assert_eq!(one("stderr"), [Dest::Stderr]);
        assert_eq!(one(" stdout "), [Dest::Stdout]);
        assert_eq!(
            one("/tmp/r-%p.json"),
            [Dest::File("/tmp/r-%p.json".into(), Format::Json)]
        );
        assert_eq!(
            one("leaks.txt"),
            [Dest::File("leaks.txt".into(), Format::Text)]
        );
        assert_eq!(
            one("stderr, leaks.json,heap-%n.pb.gz ,live.folded,stderr"),
            [
                Dest::Stderr,
                Dest::File("leaks.json".into(), Format::Json),
                Dest::File("heap-%n.pb.gz".into(), Format::Pprof),
                Dest::File("live.folded".into(), Format::Folded),
            ]
        );
        let (dests, errors) = Dest::parse("stderr,,x.json");
        assert_eq!(dests.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            one("x.dhat.json,y.html"),
            [
                Dest::File("x.dhat.json".into(), Format::Dhat),
                Dest::File("y.html".into(), Format::Html),
            ]
        );
        let (dests, errors) = Dest::parse("  ");
        assert!(dests.is_empty());
        assert_eq!(errors.len(), 1);
    }
}
