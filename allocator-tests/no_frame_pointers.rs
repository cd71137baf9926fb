//! One line really is enough: a program built without frame pointers (as
//! Rust builds are by default) gets right stacks from the DWARF fallback, and
//! its report says so and how to make it fast.
//!
//! Builds `allocator-tests/no-frame-pointers` (its own crate, so the whole
//! build, leakscope included, goes without frame pointers) into
//! `target/no-frame-pointers`, then runs it with each unwinder setting.

mod common;

use common::Deadline;

use std::path::PathBuf;
use std::process::Command;

/// Five planted functions: (name, blocks left live, bytes each).
const PLANTED: [(&str, u64, u64); 5] = [
    ("leak_one", 1, 16),
    ("leak_two", 2, 32),
    ("leak_three", 3, 48),
    ("leak_four", 4, 64),
    ("leak_five", 5, 80),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The planted program, built without frame pointers (once per target dir).
fn build() -> PathBuf {
    build_with(&[], "no-frame-pointers")
}

/// The same, with `config` for cargo, into `target/<name>`.
fn build_with(config: &[&str], name: &str) -> PathBuf {
    let dir = root().join("allocator-tests/no-frame-pointers");
    let lock = dir.join("Cargo.lock");
    if !lock.exists() {
        // The versions this repository is tested with.
        std::fs::copy(root().join("Cargo.lock"), &lock).unwrap();
    }
    let target = root().join("target").join(name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["build", "--quiet"])
        .args(config)
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        // Overrides this repository's `.cargo/config.toml`, which forces them.
        .env("RUSTFLAGS", "-C force-frame-pointers=no")
        .output_within(common::BUILD_SECS)
        .expect("run cargo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug/planted-no-frame-pointers")
}

/// Runs the planted program with `unwind` (`None`: not set); its JSON
/// report and its stderr.
fn run(exe: &PathBuf, unwind: Option<&str>, name: &str) -> (serde_json::Value, String) {
    // Under the target directory (replaced by the next run), not /tmp.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-frame-pointers");
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join(format!("{name}.json"));
    let mut cmd = Command::new(exe);
    cmd.env("LEAKSCOPE_REPORT", &json)
        .env("LEAKSCOPE_LEAK_CHECK", "no")
        .env_remove("LEAKSCOPE_UNWIND");
    if let Some(u) = unwind {
        cmd.env("LEAKSCOPE_UNWIND", u);
    }
    let out = cmd.output_within(common::CHILD_SECS).unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (doc, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// (live blocks, live bytes) of the call-site whose first frame is `function`.
fn planted(doc: &serde_json::Value, function: &str) -> Option<(u64, u64)> {
    let want = format!("planted_no_frame_pointers::{function}");
    doc["callsites"].as_array().unwrap().iter().find_map(|c| {
        (c["frames"][0]["function"].as_str() == Some(&want)).then(|| {
            (
                c["live_blocks"].as_u64().unwrap(),
                c["live_bytes"].as_u64().unwrap(),
            )
        })
    })
}

fn the_fallback_gives_exact_stacks_and_says_how_to_be_fast() {
    let exe = build();
    let (doc, stderr) = run(&exe, None, "auto");
    assert_eq!(doc["unwinder"], "dwarf_fallback");
    for (function, blocks, bytes) in PLANTED {
        assert_eq!(
            planted(&doc, function),
            Some((blocks, blocks * bytes)),
            "{function}"
        );
    }
    // Said once on stderr, at the report, with the fix.
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("leakscope: stacks come from DWARF unwinding"),
        "{stderr}"
    );
    assert!(lines[0].contains("force-frame-pointers=yes"), "{stderr}");
    // LEAKSCOPE_UNWIND=dwarf: the same stacks, and no fallback to speak of.
    let (doc, stderr) = run(&exe, Some("dwarf"), "dwarf");
    assert_eq!(doc["unwinder"], "dwarf");
    assert_eq!(planted(&doc, "leak_five"), Some((5, 400)));
    assert_eq!(stderr, "");
    // LEAKSCOPE_UNWIND=fp: the old behaviour, the chain breaks at once.
    let (doc, _) = run(&exe, Some("fp"), "fp");
    assert_eq!(doc["unwinder"], "frame_pointers");
    let found = PLANTED
        .iter()
        .filter(|p| planted(&doc, p.0).is_some())
        .count();
    assert!(found < PLANTED.len(), "{doc}");
}

/// The text report `exe` writes to stderr at exit (and anything else there).
fn text_report(exe: &PathBuf) -> String {
    let out = Command::new(exe)
        .env("LEAKSCOPE_REPORT", "stderr")
        .env("LEAKSCOPE_LEAK_CHECK", "no")
        .env_remove("LEAKSCOPE_UNWIND")
        .output_within(common::CHILD_SECS)
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn the_text_report_names_the_fallback() {
    let exe = build();
    let text = text_report(&exe);
    assert!(
        text.contains("stacks: DWARF unwinding, since this program is built without frame pointers (for full speed build with frame pointers: in .cargo/config.toml, [build] rustflags = [\"-C\", \"force-frame-pointers=yes\"])"),
        "{text}"
    );
    // Files relative to the planted crate's root, where it was built.
    assert!(
        text.contains("planted_no_frame_pointers::leak_five (src/main.rs:"),
        "{text}"
    );
}

/// A build without debug info: frames have names and no file or line, and
/// the report says how to get them, once.
fn a_report_without_lines_says_how_to_get_them() {
    let exe = build_with(
        &["--config", "profile.dev.debug=0"],
        "no-frame-pointers-no-debug",
    );
    let text = text_report(&exe);
    let hint = "frames have no file and line: build with line tables, in Cargo.toml [profile.release] debug = \"limited\"";
    assert_eq!(text.matches(hint).count(), 1, "{text}");
    assert!(
        text.contains(": planted_no_frame_pointers::leak_five\n"),
        "{text}"
    );
    // The build with line tables has no such line.
    assert!(!text_report(&build()).contains(hint));
}

fn main() {
    common::run(&[
        (
            "a_report_without_lines_says_how_to_get_them",
            a_report_without_lines_says_how_to_get_them,
        ),
        (
            "the_fallback_gives_exact_stacks_and_says_how_to_be_fast",
            the_fallback_gives_exact_stacks_and_says_how_to_be_fast,
        ),
        (
            "the_text_report_names_the_fallback",
            the_text_report_names_the_fallback,
        ),
    ]);
}
