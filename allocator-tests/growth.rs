//! Growth per run in tests: `growth` and `assert_no_growth!` on planted
//! growth (a cache keyed per call, a session forgotten every fifth call),
//! clean closures, scopes opened inside the runs, frees on another thread,
//! and many tests at once. Unlike the other scenario programs this one runs
//! under libtest's own harness, on its threads, in parallel, as users' tests
//! do: each test's figures must stay exact with the others running.

use leakscope::{assert_no_growth, growth, GrowthSummary};
use std::collections::HashMap;
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

/// A cache keyed per call: every call adds an entry, none is ever evicted.
#[inline(never)]
fn cache_user(cache: &mut HashMap<u64, Box<[u8; 96]>>, key: u64) {
    cache.insert(key, Box::new([key as u8; 96]));
}

struct Session {
    _state: [u8; 200],
}

/// Opens a session per call and forgets every fifth one (call 5, 10, ...).
#[inline(never)]
fn open_session(calls: &mut u64) {
    *calls += 1;
    let s = black_box(Box::new(Session { _state: [1; 200] }));
    if (*calls).is_multiple_of(5) {
        std::mem::forget(s);
    }
}

fn figures(g: &GrowthSummary) -> (u64, u64, u64, f64, f64) {
    (
        g.runs,
        g.outstanding_blocks,
        g.outstanding_bytes,
        g.blocks_per_run,
        g.bytes_per_run,
    )
}

fn site(g: &GrowthSummary, function: &str) -> (u64, u64) {
    let c = g
        .callsite_in(function)
        .unwrap_or_else(|| panic!("no call-site in {function}:\n{g}"));
    (c.blocks, c.bytes)
}

#[test]
fn a_cache_keyed_per_call_grows_one_entry_per_run() {
    let mut cache = HashMap::with_capacity(512);
    let mut key = 0;
    let g = growth(100, || {
        key += 1;
        cache_user(&mut cache, key);
    });
    // The warm-up's entry is not counted: 100 entries of 96 bytes.
    assert_eq!(figures(&g), (100, 100, 9600, 1.0, 96.0), "{g}");
    assert_eq!(g.by_callsite.len(), 1, "{g}");
    assert_eq!(site(&g, "growth::cache_user"), (100, 9600));
    assert_eq!(g.by_callsite[0].bytes_per_run, 96.0);
    assert!(g.tracked && g.sample_bytes == 0);
    let text = g.to_string();
    assert!(
        text.starts_with("leakscope growth: 100 runs (after a warm-up run) left 9,600 bytes in 100 blocks outstanding: 96 bytes in 1 block per run"),
        "{text}"
    );
    assert!(
        text.contains("9,600 bytes in 100 blocks (96 bytes in 1 block per run) left by"),
        "{text}"
    );
    assert!(
        text.contains(": growth::cache_user (allocator-tests/growth.rs:"),
        "{text}"
    );
}

#[test]
fn a_session_forgotten_every_fifth_call() {
    // Call 1 is the warm-up; runs are calls 2 to 101: 20 of them forget.
    let mut calls = 0;
    let g = growth(100, || open_session(&mut calls));
    assert_eq!(calls, 101);
    assert_eq!(figures(&g), (100, 20, 4000, 0.2, 40.0), "{g}");
    assert_eq!(site(&g, "growth::open_session"), (20, 4000));
    assert!(
        g.to_string()
            .contains("left 4,000 bytes in 20 blocks outstanding: 40 bytes in 0.20 blocks per run"),
        "{g}"
    );
}

#[test]
fn a_sequence_of_calls_is_one_closure() {
    let mut cache = HashMap::with_capacity(512);
    let (mut key, mut calls) = (0, 0);
    let g = growth(100, || {
        key += 1;
        cache_user(&mut cache, key);
        open_session(&mut calls);
        // Clean work in between: freed within the run.
        black_box(vec![0u8; 4096]);
    });
    assert_eq!(figures(&g), (100, 120, 13_600, 1.2, 136.0), "{g}");
    // Most bytes first.
    assert_eq!(g.by_callsite.len(), 2, "{g}");
    assert_eq!(site(&g, "growth::cache_user"), (100, 9600));
    assert_eq!(site(&g, "growth::open_session"), (20, 4000));
    assert!(g.by_callsite[0].function().unwrap().contains("cache_user"));
}

#[test]
fn clean_closures_pass() {
    assert_no_growth!(100, || black_box(vec![1u8; 1000]).len());
    let g = growth(50, || black_box(String::from("temporary")));
    assert_eq!(figures(&g), (50, 0, 0, 0.0, 0.0), "{g}");
    assert!(g.by_callsite.is_empty());
    assert!(!g.exceeds(0.0));
}

#[test]
fn a_value_replaced_each_run_leaves_its_last_copy() {
    // Each run frees the value an earlier run made; only the last run's
    // copy is left: one block over all the runs, not one per run.
    let mut last = vec![0u8; 64];
    let g = growth(100, || last = vec![1u8; 64]);
    assert_eq!(figures(&g), (100, 1, 64, 0.01, 0.64), "{g}");
    assert_no_growth!(100, || last = vec![2u8; 64], max_bytes_per_run = 1);
}

#[test]
fn assert_no_growth_panics_with_the_summary() {
    let mut cache = HashMap::with_capacity(64);
    let mut key = 0;
    let failed = catch_unwind(AssertUnwindSafe(|| {
        assert_no_growth!(10, || {
            key += 1;
            cache_user(&mut cache, key);
        })
    }))
    .unwrap_err();
    let message = failed.downcast_ref::<String>().unwrap();
    assert!(
        message.starts_with("the runs grew (budget: 0 bytes per run)\nleakscope growth: 10 runs"),
        "{message}"
    );
    assert!(message.contains("960 bytes in 10 blocks"), "{message}");
    assert!(message.contains("growth::cache_user"), "{message}");
    // A budget of one entry per run passes; one byte less fails.
    assert_no_growth!(
        10,
        || {
            key += 1;
            cache_user(&mut cache, key);
        },
        max_bytes_per_run = 96
    );
    let over = catch_unwind(AssertUnwindSafe(|| {
        assert_no_growth!(
            10,
            || {
                key += 1;
                cache_user(&mut cache, key);
            },
            max_bytes_per_run = 95
        )
    }));
    assert!(over.is_err());
}

#[test]
fn scopes_opened_inside_the_runs_stay_in_them() {
    // A service's handlers open scopes of their own; what they leave
    // behind is still the runs'.
    let mut kept: Vec<Box<[u8; 32]>> = Vec::with_capacity(400);
    let g = growth(100, || {
        leakscope::track_scope("growth test: track_scope", || {
            kept.push(Box::new([1; 32]));
        });
        let guard = leakscope::scope("growth test: guard");
        kept.push(Box::new([2; 32]));
        drop(guard);
    });
    assert_eq!(figures(&g), (100, 200, 6400, 2.0, 64.0), "{g}");
    // The inner scopes still count their runs (the warm-up's included);
    // their blocks from the runs are not theirs.
    let report = leakscope::snapshot();
    for name in ["growth test: track_scope", "growth test: guard"] {
        let s = report.scopes.iter().find(|s| s.name == name).unwrap();
        assert_eq!((s.runs, s.outstanding_blocks), (101, 1), "{name}");
    }
}

#[test]
fn blocks_freed_on_another_thread_are_freed() {
    // Bounded channels: their buffers are made here, not as messages come.
    let (to_worker, blocks) = std::sync::mpsc::sync_channel::<Box<[u8; 48]>>(1);
    let (to_test, done) = std::sync::mpsc::sync_channel::<()>(1);
    let worker = std::thread::spawn(move || {
        for b in blocks {
            drop(b);
            to_test.send(()).unwrap();
        }
    });
    let mut kept = Vec::with_capacity(128);
    let g = growth(100, || {
        to_worker.send(Box::new([3; 48])).unwrap();
        done.recv().unwrap();
        kept.push(Box::new(7u32));
    });
    // Only the boxes kept here grew: 4 bytes a run.
    assert_eq!(figures(&g), (100, 100, 400, 1.0, 4.0), "{g}");
    drop(to_worker);
    worker.join().unwrap();
}

#[test]
fn eight_threads_at_once_each_see_their_own() {
    let start = std::sync::Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (1..=8u64)
        .map(|t| {
            let start = start.clone();
            std::thread::spawn(move || {
                let mut kept: Vec<Vec<u8>> = Vec::with_capacity(1000);
                start.wait();
                // Thread t keeps t blocks of 16 * t bytes a run, and churns.
                let g = growth(100, || {
                    for _ in 0..t {
                        kept.push(Vec::with_capacity((16 * t) as usize));
                    }
                    black_box(vec![0u8; 512]);
                });
                (t, figures(&g))
            })
        })
        .collect();
    for th in threads {
        let (t, f) = th.join().unwrap();
        let blocks = 100 * t;
        let bytes = blocks * 16 * t;
        assert_eq!(
            f,
            (100, blocks, bytes, t as f64, (bytes / 100) as f64),
            "thread {t}"
        );
    }
}
