//! The live report: over HTTP on loopback while the program runs (and
//! allocates), and written on a signal.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use common::Deadline;

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Mutex;

const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// One GET over a fresh connection: (status line, body).
fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The entry named `name` in the JSON list `list`.
fn named<'a>(list: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    list.as_array().unwrap().iter().find(|s| s["name"] == name)
}

fn scope_in(doc: &serde_json::Value, name: &str) -> (u64, u64) {
    let s = named(&doc["scopes"], name).unwrap_or_else(|| panic!("no scope {name}"));
    (
        s["runs"].as_u64().unwrap(),
        s["outstanding_blocks"].as_u64().unwrap(),
    )
}

fn the_report_is_served_on_loopback() {
    let server = leakscope::serve_report("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    // Room first, so that the scope makes only the five blocks.
    KEPT.lock().unwrap().reserve(16);
    leakscope::track_scope("GET /live", || {
        let mut k = KEPT.lock().unwrap();
        for i in 0..5 {
            k.push(black_box(vec![i as u8; 32]));
        }
    });
    let (status, body) = get(addr, "/report.json");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let doc = common::report_doc(&body);
    assert_eq!(scope_in(&doc, "GET /live"), (1, 5));
    let (status, text) = get(addr, "/report");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(text.contains("GET /live:"), "{text}");
    let (status, html) = get(addr, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(html.contains("<tr data-scope=\"GET /live\">"), "{html}");
    let (status, body) = get(addr, "/leak-check.json");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let doc = common::report_doc(&body);
    assert_eq!(doc["leak_check"]["error"], serde_json::Value::Null);
    assert_eq!(get(addr, "/nope").0, "HTTP/1.1 404 Not Found");
    drop(server);
    // Stopped: nobody listens there any more.
    assert!(TcpStream::connect(addr).is_err());
    let err = leakscope::serve_report("0.0.0.0:0").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// `growth` of a served JSON report: (seconds, that scope's runs, blocks,
/// bytes), the scope absent when it neither ran nor changed.
fn growth_in(doc: &serde_json::Value, name: &str) -> (Option<f64>, Option<(u64, i64, i64)>) {
    let g = &doc["growth"];
    (
        g["seconds"].as_f64(),
        named(&g["scopes"], name).map(|s| {
            (
                s["runs"].as_u64().unwrap(),
                s["outstanding_blocks"].as_i64().unwrap(),
                s["outstanding_bytes"].as_i64().unwrap(),
            )
        }),
    )
}

fn each_report_says_what_grew_since_the_one_before() {
    let server = leakscope::serve_report("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    KEPT.lock().unwrap().reserve(64);
    let keep = |n: usize, size: usize| {
        let mut k = KEPT.lock().unwrap();
        for _ in 0..n {
            k.push(black_box(vec![1u8; size]));
        }
    };
    for _ in 0..3 {
        leakscope::track_scope("grows-now", || keep(2, 24));
    }
    leakscope::track_scope("grew-before", || keep(1, 8));
    let mut held = Vec::with_capacity(2);
    leakscope::track_scope("shrinks", || {
        held.push(black_box(vec![0u8; 40]));
        held.push(black_box(vec![0u8; 40]));
    });
    // The first report served: growth since the program started.
    let doc = common::report_doc(&get(addr, "/report.json").1);
    assert_eq!(growth_in(&doc, "grows-now"), (None, Some((3, 6, 144))));
    assert_eq!(growth_in(&doc, "shrinks").1, Some((1, 2, 80)));
    for _ in 0..4 {
        leakscope::track_scope("grows-now", || keep(1, 24));
    }
    drop(held);
    let text = get(addr, "/report").1;
    let (_, since) = text
        .split_once("Since the previous report, ")
        .unwrap_or_else(|| panic!("{text}"));
    let line = |name: &str| {
        since.lines().find_map(|l| {
            l.split_once(&format!(" {name}:"))
                .map(|(_, rest)| rest.trim_start())
        })
    };
    assert_eq!(
        line("grows-now"),
        Some("4 runs, +4 blocks / +96 bytes outstanding, +1 blocks (+24 bytes) per run"),
        "{text}"
    );
    assert_eq!(
        line("shrinks"),
        Some("0 runs, -2 blocks / -80 bytes outstanding, +0 blocks (+0 bytes) per run"),
        "{text}"
    );
    // Neither ran nor changed: in the scope table, not in what grew.
    assert_eq!(line("grew-before"), None, "{text}");
    assert!(text.contains(" grew-before:"), "{text}");
    // Nothing happened since: an empty list, and the time since.
    let doc = common::report_doc(&get(addr, "/report.json").1);
    let (seconds, grows) = growth_in(&doc, "grows-now");
    assert!(seconds.is_some_and(|s| s >= 0.0), "{doc}");
    assert_eq!(grows, None);
    assert_eq!(
        doc["growth"]["scopes"].as_array().unwrap().len(),
        0,
        "{doc}"
    );
    // A snapshot made in code carries no growth.
    assert_eq!(leakscope::snapshot().changes, None);
}

fn reports_while_threads_allocate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let server = leakscope::serve_report("127.0.0.1:0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    leakscope::track_scope("GET /busy", || {
                        black_box(vec![0u8; (n % 200) as usize + 1]);
                    });
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..20 {
        let path = if i % 4 == 3 {
            "/leak-check.json"
        } else {
            "/report.json"
        };
        let (status, body) = get(server.local_addr(), path);
        assert_eq!(status, "HTTP/1.1 200 OK");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(doc["scopes"].is_array());
    }
    stop.store(true, Ordering::Relaxed);
    let runs: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let doc: serde_json::Value =
        serde_json::from_str(&get(server.local_addr(), "/report.json").1).unwrap();
    // Every run counted, none left anything behind.
    assert_eq!(scope_in(&doc, "GET /busy"), (runs, 0));
}

/// The child: leaks in a scope, signals itself, and checks the report the
/// signal wrote before it exits.
fn child() {
    let path = std::env::var("LEAKSCOPE_REPORT").unwrap();
    KEPT.lock().unwrap().reserve(16);
    leakscope::track_scope("before-signal", || {
        let mut k = KEPT.lock().unwrap();
        for _ in 0..3 {
            k.push(black_box(vec![1u8; 16]));
        }
    });
    // SAFETY: raise sends a signal to this thread; the tracker handles it.
    unsafe { libc::raise(libc::SIGUSR2) };
    let doc = report_written(&path, |_| true);
    assert_eq!(scope_in(&doc, "before-signal"), (1, 3));
    assert_eq!(growth_in(&doc, "before-signal"), (None, Some((1, 3, 48))));
    // The next signal's report says what grew since this one.
    leakscope::track_scope("before-signal", || {
        KEPT.lock().unwrap().push(black_box(vec![1u8; 16]));
    });
    // SAFETY: as above.
    unsafe { libc::raise(libc::SIGUSR2) };
    let doc = report_written(&path, |doc| doc["growth"]["seconds"].is_number());
    assert_eq!(scope_in(&doc, "before-signal"), (2, 4));
    assert_eq!(growth_in(&doc, "before-signal").1, Some((1, 1, 16)));
    println!("signal-report-ok");
}

/// The JSON report at `path` once it is whole and `done` says it is the one
/// awaited (the signal's thread writes it a little later).
fn report_written(path: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) {
                if done(&doc) {
                    return doc;
                }
            }
        }
        assert!(start.elapsed().as_secs() < 20, "no report after the signal");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs this program as a child in `mode` with `env`.
fn run_child(mode: &str, env: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD, mode)
        .envs(env.iter().copied())
        .output_within(common::CHILD_SECS)
        .unwrap()
}

fn a_signal_writes_the_report() {
    let dir = std::env::temp_dir().join(format!("leakscope-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.json");
    let out = run_child(
        "1",
        &[
            ("LEAKSCOPE_REPORT", path.as_os_str()),
            ("LEAKSCOPE_REPORT_SIGNAL", "bogus".as_ref()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("signal-report-ok"));
    // A bad value: said, and SIGUSR2 is used.
    assert_eq!(
        stderr.matches("LEAKSCOPE_REPORT_SIGNAL=\"bogus\"").count(),
        1,
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The child of the `%n` test: two signals, then the exit, each report in a
/// file of its own.
fn series_child() {
    let pattern = std::env::var("LEAKSCOPE_REPORT").unwrap();
    let nth = |n: u32| pattern.replace("%n", &n.to_string());
    KEPT.lock().unwrap().reserve(16);
    for n in 1..=2 {
        leakscope::track_scope("series", || {
            KEPT.lock().unwrap().push(black_box(vec![1u8; 16]));
        });
        // SAFETY: raise sends a signal to this thread; the tracker handles it.
        unsafe { libc::raise(libc::SIGUSR2) };
        report_written(&nth(n), |_| true);
    }
}

/// `%n` in `LEAKSCOPE_REPORT`: every report keeps a file of its own, and
/// each one's growth spans the time between its snapshot and the one before.
fn reports_in_a_series_keep_their_own_files() {
    let dir = std::env::temp_dir().join(format!("leakscope-series-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = dir.join("report-%n.json");
    let out = run_child(
        "series",
        &[
            ("LEAKSCOPE_REPORT", pattern.as_os_str()),
            ("LEAKSCOPE_LEAK_CHECK", "no".as_ref()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |n: u32| -> serde_json::Value {
        let path = dir.join(format!("report-{n}.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let (first, second, at_exit) = (read(1), read(2), read(3));
    assert!(!dir.join("report-4.json").exists());
    assert_eq!(scope_in(&first, "series"), (1, 1));
    assert_eq!(scope_in(&second, "series"), (2, 2));
    assert_eq!(scope_in(&at_exit, "series"), (2, 2));
    assert_eq!(growth_in(&first, "series"), (None, Some((1, 1, 16))));
    assert_eq!(growth_in(&second, "series").1, Some((1, 1, 16)));
    // The interval is the one between the two snapshots.
    let between = second["seconds"].as_f64().unwrap() - first["seconds"].as_f64().unwrap();
    assert!(between > 0.0);
    // (serde_json reads floats to within one unit in the last place.)
    let interval = growth_in(&second, "series").0.unwrap();
    assert!((interval - between).abs() < 1e-9, "{interval} vs {between}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    match std::env::var(CHILD).as_deref() {
        Ok("series") => return series_child(),
        Ok(_) => return child(),
        Err(_) => {}
    }
    common::run(&[
        (
            "the_report_is_served_on_loopback",
            the_report_is_served_on_loopback,
        ),
        (
            "reports_while_threads_allocate",
            reports_while_threads_allocate,
        ),
        (
            "each_report_says_what_grew_since_the_one_before",
            each_report_says_what_grew_since_the_one_before,
        ),
        ("a_signal_writes_the_report", a_signal_writes_the_report),
        (
            "reports_in_a_series_keep_their_own_files",
            reports_in_a_series_keep_their_own_files,
        ),
    ]);
}
