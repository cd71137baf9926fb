//! The example's own output, as the README promises it: each endpoint's
//! growth per run, the full leak check's summary, and who holds the growing
//! cache. (`.ci/run` checks the same lines on the release build.)

use std::process::Command;

#[test]
fn the_report_names_each_leaking_endpoint() {
    let out = Command::new(env!("CARGO_BIN_EXE_leaky_service"))
        .env_remove("LEAKSCOPE_REPORT")
        .env_remove("LEAKSCOPE_SAMPLE_BYTES")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap();
    let line = |scope: &str| {
        text.lines()
            .find(|l| l.contains(&format!("  {scope}:")) && l.contains(" runs, "))
            .unwrap_or_else(|| panic!("no line for {scope}:\n{text}"))
            .to_owned()
    };
    assert!(
        line("GET /graph").contains(
            " 500 runs, 3,500 blocks / 160,000 bytes outstanding, +7 blocks (+320 bytes) per run"
        ),
        "{text}"
    );
    assert!(
        line("GET /graph-fixed").contains(" +0 blocks (+0 bytes) per run"),
        "{text}"
    );
    assert!(
        line("POST /orders").contains(" +1.34 blocks (+64 bytes) per run"),
        "{text}"
    );
    assert!(
        line("GET /users/{id}").contains(" +2 blocks (+172 bytes) per run"),
        "{text}"
    );
    assert!(text.contains("LEAK SUMMARY:"), "{text}");
    let lost = |kind: &str| {
        text.lines()
            .find_map(|l| {
                l.split_once(&format!("{kind}: "))
                    .map(|(_, r)| r.to_owned())
            })
            .unwrap_or_else(|| panic!("no {kind} line:\n{text}"))
    };
    assert!(!lost("definitely lost").starts_with("0 bytes"), "{text}");
    assert!(!lost("indirectly lost").starts_with("0 bytes"), "{text}");
    assert!(
        text.contains("held by static `leaky_service::RESPONSE_CACHE`"),
        "{text}"
    );
}
