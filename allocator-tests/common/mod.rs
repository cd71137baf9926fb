//! A tiny test runner for the scenario programs. Each scenario is its own
//! process (`harness = false`) with its own `#[global_allocator]`; the tests in
//! one program run one after another on the main thread, so that the counts
//! they read are not disturbed by other tests allocating at the same time.
//! Each test reads only call-sites in its own planted functions and scopes with
//! its own names.
//!
//! Call-site counts are asserted for the dev profile (`cargo test`): a call-site
//! is a whole stack, return addresses included, so an optimizer that unrolls a
//! loop around a call makes one call-site per copy of the call, as it should.

#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

pub mod timeout;
#[allow(unused_imports)]
pub use timeout::{Deadline, BUILD_SECS, CHILD_SECS};

/// Runs `tests` in order, prints libtest-like lines, exits 1 on any failure.
/// A test name given on the command line (as `cargo test -- NAME` passes it)
/// runs only the tests whose names contain it.
pub fn run(tests: &[(&str, fn())]) {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in &selected {
        match catch_unwind(AssertUnwindSafe(test)) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    // After the tests, so that the validator's own blocks (thousands, from
    // as many call-sites) are in no test's heap or report.
    let documents = std::mem::take(&mut *DOCUMENTS.lock().unwrap_or_else(|e| e.into_inner()));
    if !documents.is_empty() {
        let name = "reports_match_their_json_schema";
        match catch_unwind(|| check_documents(&documents)) {
            Ok(()) => println!("test {name} ({} reports) ... ok", documents.len()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    let passed = selected.len() + usize::from(!documents.is_empty()) - failed.len();
    if failed.is_empty() {
        println!("\ntest result: ok. {passed} passed; 0 failed\n");
    } else {
        println!("\nfailures: {failed:?}");
        println!(
            "\ntest result: FAILED. {passed} passed; {} failed\n",
            failed.len()
        );
        std::process::exit(1);
    }
}

/// Live blocks and bytes, and total blocks and bytes, summed over the
/// call-sites whose allocating function's name contains `function`.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct Site {
    pub sites: usize,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub total_blocks: u64,
    pub total_bytes: u64,
}

pub fn site(report: &leakscope::Report, function: &str) -> Site {
    let mut s = Site::default();
    for c in report.callsites_in(function) {
        s.sites += 1;
        s.live_blocks += c.live_blocks;
        s.live_bytes += c.live_bytes;
        s.total_blocks += c.total_blocks;
        s.total_bytes += c.total_bytes;
    }
    s
}

/// Runs, outstanding blocks and outstanding bytes of scope `name`.
pub fn scope(report: &leakscope::Report, name: &str) -> (u64, u64, u64) {
    let s = report.scope(name).expect("the scope was opened");
    (s.runs, s.outstanding_blocks, s.outstanding_bytes)
}

/// `site` of a fresh snapshot.
pub fn site_now(function: &str) -> Site {
    site(&leakscope::snapshot(), function)
}

/// Polls `f` once with a waker that does nothing.
pub fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
    use std::task::{Context, RawWaker, RawWakerVTable, Waker};
    fn raw() -> RawWaker {
        RawWaker::new(std::ptr::null(), &VTABLE)
    }
    static VTABLE: RawWakerVTable = RawWakerVTable::new(|_| raw(), |_| {}, |_| {}, |_| {});
    // SAFETY: the vtable's functions do nothing and never touch the data pointer.
    let waker = unsafe { Waker::from_raw(raw()) };
    std::pin::Pin::new(f).poll(&mut Context::from_waker(&waker))
}

/// A tokio runtime with two workers and its I/O, time and signal drivers,
/// as the async scenarios run them.
pub fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Takes `child`'s piped stdout and reads its first line, which must be
/// `ready` (a scenario says so once it is where the test wants it); the
/// rest of its output is left to read.
pub fn ready(child: &mut std::process::Child) -> std::io::BufReader<std::process::ChildStdout> {
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    out
}

/// Waits up to 30 s for forked child `pid` to exit with status 0; kills it
/// and fails if it hangs (a lock held across `fork`). A child that checks
/// and reports under AddressSanitizer on a loaded machine takes seconds,
/// and a lock held across `fork` is never released: the wait is long.
pub fn expect_child_exits_cleanly(pid: libc::pid_t) {
    let mut status = 0;
    let mut waited = 0;
    // SAFETY: waits for our own child without blocking.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != pid {
        waited += 1;
        if waited > 6000 {
            // Where it waits, for the log, where gdb runs (the machine's image has it).
            let stacks = std::process::Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt 30",
                ])
                .output_within(60)
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            // SAFETY: our own child, hung.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung (a lock held across fork?); its stacks:\n{stacks}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status}"
    );
}

/// Overwrites the dead stack the planting left behind, so that no stale
/// copy of a planted address is found there (by us or by valgrind): every
/// word of a 64 KiB frame, from a few different depths so that the slots a
/// frame leaves unwritten (saved registers, padding) are covered by another.
#[inline(never)]
fn scrub() {
    let mut a = [1usize; 8192];
    for w in a.iter_mut() {
        // SAFETY: a valid, aligned element of a local array.
        unsafe { std::ptr::write_volatile(w, 0) };
    }
    std::hint::black_box(&a);
}

#[inline(never)]
fn scrub_below<const N: usize>() {
    let mut pad = [1usize; N];
    for w in pad.iter_mut() {
        // SAFETY: as in `scrub`.
        unsafe { std::ptr::write_volatile(w, 0) };
    }
    std::hint::black_box(&pad);
    scrub();
}

pub fn scrub_all() {
    scrub();
    scrub_below::<1>();
    scrub_below::<3>();
    scrub_below::<8>();
}

/// An empty directory `name` of test program `program`'s own, under
/// Cargo's scratch directory for tests (what an earlier run left there
/// removed first).
pub fn fresh_dir(program: &str, name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(program)
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether this run is under AddressSanitizer (`.ci/run` sets
/// `LEAKSCOPE_TEST_UNDER_ASAN` for it); if so, says why the caller skips.
pub fn under_asan(why: &str) -> bool {
    let asan = std::env::var_os("LEAKSCOPE_TEST_UNDER_ASAN").is_some();
    if asan {
        println!("under AddressSanitizer, {why}: skipped");
    }
    asan
}

/// Whether this run is under ThreadSanitizer (`.ci/run` sets
/// `LEAKSCOPE_TEST_UNDER_TSAN` for it); if so, says why the caller skips.
pub fn under_tsan(why: &str) -> bool {
    let tsan = std::env::var_os("LEAKSCOPE_TEST_UNDER_TSAN").is_some();
    if tsan {
        println!("under ThreadSanitizer, {why}: skipped");
    }
    tsan
}

/// Whether `program` runs (`program --version`). When it does not, a test
/// that compares with it fails if `needed` is set (`.ci/run` sets it, so CI
/// never passes a comparison by skipping it), and otherwise says so and skips.
pub fn tool_runs(program: &str, package: &str, needed: &str) -> bool {
    if std::process::Command::new(program)
        .arg("--version")
        .output_within(60)
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var_os(needed).is_none(),
        "{needed} is set and {program} does not run (Debian: {package})"
    );
    println!("{program} is not installed (Debian: {package}): skipped");
    false
}

/// The JSON reports the tests read, checked against their schema by `run`
/// once the tests are done.
static DOCUMENTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A leakscope JSON report, parsed; `run` checks it against the JSON Schema
/// in `docs/report.schema.json` (generated from the document types) after
/// the tests: what other tools validating our reports would see.
pub fn report_doc(text: &str) -> serde_json::Value {
    let doc = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", &text[..text.len().min(200)]));
    DOCUMENTS.lock().unwrap().push(text.to_owned());
    doc
}

/// Panics with every violation of the schema in `documents`.
fn check_documents(documents: &[String]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/report.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for text in documents {
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "a report breaks its schema:\n{}",
            errors.join("\n")
        );
    }
}
