//! Threads: blocks freed on other threads than the one that allocated them,
//! hundreds of thousands of them; scopes whose blocks are freed elsewhere;
//! threads that end and hand their slot to later ones; allocation and free
//! during thread-local destruction.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use common::Deadline;

use std::hint::black_box;
use std::sync::mpsc;
use std::sync::Mutex;

const PRODUCERS: usize = 4;
const CONSUMERS: usize = 3;
const PER_PRODUCER: usize = 60_000;
const BATCH: usize = 100;

/// A block of 16, 32, 48 or 64 bytes whose first word is its number.
#[inline(never)]
fn produce_block(i: usize) -> Box<[u64]> {
    let mut b = vec![0u64; 2 + 2 * (i % 4)].into_boxed_slice();
    b[0] = i as u64;
    black_box(b)
}

fn block_size(i: usize) -> u64 {
    8 * (2 + 2 * (i % 4)) as u64
}

static LEAKED: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

#[inline(never)]
fn leak_from_thread(n: usize) {
    let b = black_box(vec![3u8; n].into_boxed_slice());
    LEAKED.lock().unwrap().push(b);
}

const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

fn main() {
    if std::env::var(CHILD).as_deref() == Ok("fork-report") {
        forks_while_threads_check_and_report();
        return;
    }
    LEAKED.lock().unwrap().reserve(1000);
    common::run(&[
        ("cross_thread_frees_are_exact", cross_thread_frees_are_exact),
        (
            "ended_threads_keep_their_counts",
            ended_threads_keep_their_counts,
        ),
        (
            "allocation_in_thread_local_destructors",
            allocation_in_thread_local_destructors,
        ),
        (
            "long_lived_blocks_freed_anywhere",
            long_lived_blocks_freed_anywhere,
        ),
        (
            "frees_among_hundreds_of_threads_are_exact",
            frees_among_hundreds_of_threads_are_exact,
        ),
        ("fork_while_threads_allocate", fork_while_threads_allocate),
        (
            "fork_while_threads_look_up_scope_names",
            fork_while_threads_look_up_scope_names,
        ),
        (
            "fork_while_threads_check_and_report",
            fork_while_threads_check_and_report,
        ),
    ]);
}

fn cross_thread_frees_are_exact() {
    let mut senders = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let (tx, rx) = mpsc::channel::<Vec<Box<[u64]>>>();
        senders.push(tx);
        // Each consumer frees what it receives, except blocks whose number is
        // a multiple of 10: those it keeps, to hand back at the end.
        consumers.push(std::thread::spawn(move || {
            let mut kept = Vec::new();
            for batch in rx {
                for b in batch {
                    if b[0] % 10 == 0 {
                        kept.push(b);
                    }
                }
            }
            kept
        }));
    }
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let senders = senders.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                let mut turn = p;
                while i < PER_PRODUCER {
                    let batch = leakscope::track_scope("produce", || {
                        (i..i + BATCH).map(produce_block).collect::<Vec<_>>()
                    });
                    i += BATCH;
                    turn += 1;
                    senders[turn % CONSUMERS].send(batch).unwrap();
                }
            })
        })
        .collect();
    drop(senders);
    for p in producers {
        p.join().unwrap();
    }
    let kept: Vec<Box<[u64]>> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();

    let all = PRODUCERS * PER_PRODUCER;
    let want_kept = all / 10;
    assert_eq!(kept.len(), want_kept);
    let total_bytes = PRODUCERS as u64 * (0..PER_PRODUCER).map(block_size).sum::<u64>();
    let kept_bytes = PRODUCERS as u64
        * (0..PER_PRODUCER)
            .filter(|i| i % 10 == 0)
            .map(block_size)
            .sum::<u64>();

    let r = leakscope::snapshot();
    let s = common::site(&r, "produce_block");
    assert_eq!(s.total_blocks, all as u64);
    assert_eq!(s.total_bytes, total_bytes);
    assert_eq!(
        (s.live_blocks, s.live_bytes),
        (want_kept as u64, kept_bytes)
    );
    // Every block was allocated in a run of "produce"; the kept ones are its
    // outstanding blocks now (the batches' vectors and the channels' blocks
    // were all freed by the consumers).
    let scope = r.scope("produce").unwrap();
    assert_eq!(scope.runs, (all / BATCH) as u64);
    assert_eq!(
        (scope.outstanding_blocks, scope.outstanding_bytes),
        (want_kept as u64, kept_bytes)
    );

    drop(kept);
    let r = leakscope::snapshot();
    let s = common::site(&r, "produce_block");
    assert_eq!((s.live_blocks, s.live_bytes), (0, 0));
    assert_eq!(r.scope("produce").unwrap().outstanding_blocks, 0);
}

fn ended_threads_keep_their_counts() {
    // One after another, so that each reuses the slot the last one gave back.
    for n in 1..=20 {
        std::thread::spawn(move || leak_from_thread(n))
            .join()
            .unwrap();
    }
    // And 8 at once, with frees of their blocks on this thread.
    let handles: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| black_box(vec![0u8; 1000])))
        .collect();
    let vs: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(vs);
    let s = common::site_now("leak_from_thread");
    assert_eq!((s.live_blocks, s.live_bytes, s.total_blocks), (20, 210, 20));
}

/// Allocates and keeps `n` blocks when the thread's locals are destroyed, and
/// frees the vector it held.
struct AllocOnDrop {
    held: Vec<u64>,
    n: usize,
}

impl Drop for AllocOnDrop {
    fn drop(&mut self) {
        self.held = Vec::new();
        for _ in 0..self.n {
            dtor_block();
        }
    }
}

#[inline(never)]
fn dtor_block() {
    let b = black_box(vec![9u8; 100].into_boxed_slice());
    LEAKED.lock().unwrap().push(b);
}

#[inline(never)]
fn held_vec() -> Vec<u64> {
    black_box(vec![1u64; 50])
}

thread_local! {
    // Made before the thread allocates anything, so its destructor is
    // registered before the tracker's own (and runs after it or before it,
    // depending on the platform's order): both orders must count.
    static EARLY: std::cell::RefCell<Option<AllocOnDrop>> = const { std::cell::RefCell::new(None) };
    static LATE: std::cell::RefCell<Option<AllocOnDrop>> = const { std::cell::RefCell::new(None) };
}

fn allocation_in_thread_local_destructors() {
    let before = common::site_now("dtor_block");
    for _ in 0..4 {
        std::thread::spawn(|| {
            EARLY.with(|_| ());
            let held = held_vec();
            EARLY.with(|e| *e.borrow_mut() = Some(AllocOnDrop { held, n: 3 }));
            let held = held_vec();
            LATE.with(|l| *l.borrow_mut() = Some(AllocOnDrop { held, n: 2 }));
        })
        .join()
        .unwrap();
    }
    let d = common::site_now("dtor_block");
    assert_eq!(
        (
            d.live_blocks - before.live_blocks,
            d.live_bytes - before.live_bytes
        ),
        (20, 2000)
    );
    let h = common::site_now("held_vec");
    assert_eq!(
        (h.total_blocks, h.live_blocks),
        (8, 0),
        "the held vectors were freed in the destructors"
    );
}

#[inline(never)]
fn planted_long_block(i: usize) -> Box<[u8]> {
    black_box(vec![1u8; 8 + i % 8].into_boxed_slice())
}

/// More live blocks than a thread's young-block table holds, so most move to
/// the shared table; then freed, half on another thread, half here, in a
/// scope that outlives its run.
fn long_lived_blocks_freed_anywhere() {
    const N: usize = 100_000;
    let size = |i: usize| (8 + i % 8) as u64;
    let mut blocks: Vec<Box<[u8]>> = Vec::with_capacity(N);
    leakscope::track_scope("long-lived", || {
        for i in 0..N {
            blocks.push(planted_long_block(i));
        }
    });
    let s = common::site_now("planted_long_block");
    let all_bytes: u64 = (0..N).map(size).sum();
    assert_eq!(
        (s.live_blocks, s.live_bytes, s.total_blocks),
        (N as u64, all_bytes, N as u64)
    );
    let r = leakscope::snapshot();
    let scope = r.scope("long-lived").unwrap();
    assert_eq!(
        (scope.outstanding_blocks, scope.outstanding_bytes),
        (N as u64, all_bytes)
    );

    // Odd ones freed on another thread, even ones here.
    let odd: Vec<Box<[u8]>> = (0..N / 2)
        .map(|k| std::mem::take(&mut blocks[2 * k + 1]))
        .collect();
    std::thread::spawn(move || drop(odd)).join().unwrap();
    let even_bytes: u64 = (0..N).step_by(2).map(size).sum();
    let s = common::site_now("planted_long_block");
    assert_eq!((s.live_blocks, s.live_bytes), ((N / 2) as u64, even_bytes));
    drop(blocks);
    let r = leakscope::snapshot();
    let s = common::site(&r, "planted_long_block");
    assert_eq!((s.live_blocks, s.live_bytes), (0, 0));
    assert_eq!(r.scope("long-lived").unwrap().outstanding_blocks, 0);
}

#[inline(never)]
fn planted_handed_block(i: usize) -> Box<[u8]> {
    black_box(vec![2u8; 16 + i % 16].into_boxed_slice())
}

/// Blocks freed by another thread than their maker's are found by their
/// owner hints: with 300 other threads alive (each made blocks of its
/// own, whose hints sit beside the makers'), every count stays exact,
/// for blocks still young (handed over one at a time) and for blocks
/// moved to the shared table (handed over in thousands).
fn frees_among_hundreds_of_threads_are_exact() {
    use std::sync::{mpsc, Arc, Barrier};
    const IDLE: usize = 300;
    let ready = Arc::new(Barrier::new(IDLE + 1));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_rx = Arc::new(std::sync::Mutex::new(stop_rx));
    let idle: Vec<_> = (0..IDLE)
        .map(|t| {
            let (ready, stop_rx) = (ready.clone(), stop_rx.clone());
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    let held: Vec<String> = (0..4).map(|k| format!("idle {t} {k}")).collect();
                    ready.wait();
                    let _ = stop_rx.lock().unwrap().recv();
                    black_box(held);
                })
                .unwrap()
        })
        .collect();
    ready.wait();
    let size = |i: usize| (16 + i % 16) as u64;
    // One at a time: each block is young in the maker's table when freed.
    let (tx, rx) = mpsc::sync_channel::<Box<[u8]>>(1);
    let freer =
        std::thread::spawn(move || rx.into_iter().map(|b| black_box(b).len()).sum::<usize>());
    const ONE_BY_ONE: usize = 5000;
    let maker = std::thread::spawn(move || {
        for i in 0..ONE_BY_ONE {
            tx.send(planted_handed_block(i)).unwrap();
        }
    });
    maker.join().unwrap();
    assert_eq!(
        freer.join().unwrap() as u64,
        (0..ONE_BY_ONE).map(size).sum::<u64>()
    );
    let s = common::site_now("planted_handed_block");
    assert_eq!(
        (s.live_blocks, s.live_bytes, s.total_blocks),
        (0, 0, ONE_BY_ONE as u64)
    );
    // In thousands: most have moved to the shared table when freed.
    const MANY: usize = 20_000;
    let made: Vec<Box<[u8]>> = std::thread::spawn(|| (0..MANY).map(planted_handed_block).collect())
        .join()
        .unwrap();
    let s = common::site_now("planted_handed_block");
    assert_eq!(
        (s.live_blocks, s.live_bytes),
        (MANY as u64, (0..MANY).map(size).sum::<u64>())
    );
    std::thread::spawn(move || drop(made)).join().unwrap();
    let s = common::site_now("planted_handed_block");
    assert_eq!(
        (s.live_blocks, s.live_bytes, s.total_blocks),
        (0, 0, (ONE_BY_ONE + MANY) as u64)
    );
    drop(stop_tx);
    for t in idle {
        t.join().unwrap();
    }
}

/// Forks `forks` times while two threads run `busy(thread, stop)` until
/// `stop`; each child runs `child(n)` and leaves with `_exit`, status 0 when
/// it returned true. A child must neither hang nor fail.
fn fork_beside_busy_threads(
    busy: fn(usize, &std::sync::atomic::AtomicBool),
    forks: usize,
    child: impl Fn(usize) -> bool,
) {
    // One CI run in six (at 49eb5e0) had ThreadSanitizer report a race in
    // the parent between two threads' `History::record`, both inside the
    // same scope's `SpinLock` (compare-exchange Acquire, store Release), while
    // this forked: not a race the lock allows, and not reproduced; TSan's
    // support of fork beside running threads is limited. Not established.
    if common::under_tsan("forking beside busy threads (a report TSan gave once here)") {
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || busy(t, &stop))
        })
        .collect();
    for n in 0..forks {
        // SAFETY: the child only allocates, reads the tracker and leaves with
        // _exit; every lock it may need is released by the fork handlers.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = child(n);
            // SAFETY: ends the child at once, without running the parent's exit hooks.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        common::expect_child_exits_cleanly(pid);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}

/// `fork` while other threads allocate and free: the child must find no
/// tracker lock held and no block half-moved, and go on tracking.
fn fork_while_threads_allocate() {
    fork_beside_busy_threads(
        |t, stop| {
            let mut keep = Vec::new();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                leakscope::track_scope("busy", || keep.push(planted_long_block(i + t)));
                if keep.len() > 2000 {
                    keep.drain(..1000);
                }
                i += 1;
            }
        },
        20,
        |_| {
            let before = common::site_now("fork_child_block").live_blocks;
            let kept: Vec<Vec<u8>> = (0..100).map(|_| fork_child_block()).collect();
            let after = common::site_now("fork_child_block").live_blocks;
            before == 0 && after == 100 && kept.len() == 100
        },
    );
}

/// `fork` while other threads look up scope names (more names than a
/// thread's cache holds, so each takes the names' lock) and the fork
/// handlers take it: threads are then waiting for it. The child, whose only
/// thread is the forking one, must be able to add a name.
fn fork_while_threads_look_up_scope_names() {
    fork_beside_busy_threads(
        |t, stop| {
            let names: Vec<String> = (0..64).map(|i| format!("lookup {i}")).collect();
            let mut i = t;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                leakscope::track_scope(&names[i % names.len()], || black_box(i));
                i += 1;
            }
        },
        200,
        |n| {
            leakscope::track_scope(&format!("forked {n}"), || black_box(fork_child_block()));
            true
        },
    );
}

/// `fork` while one thread runs leak checks and another writes reports
/// (each holding the check's lock, the report's destinations, scope names
/// and the symbolizer's state as it goes): the child, whose only thread is
/// the forking one, must be able to check and report too.
fn fork_while_threads_check_and_report() {
    // Under AddressSanitizer the forked child once spun on the check's lock
    // in about one run in five (issue 29). One way there, a lock that
    // joined the fork handlers' list while another thread forked, is
    // closed (alloc::meta); the hang did not come back with or without
    // that change, so it is run under ASan again, and a hung child's
    // stacks are in the failure.
    // Under ThreadSanitizer its 50 children, each checking and reporting
    // in a forked copy of a process with busy threads, once ran past the
    // program's 300 s (in one CI run of three): TSan's runtime after a
    // multi-threaded fork is slow there, if not stuck, and this test is not
    // where that is told apart. The other fork tests run under TSan.
    if common::under_tsan("where its forked children once ran past 300 s") {
        return;
    }
    // In a child of its own: `report_on_exit` arms the report at its exit.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "fork-report")
        .output_within(common::CHILD_SECS)
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("hung"))
        .collect();
    assert!(out.status.success(), "{}: {why:?}\n{stderr}", out.status);
}

fn forks_while_threads_check_and_report() {
    fork_beside_busy_threads(
        |t, stop| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if t == 0 {
                    black_box(leakscope::leak_check());
                } else {
                    leakscope::report_on_exit();
                    black_box(leakscope::snapshot().to_string());
                }
            }
        },
        50,
        |_| {
            let report = leakscope::leak_check();
            leakscope::report_on_exit();
            let text = report.to_string();
            report.leak_check.is_some_and(|lc| lc.error.is_none()) && text.contains("LEAK SUMMARY")
        },
    );
}

#[inline(never)]
fn fork_child_block() -> Vec<u8> {
    black_box(vec![0u8; 32])
}
