//! Call-sites: one per distinct allocating stack, with exact live, total and
//! peak counts; frames innermost first with the allocator's frames removed;
//! frees of blocks the tracker never saw passed through; text and JSON.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

#[inline(never)]
fn shared_helper(n: usize) -> Box<[u8; 48]> {
    let _ = black_box(n);
    Box::new([0u8; 48])
}

#[inline(never)]
#[allow(clippy::vec_box)] // the boxes are the planted allocations
fn caller_alpha(out: &mut Vec<Box<[u8; 48]>>) {
    for i in 0..5 {
        out.push(shared_helper(i));
    }
}

#[inline(never)]
#[allow(clippy::vec_box)]
fn caller_beta(out: &mut Vec<Box<[u8; 48]>>) {
    for i in 0..7 {
        out.push(shared_helper(i));
    }
}

#[inline(never)]
fn peak_site(n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(n); // a second call-site in peak_site
    for _ in 0..n {
        out.push(black_box(vec![0u8; 64]));
    }
    out
}

const JSON_SITE_LINE: u32 = line!() + 3;
#[inline(never)]
fn json_site() -> String {
    black_box("x".repeat(333))
}

fn main() {
    common::run(&[
        (
            "same_helper_two_callers_two_callsites",
            same_helper_two_callers_two_callsites,
        ),
        ("live_total_peak", live_total_peak),
        ("frames_start_at_user_code", frames_start_at_user_code),
        ("foreign_blocks_pass_through", foreign_blocks_pass_through),
        ("json_document", json_document),
        ("text_loss_records", text_loss_records),
    ]);
}

fn same_helper_two_callers_two_callsites() {
    let mut keep = Vec::with_capacity(16);
    caller_alpha(&mut keep);
    caller_beta(&mut keep);
    let r = leakscope::snapshot();
    let sites: Vec<_> = r.callsites_in("shared_helper").collect();
    // The same return address into shared_helper's allocation, two stacks.
    assert_eq!(sites.len(), 2, "{sites:#?}");
    let caller =
        |c: &leakscope::report::Callsite| c.frames.get(1).and_then(|f| f.function.clone()).unwrap();
    let alpha = sites
        .iter()
        .find(|c| caller(c).contains("caller_alpha"))
        .expect("alpha's site");
    let beta = sites
        .iter()
        .find(|c| caller(c).contains("caller_beta"))
        .expect("beta's site");
    assert_eq!(
        (alpha.live_blocks, alpha.live_bytes, alpha.total_blocks),
        (5, 240, 5)
    );
    assert_eq!(
        (beta.live_blocks, beta.live_bytes, beta.total_blocks),
        (7, 336, 7)
    );
    keep.truncate(3); // frees 2 of alpha's and all of beta's
    let r = leakscope::snapshot();
    let live: Vec<(u64, u64)> = r
        .callsites_in("shared_helper")
        .map(|c| (c.live_blocks, c.total_blocks))
        .collect();
    assert!(live.contains(&(3, 5)) && live.contains(&(0, 7)), "{live:?}");
}

fn live_total_peak() {
    let inner = |r: &leakscope::Report| {
        let c = r
            .callsites_in("peak_site")
            .find(|c| c.total_bytes % 64 == 0 && c.total_blocks >= 3)
            .unwrap();
        (
            c.live_blocks,
            c.live_bytes,
            c.total_blocks,
            c.total_bytes,
            c.peak_live_bytes,
        )
    };
    // Both rounds from one line: a call-site is the whole stack, caller included.
    let mut seen = Vec::new();
    for (n, keep) in [(10, 6), (3, 3)] {
        let mut v = peak_site(n);
        v.truncate(keep);
        seen.push(inner(&leakscope::snapshot()));
        if n == 10 {
            let s = common::site_now("peak_site");
            // Two call-sites: the 64-byte vectors and the outer vector (10 * 24 bytes).
            assert_eq!(
                (
                    s.sites,
                    s.live_blocks,
                    s.live_bytes,
                    s.total_blocks,
                    s.total_bytes
                ),
                (2, 7, 624, 11, 880)
            );
        }
    }
    assert_eq!(seen, [(6, 384, 10, 640, 640), (3, 192, 13, 832, 640)]);
    let r = leakscope::snapshot();
    assert!(r.totals.peak_live_bytes >= r.totals.live_bytes);
}

fn frames_start_at_user_code() {
    let _s = json_site();
    let r = leakscope::snapshot();
    let c = r
        .callsites_in("json_site")
        .next()
        .expect("a call-site in json_site");
    // Innermost first: json_site, then its caller, then the test runner.
    let names: Vec<&str> = c
        .frames
        .iter()
        .map(|f| f.function.as_deref().unwrap_or("?"))
        .collect();
    assert!(names[0].ends_with("json_site"), "{names:?}");
    assert!(names[1].ends_with("frames_start_at_user_code"), "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("common::run")),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("leakscope::") || n.contains("__rust_alloc")),
        "{names:?}"
    );
    let f = &c.frames[0];
    assert_eq!(f.file.as_deref(), Some("allocator-tests/callsites.rs"));
    assert_eq!(f.line, Some(JSON_SITE_LINE));
}

#[cfg(feature = "c-heap")]
extern "C" {
    /// glibc's malloc under its own name: past the process's `malloc`
    /// (which is the tracker's too, with feature `c-heap`).
    fn __libc_malloc(size: usize) -> *mut u8;
}

/// Without `c-heap` the process's `malloc` is not the tracker's: it is
/// glibc's, or AddressSanitizer's under `-Zsanitizer=address`, the one
/// `System` frees into.
#[cfg(not(feature = "c-heap"))]
unsafe fn __libc_malloc(size: usize) -> *mut u8 {
    // SAFETY: as the caller's.
    unsafe { libc::malloc(size).cast() }
}

fn foreign_blocks_pass_through() {
    let before = leakscope::snapshot().totals;
    let layout = Layout::from_size_align(1000, 8).unwrap();
    // SAFETY: a block of glibc's, freed through the tracker (which wraps
    // System, glibc's malloc): the tracker never saw it, so it must pass
    // it through uncounted.
    unsafe {
        let p = __libc_malloc(layout.size());
        assert!(!p.is_null());
        GLOBAL.dealloc(p, layout);
    }
    let after = leakscope::snapshot().totals;
    assert_eq!(
        after.total_blocks - before.total_blocks,
        after.live_blocks - before.live_blocks
    );
    assert_eq!(
        after.live_bytes, before.live_bytes,
        "a foreign free changed live bytes"
    );
    assert_eq!(
        after.live_blocks, before.live_blocks,
        "a foreign free changed live blocks"
    );
}

fn json_document() {
    let kept: Vec<String> = (0..4).map(|_| json_site()).collect();
    let r = leakscope::snapshot();
    let doc: serde_json::Value = serde_json::from_str(&r.to_json()).expect("valid JSON");
    assert_eq!(doc["schema"], "leakscope/1");
    assert_eq!(doc["pid"], std::process::id());
    assert_eq!(doc["totals"]["live_blocks"], r.totals.live_blocks);
    let site = doc["callsites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["frames"][0]["function"]
                .as_str()
                .is_some_and(|f| f.ends_with("json_site"))
                && c["live_blocks"] == 4
        })
        .expect("json_site in the document");
    assert_eq!(site["live_bytes"], 4 * 333);
    assert!(site["frames"][0]["ip"].as_str().unwrap().starts_with("0x"));
    assert_eq!(site["frames"][0]["file"], "allocator-tests/callsites.rs");
    drop(kept);
}

fn text_loss_records() {
    let kept: Vec<Vec<u8>> = (0..2).map(|_| vec![0u8; 1_000_000]).collect();
    let text = leakscope::snapshot().to_string();
    // The two megabyte blocks are the largest record: first, as valgrind orders
    // them largest last but we put the biggest where it is read first.
    let first = text
        .lines()
        .find(|l| l.contains("are outstanding in loss record"))
        .unwrap();
    assert!(
        first.contains("2,000,000 bytes in 2 blocks are outstanding in loss record 1 of"),
        "{first}"
    );
    assert!(
        text.contains("text_loss_records (allocator-tests/callsites.rs:"),
        "{text}"
    );
    assert!(text.contains("SUMMARY"), "{text}");
    drop(kept);
}
