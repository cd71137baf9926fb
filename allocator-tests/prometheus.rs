//! Metrics for Prometheus: `metrics_text()` and `/metrics` with exact
//! figures for planted scopes, read back by strict parsers (the
//! prometheus-parse crate and `promtool check metrics`); the same values
//! through the `metrics` facade and metrics-exporter-prometheus; the guide's
//! scrape config and rules checked by promtool; and Debian's Prometheus
//! scraping two programs (full and sampling mode) every second while they
//! run a leaking scope and a clean one, its `deriv` and its alert read from
//! its HTTP API.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use common::Deadline;
use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// Blocks of their own, as a service's leaks are (clippy's vec_box is for
// vectors that could hold the values in place).
#[allow(clippy::vec_box)]
static KEPT: Mutex<Vec<Box<[u8; 96]>>> = Mutex::new(Vec::new());
#[allow(clippy::vec_box)]
static OTHERS: Mutex<Vec<Box<u64>>> = Mutex::new(Vec::new());

/// Series name and its one label's value (or "" for none) → value.
type Series = HashMap<(String, String), f64>;

/// `text` parsed by prometheus-parse, every sample by name and label value.
fn parse(text: &str) -> Series {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let mut series = Series::new();
    for s in scrape.samples {
        let label = s.labels.values().next().cloned().unwrap_or_default();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            other => panic!("{other:?}"),
        };
        // prometheus-parse cuts a label value at a comma (a function's
        // generics, `Pool<T, F>::get`), so two such series may read alike;
        // `promtool check metrics` reads the text whole.
        series.insert((s.metric, label), value);
    }
    series
}

fn value(series: &Series, name: &str, label: &str) -> f64 {
    *series
        .get(&(name.to_owned(), label.to_owned()))
        .unwrap_or_else(|| panic!("no {name}{{{label}}} in {series:?}"))
}

#[inline(never)]
fn leak_one() {
    KEPT.lock().unwrap().push(black_box(Box::new([7u8; 96])));
}

/// Two call-sites in one function, 10 blocks each.
#[inline(never)]
fn leak_pair(kept: &mut Vec<Vec<u8>>) {
    kept.push(black_box(vec![1u8; 1200]));
    kept.push(black_box(vec![2u8; 800]));
}

/// The figures of a leaking scope (200 runs of one 96-byte block), a clean
/// one (50 runs), and 120 more scopes of one 8-byte block each, of which
/// the 100 first seen are named and the rest summed.
fn plant() {
    KEPT.lock().unwrap().reserve(200);
    OTHERS.lock().unwrap().reserve(120);
    for _ in 0..200 {
        leakscope::track_scope("POST /orders", leak_one);
    }
    for _ in 0..50 {
        leakscope::track_scope("GET /health", || black_box(vec![0u8; 500]).len());
    }
    let mut pairs = Vec::with_capacity(20);
    for _ in 0..10 {
        leak_pair(&mut pairs);
    }
    std::mem::forget(pairs);
    for i in 0..120 {
        leakscope::track_scope(&format!("cap {i}"), || {
            OTHERS.lock().unwrap().push(black_box(Box::new(i)))
        });
    }
}

fn metrics_are_exact_for_planted_scopes() {
    plant();
    let text = leakscope::metrics_text();
    let m = parse(&text);
    let scope = |name: &str, scope: &str| value(&m, name, scope);
    assert_eq!(
        scope("leakscope_scope_outstanding_bytes", "POST /orders"),
        19_200.0
    );
    assert_eq!(
        scope("leakscope_scope_outstanding_blocks", "POST /orders"),
        200.0
    );
    assert_eq!(scope("leakscope_scope_runs_total", "POST /orders"), 200.0);
    assert_eq!(scope("leakscope_scope_growing", "POST /orders"), 1.0);
    assert_eq!(
        scope("leakscope_scope_outstanding_bytes", "GET /health"),
        0.0
    );
    assert_eq!(scope("leakscope_scope_runs_total", "GET /health"), 50.0);
    assert_eq!(scope("leakscope_scope_growing", "GET /health"), 0.0);
    // Two scopes above, then "cap 0" to "cap 97" by name; "cap 98" to
    // "cap 119" (22 scopes, 8 bytes each) summed.
    assert_eq!(scope("leakscope_scope_outstanding_bytes", "cap 97"), 8.0);
    let named = (m.keys())
        .filter(|(n, _)| n == "leakscope_scope_runs_total")
        .count();
    assert_eq!(named, 101, "{text}");
    let other = "(other scopes)";
    assert_eq!(
        scope("leakscope_scope_outstanding_bytes", other),
        22.0 * 8.0
    );
    assert_eq!(scope("leakscope_scope_outstanding_blocks", other), 22.0);
    assert_eq!(scope("leakscope_scope_runs_total", other), 22.0);
    // Live bytes by the function of the call-sites' first frame: the
    // planted ones, the two call-sites of `leak_pair` summed.
    let function = |name: &str, function: &str| value(&m, name, function);
    assert_eq!(
        function("leakscope_callsite_live_bytes", "prometheus::leak_one"),
        19_200.0
    );
    assert_eq!(
        function("leakscope_callsite_live_blocks", "prometheus::leak_one"),
        200.0
    );
    assert_eq!(
        function("leakscope_callsite_live_bytes", "prometheus::leak_pair"),
        20_000.0
    );
    assert_eq!(
        function("leakscope_callsite_live_blocks", "prometheus::leak_pair"),
        20.0
    );
    let sites = (m.keys())
        .filter(|(n, _)| n == "leakscope_callsite_live_bytes")
        .count();
    assert!((1..=10).contains(&sites), "{text}");
    // Process figures: the same as a snapshot's, within what the parse
    // allocated between the two.
    assert_eq!(value(&m, "leakscope_sample_bytes", ""), 0.0);
    let r = leakscope::snapshot();
    let live = value(&m, "leakscope_live_bytes", "");
    assert!(
        live >= 19_200.0 && live <= r.totals.live_bytes as f64 + 65_536.0,
        "{live} {:?}",
        r.totals
    );
    assert!(value(&m, "leakscope_allocated_blocks_total", "") <= r.totals.total_blocks as f64);
    assert!(value(&m, "leakscope_peak_live_bytes", "") >= live);
    // promtool's strict parser and linter find nothing to say.
    if common::tool_runs("promtool", "prometheus", "LEAKSCOPE_TEST_NEEDS_PROMETHEUS") {
        let dir = common::fresh_dir("prometheus", "check-metrics");
        std::fs::write(dir.join("metrics.txt"), &text).unwrap();
        let out = Command::new("sh")
            .args(["-c", "promtool check metrics < metrics.txt"])
            .current_dir(&dir)
            .output_within(60)
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{said}\n{text}"
        );
    }
}

/// `LEAKSCOPE_METRICS_SITES` in a child that plants [`plant`]'s blocks and
/// prints its metrics: how many functions, and a bad value said once.
fn metrics_sites_is_read_and_a_bad_value_said() {
    let child = |value: &str| {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("LEAKSCOPE_TEST_CHILD", "sites")
            .env("LEAKSCOPE_METRICS_SITES", value)
            .env_remove("LEAKSCOPE_REPORT")
            .output_within(common::CHILD_SECS)
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let m = parse(&String::from_utf8_lossy(&out.stdout));
        let functions: Vec<(String, f64)> = (m.iter())
            .filter(|((name, _), _)| name == "leakscope_callsite_live_bytes")
            .map(|((_, function), v)| (function.clone(), *v))
            .collect();
        (functions, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // The one function holding the most: leak_pair's 20,000 bytes.
    let (functions, err) = child("1");
    assert_eq!(functions, [("prometheus::leak_pair".to_owned(), 20_000.0)]);
    assert_eq!(err, "");
    assert_eq!(child(" 0 "), (Vec::new(), String::new()));
    let (functions, err) = child("1000");
    assert!(
        functions.len() >= 2 && functions.len() <= 10,
        "{functions:?}"
    );
    assert!(functions.contains(&("prometheus::leak_one".to_owned(), 19_200.0)));
    assert_eq!(
        err,
        "leakscope: LEAKSCOPE_METRICS_SITES=\"1000\" is not a number from 0 to 100; using 10\n"
    );
}

/// One GET of `path` with `accept`: (content type, body).
fn get(addr: SocketAddr, path: &str, accept: &str) -> (String, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let kind = (head.lines())
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap();
    (kind.to_owned(), body.to_owned())
}

fn the_server_answers_both_formats() {
    let server = leakscope::serve_report("127.0.0.1:0").unwrap();
    let (kind, text) = get(server.local_addr(), "/metrics", "*/*");
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(
        value(&parse(&text), "leakscope_scope_runs_total", "POST /orders"),
        200.0
    );
    assert!(!text.contains("# EOF"));
    // What Prometheus sends: OpenMetrics first.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (kind, open) = get(server.local_addr(), "/metrics", prometheus);
    assert_eq!(
        kind,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.ends_with("\n# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE leakscope_scope_runs counter\n"),
        "{open}"
    );
    assert!(
        open.contains("\nleakscope_scope_runs_total{scope=\"POST /orders\"} 200\n"),
        "{open}"
    );
}

fn the_facade_publishes_the_same_values() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    // Every function with live blocks, so that the planted ones are shown
    // beside the regular expressions the parser of the first test compiled
    // (read at each reading; no other thread reads the environment now).
    std::env::set_var("LEAKSCOPE_METRICS_SITES", "100");
    let publisher = leakscope::publish_metrics(Duration::from_millis(20)).unwrap();
    let ours = parse(&leakscope::metrics_text());
    let since = Instant::now();
    let theirs = loop {
        let theirs = parse(&handle.render());
        if theirs.contains_key(&("leakscope_scope_runs_total".into(), "(other scopes)".into())) {
            break theirs;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "{theirs:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(publisher);
    std::env::remove_var("LEAKSCOPE_METRICS_SITES");
    // Every scope series alike (nothing planted moved since), and the
    // planted functions' (others' live bytes move as the test runs).
    let planted = ["prometheus::leak_one", "prometheus::leak_pair"];
    let kept: Vec<_> = (ours.iter())
        .filter(|((name, label), _)| {
            name.starts_with("leakscope_scope_")
                || (name.starts_with("leakscope_callsite_") && planted.contains(&label.as_str()))
        })
        .collect();
    assert_eq!(kept.len(), 101 * 4 + 2 * 2);
    for ((name, label), v) in kept {
        assert_eq!(value(&theirs, name, label), *v, "{name}{{{label}}}");
    }
    assert_eq!(value(&theirs, "leakscope_sample_bytes", ""), 0.0);
    // Described, with our help text.
    let text = handle.render();
    assert!(
        text.contains(
            "# HELP leakscope_scope_growing 1 while the scope's outstanding bytes still rise"
        ),
        "{text}"
    );
}

/// The fenced YAML block of the guide whose first line is `# {name}`.
fn guide_yaml(name: &str) -> String {
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/guide.md")).unwrap();
    let first = format!("```yaml\n# {name}\n");
    let (_, rest) = guide
        .split_once(&first)
        .unwrap_or_else(|| panic!("no {name} in the guide"));
    format!("# {name}\n{}", rest.split_once("```").unwrap().0)
}

fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output_within(60)
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn the_guides_config_and_rules_pass_promtool() {
    if !common::tool_runs("promtool", "prometheus", "LEAKSCOPE_TEST_NEEDS_PROMETHEUS") {
        return;
    }
    let dir = common::fresh_dir("prometheus", "promtool");
    std::fs::write(
        dir.join("leakscope.rules.yml"),
        guide_yaml("leakscope.rules.yml"),
    )
    .unwrap();
    std::fs::write(dir.join("prometheus.yml"), guide_yaml("prometheus.yml")).unwrap();
    promtool(&["check", "rules", "leakscope.rules.yml"], &dir);
    promtool(&["check", "config", "prometheus.yml"], &dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// Bytes a leaking run keeps; runs of each scope a second.
const LEAK: usize = 1000;
const RUNS_PER_SECOND: u64 = 100;
/// Seconds the child runs its scopes.
const RUN_SECONDS: u64 = 25;

/// The child Prometheus scrapes: serves (LEAKSCOPE_SERVE), says "ready",
/// waits for "go" on stdin, then runs a leaking scope and a clean one
/// [`RUNS_PER_SECOND`] times a second each, on an absolute schedule, for
/// [`RUN_SECONDS`]; says "done N" and serves until stdin closes.
fn child() {
    static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let runs = RUNS_PER_SECOND * RUN_SECONDS;
    LEAKED.lock().unwrap().reserve(runs as usize);
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let start = Instant::now();
    for k in 0..runs {
        let due = start + Duration::from_micros(k * 1_000_000 / RUNS_PER_SECOND);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        leakscope::track_scope("POST /leaky", || {
            LEAKED.lock().unwrap().push(black_box(vec![1u8; LEAK]))
        });
        leakscope::track_scope("GET /clean", || black_box(vec![2u8; LEAK]).len());
    }
    println!("done {runs}");
    let _ = std::io::stdin().read_line(&mut line);
}

/// A child serving metrics, full or sampling: its stdin, stdout and address.
struct Served {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    addr: String,
}

fn start_child(sample: Option<&str>) -> Served {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("LEAKSCOPE_TEST_CHILD", "serve")
        .env("LEAKSCOPE_SERVE", "127.0.0.1:0")
        .env_remove("LEAKSCOPE_REPORT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match sample {
        Some(bytes) => cmd
            .env("LEAKSCOPE_SAMPLE_BYTES", bytes)
            .env("LEAKSCOPE_SAMPLE_SEED", "7"),
        None => cmd.env_remove("LEAKSCOPE_SAMPLE_BYTES"),
    };
    let mut child = cmd.spawn().unwrap();
    let out = common::ready(&mut child);
    // "leakscope: serving reports on http://127.0.0.1:PORT/ (LEAKSCOPE_SERVE)"
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = (line.split("http://").nth(1))
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    Served { child, out, addr }
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on Prometheus's API: the JSON answer's `data`.
fn api(port: u16, path_and_query: &str) -> serde_json::Value {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "GET {path_and_query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    let body = all.split_once("\r\n\r\n").unwrap().1;
    // Chunked or not: the JSON object is the body's outermost braces.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(doc["status"], "success", "{doc}");
    doc["data"].clone()
}

/// An instant PromQL query at `time` (unix seconds): each series' labels
/// and value.
fn query(port: u16, promql: &str, time: f64) -> Vec<(serde_json::Value, f64)> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let data = api(port, &format!("/api/v1/query?query={q}&time={time:.3}"));
    (data["result"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["metric"].clone(),
                r["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// The one value of `promql` at `time`.
fn one(port: u16, promql: &str, time: f64) -> f64 {
    let r = query(port, promql, time);
    assert_eq!(r.len(), 1, "{promql}: {r:?}");
    r[0].1
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Debian's Prometheus; killed on drop.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn a_real_prometheus_scrapes_the_scopes_and_alerts() {
    if !common::tool_runs(
        "prometheus",
        "prometheus",
        "LEAKSCOPE_TEST_NEEDS_PROMETHEUS",
    ) {
        return;
    }
    let dir = common::fresh_dir("prometheus", "prometheus");
    let mut full = start_child(None);
    // 4 KiB: the error bound below is a few percent of what the window holds.
    let sample_bytes = 4096.0;
    let mut sampled = start_child(Some("4k"));
    // The guide's rules, their 30 minutes made 10 seconds (a test cannot
    // wait an hour), the window and the `for` alike: a single scrape that
    // caught a clean run's block before its free tilts the slope up for half
    // a window only, so it never fires.
    let rules = guide_yaml("leakscope.rules.yml")
        .replace("[30m]", "[10s]")
        .replace("for: 30m", "for: 10s");
    std::fs::write(dir.join("rules.yml"), rules).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: full\n    static_configs: [{{targets: ['{}']}}]\n  - job_name: sampled\n    static_configs: [{{targets: ['{}']}}]\n",
        full.addr, sampled.addr
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let prometheus = Prometheus(
        Command::new("prometheus")
            .current_dir(&dir)
            .args([
                "--config.file=prometheus.yml".to_owned(),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    // Both targets up.
    let since = Instant::now();
    loop {
        let up = if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            query(port, "up", unix_now())
        } else {
            Vec::new()
        };
        if up.len() == 2 && up.iter().all(|(_, v)| *v == 1.0) {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "{up:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for served in [&mut full, &mut sampled] {
        writeln!(served.child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    // The alert fires for the leaking scope, in both programs, while they run;
    // never for the clean one.
    let since = Instant::now();
    loop {
        let alerts = api(port, "/api/v1/alerts")["alerts"].clone();
        let alerts = alerts.as_array().unwrap();
        let firing = (alerts.iter())
            .filter(|a| a["state"] == "firing")
            .inspect(|a| {
                assert_eq!(a["labels"]["alertname"], "LeakscopeScopeGrowing", "{a}");
                assert_eq!(a["labels"]["scope"], "POST /leaky", "{a}");
            })
            .map(|a| a["labels"]["job"].as_str().unwrap().to_owned())
            .collect::<std::collections::BTreeSet<_>>();
        if firing.len() == 2 {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(RUN_SECONDS),
            "{alerts:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut runs = 0;
    for served in [&mut full, &mut sampled] {
        let mut line = String::new();
        served.out.read_line(&mut line).unwrap();
        runs = line
            .trim()
            .strip_prefix("done ")
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    let done = unix_now();
    // Two scrapes after the last run.
    std::thread::sleep(Duration::from_millis(2500));
    // Within the runs: the last 15 s before the end, less one.
    let at = done - 1.0;
    for job in ["full", "sampled"] {
        let leaky = format!("{{job=\"{job}\",scope=\"POST /leaky\"}}");
        let clean = format!("{{job=\"{job}\",scope=\"GET /clean\"}}");
        let deriv = one(
            port,
            &format!("deriv(leakscope_scope_outstanding_bytes{leaky}[15s])"),
            at,
        );
        // What the program planted a second over that window.
        let planted = LEAK as f64
            * one(
                port,
                &format!("rate(leakscope_scope_runs_total{leaky}[15s])"),
                at,
            );
        let error = (deriv - planted).abs() / planted;
        // Full mode: exact counts, so within 10% (scrape times jitter).
        // Sampling: the sampler's stated bound, a standard deviation of at
        // most sqrt(B * N) for B bytes, here B the bytes planted in the
        // window (a least-squares slope's is sqrt(6/5) times that), and
        // three of them.
        let bound = if job == "full" {
            0.10
        } else {
            let window_bytes = planted * 15.0;
            3.0 * (1.2 * window_bytes * sample_bytes).sqrt() / window_bytes
        };
        println!(
            "{job}: deriv {deriv:.0} B/s, planted {planted:.0} B/s: off by {:.2}%, bound {:.1}%",
            error * 100.0,
            bound * 100.0
        );
        assert!(
            error <= bound,
            "{job}: deriv {deriv} B/s, planted {planted} B/s: {error} > {bound}"
        );
        assert!(
            (planted - LEAK as f64 * RUNS_PER_SECOND as f64).abs() < 0.2 * planted,
            "{job}: {planted}"
        );
        // 0, or (a scrape that caught a clean run between its block's
        // allocation and its free, once in about ten thousand) a few dozen
        // bytes a second.
        let still = one(
            port,
            &format!("deriv(leakscope_scope_outstanding_bytes{clean}[15s])"),
            at,
        );
        println!("{job}: the clean scope's deriv {still} B/s");
        assert!(still.abs() <= 0.01 * planted, "{job}: {still}");
        let now = unix_now();
        assert_eq!(
            one(port, &format!("leakscope_scope_runs_total{leaky}"), now),
            runs as f64,
            "{job}"
        );
        assert_eq!(
            one(port, &format!("leakscope_scope_runs_total{clean}"), now),
            runs as f64,
            "{job}"
        );
        let interval = one(
            port,
            &format!("leakscope_sample_bytes{{job=\"{job}\"}}"),
            now,
        );
        assert_eq!(interval, if job == "full" { 0.0 } else { sample_bytes });
        if job == "full" {
            // Exact: every leaked byte.
            let bytes = one(
                port,
                &format!("leakscope_scope_outstanding_bytes{leaky}"),
                now,
            );
            assert_eq!(bytes, (runs as usize * LEAK) as f64);
        }
    }
    drop(prometheus);
    for mut served in [full, sampled] {
        drop(served.child.stdin.take());
        let status = common::timeout::wait_child(&mut served.child, 30);
        assert!(status.success(), "{status:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    match std::env::var("LEAKSCOPE_TEST_CHILD").as_deref() {
        Ok("serve") => return child(),
        Ok("sites") => {
            plant();
            return print!("{}", leakscope::metrics_text());
        }
        _ => {}
    }
    common::run(&[
        (
            "metrics_are_exact_for_planted_scopes",
            metrics_are_exact_for_planted_scopes,
        ),
        (
            "metrics_sites_is_read_and_a_bad_value_said",
            metrics_sites_is_read_and_a_bad_value_said,
        ),
        (
            "the_server_answers_both_formats",
            the_server_answers_both_formats,
        ),
        (
            "the_facade_publishes_the_same_values",
            the_facade_publishes_the_same_values,
        ),
        (
            "the_guides_config_and_rules_pass_promtool",
            the_guides_config_and_rules_pass_promtool,
        ),
        (
            "a_real_prometheus_scrapes_the_scopes_and_alerts",
            a_real_prometheus_scrapes_the_scopes_and_alerts,
        ),
    ]);
}
