//! The `leakscope` command on reports the leaky service example writes:
//! 1,000 and 2,000 requests (diff: exactly what the second thousand added),
//! and the same service with its leaks fixed (check passes). Every bad
//! input gets one line on stderr and exit status 2.

mod support;

use leakscope::Report;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use support::{example, Deadline, CHILD_SECS};

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
