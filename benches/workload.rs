//! The whole-program workload: a service-like loop (parse a request, build
//! maps, format a response, leak a little), run with the System allocator and
//! with leakscope (call-sites and scopes) in one run, at 1 and 2 worker
//! threads, with every response freed on another thread than the one that
//! made it. Prints the median time of each and the ratio to System.
//!
//! `cargo bench --bench workload` (LEAKSCOPE_BENCH_ROUNDS=N for more rounds)
//!
//! Each measurement is its own child process (this program, run with
//! LEAKSCOPE_BENCH_MODE set), so that the allocator is chosen before the first
//! allocation and no run inherits another's heap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

const MODE_VAR: &str = "LEAKSCOPE_BENCH_MODE";
const THREADS_VAR: &str = "LEAKSCOPE_BENCH_THREADS";
const REQUESTS: usize = 200_000;

/// System or leakscope, chosen once from the environment at the first allocation.
struct Switch;

static TRACKER: leakscope::LeakTracker = leakscope::LeakTracker::system();
/// 0: not read yet, 1: System, 2: leakscope.
static MODE: AtomicU8 = AtomicU8::new(0);

#[inline]
fn tracking() -> bool {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: getenv with a NUL-terminated name; no allocation.
            let on = unsafe { !libc::getenv(c"LEAKSCOPE_BENCH_MODE".as_ptr()).is_null() }
                && mode_is_leakscope();
            MODE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        m => m == 2,
    }
}

fn mode_is_leakscope() -> bool {
    // SAFETY: as above; the value is read in place, not copied.
    let v = unsafe { std::ffi::CStr::from_ptr(libc::getenv(c"LEAKSCOPE_BENCH_MODE".as_ptr())) };
    v.to_bytes().starts_with(b"leakscope")
}

// SAFETY: forwards every call to one of two allocators, the same one for the
// whole process (MODE never changes once set); both hand out System blocks.
unsafe impl GlobalAlloc for Switch {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            if tracking() {
                TRACKER.alloc(l)
            } else {
                System.alloc(l)
            }
        }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            if tracking() {
                TRACKER.alloc_zeroed(l)
            } else {
                System.alloc_zeroed(l)
            }
        }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe {
            if tracking() {
                TRACKER.dealloc(p, l)
            } else {
                System.dealloc(p, l)
            }
        }
    }
    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            if tracking() {
                TRACKER.realloc(p, l, n)
            } else {
                System.realloc(p, l, n)
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

static LEAKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

const ROUTES: [&str; 4] = [
    "GET /users",
    "GET /users/{id}",
    "POST /orders",
    "GET /search",
];

/// One request: parse a query string, build a map, format a JSON-ish body.
#[inline(never)]
fn handle(i: usize) -> String {
    let raw = format!(
        "user={}&tags=a,b,c,{}&limit={}&q=item{}",
        i % 1000,
        i % 17,
        10 + i % 5,
        i
    );
    let mut params: HashMap<String, Vec<String>> = HashMap::new();
    for pair in raw.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params
            .entry(k.to_owned())
            .or_default()
            .extend(v.split(',').map(str::to_owned));
    }
    let limit: usize = params["limit"][0].parse().unwrap_or(10);
    let items: Vec<String> = (0..limit)
        .map(|n| format!("item-{}-{n}", params["user"][0]))
        .collect();
    let mut body = String::with_capacity(64);
    body.push('{');
    for (k, vs) in &params {
        let _ = write!(body, "\"{k}\":{:?},", vs);
    }
    let _ = write!(body, "\"items\":{items:?}}}");
    if i % 100 == 0 {
        // The leak: one small string per hundred requests.
        LEAKED.lock().unwrap().push(format!("audit {i}"));
    }
    body
}

fn workload(threads: usize, scoped: bool) -> usize {
    let (tx, rx) = mpsc::sync_channel::<String>(1024);
    // The writer: frees every response, on a thread that allocated none of them.
    let writer =
        std::thread::spawn(move || rx.into_iter().map(|s| black_box(s).len()).sum::<usize>());
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in (t..REQUESTS).step_by(threads) {
                    let body = if scoped {
                        leakscope::track_scope(ROUTES[i % ROUTES.len()], || handle(i))
                    } else {
                        handle(i)
                    };
                    tx.send(body).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for w in workers {
        w.join().unwrap();
    }
    writer.join().unwrap()
}

fn child(mode: &str) {
    let threads: usize = std::env::var(THREADS_VAR)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let tracked = mode.starts_with("leakscope");
    assert_eq!(
        tracking(),
        tracked,
        "the allocator was chosen before the environment was read"
    );
    LEAKED.lock().unwrap().reserve(REQUESTS / 100);
    let start = Instant::now();
    let bytes = workload(threads, mode == "leakscope");
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: getrusage fills a zeroed struct.
    let rss_kib = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_maxrss
    };
    if tracked {
        let r = leakscope::snapshot();
        let leaked = r.callsites_in("handle").map(|c| c.live_blocks).sum::<u64>();
        assert_eq!(leaked, (REQUESTS / 100) as u64, "the planted leaks");
    }
    println!("{secs} {rss_kib} {bytes}");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if let Ok(mode) = std::env::var(MODE_VAR) {
        return child(&mode);
    }
    let rounds: usize = std::env::var("LEAKSCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let exe = std::env::current_exe().unwrap();
    // leakscope-sites: call-sites only, no scopes; leakscope: both (full tracking).
    let modes = ["system", "leakscope-sites", "leakscope"];
    println!("workload: {REQUESTS} requests per run, {rounds} rounds; responses freed on a writer thread");
    println!("seconds: median run; ratio: median over rounds of the run's time / the System run's beside it");
    println!(
        "{:<8} {:<16} {:>10} {:>12} {:>8}",
        "workers", "allocator", "seconds", "peak RSS", "ratio"
    );
    for threads in [1usize, 2] {
        let mut secs: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        let mut rss: Vec<u64> = vec![0; modes.len()];
        for _ in 0..rounds {
            // Interleaved, so that drift in the machine's speed hits both alike.
            for (m, mode) in modes.iter().enumerate() {
                let out = Command::new(&exe)
                    .env(MODE_VAR, mode)
                    .env(THREADS_VAR, threads.to_string())
                    .env_remove("LEAKSCOPE_REPORT")
                    .output()
                    .expect("run the workload");
                assert!(
                    out.status.success(),
                    "{mode}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = String::from_utf8_lossy(&out.stdout);
                let mut f = line.split_whitespace();
                secs[m].push(f.next().unwrap().parse().unwrap());
                rss[m] = rss[m].max(f.next().unwrap().parse().unwrap());
            }
        }
        for (m, mode) in modes.iter().enumerate() {
            // Each round's ratio to the System run next to it, then the median:
            // drift in the machine's speed between rounds cancels out.
            let mut ratios: Vec<f64> = secs[m]
                .iter()
                .zip(&secs[0])
                .map(|(t, base)| t / base)
                .collect();
            let ratio = median(&mut ratios);
            println!(
                "{:<8} {:<16} {:>10.3} {:>9} MiB {:>7.2}x  ({:.2}-{:.2})",
                threads,
                mode,
                median(&mut secs[m]),
                rss[m] / 1024,
                ratio,
                ratios[0],
                ratios[ratios.len() - 1],
            );
        }
    }
}
