//! Sampling mode: exact totals and scope runs; unbiased call-site and scope
//! estimates within the documented bound (standard deviation of a site's
//! estimated bytes at most sqrt(B * N)), checked with a fixed seed so every
//! run is the same. Blocks far larger than the interval (N = 4 KiB here)
//! are sampled almost surely (p = 1 - e^-16 at 64 KiB) and weigh their
//! size: the tests that follow a block through scopes and threads use them.
//!
//! The program runs itself as a child with `LEAKSCOPE_SAMPLE_SEED` set, since
//! the seed is read at the first allocation.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system().sample_bytes(MEAN);

mod common;

use common::Deadline;

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::process::Command;

const MEAN: usize = 4096;
const SEED_VAR: &str = "LEAKSCOPE_SAMPLE_SEED";
const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

#[inline(never)]
fn small_blocks(v: &mut Vec<Box<[u8]>>, n: usize, size: usize) {
    for _ in 0..n {
        v.push(black_box(vec![7u8; size].into_boxed_slice()));
    }
}

#[inline(never)]
fn large_blocks(v: &mut Vec<Box<[u8]>>, n: usize, size: usize) {
    for _ in 0..n {
        v.push(black_box(vec![9u8; size].into_boxed_slice()));
    }
}

/// The bound the docs state: sd of the bytes estimate <= sqrt(B * N).
fn bytes_bound(bytes: u64) -> f64 {
    (bytes as f64 * MEAN as f64).sqrt()
}

/// sd of the block-count estimate for `n` blocks of `size` bytes:
/// sqrt(n * (1-p)/p).
fn blocks_sd(n: u64, size: usize) -> f64 {
    let p = 1.0 - (-(size as f64) / MEAN as f64).exp();
    (n as f64 * (1.0 - p) / p).sqrt()
}

fn totals() -> leakscope::report::Totals {
    leakscope::snapshot().totals
}

fn totals_and_runs_stay_exact() {
    let before = totals();
    let mut summaries = 0u64;
    let kept: Vec<Vec<u8>> = (0..100)
        .map(|_| {
            let mut guard_out = Vec::new();
            let summary = {
                let g = leakscope::scope("GET /sampled");
                let keep = black_box(vec![1u8; 4000]);
                let temp = black_box(vec![2u8; 300]);
                drop(temp);
                guard_out.push(keep);
                g.finish()
            };
            summaries += summary.outstanding_bytes;
            guard_out.pop().unwrap()
        })
        .collect();
    let r = leakscope::snapshot();
    assert_eq!(r.sample_bytes, MEAN as u64);
    let s = r.scope("GET /sampled").unwrap();
    assert_eq!(s.runs, 100);
    // Outstanding: estimates of the 100 kept blocks (and each run's outer
    // Vec, freed after its close), from the scope and from the summaries.
    let truth = 100 * (4000 + 4 * 24);
    let p = |size: f64| 1.0 - (-size / MEAN as f64).exp();
    let sd = (100.0
        * [4000.0f64, 96.0]
            .iter()
            .map(|&b| b * b * (1.0 - p(b)) / p(b))
            .sum::<f64>())
    .sqrt();
    eprintln!(
        "scope: {} bytes outstanding estimated, summaries {summaries}, {truth} true, sd {sd:.0}",
        s.outstanding_bytes
    );
    assert!(
        s.outstanding_bytes.abs_diff(100 * 4000) as f64 <= 4.0 * sd,
        "{s:?}"
    );
    assert!(summaries.abs_diff(truth) as f64 <= 4.0 * sd, "{summaries}");
    let after = r.totals;
    // Live: the 100 kept blocks and `kept`'s own buffer.
    assert_eq!(after.live_blocks - before.live_blocks, 101);
    assert_eq!(
        after.live_bytes - before.live_bytes,
        400_000 + 100 * std::mem::size_of::<Vec<u8>>() as u64
    );
    assert_eq!(after.total_blocks - before.total_blocks, 100 * 3 + 1);
    drop(kept);
    let s = leakscope::snapshot();
    // A free takes away exactly the weight its allocation added.
    let scope = s.scope("GET /sampled").unwrap();
    assert_eq!((scope.outstanding_blocks, scope.outstanding_bytes), (0, 0));
    assert_eq!(s.totals.live_blocks, before.live_blocks);
}

fn estimates_within_the_stated_bound() {
    let n = 100_000u64;
    // The holders are made here, so that the planted functions allocate only
    // the planted blocks.
    let mut small = Vec::with_capacity(n as usize);
    small_blocks(&mut small, n as usize, 64);
    let mut large = Vec::with_capacity(500);
    large_blocks(&mut large, 500, 10_000);
    let r = leakscope::snapshot();
    let s = common::site(&r, "small_blocks");
    let l = common::site(&r, "large_blocks");
    assert_eq!((s.sites, l.sites), (1, 1));
    let truth = n * 64;
    let err = s.live_bytes.abs_diff(truth) as f64;
    eprintln!(
        "small: {} blocks / {} bytes estimated, {n} / {truth} true, bound sd {:.0}",
        s.live_blocks,
        s.live_bytes,
        bytes_bound(truth)
    );
    assert!(err <= 4.0 * bytes_bound(truth), "{s:?}");
    assert!(
        s.live_blocks.abs_diff(n) as f64 <= 4.0 * blocks_sd(n, 64),
        "{s:?}"
    );
    let ltruth = 500 * 10_000u64;
    assert!(
        l.live_bytes.abs_diff(ltruth) as f64 <= 4.0 * bytes_bound(ltruth),
        "{l:?}"
    );
    assert!(
        l.live_blocks.abs_diff(500) as f64 <= 4.0 * blocks_sd(500, 10_000),
        "{l:?}"
    );
    // Far fewer blocks were sampled than allocated: about B/N of them.
    assert!(s.total_blocks > 0);
    drop(small);
    drop(large);
    // A free takes away exactly the weight its allocation added.
    let r = leakscope::snapshot();
    assert_eq!(common::site(&r, "small_blocks").live_bytes, 0);
    assert_eq!(common::site(&r, "small_blocks").live_blocks, 0);
    assert_eq!(common::site(&r, "large_blocks").live_bytes, 0);
}

#[inline(never)]
fn trial_blocks(v: &mut Vec<Box<[u8]>>, n: usize) {
    for _ in 0..n {
        v.push(black_box(vec![3u8; 100].into_boxed_slice()));
    }
}

fn estimates_are_unbiased_over_trials() {
    let trials = 60;
    let n = 20_000u64;
    let truth = n * 100;
    let bound = bytes_bound(truth);
    let mut errors = Vec::new();
    for _ in 0..trials {
        let mut v = Vec::with_capacity(n as usize);
        trial_blocks(&mut v, n as usize);
        let est = common::site_now("trial_blocks").live_bytes;
        errors.push(est as f64 - truth as f64);
        drop(v);
    }
    let mean_err = errors.iter().sum::<f64>() / trials as f64;
    let within_2sd = errors.iter().filter(|e| e.abs() <= 2.0 * bound).count();
    eprintln!(
        "trials: mean error {mean_err:.0} bytes of {truth} (sd of the mean at most {:.0}), {within_2sd}/{trials} within 2 sd",
        bound / (trials as f64).sqrt()
    );
    // Unbiased: the mean error is within 3 standard errors of 0.
    assert!(mean_err.abs() <= 3.0 * bound / (trials as f64).sqrt());
    // The bound holds: at least 90% within 2 sd (95% expected at worst).
    assert!(within_2sd * 10 >= trials * 9, "{within_2sd}/{trials}");
    assert!(errors.iter().all(|e| e.abs() <= 4.0 * bound));
}

fn frees_on_other_threads_and_realloc_take_back_their_weight() {
    let before = totals();
    let (v, summary) = {
        let g = leakscope::scope("POST /grow");
        let mut v: Vec<u64> = Vec::new();
        for i in 0..100_000 {
            v.push(i);
        }
        (v, g.finish())
    };
    // Every growth was a realloc: a free and a new block; one is left, of
    // 1 MiB, sampled surely (and outside the region: larger than a slot).
    assert_eq!(v.capacity(), 131_072);
    assert_eq!(summary.outstanding_blocks, 1);
    assert_eq!(summary.outstanding_bytes, v.capacity() as u64 * 8);
    let t = totals();
    assert_eq!(t.live_blocks - before.live_blocks, 1);
    assert_eq!(t.live_bytes - before.live_bytes, 1 << 20);
    // The growth from 4 elements to 131,072: 16 blocks made.
    assert_eq!(t.total_blocks - before.total_blocks, 16);
    let s = leakscope::snapshot();
    assert_eq!(s.scope("POST /grow").unwrap().outstanding_blocks, 1);
    std::thread::spawn(move || drop(black_box(v)))
        .join()
        .unwrap();
    let s = leakscope::snapshot();
    let g = s.scope("POST /grow").unwrap();
    assert_eq!((g.outstanding_blocks, g.outstanding_bytes), (0, 0));
    assert_eq!(s.totals.live_blocks, before.live_blocks);
}

/// Blocks of a run freed on another thread while the run is open, one in
/// the region and one outside it.
fn remote_free_inside_an_open_run() {
    // A thread and its channels made before the scope, so that the scope
    // holds exactly the planted blocks.
    let (to_worker, inbox) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    let (done, acks) = std::sync::mpsc::sync_channel::<()>(1);
    let worker = std::thread::spawn(move || {
        for b in inbox {
            drop(black_box(b));
            done.send(()).unwrap();
        }
    });
    // One round trip first: a blocking channel call makes its thread's
    // waiting context on first use, and that must not land in the scope.
    to_worker.send(Vec::new()).unwrap();
    acks.recv().unwrap();
    let g = leakscope::scope("PUT /pending");
    let kept = black_box(vec![1u8; 70_000]);
    let sent = black_box(vec![2u8; 50_000]);
    to_worker.send(sent).unwrap();
    acks.recv().unwrap();
    // A report made inside the run sees this thread's counts so far.
    let now = leakscope::snapshot();
    let s = now.scope("PUT /pending").unwrap();
    assert_eq!((s.outstanding_blocks, s.outstanding_bytes), (1, 70_000));
    drop(now);
    let summary = g.finish();
    assert_eq!(summary.allocated_blocks, 2, "{summary:?}");
    assert_eq!(summary.allocated_bytes, 120_000);
    assert_eq!(summary.outstanding_blocks, 1);
    assert_eq!(summary.outstanding_bytes, 70_000);
    drop(to_worker);
    worker.join().unwrap();
    drop(kept);
    let s = leakscope::snapshot();
    assert_eq!(s.scope("PUT /pending").unwrap().outstanding_blocks, 0);
}

/// Runs that keep no per-call-site counts (`track_scope`'s, a future's) tag
/// their blocks with the scope alone, so two runs of one scope share a tag.
/// A block of one, freed on another thread inside the other, leaves its scope
/// once; a block freed inside another scope's run leaves its own scope.
fn uncounted_runs_of_one_scope_share_a_tag() {
    let a = leakscope::track_scope("tag-A", || black_box(vec![1u8; 100_021]));
    let b = leakscope::track_scope("tag-A", || black_box(vec![1u8; 100_022]));
    let c = leakscope::track_scope("tag-B", || black_box(vec![1u8; 100_023]));
    let r = leakscope::snapshot();
    assert_eq!(common::scope(&r, "tag-A"), (2, 2, 200_043));
    assert_eq!(common::scope(&r, "tag-B"), (1, 1, 100_023));
    drop(r);
    std::thread::spawn(move || {
        leakscope::track_scope("tag-A", || {
            drop(black_box(a));
            drop(black_box(c));
        });
        let r = leakscope::snapshot();
        assert_eq!(common::scope(&r, "tag-A"), (3, 1, 100_022));
        assert_eq!(common::scope(&r, "tag-B"), (1, 0, 0));
        drop(r);
        leakscope::track_scope("tag-B", || drop(black_box(b)));
    })
    .join()
    .unwrap();
    let r = leakscope::snapshot();
    assert_eq!(common::scope(&r, "tag-A"), (3, 0, 0));
    assert_eq!(common::scope(&r, "tag-B"), (2, 0, 0));
}

/// Allocates and frees in each poll, and keeps one block per poll.
struct Steps {
    left: u32,
    kept: Vec<Vec<u8>>,
}

impl std::future::Future for Steps {
    type Output = Vec<Vec<u8>>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        drop(black_box(vec![0u8; 100_000]));
        let keep = black_box(vec![1u8; 80_000]);
        self.kept.push(keep);
        self.left -= 1;
        if self.left == 0 {
            std::task::Poll::Ready(std::mem::take(&mut self.kept))
        } else {
            std::task::Poll::Pending
        }
    }
}

/// A scoped future polled here, then on another thread, with another run on
/// this thread between the polls: each thread's counts reach the right run.
fn future_polled_on_two_threads() {
    use leakscope::TrackScopeExt;
    let mut fut = Box::pin(
        Steps {
            left: 2,
            kept: Vec::with_capacity(2),
        }
        .track_scope("async-sampled"),
    );
    assert!(common::poll_once(&mut fut).is_pending());
    let between = leakscope::track_scope("between-sampled", || black_box(vec![2u8; 90_000]));
    let (kept, fut) = std::thread::spawn(move || {
        let std::task::Poll::Ready(kept) = common::poll_once(&mut fut) else {
            panic!("not ready")
        };
        (kept, fut)
    })
    .join()
    .unwrap();
    drop(fut);
    let r = leakscope::snapshot();
    assert_eq!(common::scope(&r, "async-sampled"), (1, 2, 160_000));
    assert_eq!(common::scope(&r, "between-sampled"), (1, 1, 90_000));
    drop(r);
    drop(kept);
    drop(between);
    let r = leakscope::snapshot();
    assert_eq!(r.scope("async-sampled").unwrap().outstanding_blocks, 0);
}

/// System, except that it refuses to grow a block past 1 MiB.
struct NoBigRealloc;

// SAFETY: forwards to System; a refused realloc returns null and leaves the
// block as it was, as the contract allows.
unsafe impl GlobalAlloc for NoBigRealloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if n > 1 << 20 {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded contract.
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}

/// Uses the process's sampling mode too (the mode is the process's).
static REFUSING: leakscope::LeakTracker<NoBigRealloc> = leakscope::LeakTracker::new(NoBigRealloc);

fn refused_realloc_keeps_block_and_counts() {
    // Larger than a slot: the block lives outside the region, so its growth
    // is the inner allocator's realloc, which refuses.
    let layout = Layout::from_size_align(100 * 1024, 8).unwrap();
    let before = totals();
    let g = leakscope::scope("PATCH /refused");
    // SAFETY: non-zero size; freed below with the layout it has then.
    unsafe {
        // Big enough to be sampled almost surely: its table entry too must survive.
        let p = REFUSING.alloc(layout);
        assert!(!p.is_null());
        std::ptr::write_bytes(p, 0x5A, layout.size());
        assert!(REFUSING.realloc(p, layout, 2 << 20).is_null());
        assert!(
            (0..layout.size()).all(|i| *p.add(i) == 0x5A),
            "contents kept"
        );
        let mid = leakscope::snapshot();
        assert_eq!(mid.totals.live_blocks - before.live_blocks, 1);
        assert_eq!(mid.totals.live_bytes - before.live_bytes, 100 * 1024);
        assert_eq!(
            mid.scope("PATCH /refused").unwrap().outstanding_bytes,
            100 * 1024
        );
        // Sampled (p = 1 - e^-25), and its table entry put back after the refusal.
        let site = common::site(&mid, "refused_realloc_keeps_block_and_counts");
        assert_eq!((site.live_blocks, site.live_bytes), (1, 100 * 1024));
        drop(mid);
        let q = REFUSING.realloc(p, layout, 200 * 1024);
        assert!(!q.is_null());
        assert!((0..layout.size()).all(|i| *q.add(i) == 0x5A));
        REFUSING.dealloc(q, Layout::from_size_align(200 * 1024, 8).unwrap());
    }
    let s = g.finish();
    assert_eq!((s.allocated_blocks, s.outstanding_blocks), (2, 0), "{s:?}");
    assert_eq!(totals().live_blocks, before.live_blocks);
}

/// A report's own blocks live in the region, uncounted; a block of it the
/// program grows becomes the program's block, counted from then on.
fn the_trackers_blocks_handed_to_the_program() {
    let before = totals();
    let mut r = leakscope::snapshot();
    r.callsites.reserve(100_000);
    let grown = r.callsites.capacity() * std::mem::size_of::<leakscope::report::Callsite>();
    let mid = totals();
    assert_eq!(mid.live_blocks - before.live_blocks, 1);
    assert_eq!(mid.live_bytes - before.live_bytes, grown as u64);
    drop(r);
    let after = totals();
    assert_eq!(after.live_blocks, before.live_blocks);
    assert_eq!(after.live_bytes, before.live_bytes);
}

#[inline(never)]
fn sampled_in_child(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .flat_map(|_| [vec![1u8; 100_000], vec![2u8; 60_000]])
        .collect()
}

/// `fork` while other threads make and free sampled blocks, in and
/// outside the region: the child finds no lock held and goes on.
fn fork_while_sampling() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    drop(black_box(vec![0u8; 70_000]));
                    drop(black_box(vec![0u8; 20_000]));
                }
            })
        })
        .collect();
    for _ in 0..10 {
        // SAFETY: the child allocates, reads the tracker and leaves with
        // _exit; every lock it may need is released by the fork handlers.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let before = totals();
            let kept = sampled_in_child(10);
            let r = leakscope::snapshot();
            let site = common::site(&r, "sampled_in_child");
            let ok = r.totals.live_blocks - before.live_blocks == 21
                && (site.live_blocks, site.live_bytes) == (20, 1_600_000)
                && kept.len() == 20;
            // SAFETY: ends the child at once, without the parent's exit hooks.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        common::expect_child_exits_cleanly(pid);
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
}

fn alignment_is_kept() {
    for align in [1usize, 8, 16, 32, 64, 4096, 65536] {
        let layout = Layout::from_size_align(100, align).unwrap();
        // SAFETY: non-zero size; freed with the same layout.
        unsafe {
            let p = GLOBAL.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "align {align}");
            std::ptr::write_bytes(p, 0xAB, 100);
            let q = GLOBAL.realloc(p, layout, 5000);
            assert_eq!(q as usize % align, 0, "realloc align {align}");
            assert_eq!(*q.add(99), 0xAB);
            std::ptr::write_bytes(q, 0xCD, 5000);
            GLOBAL.dealloc(q, Layout::from_size_align(5000, align).unwrap());
            let z = GLOBAL.alloc_zeroed(layout);
            assert!((0..100).all(|i| *z.add(i) == 0));
            GLOBAL.dealloc(z, layout);
        }
    }
}

fn child_report(env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD, "1").env(SEED_VAR, "7");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output_within(common::CHILD_SECS).unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn environment_overrides_the_constructor() {
    let (out, err) = child_report(&[("LEAKSCOPE_SAMPLE_BYTES", "0")]);
    assert_eq!(out.trim(), "sample_bytes=0 outstanding=3");
    assert_eq!(err, "");
    let (out, err) = child_report(&[("LEAKSCOPE_SAMPLE_BYTES", "64k")]);
    assert_eq!(out.trim(), "sample_bytes=65536 outstanding=3");
    assert_eq!(err, "");
    // A bad value: one line on stderr, the constructor's value, counts intact.
    let (out, err) = child_report(&[("LEAKSCOPE_SAMPLE_BYTES", "lots")]);
    assert_eq!(out.trim(), "sample_bytes=4096 outstanding=3");
    assert_eq!(
        err,
        "leakscope: LEAKSCOPE_SAMPLE_BYTES=\"lots\" is not a byte count (like 524288 or 512k); ignoring it\n"
    );
}

fn child() {
    let kept: Vec<Vec<u8>> = (0..3)
        .map(|_| leakscope::track_scope("GET /child", || vec![0u8; 1 << 20]))
        .collect();
    let r = leakscope::snapshot();
    println!(
        "sample_bytes={} outstanding={}",
        r.sample_bytes,
        r.scope("GET /child").unwrap().outstanding_blocks
    );
    drop(kept);
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    if std::env::var_os(SEED_VAR).is_none() {
        // Again, with a fixed seed from the first allocation on.
        let status = Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(SEED_VAR, "20261125")
            .env_remove("LEAKSCOPE_SAMPLE_BYTES")
            .status_within(common::CHILD_SECS)
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    common::run(&[
        ("totals_and_runs_stay_exact", totals_and_runs_stay_exact),
        (
            "estimates_within_the_stated_bound",
            estimates_within_the_stated_bound,
        ),
        (
            "estimates_are_unbiased_over_trials",
            estimates_are_unbiased_over_trials,
        ),
        (
            "frees_on_other_threads_and_realloc_take_back_their_weight",
            frees_on_other_threads_and_realloc_take_back_their_weight,
        ),
        (
            "uncounted_runs_of_one_scope_share_a_tag",
            uncounted_runs_of_one_scope_share_a_tag,
        ),
        (
            "remote_free_inside_an_open_run",
            remote_free_inside_an_open_run,
        ),
        ("future_polled_on_two_threads", future_polled_on_two_threads),
        (
            "refused_realloc_keeps_block_and_counts",
            refused_realloc_keeps_block_and_counts,
        ),
        ("alignment_is_kept", alignment_is_kept),
        ("growth_is_an_estimate", growth_is_an_estimate),
        (
            "the_trackers_blocks_handed_to_the_program",
            the_trackers_blocks_handed_to_the_program,
        ),
        ("fork_while_sampling", fork_while_sampling),
        (
            "environment_overrides_the_constructor",
            environment_overrides_the_constructor,
        ),
    ]);
}

/// `growth` in sampling mode: 64 KiB blocks are sampled almost surely, so
/// the estimate of one kept per run is within a hair of the truth, and
/// the summary says it is an estimate.
fn growth_is_an_estimate() {
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(64);
    let g = leakscope::growth(40, || kept.push(Vec::with_capacity(64 << 10)));
    assert_eq!((g.runs, g.sample_bytes), (40, MEAN as u64));
    assert!(
        (g.bytes_per_run - 65536.0).abs() <= 1.0 && (g.blocks_per_run - 1.0).abs() <= 0.01,
        "{g}"
    );
    assert!(g.to_string().contains("the figures are estimates"), "{g}");
}
