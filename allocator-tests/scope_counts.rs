//! Scopes: outstanding counts per run and per name, nesting, panics, blocks
//! freed after their scope closed, guards dropped out of order.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use std::hint::black_box;
use std::sync::Mutex;

/// Where planted leaks go, so that they stay live (and reachable).
static KEEP: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

#[inline(never)]
fn leak_bytes(n: usize) {
    let b = black_box(vec![7u8; n].into_boxed_slice());
    KEEP.lock().unwrap().push(b);
}

#[inline(never)]
fn temp_bytes(n: usize) -> usize {
    let v = black_box(vec![1u8; n]);
    v.len()
}

fn main() {
    // Grow KEEP once, outside any scope, so its own reallocations do not land
    // in the scopes under test.
    KEEP.lock().unwrap().reserve(10_000);
    common::run(&[
        ("outstanding_per_run", outstanding_per_run),
        ("summary_of_one_run", summary_of_one_run),
        ("nested_scopes", nested_scopes),
        (
            "finished_guard_inside_an_uncounted_run",
            finished_guard_inside_an_uncounted_run,
        ),
        ("panic_closes_scope", panic_closes_scope),
        ("freed_after_close", freed_after_close),
        ("guards_dropped_out_of_order", guards_dropped_out_of_order),
        (
            "guard_outlives_its_track_scope",
            guard_outlives_its_track_scope,
        ),
        ("text_report_scope_table", text_report_scope_table),
        ("run_with_a_hundred_callsites", run_with_a_hundred_callsites),
        ("future_polled_on_two_threads", future_polled_on_two_threads),
        (
            "long_lived_blocks_in_an_open_run",
            long_lived_blocks_in_an_open_run,
        ),
        (
            "moved_blocks_of_a_closed_run_stay_out_of_the_next",
            moved_blocks_of_a_closed_run_stay_out_of_the_next,
        ),
    ]);
}

fn outstanding_per_run() {
    for _ in 0..50 {
        leakscope::track_scope("GET /leak", || {
            for _ in 0..3 {
                leak_bytes(1000);
            }
            temp_bytes(500);
            temp_bytes(64);
        });
    }
    let r = leakscope::snapshot();
    let s = r.scope("GET /leak").expect("scope GET /leak");
    assert_eq!(s.runs, 50);
    assert_eq!(s.outstanding_blocks, 150);
    assert_eq!(s.outstanding_bytes, 150_000);
    assert_eq!(s.blocks_per_run(), 3.0);
    assert_eq!(s.bytes_per_run(), 3000.0);
    // All of it at one call-site, in leak_bytes.
    assert_eq!(s.by_callsite.len(), 1);
    let c = r.callsite(s.by_callsite[0].callsite).unwrap();
    assert!(
        c.function().unwrap().contains("leak_bytes"),
        "{:?}",
        c.function()
    );
    assert_eq!(
        (s.by_callsite[0].blocks, s.by_callsite[0].bytes),
        (150, 150_000)
    );
    let t = common::site(&r, "temp_bytes");
    assert_eq!(
        (t.live_blocks, t.total_blocks, t.total_bytes),
        (0, 100, 50 * 564)
    );
}

fn summary_of_one_run() {
    let guard = leakscope::scope("POST /orders");
    for _ in 0..2 {
        leak_bytes(96); // one call-site: the same stack both times
    }
    temp_bytes(40);
    let sum = guard.finish();
    assert_eq!(sum.name, "POST /orders");
    assert_eq!((sum.allocated_blocks, sum.allocated_bytes), (3, 232));
    assert_eq!((sum.outstanding_blocks, sum.outstanding_bytes), (2, 192));
    let r = leakscope::snapshot();
    let top = &sum.by_callsite[0];
    assert_eq!(
        (
            top.allocated_blocks,
            top.outstanding_blocks,
            top.outstanding_bytes
        ),
        (2, 2, 192)
    );
    assert!(r
        .callsite(top.callsite)
        .unwrap()
        .function()
        .unwrap()
        .contains("leak_bytes"));
    assert_eq!(sum.by_callsite.len(), 2);
    assert_eq!(
        (
            sum.by_callsite[1].allocated_bytes,
            sum.by_callsite[1].outstanding_blocks
        ),
        (40, 0)
    );
    let s = r.scope("POST /orders").unwrap();
    assert_eq!(
        (s.runs, s.outstanding_blocks, s.outstanding_bytes),
        (1, 2, 192)
    );
}

fn nested_scopes() {
    let outer = leakscope::scope("outer");
    leak_bytes(10);
    let inner_sum = {
        let inner = leakscope::scope("inner");
        leak_bytes(20);
        leak_bytes(20);
        leakscope::track_scope("innermost", || leak_bytes(30));
        inner.finish()
    };
    leak_bytes(10);
    let outer_sum = outer.finish();
    // A block belongs to the innermost open scope only.
    assert_eq!(
        (outer_sum.outstanding_blocks, outer_sum.outstanding_bytes),
        (2, 20)
    );
    assert_eq!(
        (inner_sum.outstanding_blocks, inner_sum.outstanding_bytes),
        (2, 40)
    );
    let r = leakscope::snapshot();
    assert_eq!(common::scope(&r, "outer"), (1, 2, 20));
    assert_eq!(common::scope(&r, "inner"), (1, 2, 40));
    assert_eq!(common::scope(&r, "innermost"), (1, 1, 30));
}

/// `track_scope`'s run (like a future's) keeps no per-call-site counts, as
/// nobody can ask it for a summary; a guard inside it still gives an exact
/// one, and the outer run's block freed inside the guard's run is not the
/// guard's.
fn finished_guard_inside_an_uncounted_run() {
    let sum = leakscope::track_scope("uncounted-outer", || {
        let outer_block = black_box(vec![0u8; 48]);
        leak_bytes(8);
        let g = leakscope::scope("counted-inner");
        leak_bytes(16);
        temp_bytes(24);
        drop(outer_block);
        g.finish()
    });
    assert_eq!((sum.allocated_blocks, sum.allocated_bytes), (2, 40));
    assert_eq!((sum.outstanding_blocks, sum.outstanding_bytes), (1, 16));
    assert_eq!(sum.by_callsite.len(), 2);
    let r = leakscope::snapshot();
    assert_eq!(common::scope(&r, "uncounted-outer"), (1, 1, 8));
    assert_eq!(common::scope(&r, "counted-inner"), (1, 1, 16));
}

fn panic_closes_scope() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = std::panic::catch_unwind(|| {
        leakscope::track_scope("panicky", || {
            leak_bytes(77);
            panic!("handler failed");
        })
    });
    std::panic::set_hook(hook);
    // The panic payload (a boxed `&str`, 16 bytes) was allocated in the scope
    // too, and is live while `caught` holds it.
    let s = leakscope::snapshot().scope("panicky").unwrap().clone();
    assert_eq!(
        (s.runs, s.outstanding_blocks, s.outstanding_bytes),
        (1, 2, 93)
    );
    assert!(caught.is_err());
    drop(caught);
    // The scope is closed: this block belongs to no scope.
    leak_bytes(55);
    let r = leakscope::snapshot();
    let s = r.scope("panicky").unwrap();
    assert_eq!(
        (s.runs, s.outstanding_blocks, s.outstanding_bytes),
        (1, 1, 77)
    );
    let in_scopes: u64 = r
        .scopes
        .iter()
        .flat_map(|s| &s.by_callsite)
        .map(|c| c.bytes)
        .sum();
    let all_live = common::site(&r, "leak_bytes").live_bytes;
    assert_eq!(
        all_live - in_scopes,
        55,
        "exactly the 55-byte block is outside every scope"
    );
}

fn freed_after_close() {
    let mut held = Vec::new();
    for _ in 0..10 {
        let b = leakscope::track_scope("GET /held", || black_box(vec![0u64; 8]));
        held.push(b);
    }
    let before = leakscope::snapshot();
    let s = before.scope("GET /held").unwrap();
    assert_eq!(
        (s.runs, s.outstanding_blocks, s.outstanding_bytes),
        (10, 10, 640)
    );
    held.truncate(4);
    let after = leakscope::snapshot();
    let s = after.scope("GET /held").unwrap();
    assert_eq!(
        (s.runs, s.outstanding_blocks, s.outstanding_bytes),
        (10, 4, 256)
    );
    drop(held);
    let s = leakscope::snapshot().scope("GET /held").unwrap().clone();
    assert_eq!((s.outstanding_blocks, s.outstanding_bytes), (0, 0));
}

fn guards_dropped_out_of_order() {
    let a = leakscope::scope("order-a");
    let b = leakscope::scope("order-b");
    drop(a);
    leak_bytes(11); // b is still open: the block is b's
    let b_sum = b.finish();
    leak_bytes(13); // nothing is open
    assert_eq!((b_sum.outstanding_blocks, b_sum.outstanding_bytes), (1, 11));
    let r = leakscope::snapshot();
    assert_eq!(r.scope("order-a").unwrap().outstanding_blocks, 0);
    assert_eq!(r.scope("order-b").unwrap().outstanding_bytes, 11);
}

/// A guard opened inside a `track_scope` closure and returned out of it
/// outlives the closure's run (which lives on the closure's caller's frame):
/// the run leaves the thread's stack of runs from under the guard.
fn guard_outlives_its_track_scope() {
    let inner = leakscope::track_scope("outlive-outer", || {
        leak_bytes(3);
        leakscope::scope("outlive-inner")
    });
    leak_bytes(5); // the guard's run is still open: its block
    let nested = leakscope::track_scope("outlive-again", || {
        leak_bytes(7);
        inner.finish()
    });
    leak_bytes(9); // nothing is open
    assert_eq!(
        (nested.outstanding_blocks, nested.outstanding_bytes),
        (1, 5)
    );
    let r = leakscope::snapshot();
    assert_eq!(common::scope(&r, "outlive-outer"), (1, 1, 3));
    assert_eq!(common::scope(&r, "outlive-inner"), (1, 1, 5));
    assert_eq!(common::scope(&r, "outlive-again"), (1, 1, 7));
    let in_scopes: u64 = ["outlive-outer", "outlive-inner", "outlive-again"]
        .iter()
        .map(|n| common::scope(&r, n).2)
        .sum();
    assert_eq!(in_scopes, 15, "the 9-byte block is in no scope");
}

fn text_report_scope_table() {
    for _ in 0..4 {
        leakscope::track_scope("GET /table", || leak_bytes(250));
    }
    let text = leakscope::snapshot().to_string();
    let line = text
        .lines()
        .find(|l| l.contains("GET /table:"))
        .expect("a scope line");
    assert!(
        line.ends_with(
            "4 runs, 4 blocks / 1,000 bytes outstanding, +1 blocks (+250 bytes) per run"
        ),
        "{line}"
    );
    assert!(
        text.contains("are outstanding in loss record 1 of"),
        "{text}"
    );
    assert!(text.contains("leak_bytes"), "{text}");
}

#[inline(never)]
#[allow(clippy::vec_box)] // the boxes are the planted blocks
fn many_boxes(n: usize, out: &mut Vec<Box<[u8; 40]>>) {
    for i in 0..n {
        out.push(black_box(Box::new([i as u8; 40])));
    }
}

/// More blocks than a thread's young table holds stay live in an open run:
/// they move to the shared table with their run tag, and frees of them in
/// the run still count there.
fn long_lived_blocks_in_an_open_run() {
    let mut held = Vec::with_capacity(5000);
    let summary = {
        let g = leakscope::scope("POST /batch");
        many_boxes(5000, &mut held);
        // Free every other one, oldest first (long since moved out).
        let mut i = 0;
        held.retain(|_| {
            i += 1;
            i % 2 == 0
        });
        g.finish()
    };
    assert_eq!(summary.allocated_blocks, 5000);
    assert_eq!(summary.allocated_bytes, 5000 * 40);
    assert_eq!(summary.outstanding_blocks, 2500);
    assert_eq!(summary.outstanding_bytes, 2500 * 40);
    let r = leakscope::snapshot();
    let s = r.scope("POST /batch").unwrap();
    assert_eq!(
        (s.outstanding_blocks, s.outstanding_bytes),
        (2500, 2500 * 40)
    );
    let by_site: u64 = s.by_callsite.iter().map(|c| c.blocks).sum();
    assert_eq!(
        by_site, 2500,
        "the blocks themselves agree with the counters"
    );
    drop(held);
    assert_eq!(
        leakscope::snapshot()
            .scope("POST /batch")
            .unwrap()
            .outstanding_blocks,
        0
    );
}

/// A run's record is reused by the next run on the thread; blocks the first
/// run moved to the shared table and that are freed during the second count
/// in neither, even at the same call-site.
fn moved_blocks_of_a_closed_run_stay_out_of_the_next() {
    let mut first = Vec::with_capacity(3000);
    let mut second = Vec::with_capacity(10);
    let mut summaries = Vec::with_capacity(2);
    for (name, n) in [("GET /first", 3000), ("GET /second", 10)] {
        let g = leakscope::scope(name);
        // One call for both runs: one call-site.
        let out = if n == 3000 { &mut first } else { &mut second };
        many_boxes(n, out);
        if n == 10 {
            drop(std::mem::take(&mut first));
        }
        summaries.push(g.finish());
    }
    assert_eq!(summaries[0].outstanding_blocks, 3000);
    assert_eq!(summaries[1].allocated_blocks, 10, "{:?}", summaries[1]);
    assert_eq!(summaries[1].outstanding_blocks, 10, "{:?}", summaries[1]);
    let r = leakscope::snapshot();
    assert_eq!(r.scope("GET /first").unwrap().outstanding_blocks, 0);
    assert_eq!(r.scope("GET /second").unwrap().outstanding_blocks, 10);
}

#[inline(never)]
fn site_box() -> Box<[u8; 24]> {
    black_box(Box::new([0u8; 24]))
}

/// One run allocating at 100 call-sites (more than a run counts without a
/// lock), with frees by its own thread and by another one while it is open.
fn run_with_a_hundred_callsites() {
    macro_rules! ten {
        ($e:expr) => {
            $e;
            $e;
            $e;
            $e;
            $e;
            $e;
            $e;
            $e;
            $e;
            $e;
        };
    }
    let mut boxes: Vec<Box<[u8; 24]>> = Vec::with_capacity(100);
    let guard = leakscope::scope("many-sites");
    // 100 call instructions, so 100 distinct stacks.
    ten!(ten!(boxes.push(site_box())));
    // The odd ones freed on another thread; the helper's own blocks (the
    // fill-ins, the vector, the thread) belong to the inner scope.
    leakscope::track_scope("helper", || {
        let odd: Vec<Box<[u8; 24]>> = (0..50)
            .map(|k| std::mem::replace(&mut boxes[2 * k + 1], Box::new([1; 24])))
            .collect();
        std::thread::spawn(move || drop(odd)).join().unwrap();
        // Frees the even planted blocks 40, 42, ..., 98 here (and 30 fill-ins).
        boxes.truncate(40);
    });
    let sum = guard.finish();
    assert_eq!(sum.by_callsite.len(), 100);
    assert!(sum
        .by_callsite
        .iter()
        .all(|c| (c.allocated_blocks, c.allocated_bytes) == (1, 24)));
    assert_eq!((sum.allocated_blocks, sum.allocated_bytes), (100, 2400));
    // Left: the even planted blocks 0, 2, ..., 38.
    assert_eq!((sum.outstanding_blocks, sum.outstanding_bytes), (20, 480));
    let r = leakscope::snapshot();
    let s = r.scope("many-sites").unwrap();
    assert_eq!(
        (
            s.runs,
            s.outstanding_blocks,
            s.outstanding_bytes,
            s.by_callsite.len()
        ),
        (1, 20, 480, 20)
    );
    drop(boxes);
    let s = leakscope::snapshot().scope("many-sites").unwrap().clone();
    assert_eq!((s.outstanding_blocks, s.outstanding_bytes), (0, 0));
}

/// A future that leaks 33 bytes on each poll and is ready after `left` polls.
struct Steps {
    left: u32,
}

impl std::future::Future for Steps {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        leak_bytes(33);
        self.left -= 1;
        if self.left == 0 {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

/// A scoped future polled once here and once on another thread, with another
/// scope run on this thread in between: one run, both polls' blocks in it.
fn future_polled_on_two_threads() {
    use leakscope::TrackScopeExt;
    let mut fut = Box::pin(Steps { left: 2 }.track_scope("async-job"));
    assert!(common::poll_once(&mut fut).is_pending());
    leakscope::track_scope("between-polls", || leak_bytes(5));
    leak_bytes(7); // outside every scope
    let fut = std::thread::spawn(move || {
        assert!(common::poll_once(&mut fut).is_ready());
        fut
    })
    .join()
    .unwrap();
    drop(fut);
    let r = leakscope::snapshot();
    assert_eq!(common::scope(&r, "async-job"), (1, 2, 66));
    assert_eq!(common::scope(&r, "between-polls"), (1, 1, 5));
}
