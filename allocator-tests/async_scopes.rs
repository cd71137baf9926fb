//! Request scopes on a multi-thread tokio runtime: futures that move between
//! worker threads between polls, interleaved with other requests on the same
//! threads, each scope leaking a known number of blocks.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use leakscope::TrackScopeExt;
use std::collections::HashSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

/// What the leaking routes keep for ever.
static KEPT: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());
/// Requests that were polled on more than one worker thread.
static MIGRATED: AtomicUsize = AtomicUsize::new(0);

const PER_ROUTE: usize = 400;

/// One request: allocates and frees across awaits, waits for a peer
/// request (woken from whichever worker runs the peer), and leaks what its
/// route leaks: `GET /a` one block of 24 bytes, `POST /b` two of 40, `GET /c`
/// nothing.
async fn request(
    route: usize,
    wait: tokio::sync::oneshot::Receiver<()>,
    wake: tokio::sync::oneshot::Sender<()>,
) {
    let mut threads: HashSet<ThreadId> = HashSet::new();
    threads.insert(std::thread::current().id());
    let scratch = black_box(vec![route as u8; 100]);
    tokio::task::yield_now().await;
    threads.insert(std::thread::current().id());
    let _ = wake.send(());
    let _ = wait.await;
    threads.insert(std::thread::current().id());
    // Freed on whichever thread polls now: still this scope's block.
    drop(scratch);
    let leaks: &[usize] = match route {
        0 => &[24],
        1 => &[40, 40],
        _ => &[],
    };
    for &size in leaks {
        let b = black_box(vec![7u8; size].into_boxed_slice());
        tokio::task::yield_now().await;
        KEPT.lock().unwrap().push(b);
    }
    threads.insert(std::thread::current().id());
    if threads.len() > 1 {
        MIGRATED.fetch_add(1, Ordering::Relaxed);
    }
}

const ROUTES: [&str; 3] = ["GET /a", "POST /b", "GET /c"];

fn interleaved_requests_keep_exact_scope_counts() {
    KEPT.lock().unwrap().reserve(4 * PER_ROUTE);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut handles = Vec::new();
        // Request i waits for request i + 1 (another route) to start, so
        // wake-ups cross between workers.
        let n = 3 * PER_ROUTE;
        let (mut txs, mut rxs): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| tokio::sync::oneshot::channel::<()>())
            .unzip();
        txs.rotate_left(1);
        for (i, (tx, rx)) in txs.into_iter().zip(rxs.drain(..)).enumerate() {
            let route = i % 3;
            let fut = request(route, rx, tx).track_scope(ROUTES[route]);
            handles.push(tokio::spawn(fut));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    drop(rt);
    let report = leakscope::snapshot();
    let got: Vec<(u64, u64, u64)> = ROUTES
        .iter()
        .map(|name| {
            let s = report.scope(name).unwrap();
            (s.runs, s.outstanding_blocks, s.outstanding_bytes)
        })
        .collect();
    let n = PER_ROUTE as u64;
    assert_eq!(got, vec![(n, n, 24 * n), (n, 2 * n, 80 * n), (n, 0, 0)]);
    // The futures did move: otherwise this test would prove little.
    assert!(MIGRATED.load(Ordering::Relaxed) > 0);
    println!(
        "{} of {} requests were polled on more than one thread",
        MIGRATED.load(Ordering::Relaxed),
        3 * PER_ROUTE
    );
}

fn main() {
    common::run(&[(
        "interleaved_requests_keep_exact_scope_counts",
        interleaved_requests_keep_exact_scope_counts,
    )]);
}
