//! What the `leakscope` command reads: a saved report. `Report::from_json`,
//! then what `diff`, `check` and `convert` do with one (the diff is the
//! command's own code, compiled in).
#![no_main]
use leakscope::report::Report;
use libfuzzer_sys::fuzz_target;

#[path = "../../cli/src/diff.rs"]
#[allow(dead_code)]
mod diff;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(report) = Report::from_json(text) else {
        return;
    };
    // `convert`: every format.
    let _ = report.to_json();
    let _ = report.to_string();
    let _ = report.to_html();
    let _ = report.to_folded();
    let _ = report.to_dhat_json();
    let _ = report.to_pprof();
    let _ = report.write_flamegraph(&mut Vec::new());
    // `check`: per-run figures, scopes and call-sites by name and id.
    for s in &report.scopes {
        let _ = (s.bytes_per_run(), s.blocks_per_run());
        let _ = report.scope(&s.name);
    }
    if let Some(lc) = &report.leak_check {
        let _ = lc.has_leaks();
        for r in &lc.loss_records {
            let _ = report.callsite(r.callsite).and_then(|c| c.function());
        }
    }
    // What it writes, it reads back.
    let again = Report::from_json(&report.to_json()).expect("its own JSON reads back");
    // `diff`: the report against what it wrote, text and JSON.
    let (a, b) = (
        std::path::Path::new("a.json"),
        std::path::Path::new("b.json"),
    );
    let d = diff::Diff::between(&again, &report);
    let _ = (d.to_text(a, b), d.to_json(a, b));
});
