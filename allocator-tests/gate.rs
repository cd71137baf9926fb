//! The CI gate (`LEAKSCOPE_ERROR_EXITCODE`) never passes a program that leaks.
//!
//! A lost block whose address only stale stack holds: the planted program
//! loses a vector of five boxes in a function below `main` that has
//! returned, and leaves copies of the vector's address all over the dead
//! stack there, as real code does (ripgrep did). Whatever runs the check
//! (the exit hook after `main` returns or after `std::process::exit`, the
//! fatal-signal report, `leak_check()` from code) lays its own frames over
//! that dead stack: none of their words is a root, so the vector is
//! definitely lost (40 bytes in 1 block) and the boxes indirectly (240 bytes
//! in 5), as valgrind says (`valgrind_agrees`).

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

/// The planted leak: five boxes in a vector, forgotten (40 bytes definitely
/// lost, 5 x 48 indirectly), its address then spilled over the dead stack.
#[inline(never)]
fn plant() {
    let v: Vec<Box<[u8; 48]>> = (0..5).map(|_| Box::new([7u8; 48])).collect();
    let at = v.as_ptr() as usize;
    std::mem::forget(v);
    spill(at);
}

/// 16 KiB of copies of `at` in a frame that then returns.
#[inline(never)]
fn spill(at: usize) {
    let mut words = [0usize; 2048];
    for w in words.iter_mut() {
        // SAFETY: a valid, aligned element of a local array.
        unsafe { std::ptr::write_volatile(w, at) };
    }
    black_box(&words);
}

/// `plant`, under 512 bytes of zeroed frame: the small frames `main` calls
/// next (a blocking read, `process::exit`) lie over zeros, the deep ones
/// (a report, a signal's frame) over the copies.
#[inline(never)]
fn plant_below_main() {
    let mut pad = [1usize; 64];
    for w in pad.iter_mut() {
        // SAFETY: as in `spill`.
        unsafe { std::ptr::write_volatile(w, 0) };
    }
    black_box(&pad);
    plant();
}

fn child(mode: &str) {
    plant_below_main();
    match mode {
        "return" => {}
        "exit" => std::process::exit(0),
        "wait" => {
            println!("ready");
            std::io::stdout().flush().unwrap();
            let mut line = String::new();
            // Blocks until killed (the parent keeps stdin open).
            let _ = std::io::stdin().read_line(&mut line);
            std::process::exit(9);
        }
        "in_code" => {
            let report = leakscope::leak_check();
            let lc = report.leak_check.as_ref().unwrap();
            println!(
                "{} {} {} {} {:?}",
                lc.definitely_lost.blocks,
                lc.definitely_lost.bytes,
                lc.indirectly_lost.blocks,
                lc.indirectly_lost.bytes,
                lc.error
            );
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gate");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn command(mode: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env(CHILD, mode)
        .env_remove("LEAKSCOPE_REPORT")
        .env_remove("LEAKSCOPE_ERROR_EXITCODE");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(mode: &str, env: &[(&str, &str)]) -> Output {
    command(mode, env).output().unwrap()
}

/// (definitely lost blocks, bytes, indirectly lost blocks, bytes) in a
/// JSON report.
fn lost_in(path: &Path) -> (u64, u64, u64, u64) {
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let lc = &doc["leak_check"];
    assert_eq!(lc["error"], serde_json::Value::Null);
    let n = |kind: &str, what: &str| lc[kind][what].as_u64().unwrap();
    (
        n("definitely_lost", "blocks"),
        n("definitely_lost", "bytes"),
        n("indirectly_lost", "blocks"),
        n("indirectly_lost", "bytes"),
    )
}

const PLANTED: (u64, u64, u64, u64) = (1, 40, 5, 240);

fn stale_stack_hides_nothing_at_exit() {
    for mode in ["return", "exit"] {
        let json = scratch(&format!("{mode}.json"));
        let json = json.to_str().unwrap();
        let out = run(
            mode,
            &[
                ("LEAKSCOPE_REPORT", json),
                ("LEAKSCOPE_ERROR_EXITCODE", "23"),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(lost_in(json.as_ref()), PLANTED, "{mode}: {stderr}");
        assert_eq!(out.status.code(), Some(23), "{mode}: {stderr}");
        // The gate alone: no report, one line, the gate's status.
        let out = run(mode, &[("LEAKSCOPE_ERROR_EXITCODE", "23")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "40 bytes in 1 blocks definitely lost, 240 bytes in 5 blocks indirectly lost"
            ),
            "{mode}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(23), "{mode}: {stderr}");
    }
}

/// valgrind says the same of the same child (skipped without valgrind).
fn valgrind_agrees() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind is not installed: skipped");
        return;
    }
    let out = Command::new("valgrind")
        .arg("--leak-check=full")
        .arg(std::env::current_exe().unwrap())
        .env(CHILD, "return")
        .env_remove("LEAKSCOPE_REPORT")
        .env_remove("LEAKSCOPE_ERROR_EXITCODE")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("definitely lost: 40 bytes in 1 blocks"),
        "{log}"
    );
    assert!(
        log.contains("indirectly lost: 240 bytes in 5 blocks"),
        "{log}"
    );
}

fn stale_stack_hides_nothing_on_sigterm() {
    let json = scratch("sigterm.json");
    let mut child = command("wait", &[("LEAKSCOPE_REPORT", json.to_str().unwrap())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Held open until the child is gone: its read never ends on its own.
    let stdin = child.stdin.take();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    drop(stdin);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert_eq!(lost_in(&json), PLANTED);
}

fn stale_stack_hides_nothing_from_leak_check() {
    let out = run("in_code", &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1 40 5 240 None\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child(&mode);
    }
    common::run(&[
        (
            "stale_stack_hides_nothing_at_exit",
            stale_stack_hides_nothing_at_exit,
        ),
        ("valgrind_agrees", valgrind_agrees),
        (
            "stale_stack_hides_nothing_on_sigterm",
            stale_stack_hides_nothing_on_sigterm,
        ),
        (
            "stale_stack_hides_nothing_from_leak_check",
            stale_stack_hides_nothing_from_leak_check,
        ),
    ]);
}
