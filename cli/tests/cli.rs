//! The `leakscope` command on reports the leaky service example writes:
//! 1,000 and 2,000 requests (diff: exactly what the second thousand added),
//! and the same service with its leaks fixed (check passes). Every bad
//! input gets one line on stderr and exit status 2.

#[path = "../../allocator-tests/common/timeout.rs"]
#[allow(dead_code)]
mod timeout;

use leakscope::Report;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use timeout::{Deadline, BUILD_SECS, CHILD_SECS};

/// `file` in the profile's directory (beside this command), built by
/// `cargo build -p package`: always for a package `cargo test` builds
/// nothing of (the preload cdylib, which has no test: a library left from
/// an earlier build would be stale), else when it has not (only this
/// package tested). Rebuilding the example would relink it with other
/// features, under tests that run it.
fn built(file: &str, package: &str, always: bool) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_leakscope")).with_file_name(file);
    if always || !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status_within(BUILD_SECS)
            .unwrap();
        assert!(status.success());
    }
    path
}

/// The example's binary.
fn example() -> PathBuf {
    built("leaky_service", "leaky-service", false)
}

/// The reports, written once: `r1000.json`, `r2000.json`, `fixed.json`,
/// and `unchecked.json` (no leak check).
fn reports() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under the target directory (replaced by the next run), not /tmp.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-reports");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let runs: [(&str, &str, bool, bool); 4] = [
            ("r1000.json", "1000", false, true),
            ("r2000.json", "2000", false, true),
            ("fixed.json", "2000", true, true),
            ("unchecked.json", "100", false, false),
        ];
        for (file, requests, fixed, checked) in runs {
            let mut cmd = Command::new(example());
            cmd.env("LEAKY_SERVICE_REQUESTS", requests)
                .env("LEAKSCOPE_REPORT", dir.join(file));
            if fixed {
                cmd.env("LEAKY_SERVICE_FIXED", "1");
            }
            if !checked {
                cmd.env("LEAKSCOPE_LEAK_CHECK", "no");
            }
            let out = cmd.output_within(CHILD_SECS).unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
}

fn leakscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leakscope"))
        .args(args)
        .current_dir(reports())
        .env_remove("LEAKSCOPE_REPORT")
        .output_within(CHILD_SECS)
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn read(file: &str) -> Report {
    Report::from_json(&std::fs::read_to_string(reports().join(file)).unwrap()).unwrap()
}

#[test]
fn show_prints_the_text_report() {
    let out = leakscope(&["show", "r2000.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text, read("r2000.json").to_string());
    assert!(text.contains("GET /graph:"), "{text}");
    assert!(text.contains("+7 blocks (+320 bytes) per run"), "{text}");
    assert!(text.contains("LEAK SUMMARY:"), "{text}");
}

#[test]
fn diff_names_the_growing_scope_with_its_exact_growth() {
    let out = leakscope(&["diff", "r1000.json", "r2000.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // Requests 1,000 to 1,999: 125 of them GET /graph, each leaving its
    // 7-block cycle (320 bytes); the fixed tree and the health check none.
    assert!(
        text.contains("GET /graph:        +125 runs, +875 blocks / +40,000 bytes outstanding, +7 blocks (+320 bytes) per run"),
        "{text}"
    );
    assert!(
        text.contains("GET /graph-fixed:  +125 runs, +0 blocks / +0 bytes outstanding, +0 blocks (+0 bytes) per run"),
        "{text}"
    );
    assert!(
        text.contains("     at leaky_service::build_graph (examples/leaky-service/src/main.rs:")
    );

    let out = leakscope(&["diff", "r1000.json", "r2000.json", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let scopes = doc["scopes"].as_array().unwrap();
    let graph = scopes.iter().find(|s| s["name"] == "GET /graph").unwrap();
    assert_eq!(graph["runs"], 125);
    assert_eq!(graph["outstanding_blocks"], 875);
    assert_eq!(graph["outstanding_bytes"], 40_000);
    assert_eq!(graph["bytes_per_run"], 320.0);
    // Largest growth first.
    let bytes: Vec<i64> = scopes
        .iter()
        .map(|s| s["outstanding_bytes"].as_i64().unwrap())
        .collect();
    assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "{bytes:?}");
    // The call-sites in build_graph added exactly the scope's blocks: they
    // are matched across the two processes by their stacks.
    let in_graph = doc["callsites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["frames"][0]["function"] == "leaky_service::build_graph")
        .fold((0, 0), |(n, b), c| {
            (
                n + c["live_blocks"].as_i64().unwrap(),
                b + c["live_bytes"].as_i64().unwrap(),
            )
        });
    assert_eq!(in_graph, (875, 40_000));
}

#[test]
fn check_fails_the_leaky_run_and_passes_the_fixed_one() {
    let out = leakscope(&["check", "r2000.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("GET /graph: 320 bytes in 7 blocks per run (250 runs, 80,000 bytes outstanding), over its budget of 0 bytes per run"),
        "{text}"
    );
    assert!(!text.contains("GET /graph-fixed"), "{text}");

    let out = leakscope(&["check", "fixed.json", "--no-lost"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "ok: 7 scopes within their budgets, nothing lost\n"
    );

    // Budgets: GET /graph's own is exactly its growth; another is not.
    let out = leakscope(&[
        "check",
        "r2000.json",
        "--scope",
        "GET /graph=320",
        "--scope",
        "GET /health=0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "ok: 2 scopes within their budgets\n");
    let out = leakscope(&["check", "r2000.json", "--scope", "GET /graph=319"]);
    assert_eq!(out.status.code(), Some(1));
    let out = leakscope(&[
        "check",
        "r2000.json",
        "--max-bytes-per-run",
        "400",
        "--no-lost",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.starts_with("lost: "), "{text}");
    assert!(
        text.contains("definitely lost at leaky_service::"),
        "{text}"
    );
}

#[test]
fn check_growing_fails_the_scopes_that_keep_growing() {
    let out = leakscope(&["check", "r2000.json", "--growing"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "GET /users/{id}: keeps growing, 172.33 bytes per run lately (500 runs, 85,760 bytes outstanding)\n\
         GET /graph: keeps growing, 320 bytes per run lately (250 runs, 80,000 bytes outstanding)\n\
         POST /orders: keeps growing, 64 bytes per run lately (250 runs, 16,032 bytes outstanding)\n"
    );
    let allowed = [
        "check",
        "r2000.json",
        "--growing",
        "--allow-growth",
        "GET /users/{id}",
        "--allow-growth",
        "GET /graph",
    ];
    let out = leakscope(&allowed);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("POST /orders: keeps growing"));
    let out = leakscope(&[&allowed[..], &["--allow-growth", "POST /orders"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "ok: none of 7 scopes growing\n");
    let out = leakscope(&["check", "fixed.json", "--growing", "--no-lost"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "ok: none of 7 scopes growing, nothing lost\n");
}

#[test]
fn convert_writes_every_format() {
    let dir = reports();
    let saved = std::fs::read_to_string(dir.join("r2000.json")).unwrap();
    let report = read("r2000.json");
    for (out, check) in [
        ("c.json", "json"),
        ("c.txt", "text"),
        ("c.html", "html"),
        ("c.folded", "folded"),
        ("c.svg", "svg"),
        ("c.pb.gz", "pprof"),
        ("c.dhat.json", "dhat"),
    ] {
        let run = leakscope(&["convert", "r2000.json", "-o", out]);
        assert!(run.status.success(), "{out}: {}", stderr(&run));
        let bytes = std::fs::read(dir.join(out)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        match check {
            "json" => assert_eq!(text, saved),
            "text" => assert_eq!(text, report.to_string()),
            "html" => assert_eq!(text, report.to_html()),
            "folded" => assert_eq!(text, report.to_folded()),
            "svg" => assert!(text.contains("<svg") && text.contains("build_graph")),
            "pprof" => assert_eq!(&bytes[..2], b"\x1f\x8b", "gzip"),
            _ => {
                let doc: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(doc["dhatFileVersion"], 2);
                assert!(!doc["pps"].as_array().unwrap().is_empty());
            }
        }
    }
}

#[test]
fn bad_input_is_one_line_and_status_2() {
    let dir = reports();
    std::fs::write(dir.join("not.json"), "GET /users 200\n").unwrap();
    std::fs::write(dir.join("other.json"), r#"{"dhatFileVersion": 2}"#).unwrap();
    std::fs::write(dir.join("newer.json"), r#"{"schema": "leakscope/2"}"#).unwrap();
    // Reports missing what every writer writes.
    std::fs::write(dir.join("gutted.json"), r#"{"schema": "leakscope/1"}"#).unwrap();
    std::fs::write(dir.join("numbered.json"), r#"{"schema": 999}"#).unwrap();
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("r1000.json")).unwrap()).unwrap();
    doc.as_object_mut().unwrap().remove("scopes");
    std::fs::write(dir.join("no-scopes.json"), doc.to_string()).unwrap();
    let cases: [(&[&str], &str); 13] = [
        (&["show", "missing.json"], "leakscope: cannot read missing.json: "),
        (&["show", "."], "leakscope: cannot read .: "),
        (&["show", "not.json"], "leakscope: not.json: not JSON: "),
        (
            &["diff", "r1000.json", "other.json"],
            "leakscope: other.json: not a leakscope report: it has no \"schema\" field",
        ),
        (
            &["check", "newer.json"],
            "leakscope: newer.json: the report's schema is leakscope/2, newer than this leakscope reads (leakscope/1): update leakscope",
        ),
        (
            &["convert", "not.json", "-o", "x.html"],
            "leakscope: not.json: not JSON: ",
        ),
        (
            &["convert", "r1000.json", "-o", "/nonexistent/x.html"],
            "leakscope: cannot write /nonexistent/x.html: ",
        ),
        (
            &["check", "r1000.json", "--scope", "GET /nope=0"],
            "leakscope: --scope \"GET /nope\": the report has no such scope",
        ),
        (
            &["check", "unchecked.json", "--no-lost"],
            "leakscope: --no-lost: the report has no leak check",
        ),
        (
            &["check", "gutted.json"],
            "leakscope: gutted.json: the report: missing field `pid`",
        ),
        (
            &["check", "no-scopes.json"],
            "leakscope: no-scopes.json: the report: missing field `scopes`",
        ),
        (
            &["show", "numbered.json"],
            "leakscope: numbered.json: not a leakscope report: its \"schema\" is 999, not a string like \"leakscope/1\"",
        ),
        (
            &["check", "r1000.json", "--growing", "--allow-growth", "GET /nope"],
            "leakscope: --allow-growth \"GET /nope\": the report has no such scope",
        ),
    ];
    for (args, said) in cases {
        let out = leakscope(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with(said), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
    // A usage error is clap's, with the same status.
    let out = leakscope(&["check", "r1000.json", "--scope", "no-budget"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("panicked"));
}

/// A C program built here, which does not link leakscope: ten `strdup`
/// copies it loses and a block a static keeps.
const LEAKY_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static char *kept;
int main(int argc, char **argv) {
    for (int i = 0; i < 10; i++) {
        char *copy = strdup("lost, ten times");
        (void)copy;
    }
    kept = malloc(100);
    if (argc > 1 && strcmp(argv[1], "spawn") == 0) {
        pid_t child = fork();
        if (child == 0) {
            execl(argv[0], argv[0], "child", (char *)0);
            _exit(127);
        }
        int status = 0;
        waitpid(child, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    printf("hello %s\n", argc > 1 ? argv[1] : "");
    return argc > 2 ? atoi(argv[2]) : 0;
}
"#;

/// `leakscope run` on a binary nobody rebuilt: the program's output and
/// exit status are its own, the gate's status when it loses blocks, and the
/// report names its lost `strdup` copies and the static that keeps a block,
/// with its frames' file and line; a child it execs reports too.
#[test]
fn run_checks_a_c_program_that_does_not_link_leakscope() {
    built("libleakscope_preload.so", "leakscope-preload", true);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-c");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("leaky.c"), LEAKY_C).unwrap();
    let cc = Command::new("cc")
        .args(["-g", "-O0", "-o", "leaky", "leaky.c"])
        .current_dir(&dir)
        .status_within(BUILD_SECS)
        .unwrap();
    assert!(cc.success());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_leakscope"))
            .arg("run")
            .args(args)
            .current_dir(&dir)
            .output_within(CHILD_SECS)
            .unwrap()
    };
    // Its own exit status and output, with nothing asked of leakscope.
    let out = run(&["--", "./leaky", "world", "3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    assert_eq!(stderr(&out), "");
    // The gate's status, and the report.
    let out = run(&[
        "--report",
        "r.json",
        "--error-exitcode",
        "23",
        "./leaky",
        "again",
    ]);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello again\n");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("r.json")).unwrap()).unwrap();
    let lc = &doc["leak_check"];
    assert_eq!(
        (
            &lc["definitely_lost"]["blocks"],
            &lc["definitely_lost"]["bytes"]
        ),
        (&Value::from(10), &Value::from(160))
    );
    assert_eq!(lc["indirectly_lost"]["blocks"], 0);
    let frames = |id: &Value| -> Vec<(String, String, u64)> {
        let site = (doc["callsites"].as_array().unwrap().iter())
            .find(|c| &c["id"] == id)
            .unwrap();
        (site["frames"].as_array().unwrap().iter())
            .map(|f| {
                (
                    f["function"].as_str().unwrap_or("").to_owned(),
                    f["file"].as_str().unwrap_or("").to_owned(),
                    f["line"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let records = doc["loss_records"].as_array().unwrap();
    let lost = (records.iter())
        .find(|r| r["kind"] == "definitely_lost")
        .unwrap();
    let stack = frames(&lost["callsite"]);
    assert!(stack[0].0.contains("strdup"), "{stack:?}");
    assert_eq!(stack[1].0, "main", "{stack:?}");
    assert!(stack[1].1.ends_with("run-c/leaky.c"), "{stack:?}");
    assert_eq!(stack[1].2, 9, "{stack:?}");
    let kept = (records.iter())
        .find(|r| r["kind"] == "still_reachable" && r["bytes"] == 100)
        .unwrap();
    assert_eq!(kept["retained_by"]["root"]["name"], "kept");
    let stack = frames(&kept["callsite"]);
    assert_eq!((&stack[0].0[..], stack[0].2), ("main", 12), "{stack:?}");
    // The gate alone (no report asked) fails it too: the preloaded
    // tracker starts as it loads, not at a Rust allocation C code never makes.
    let out = run(&["--error-exitcode", "23", "./leaky"]);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    // A child it forks and execs inherits LD_PRELOAD: each process writes
    // its own report, with its own lost copies.
    let out = run(&["--report", "spawn-%p.json", "./leaky", "spawn"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut lost: Vec<(u64, u64)> = (std::fs::read_dir(&dir).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("spawn-"))
        .map(|n| {
            let doc: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(n)).unwrap()).unwrap();
            let d = &doc["leak_check"]["definitely_lost"];
            (doc["pid"].as_u64().unwrap(), d["blocks"].as_u64().unwrap())
        })
        .collect();
    lost.sort_unstable();
    assert_eq!(lost.len(), 2, "{lost:?}");
    assert!(
        lost[0].0 != lost[1].0 && lost.iter().all(|l| l.1 == 10),
        "{lost:?}"
    );
}

/// A program that links leakscope itself (the leaky service, with the
/// allocator line and `c-heap`) under `leakscope run`: the preloaded copy
/// says once that it stands aside, and the program's own tracker writes
/// the one report, scopes and all.
#[test]
fn run_stands_aside_for_a_program_that_links_leakscope() {
    built("libleakscope_preload.so", "leakscope-preload", true);
    let out = Command::new(env!("CARGO_BIN_EXE_leakscope"))
        .args(["run", "--report", "stderr", "--"])
        .arg(example())
        .output_within(CHILD_SECS)
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let count = |s: &str| err.matches(s).count();
    assert_eq!(count("the preloaded leakscope stands aside"), 1, "{err}");
    assert_eq!(count("LEAK SUMMARY:"), 1, "{err}");
    assert!(err.contains("  GET /graph: "), "{err}");
}
