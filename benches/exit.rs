//! What the exit report and the CI gate cost a short program: the same
//! tracked program run plain, with `LEAKSCOPE_ERROR_EXITCODE` (nothing lost),
//! and with a text or JSON report of a few live call-sites, interleaved, each
//! run its own child process. Prints the median wall time and peak RSS of
//! each and what each adds to the plain run (the bar: the gate at most 20 ms
//! and 8 MiB, a text report at most 60 ms and 24 MiB).
//!
//! `cargo bench --bench exit` (LEAKSCOPE_BENCH_ROUNDS=N for more rounds).
//! The child makes a few hundred call-sites (every block freed but five,
//! held from a static), as a short test binary or CLI run does.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

use std::hint::black_box;
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

const CHILD: &str = "LEAKSCOPE_BENCH_EXIT_CHILD";

static HELD: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A block made in a function of its own (one per `N`, never merged: each
/// fills its block with another byte), so that every `N` is a call-site.
#[inline(never)]
fn leaf<const N: usize>() -> Box<[u8]> {
    black_box(vec![N as u8; 48].into_boxed_slice())
}

macro_rules! row {
    ($r:literal) => {
        [
            leaf::<{ $r * 16 }>,
            leaf::<{ $r * 16 + 1 }>,
            leaf::<{ $r * 16 + 2 }>,
            leaf::<{ $r * 16 + 3 }>,
            leaf::<{ $r * 16 + 4 }>,
            leaf::<{ $r * 16 + 5 }>,
            leaf::<{ $r * 16 + 6 }>,
            leaf::<{ $r * 16 + 7 }>,
            leaf::<{ $r * 16 + 8 }>,
            leaf::<{ $r * 16 + 9 }>,
            leaf::<{ $r * 16 + 10 }>,
            leaf::<{ $r * 16 + 11 }>,
            leaf::<{ $r * 16 + 12 }>,
            leaf::<{ $r * 16 + 13 }>,
            leaf::<{ $r * 16 + 14 }>,
            leaf::<{ $r * 16 + 15 }>,
        ]
    };
}

/// Makes one block at its own call-site.
type Make = fn() -> Box<[u8]>;

/// The 256 call-sites.
const SITES: [[Make; 16]; 16] = [
    row!(0),
    row!(1),
    row!(2),
    row!(3),
    row!(4),
    row!(5),
    row!(6),
    row!(7),
    row!(8),
    row!(9),
    row!(10),
    row!(11),
    row!(12),
    row!(13),
    row!(14),
    row!(15),
];

fn child() {
    let mut words = std::collections::HashMap::new();
    for round in 0..20 {
        for (leaf, make) in SITES.iter().flatten().enumerate() {
            let block = make();
            *words.entry(block.len() + leaf % 7).or_insert(0usize) += 1;
            if round == 0 && leaf % 60 == 1 {
                HELD.lock().unwrap().push(block);
            }
        }
    }
    println!("{}", words.len());
}

/// One run of the child with `env`: (wall seconds, peak RSS in KiB).
fn run(env: &[(&str, &str)]) -> (f64, f64) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD, "1")
        .env_remove("LEAKSCOPE_REPORT")
        .env_remove("LEAKSCOPE_ERROR_EXITCODE")
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    // Reaped by wait4 below, which also gives its peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("run the child");
    let mut status = 0;
    // SAFETY: waits for our own child and fills a zeroed rusage.
    let rusage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::wait4(child.id() as i32, &mut status, 0, &mut u);
        u
    };
    let secs = start.elapsed().as_secs_f64();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{env:?}: status {status}"
    );
    (secs, rusage.ru_maxrss as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let rounds: usize = std::env::var("LEAKSCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15);
    let dir = std::env::temp_dir().join(format!("leakscope-bench-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("report.txt");
    let json = dir.join("report.json");
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        ("plain", vec![]),
        (
            "gate (LEAKSCOPE_ERROR_EXITCODE=23)",
            vec![("LEAKSCOPE_ERROR_EXITCODE", "23")],
        ),
        (
            "text report",
            vec![("LEAKSCOPE_REPORT", text.to_str().unwrap())],
        ),
        (
            "JSON report",
            vec![("LEAKSCOPE_REPORT", json.to_str().unwrap())],
        ),
    ];
    let mut times = vec![Vec::new(); cases.len()];
    let mut rss = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, (_, env)) in cases.iter().enumerate() {
            let (t, r) = run(env);
            times[i].push(t);
            rss[i].push(r);
        }
    }
    let base_t = median(&mut times[0].clone());
    let base_r = median(&mut rss[0].clone());
    println!(
        "{} call-sites, {rounds} interleaved rounds, medians:",
        SITES.len() * 16
    );
    for (i, (name, _)) in cases.iter().enumerate() {
        let t = median(&mut times[i]);
        let r = median(&mut rss[i]);
        println!(
            "  {name:<36} {:>7.1} ms {:>7.1} MiB   +{:>6.1} ms  +{:>6.1} MiB",
            t * 1e3,
            r / 1024.0,
            (t - base_t) * 1e3,
            (r - base_r) / 1024.0
        );
    }
    println!(
        "  report sizes: text {} bytes, JSON {} bytes",
        std::fs::metadata(&text).map_or(0, |m| m.len()),
        std::fs::metadata(&json).map_or(0, |m| m.len())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
