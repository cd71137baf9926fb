//! The report at exit: this program runs itself as a child with
//! `LEAKSCOPE_REPORT` set (and with bad values), and checks what the child
//! wrote and the status it exited with.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use common::Deadline;

use std::hint::black_box;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;

const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

static KEEP: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

#[inline(never)]
fn child_leak() {
    KEEP.lock()
        .unwrap()
        .push(black_box(vec![1u8; 1000].into_boxed_slice()));
}

/// The child: three runs of a scope that leaks 1,000 bytes each, then the end
/// that `mode` asks for.
fn child(mode: &str) {
    KEEP.lock().unwrap().reserve(16);
    for _ in 0..3 {
        leakscope::track_scope("GET /leak", child_leak);
    }
    match mode {
        "exit" => std::process::exit(3),
        "return" => {}
        "report_on_exit" => {
            leakscope::report_on_exit();
            std::process::exit(4);
        }
        "sites" => {
            // 2,048 call-sites whose blocks are freed, 5 of them kept live.
            for leaf in 0..SITES {
                let block = site_tree(TREE_DEPTH, leaf);
                if leaf % 410 == 7 {
                    KEEP.lock().unwrap().push(block);
                }
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Leaves of the call-site tree: each is a distinct stack.
const SITES: usize = 1 << TREE_DEPTH;
const TREE_DEPTH: u32 = 11;

/// One block made at the end of a chain of calls spelling `leaf` in binary
/// (two call instructions, one per bit value), so that every leaf is its own
/// call-site.
#[inline(never)]
fn site_tree(depth: u32, leaf: usize) -> Box<[u8]> {
    if depth == 0 {
        return black_box(vec![2u8; 24].into_boxed_slice());
    }
    if black_box(leaf) & 1 == 0 {
        black_box(site_tree(depth - 1, leaf >> 1))
    } else {
        let b = site_tree(depth - 1, leaf >> 1);
        black_box(b)
    }
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child(&mode);
    }
    common::run(&[
        ("json_after_process_exit", json_after_process_exit),
        (
            "text_file_after_return_from_main",
            text_file_after_return_from_main,
        ),
        ("stderr_report", stderr_report),
        ("report_on_exit_from_code", report_on_exit_from_code),
        (
            "dwarf_unwinding_counts_the_same",
            dwarf_unwinding_counts_the_same,
        ),
        ("empty_value_warns_once", empty_value_warns_once),
        ("unwritable_path_warns_once", unwritable_path_warns_once),
        ("bad_unwind_value_warns_once", bad_unwind_value_warns_once),
        ("json_lists_the_live_sites", json_lists_the_live_sites),
        (
            "sampling_mode_never_passes_the_gate",
            sampling_mode_never_passes_the_gate,
        ),
    ]);
    let _ = std::fs::remove_dir_all(scratch("x").parent().unwrap());
}

fn run_child(mode: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD, mode)
        .env_remove("LEAKSCOPE_REPORT")
        .env_remove("LEAKSCOPE_UNWIND");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output_within(common::CHILD_SECS)
        .expect("run the child")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leakscope-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Checks the child's JSON document: the scope and the call-site of its leak.
fn check_json(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = common::report_doc(&text);
    assert_eq!(doc["schema"], "leakscope/1");
    let scope = doc["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "GET /leak")
        .unwrap();
    assert_eq!(
        (scope["runs"].as_u64(), scope["outstanding_blocks"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(scope["outstanding_bytes"], 3000);
    let site_id = &scope["by_callsite"][0]["callsite"];
    let site = doc["callsites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| &c["id"] == site_id)
        .unwrap();
    assert!(
        site["frames"][0]["function"]
            .as_str()
            .unwrap()
            .ends_with("child_leak"),
        "{site}"
    );
    assert_eq!(
        (site["live_blocks"].as_u64(), site["live_bytes"].as_u64()),
        (Some(3), Some(3000))
    );
    assert_eq!(site["total_blocks"], 3);
}

fn json_after_process_exit() {
    let pattern = scratch("report-%p.json");
    let out = run_child("exit", &[("LEAKSCOPE_REPORT", pattern.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(3), "the child's own exit status");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `%p` became the child's pid: exactly one file matches.
    let dir = pattern.parent().unwrap();
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("report-")
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    let pid: u32 = name
        .trim_start_matches("report-")
        .trim_end_matches(".json")
        .parse()
        .unwrap();
    assert_ne!(pid, std::process::id());
    check_json(&files[0]);
}

fn text_file_after_return_from_main() {
    let path = scratch("report.txt");
    let out = run_child("return", &[("LEAKSCOPE_REPORT", path.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(0));
    let text = std::fs::read_to_string(&path).unwrap();
    let scope_line = text
        .lines()
        .find(|l| l.contains("GET /leak:"))
        .expect("the scope table");
    assert!(
        scope_line.ends_with(
            "3 runs, 3 blocks / 3,000 bytes outstanding, +1 blocks (+1,000 bytes) per run"
        ),
        "{scope_line}"
    );
    assert!(
        text.contains("3,000 bytes in 3 blocks are outstanding in loss record 1 of"),
        "{text}"
    );
    assert!(
        text.contains("child_leak (allocator-tests/exit_report.rs:"),
        "{text}"
    );
}

fn stderr_report() {
    let out = run_child("exit", &[("LEAKSCOPE_REPORT", "stderr")]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = format!("=={}== leakscope: outstanding allocations", out_pid(&err));
    assert!(err.starts_with(&pid), "{err}");
    assert!(
        err.contains("3,000 bytes in 3 blocks are outstanding in loss record 1 of"),
        "{err}"
    );
}

/// The pid in the report's `==PID==` prefix.
fn out_pid(text: &str) -> u32 {
    text.strip_prefix("==")
        .and_then(|t| t.split("==").next())
        .and_then(|p| p.parse().ok())
        .expect("==PID== prefix")
}

fn report_on_exit_from_code() {
    let out = run_child("report_on_exit", &[]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3,000 bytes in 3 blocks are outstanding in loss record 1 of"),
        "{err}"
    );
    assert!(err.contains("child_leak"), "{err}");
}

fn dwarf_unwinding_counts_the_same() {
    let path = scratch("dwarf.json");
    let out = run_child(
        "exit",
        &[
            ("LEAKSCOPE_REPORT", path.to_str().unwrap()),
            ("LEAKSCOPE_UNWIND", "dwarf"),
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_json(&path);
    // ...and the stacks were walked by DWARF, not by frame pointers.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["unwinder"], "dwarf");
}

fn empty_value_warns_once() {
    let out = run_child("exit", &[("LEAKSCOPE_REPORT", "  ")]);
    assert_eq!(out.status.code(), Some(3));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("leakscope: LEAKSCOPE_REPORT is empty"),
        "{lines:?}"
    );
    assert!(lines[0].ends_with("no report will be written"), "{lines:?}");
}

fn unwritable_path_warns_once() {
    let path = "/nonexistent-leakscope-dir/report.json";
    let out = run_child("exit", &[("LEAKSCOPE_REPORT", path)]);
    assert_eq!(out.status.code(), Some(3));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("leakscope: cannot write the report to {path}: ")),
        "{lines:?}"
    );
}

fn bad_unwind_value_warns_once() {
    let path = scratch("fp.json");
    let out = run_child(
        "exit",
        &[
            ("LEAKSCOPE_REPORT", path.to_str().unwrap()),
            ("LEAKSCOPE_UNWIND", "sideways"),
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let lines = stderr_lines(&out);
    assert_eq!(
        lines,
        ["leakscope: LEAKSCOPE_UNWIND=\"sideways\" is not fp or dwarf; using frame pointers"]
    );
    check_json(&path);
}

/// A program that saw 2,048 call-sites and keeps 5 of them live: its JSON
/// lists the live ones (and no freed one), small; every one only when asked.
fn json_lists_the_live_sites() {
    let path = scratch("sites.json");
    let report = ("LEAKSCOPE_REPORT", path.to_str().unwrap());
    let out = run_child("sites", &[report, ("LEAKSCOPE_LEAK_CHECK", "no")]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sites = doc["callsites"].as_array().unwrap();
    let planted = |c: &&serde_json::Value| {
        c["frames"][0]["function"]
            .as_str()
            .is_some_and(|f| f.ends_with("::site_tree"))
    };
    let tree: Vec<_> = sites.iter().filter(planted).collect();
    assert_eq!(tree.len(), 5, "{tree:?}");
    for c in &tree {
        assert_eq!(
            (c["live_blocks"].as_u64(), c["live_bytes"].as_u64()),
            (Some(1), Some(24))
        );
    }
    assert!(
        sites.iter().all(|c| c["live_blocks"].as_u64() > Some(0)),
        "a site with no live block is listed"
    );
    assert!(text.len() < 100_000, "{} bytes of JSON", text.len());

    let out = run_child(
        "sites",
        &[
            report,
            ("LEAKSCOPE_LEAK_CHECK", "no"),
            ("LEAKSCOPE_REPORT_ALL_SITES", "1"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let all = doc["callsites"].as_array().unwrap();
    assert_eq!(all.iter().filter(planted).count(), SITES);
}

/// Sampling mode cannot run the leak check: the gate fails with its status
/// and says why, once on stderr and in the report; never a silent pass.
fn sampling_mode_never_passes_the_gate() {
    let gate = ("LEAKSCOPE_ERROR_EXITCODE", "23");
    let sampled = ("LEAKSCOPE_SAMPLE_BYTES", "4k");
    let why = "the leak check needs full mode: sampling mode (LEAKSCOPE_SAMPLE_BYTES) tracks only sampled blocks";
    let out = run_child("return", &[gate, sampled]);
    assert_eq!(out.status.code(), Some(23));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("leakscope: the leak check did not run ({why})")),
        "{lines:?}"
    );
    assert!(lines[0].ends_with("exit status 23"), "{lines:?}");

    let path = scratch("sampled.txt");
    let out = run_child(
        "return",
        &[gate, sampled, ("LEAKSCOPE_REPORT", path.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(23));
    assert_eq!(stderr_lines(&out).len(), 1, "{out:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("not done: {why}")), "{text}");
    // Without the gate, the report still says so, and the status is the program's.
    let out = run_child(
        "return",
        &[sampled, ("LEAKSCOPE_REPORT", path.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains(&format!("not done: {why}")));
}
