//! Configuration from the environment, read once when the tracker starts.
//!
//! Owns `LEAKSCOPE_REPORT`, `LEAKSCOPE_REPORT_SIGNAL`, `LEAKSCOPE_UNWIND`,
//! `LEAKSCOPE_LEAK_CHECK`, `LEAKSCOPE_ERROR_EXITCODE` and
//! `LEAKSCOPE_REPORT_ALL_SITES`
//! (`LEAKSCOPE_SAMPLE_BYTES` is read by the allocation layer before the first
//! block is made, and a bad value is warned about here). [`start`] is the
//! hook the allocation layer runs at its start (the first allocation): this
//! layer registers it before `main`, from [`REGISTER`], since no code of the
//! user's calls in here first. It may allocate (untracked) but must not
//! block on anything the allocation path holds. Bad values are one line on
//! stderr, never a panic.

use crate::alloc::{process, sample, unwind};
use crate::report::warn::warn;
use crate::serve::{exit, signal};
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
    process::on_start(start);
}

/// Where the exit report goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    Stderr,
    Stdout,
    /// JSON document; `%p` in the path becomes the process id, `%n` the
    /// report's sequence number.
    Json(String),
    /// Text report; `%p` and `%n` as for JSON.
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
    if let Some(value) = env(c"LEAKSCOPE_REPORT_ALL_SITES") {
        match parse_flag(&value) {
            Some(on) => exit::set_all_sites(on),
            None => warn(&format!(
                "LEAKSCOPE_REPORT_ALL_SITES={value:?} is not 1 or 0; reports list the live call-sites"
            )),
        }
    }
    if let Some(value) = env(c"LEAKSCOPE_REPORT") {
        match Dest::parse(&value) {
            Ok(dest) => {
                exit::set_dest(dest);
                report_signal_from_env();
                signal::install_fatal();
            }
            Err(msg) => warn(&format!("{msg}; no report will be written")),
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
