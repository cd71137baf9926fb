//! Faults around the report (issue 29): a full disk, a report directory
//! removed while the program runs, a storm of signals while the report is
//! written, an inner allocator that refuses one call in 100 while leak
//! checks and the exit report run. Each time the program's exit status and
//! output stay its own, and each report is whole or absent (with one line
//! on stderr), never half written: reports go to a temporary name beside
//! the path and are renamed over it.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker<Flaky> = leakscope::LeakTracker::new(Flaky);

/// `System`, but that while [`ARMED`] every 100th call that makes a block
/// (an allocation, a zeroed one, a realloc) is refused.
struct Flaky;

static ARMED: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

impl Flaky {
    fn refuses() -> bool {
        let refuse =
            ARMED.load(Ordering::Relaxed) && CALLS.fetch_add(1, Ordering::Relaxed) % 100 == 99;
        if refuse {
            REFUSED.fetch_add(1, Ordering::Relaxed);
        }
        refuse
    }
}

// SAFETY: `System`'s blocks, or null.
unsafe impl GlobalAlloc for Flaky {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Flaky::refuses() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Flaky::refuses() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Flaky::refuses() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs after the exit report (the executable's `.fini_array`, which the
/// loader's exit handler runs, registered before leakscope's `atexit`):
/// says how many calls the inner allocator refused since it was armed
/// again for the exit, with `write` (no allocation).
extern "C" fn after_the_exit_report() {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let mut buf = *b"refused at exit 00000000\n";
    let mut n = REFUSED.load(Ordering::Relaxed);
    for d in buf[16..24].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: writes our own buffer to stdout.
    unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
}

#[used]
#[link_section = ".fini_array"]
static AFTER_THE_EXIT_REPORT: extern "C" fn() = after_the_exit_report;

/// Three boxes of 32 bytes whose addresses are gone: 96 bytes definitely lost.
#[inline(never)]
fn plant_lost() {
    for _ in 0..3 {
        std::mem::forget(black_box(Box::new([7u64; 4])));
    }
}

mod common;

use common::Deadline;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

static KEEP: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// SIGUSR1s the program's own handler saw.
static USR1_SEEN: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    USR1_SEEN.fetch_add(1, Ordering::Relaxed);
}

/// The child: 200 call-sites' worth of live blocks (a report of some
/// size: tens of KiB of JSON), then the end `mode` asks for.
fn child(mode: &str) {
    for i in 0..200 {
        KEEP.lock().unwrap().push(black_box(vec![i as u8; 100 + i]));
    }
    match mode {
        "exit" => {}
        "remove-dir" => {
            std::fs::remove_dir_all(std::env::var("FAULTS_DIR").unwrap()).unwrap();
        }
        "storm" => {
            // The program's own handler, which the storm must keep reaching.
            // SAFETY: an async-signal-safe handler (one atomic add).
            unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
            println!("ready");
            std::io::stdout().flush().unwrap();
            // Long enough for the storm to start before the exit report.
            std::thread::sleep(std::time::Duration::from_millis(200));
            println!("usr1 {}", USR1_SEEN.load(Ordering::Relaxed) > 0);
        }
        "flaky" => flaky(),
        other => panic!("unknown child mode {other}"),
    }
    println!("done");
    std::process::exit(3);
}

/// The child's part with the refusing allocator: three leak checks, each
/// report rendered as JSON and text, all with [`ARMED`] (the program itself
/// allocates nothing meanwhile: its own refused allocation would abort it,
/// as it would without leakscope); then the JSON read back, unarmed; then
/// armed again for the exit report.
fn flaky() {
    plant_lost();
    common::scrub_all();
    let mut seen = [(0u64, 0u64, 0usize, 0usize); 3];
    let mut json = Vec::with_capacity(3);
    ARMED.store(true, Ordering::Relaxed);
    for s in &mut seen {
        let r = leakscope::leak_check();
        let lc = r.leak_check.as_ref().unwrap();
        let text = r.to_string();
        json.push(r.to_json());
        *s = (
            lc.definitely_lost.blocks,
            lc.definitely_lost.bytes,
            lc.error.iter().count(),
            text.len(),
        );
    }
    ARMED.store(false, Ordering::Relaxed);
    let refused = REFUSED.swap(0, Ordering::Relaxed);
    for ((blocks, bytes, errors, text), doc) in seen.iter().zip(&json) {
        let doc: serde_json::Value = serde_json::from_str(doc).unwrap();
        println!(
            "check: {blocks} blocks {bytes} bytes lost, {errors} errors, text {}, json {}",
            *text > 1000,
            doc["leak_check"]["definitely_lost"]["bytes"]
        );
    }
    println!("refused during the checks {}", refused > 0);
    drop(json);
    std::io::stdout().flush().unwrap();
    ARMED.store(true, Ordering::Relaxed);
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child(&mode);
    }
    common::run(&[
        (
            "a_full_disk_leaves_the_old_report",
            a_full_disk_leaves_the_old_report,
        ),
        (
            "a_removed_directory_is_one_line",
            a_removed_directory_is_one_line,
        ),
        (
            "a_signal_storm_during_the_report",
            a_signal_storm_during_the_report,
        ),
        (
            "links_and_devices_are_written_through",
            links_and_devices_are_written_through,
        ),
        (
            "a_refusing_inner_allocator_changes_nothing",
            a_refusing_inner_allocator_changes_nothing,
        ),
    ]);
}

fn command(mode: &str, report: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env(CHILD, mode)
        .env("LEAKSCOPE_REPORT", report)
        .env_remove("LEAKSCOPE_ERROR_EXITCODE")
        .env_remove("LEAKSCOPE_REPORT_SIGNAL");
    c
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A disk that fills half way through the report, made with a file size
/// limit of 8 KiB (`RLIMIT_FSIZE`, with SIGXFSZ ignored, so that the write
/// fails with EFBIG as a full disk's fails with ENOSPC): the report of the
/// last run, already there, is left as it was.
fn a_full_disk_leaves_the_old_report() {
    let dir = common::fresh_dir("faults", "full");
    let report = dir.join("r.json");
    std::fs::write(&report, "the last run's report").unwrap();
    let mut c = command("exit", &report);
    // SAFETY: async-signal-safe calls only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 8192,
                rlim_max: 8192,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = c.output_within(common::CHILD_SECS).unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let want = format!(
        "leakscope: cannot write the report to {}: File too large",
        report.display()
    );
    assert!(lines[0].starts_with(&want), "{lines:?}");
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        "the last run's report"
    );
    assert_eq!(files_in(&dir), ["r.json"]);
    // The same report fits without the limit: it was the limit that failed it.
    let out = command("exit", &report)
        .output_within(common::CHILD_SECS)
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(std::fs::metadata(&report).unwrap().len() > 8192);
    common::report_doc(&std::fs::read_to_string(&report).unwrap());
    assert_eq!(files_in(&dir), ["r.json"]);
}

/// The report's directory removed while the program runs.
fn a_removed_directory_is_one_line() {
    let dir = common::fresh_dir("faults", "removed").join("reports");
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("r.json");
    let out = command("remove-dir", &report)
        .env("FAULTS_DIR", &dir)
        .output_within(common::CHILD_SECS)
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let lines = stderr_lines(&out);
    assert_eq!(
        lines,
        [format!(
            "leakscope: cannot write the report to {}: No such file or directory (os error 2)",
            report.display()
        )]
    );
    assert!(!dir.exists());
}

/// SIGUSR1 (the program's own handler) and SIGUSR2 (leakscope's report
/// signal, `LEAKSCOPE_REPORT_SIGNAL=USR2`), every 200 µs from before the
/// exit until the process is gone: every report written (one per signal
/// the watcher took, `%n`, and the exit's) is whole, the program's handler
/// kept running, and the exit status is the program's.
fn a_signal_storm_during_the_report() {
    let dir = common::fresh_dir("faults", "storm");
    let mut child = command("storm", &dir.join("r-%n.json"))
        .env("LEAKSCOPE_REPORT_SIGNAL", "USR2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = common::ready(&mut child);
    let pid = child.id() as libc::pid_t;
    let mut sent = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(common::CHILD_SECS);
    // Until it is reaped: before that, its pid is its own (a zombie's at worst).
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the child hung");
        for sig in [libc::SIGUSR1, libc::SIGUSR2] {
            // SAFETY: a signal to our own child, not yet reaped.
            unsafe { libc::kill(pid, sig) };
            sent += 1;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(status.code(), Some(3), "{rest}");
    assert_eq!(rest, "usr1 true\ndone\n");
    assert!(sent > 100, "{sent} signals");
    let names = files_in(&dir);
    assert!(!names.is_empty());
    for name in &names {
        assert!(
            name.starts_with("r-") && name.ends_with(".json"),
            "{names:?}"
        );
        let doc = common::report_doc(&std::fs::read_to_string(dir.join(name)).unwrap());
        assert_eq!(doc["schema"], "leakscope/1", "{name}");
    }
    println!("{sent} signals sent, {} reports written", names.len());
}

/// What the temporary name must not break: a report path that is a link
/// to a file (the link stays, the file gets the report) or a device
/// (`/dev/stderr`, itself a link to the stderr pipe).
fn links_and_devices_are_written_through() {
    let dir = common::fresh_dir("faults", "links");
    std::fs::write(dir.join("real.json"), "old").unwrap();
    std::os::unix::fs::symlink("real.json", dir.join("link.json")).unwrap();
    let out = command("exit", &dir.join("link.json"))
        .output_within(common::CHILD_SECS)
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(std::fs::symlink_metadata(dir.join("link.json"))
        .unwrap()
        .file_type()
        .is_symlink());
    common::report_doc(&std::fs::read_to_string(dir.join("real.json")).unwrap());
    assert_eq!(files_in(&dir), ["link.json", "real.json"]);
    let out = command("exit", Path::new("/dev/stderr"))
        .output_within(common::CHILD_SECS)
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("leakscope: outstanding allocations"),
        "{stderr}"
    );
}

/// An inner allocator that refuses one call in 100 while three leak checks
/// run (each rendered as JSON and text) and while the exit report is made:
/// leakscope's own blocks come from its own allocator then, so every check
/// finds the three planted boxes, the exit report is whole with them, and
/// the program's output and exit status are its own. The refusals are
/// counted, so the test knows they happened where it meant them to.
fn a_refusing_inner_allocator_changes_nothing() {
    let dir = common::fresh_dir("faults", "flaky");
    let report = dir.join("r.json");
    let out = command("flaky", &report)
        .output_within(common::CHILD_SECS)
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{out:?}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    let at_exit = lines.pop().unwrap();
    assert_eq!(
        lines,
        [
            "check: 3 blocks 96 bytes lost, 0 errors, text true, json 96",
            "check: 3 blocks 96 bytes lost, 0 errors, text true, json 96",
            "check: 3 blocks 96 bytes lost, 0 errors, text true, json 96",
            "refused during the checks true",
            "done",
        ]
    );
    let refused: u64 = at_exit
        .strip_prefix("refused at exit ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused > 0, "{at_exit}");
    assert_eq!(stderr_lines(&out), Vec::<String>::new());
    let doc = common::report_doc(&std::fs::read_to_string(&report).unwrap());
    assert_eq!(doc["leak_check"]["definitely_lost"]["blocks"], 3);
    assert_eq!(doc["leak_check"]["definitely_lost"]["bytes"], 96);
    assert_eq!(files_in(&dir), ["r.json"]);
    println!("{refused} calls refused during the exit report");
}
