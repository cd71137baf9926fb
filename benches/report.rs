//! How fast a report is made: 1,000,000 live blocks over 10,000 call-sites
//! (100 callers times 100 allocating functions, 100 blocks each), then
//! `snapshot()` (merge the counters, walk the blocks, symbolize every stack)
//! and the text and JSON documents (and every other format), `metrics_text()`
//! (the first, then 21 more), then the full leak check of the same
//! blocks, with the retention path of each. Prints seconds for each; the
//! targets are a snapshot in under 1 s and a leak check in under 2 s. `cargo bench --bench report`
//!
//! Not a criterion bench: one report of a million blocks is the measurement,
//! and the process must use the tracker as its global allocator.

#![allow(clippy::vec_box)] // the boxes are the planted blocks

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

use std::hint::black_box;
use std::time::Instant;

const PER_SITE: usize = 100;

/// Calls `$f::<N>` for the `N` in the list that equals `$i`: one call
/// instruction per `N`, so each is its own return address.
macro_rules! fan {
    ($i:expr, $f:ident, $arg:expr; $($n:literal),*) => {
        match $i {
            $($n => $f::<$n>($arg),)*
            _ => unreachable!(),
        }
    };
}

#[inline(never)]
fn leaf<const J: usize>(out: &mut Vec<Box<[u8; 24]>>) {
    for _ in 0..PER_SITE {
        out.push(black_box(Box::new([J as u8; 24])));
    }
}

#[inline(never)]
fn caller<const K: usize>((j, out): (usize, &mut Vec<Box<[u8; 24]>>)) {
    fan!(j, leaf, out; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99)
}

fn main() {
    let sites = 100 * 100;
    let mut live: Vec<Box<[u8; 24]>> = Vec::with_capacity(sites * PER_SITE);
    let start = Instant::now();
    for k in 0..100 {
        for j in 0..100 {
            fan!(k, caller, (j, &mut live); 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99);
        }
    }
    let made = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let report = leakscope::snapshot();
    let snap = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let text = report.to_string();
    let text_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let json = report.to_json();
    let json_secs = start.elapsed().as_secs_f64();
    let planted: Vec<_> = report.callsites_in("leaf").collect();
    assert_eq!(planted.len(), sites, "one call-site per caller and leaf");
    assert!(planted.iter().all(|c| c.live_blocks == PER_SITE as u64));
    println!(
        "{} live blocks at {} call-sites (made in {made:.2} s): snapshot {snap:.3} s, text {text_secs:.3} s ({} bytes), JSON {json_secs:.3} s ({} bytes)",
        live.len(),
        planted.len(),
        text.len(),
        json.len(),
    );
    let start = Instant::now();
    let pprof = report.to_pprof();
    let pprof_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let folded = report.to_folded();
    let folded_secs = start.elapsed().as_secs_f64();
    assert!(folded.lines().count() >= sites);
    let start = Instant::now();
    let mut svg = Vec::new();
    report.write_flamegraph(&mut svg).expect("flamegraph");
    let svg_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let html = report.to_html();
    let html_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let dhat = report.to_dhat_json();
    let dhat_secs = start.elapsed().as_secs_f64();
    println!(
        "pprof {pprof_secs:.3} s ({} bytes gzipped), folded {folded_secs:.3} s ({} bytes), flamegraph {svg_secs:.3} s ({} bytes), HTML {html_secs:.3} s ({} bytes), DHAT {dhat_secs:.3} s ({} bytes)",
        pprof.len(),
        folded.len(),
        svg.len(),
        html.len(),
        dhat.len()
    );
    let doc: serde_json::Value = serde_json::from_str(&dhat).expect("valid JSON");
    assert!(doc["pps"].as_array().map_or(0, Vec::len) >= sites);
    drop(doc);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert!(doc["callsites"].as_array().map_or(0, Vec::len) >= sites);
    drop(doc);
    // A second snapshot: symbols come from the loaded debug info again.
    let start = Instant::now();
    let again = leakscope::snapshot();
    println!("second snapshot {:.3} s", start.elapsed().as_secs_f64());
    drop(again);

    // `/metrics` over the same call-sites: the first read symbolizes the
    // largest call-sites' first frames, every later one reads counters.
    let start = Instant::now();
    let first = leakscope::metrics_text();
    let first_secs = start.elapsed().as_secs_f64();
    assert!(
        first.contains("leakscope_callsite_live_bytes{function=\"report::leaf\"} 24000000\n"),
        "{first}"
    );
    let mut each: Vec<f64> = (0..21)
        .map(|_| {
            let start = Instant::now();
            black_box(leakscope::metrics_text());
            start.elapsed().as_secs_f64()
        })
        .collect();
    each.sort_by(f64::total_cmp);
    println!(
        "metrics_text: first {:.2} ms, then {:.3} ms (median of 21; {} bytes): {:.3}% of one core at a scrape a second",
        first_secs * 1e3,
        each[10] * 1e3,
        first.len(),
        each[10] * 100.0
    );

    // The full leak check of the same million blocks: all held by `live`
    // (still reachable), then with half of them forgotten (definitely lost).
    let start = Instant::now();
    let checked = leakscope::leak_check();
    let check_secs = start.elapsed().as_secs_f64();
    let lc = checked.leak_check.as_ref().expect("a leak check");
    assert_eq!(lc.error, None);
    let planted = |kind: leakscope::report::LeakKind| -> u64 {
        lc.loss_records
            .iter()
            .filter(|r| r.kind == kind)
            .filter(|r| {
                checked
                    .callsite(r.callsite)
                    .is_some_and(|c| c.function().is_some_and(|f| f.contains("leaf")))
            })
            .map(|r| r.blocks)
            .sum()
    };
    assert_eq!(
        planted(leakscope::report::LeakKind::StillReachable),
        (sites * PER_SITE) as u64
    );
    // Who holds them: `main`'s `live`, then its buffer, then the leaves
    // (a leaf or two straight from `main`'s frame, where a copy of its
    // pointer stayed).
    let held_by_main = |hops: usize| {
        lc.loss_records
            .iter()
            .filter(|r| r.kind == leakscope::report::LeakKind::StillReachable)
            .filter(|r| {
                checked
                    .callsite(r.callsite)
                    .is_some_and(|c| c.function().is_some_and(|f| f.contains("leaf")))
            })
            .filter_map(|r| r.retained_by.as_ref().map(|by| (r, by)))
            .filter(|(_, by)| {
                by.root.kind == leakscope::report::RootKind::Stack
                    && by.root.function.as_deref() == Some("report::main")
                    && (hops == 0 || by.path.len() == hops)
            })
            .map(|(r, _)| r.blocks)
            .sum::<u64>()
    };
    assert_eq!(held_by_main(0), (sites * PER_SITE) as u64);
    assert!(held_by_main(2) + 10 >= (sites * PER_SITE) as u64);
    let lost = live.len() / 2;
    for b in live.drain(..lost) {
        std::mem::forget(b);
    }
    live.shrink_to_fit();
    let start = Instant::now();
    let checked = leakscope::leak_check();
    let lost_secs = start.elapsed().as_secs_f64();
    let lc = checked.leak_check.as_ref().expect("a leak check");
    assert_eq!(lc.error, None);
    println!(
        "leak_check() of {} live blocks: {check_secs:.3} s (all reachable), {lost_secs:.3} s ({} definitely lost, {} still reachable)",
        sites * PER_SITE,
        lc.definitely_lost.blocks,
        lc.still_reachable.blocks,
    );
    drop(live);
}
