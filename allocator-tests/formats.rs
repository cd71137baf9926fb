//! Reports other tools open, checked by those tools: a pprof profile read by
//! Go's own `go tool pprof`, folded stacks, a flamegraph read as XML, the
//! HTML page and DHAT's file in headless Chromium (the latter in DHAT's own
//! viewer). A child process plants live
//! blocks of known sizes, inside a scope and outside any, and writes its
//! report to several destinations at once (and serves the profile live);
//! the parent reads what it wrote.

mod common;

use common::Deadline;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

const CHILD: &str = "LEAKSCOPE_FORMATS_CHILD";
const SCOPE: &str = "GET /planted";

/// Live on purpose until the child exits.
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Three blocks of 1,000 bytes, opened in the scope.
#[inline(never)]
fn planted_in_scope() {
    for _ in 0..3 {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(1000));
        KEPT.lock().unwrap().push(v);
    }
}

/// Two blocks of 512 bytes, outside any scope.
#[inline(never)]
fn planted_outside() {
    for _ in 0..2 {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(512));
        KEPT.lock().unwrap().push(v);
    }
}

fn main() {
    match std::env::var(CHILD).as_deref() {
        Ok("timeline") => return timeline_child(),
        Ok("fork") => return fork_child(),
        Ok("dhat") => return dhat_child(),
        Ok(_) => return child(),
        Err(_) => {}
    }
    common::run(&[
        (
            "several_destinations_and_folded_stacks",
            several_destinations_and_folded_stacks,
        ),
        ("go_pprof_reads_the_profile", go_pprof_reads_the_profile),
        (
            "go_pprof_reads_the_live_profile",
            go_pprof_reads_the_live_profile,
        ),
        ("flamegraphs_are_svg", flamegraphs_are_svg),
        ("html_renders_in_chromium", html_renders_in_chromium),
        (
            "the_timeline_follows_a_growing_scope",
            the_timeline_follows_a_growing_scope,
        ),
        ("forked_children_still_report", forked_children_still_report),
        ("dhat_viewer_reads_the_file", dhat_viewer_reads_the_file),
        (
            "a_bad_entry_is_said_and_the_others_written",
            a_bad_entry_is_said_and_the_others_written,
        ),
    ]);
    let _ = std::fs::remove_dir_all(dir());
}

fn child() {
    KEPT.lock().unwrap().reserve(16);
    leakscope::track_scope(SCOPE, planted_in_scope);
    planted_outside();
    let server = leakscope::serve_report("127.0.0.1:0").unwrap();
    let body = get(server.local_addr(), "/debug/pprof/heap");
    std::fs::write(dir().join("live.pb.gz"), body).unwrap();
    let body = get(server.local_addr(), "/debug/pprof/allocs");
    std::fs::write(dir().join("allocs.pb.gz"), body).unwrap();
    let svg = get(server.local_addr(), "/flamegraph.svg");
    std::fs::write(dir().join("served.svg"), svg).unwrap();
    let dhat = get(server.local_addr(), "/dhat.json");
    std::fs::write(dir().join("served.dhat.json"), dhat).unwrap();
    drop(server);
}

/// The body of `GET path` from the live server.
fn get(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut all = Vec::new();
    conn.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        all.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&all[..at])
    );
    all.split_off(at)
}

/// The parent's scratch directory (the child is told it).
fn dir() -> PathBuf {
    let d = match std::env::var_os("LEAKSCOPE_FORMATS_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("leakscope-formats-{}", std::process::id())),
    };
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the child once (its files are shared by the tests).
fn child_files() -> &'static Path {
    static DONE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let d = dir();
        let dests = format!(
            "{},{},{},{},{}",
            d.join("heap-%n.pb.gz").display(),
            d.join("live.folded").display(),
            d.join("report.json").display(),
            d.join("live.svg").display(),
            d.join("report.html").display()
        );
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(CHILD, "1")
            .env("LEAKSCOPE_REPORT", dests)
            .env("LEAKSCOPE_LEAK_CHECK", "no")
            .env("LEAKSCOPE_FORMATS_DIR", &d);
        let out = cmd.output_within(common::CHILD_SECS).unwrap();
        assert!(
            out.status.success(),
            "child: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    })
}

fn several_destinations_and_folded_stacks() {
    let d = child_files();
    for f in [
        "heap-1.pb.gz",
        "live.folded",
        "report.json",
        "live.svg",
        "report.html",
        "live.pb.gz",
        "served.svg",
    ] {
        assert!(d.join(f).exists(), "{f} not written");
    }
    let folded = std::fs::read_to_string(d.join("live.folded")).unwrap();
    let line = |scope: &str, function: &str| -> Vec<u64> {
        folded
            .lines()
            .filter(|l| l.starts_with(&format!("{scope};")) && l.contains(function))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect()
    };
    assert_eq!(line(SCOPE, "formats::planted_in_scope"), [3000], "{folded}");
    assert_eq!(
        line("[no scope]", "formats::planted_outside"),
        [1024],
        "{folded}"
    );
    // Root first: the scope, then the outermost frame, the allocator's caller last.
    let planted = folded
        .lines()
        .find(|l| l.contains("planted_in_scope"))
        .unwrap();
    let frames: Vec<&str> = planted.rsplit_once(' ').unwrap().0.split(';').collect();
    let main = frames
        .iter()
        .position(|f| f.contains("formats::main"))
        .unwrap();
    let leaf = frames
        .iter()
        .position(|f| f.contains("planted_in_scope"))
        .unwrap();
    assert!(main < leaf, "{planted}");
    // The JSON report reads back whole: written again, it is the same text.
    let saved = std::fs::read_to_string(d.join("report.json")).unwrap();
    let back = leakscope::Report::from_json(&saved).unwrap();
    assert_eq!(back.to_json(), saved);
    assert!(back.timeline.is_some_and(|t| !t.callsites.is_empty()));
    // The served DHAT file: the planted blocks, all live.
    let served: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("served.dhat.json")).unwrap()).unwrap();
    for (function, bytes, blocks) in [
        ("formats::planted_in_scope", 3000, 3),
        ("formats::planted_outside", 1024, 2),
    ] {
        let pp = dhat_pp(&served, function);
        let figures = ["tb", "tbk", "eb", "ebk"].map(|k| pp[k].as_u64().unwrap());
        assert_eq!(figures, [bytes, blocks, bytes, blocks], "{pp}");
    }
}

/// Runs an outside tool (`program`, which Debian's `package` gives) and
/// returns its stdout; `None`, said on stdout, when it is not installed,
/// unless `needed` is set in the environment (.ci/run installs the tools and
/// sets it: there, a missing tool is a failure, not a skip).
fn run_tool(program: &str, package: &str, needed: &str, cmd: &mut Command) -> Option<String> {
    let out: Output = match cmd
        .env("HOME", std::env::temp_dir())
        .output_within(common::BUILD_SECS)
    {
        Ok(o) => o,
        Err(_) if std::env::var_os(needed).is_none() => {
            println!("{program} is not installed (Debian: {package}): skipped");
            return None;
        }
        Err(e) => panic!("{needed} is set and {program} does not run: {e}"),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `go tool pprof` with `args` on `file`; its output.
fn pprof(file: &Path, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new("go");
    cmd.args(["tool", "pprof"]).args(args).arg(file);
    run_tool("go", "golang-go", "LEAKSCOPE_TEST_NEEDS_GO", &mut cmd)
}

/// The flat value `go tool pprof -top` gives the function named `f`.
fn flat(top: &str, f: &str) -> Option<String> {
    top.lines()
        .find(|l| l.trim_end().ends_with(f))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
}

fn check_profile(file: &Path) {
    let inuse = ["-top", "-unit=B", "-sample_index=inuse_space"];
    let Some(top) = pprof(file, &inuse) else {
        return;
    };
    assert_eq!(
        flat(&top, "formats::planted_in_scope").as_deref(),
        Some("3000B"),
        "{top}"
    );
    assert_eq!(
        flat(&top, "formats::planted_outside").as_deref(),
        Some("1024B"),
        "{top}"
    );
    let objects = pprof(file, &["-top", "-sample_index=inuse_objects"]).unwrap();
    assert_eq!(
        flat(&objects, "formats::planted_in_scope").as_deref(),
        Some("3"),
        "{objects}"
    );
    assert_eq!(
        flat(&objects, "formats::planted_outside").as_deref(),
        Some("2"),
        "{objects}"
    );
    // The scope label keeps one endpoint's blocks.
    let focus = format!("-tagfocus=scope={SCOPE}");
    let scoped = pprof(
        file,
        &["-top", "-unit=B", "-sample_index=inuse_space", &focus],
    )
    .unwrap();
    assert_eq!(
        flat(&scoped, "formats::planted_in_scope").as_deref(),
        Some("3000B"),
        "{scoped}"
    );
    assert_eq!(flat(&scoped, "formats::planted_outside"), None, "{scoped}");
    // Everything a call-site allocated, freed or not.
    let alloc = pprof(file, &["-top", "-unit=B", "-sample_index=alloc_space"]).unwrap();
    assert_eq!(
        flat(&alloc, "formats::planted_outside").as_deref(),
        Some("1024B"),
        "{alloc}"
    );
    // The default sample type is inuse_space, with file and line.
    let lines = pprof(file, &["-top", "-unit=B", "-lines"]).unwrap();
    assert!(
        lines
            .lines()
            .any(|l| l.contains("planted_in_scope") && l.contains("formats.rs:")),
        "{lines}"
    );
}

fn go_pprof_reads_the_profile() {
    check_profile(&child_files().join("heap-1.pb.gz"));
}

fn go_pprof_reads_the_live_profile() {
    check_profile(&child_files().join("live.pb.gz"));
    // /debug/pprof/allocs: the same samples, alloc_space first.
    let allocs = child_files().join("allocs.pb.gz");
    if let Some(top) = pprof(&allocs, &["-top", "-unit=B"]) {
        assert!(top.contains("Type: alloc_space"), "{top}");
        assert_eq!(
            flat(&top, "formats::planted_outside").as_deref(),
            Some("1024B"),
            "{top}"
        );
    }
}

fn a_bad_entry_is_said_and_the_others_written() {
    let d = dir().join("bad");
    std::fs::create_dir_all(&d).unwrap();
    let (json, folded) = (d.join("r.json"), d.join("r.folded"));
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("LEAKSCOPE_FORMATS_DIR", &d)
        .env("LEAKSCOPE_LEAK_CHECK", "no")
        .env(
            "LEAKSCOPE_REPORT",
            format!("{}, ,{}", json.display(), folded.display()),
        )
        .output_within(common::CHILD_SECS)
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "leakscope: LEAKSCOPE_REPORT has an empty entry; the other destinations are written"
        ),
        "{err}"
    );
    assert!(json.exists() && folded.exists());
}

/// The `<title>` texts of an SVG, read by an XML parser (which fails on
/// anything that is not well-formed XML).
fn svg_titles(path: &Path) -> Vec<String> {
    use quick_xml::events::Event;
    let text = std::fs::read_to_string(path).unwrap();
    let mut reader = quick_xml::Reader::from_str(&text);
    let (mut titles, mut in_title, mut root) = (Vec::new(), false, None);
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) if root.is_none() => {
                root = Some(String::from_utf8_lossy(e.name().as_ref()).into_owned());
            }
            Event::Start(e) if e.name().as_ref() == b"title" => {
                in_title = true;
                titles.push(String::new());
            }
            Event::End(e) if e.name().as_ref() == b"title" => in_title = false,
            Event::Text(t) if in_title => {
                if let Some(last) = titles.last_mut() {
                    last.push_str(&t.decode().unwrap());
                }
            }
            Event::GeneralRef(r) if in_title => {
                // An entity inside a title (&lt; &gt; &amp;): as its character.
                let c = match r.as_ref() {
                    b"lt" => "<",
                    b"gt" => ">",
                    b"amp" => "&",
                    b"quot" => "\"",
                    _ => "'",
                };
                if let Some(t) = titles.last_mut() {
                    t.push_str(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(root.as_deref(), Some("svg"));
    titles
}

fn flamegraphs_are_svg() {
    let d = child_files();
    for f in ["live.svg", "served.svg"] {
        let titles = svg_titles(&d.join(f));
        let has = |prefix: &str| titles.iter().any(|t| t.starts_with(prefix));
        assert!(
            has("formats::planted_in_scope (3,000 bytes"),
            "{f}: {titles:?}"
        );
        assert!(
            has("formats::planted_outside (1,024 bytes"),
            "{f}: {titles:?}"
        );
        assert!(has(&format!("{SCOPE} (3,000 bytes")), "{f}: {titles:?}");
    }
}

/// Headless Chromium with `args` on the page `file`; its stdout.
fn chromium(file: &Path, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ])
    .args(args)
    .arg(format!("file://{}", file.display()));
    run_tool(
        "chromium",
        "chromium",
        "LEAKSCOPE_TEST_NEEDS_CHROMIUM",
        &mut cmd,
    )
}

fn html_renders_in_chromium() {
    let page = child_files().join("report.html");
    let Some(dom) = chromium(&page, &["--dump-dom"]) else {
        return;
    };
    // The page as the browser built it: the planted scope's row, with its
    // three blocks of 1,000 bytes, the call-sites' stacks, the flamegraph.
    let row =
        format!("<tr data-scope=\"{SCOPE}\"><td>{SCOPE}</td><td>1</td><td>3</td><td>3,000</td>");
    assert!(dom.contains(&row), "{dom}");
    assert!(dom.contains("formats::planted_in_scope"), "{dom}");
    assert!(dom.contains("<iframe id=\"flamegraph\""), "{dom}");
    let shot = dir().join("report.png");
    let arg = format!("--screenshot={}", shot.display());
    chromium(&page, &[&arg, "--window-size=1200,900"]).unwrap();
    let (width, height, varied) = png_look(&std::fs::read(&shot).unwrap());
    assert_eq!((width, height), (1200, 900));
    assert!(varied > 0.02, "the screenshot is blank ({varied})");
}

/// A PNG's size, and the share of its filtered scanline bytes that are not
/// zero: about 0 for a blank page (every row filters to zeros), more where
/// anything is drawn.
fn png_look(png: &[u8]) -> (u32, u32, f64) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (mut at, mut size, mut idat) = (8, (0, 0), Vec::new());
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        if kind == b"IHDR" {
            size = (
                u32::from_be_bytes(data[0..4].try_into().unwrap()),
                u32::from_be_bytes(data[4..8].try_into().unwrap()),
            );
        } else if kind == b"IDAT" {
            idat.extend_from_slice(data);
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let nonzero = raw.iter().filter(|&&b| b != 0).count();
    (size.0, size.1, nonzero as f64 / raw.len().max(1) as f64)
}

/// A scope that holds 100 KiB, then 200 KiB, each for 300 ms, while the
/// timeline samples every 25 ms.
fn timeline_child() {
    KEPT.lock().unwrap().reserve(16);
    for _ in 0..2 {
        leakscope::track_scope("GET /grow", || {
            let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(100 << 10));
            KEPT.lock().unwrap().push(v);
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

fn the_timeline_follows_a_growing_scope() {
    let d = dir().join("timeline");
    std::fs::create_dir_all(&d).unwrap();
    let (json, html) = (d.join("t.json"), d.join("t.html"));
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "timeline")
        .env("LEAKSCOPE_TIMELINE_MS", "25")
        .env("LEAKSCOPE_LEAK_CHECK", "no")
        .env(
            "LEAKSCOPE_REPORT",
            format!("{},{}", json.display(), html.display()),
        )
        .output_within(common::CHILD_SECS)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = common::report_doc(&std::fs::read_to_string(&json).unwrap());
    // As the contract has it: points oldest first, each with its seconds
    // and the followed scopes' bytes by name.
    assert_eq!(doc["timeline_interval_ms"], 25);
    let points = doc["timeline"].as_array().unwrap();
    assert!(points.len() >= 10, "{} points", points.len());
    assert!(
        points
            .iter()
            .any(|p| p["scopes"].get("GET /grow").is_some()),
        "the scope is followed"
    );
    let series: Vec<(f64, u64, u64)> = points
        .iter()
        .map(|p| {
            (
                p["seconds"].as_f64().unwrap(),
                p["live_bytes"].as_u64().unwrap(),
                p["scopes"]["GET /grow"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        series.windows(2).all(|w| w[0].0 < w[1].0),
        "time goes forward: {series:?}"
    );
    let held: Vec<u64> = series.iter().map(|s| s.2).collect();
    // Each step is held for 300 ms: a dozen points see it, exactly.
    assert!(
        held.iter().filter(|&&b| b == 100 << 10).count() >= 5,
        "{held:?}"
    );
    assert!(
        held.iter().filter(|&&b| b == 200 << 10).count() >= 5,
        "{held:?}"
    );
    assert!(held.windows(2).all(|w| w[0] <= w[1]), "{held:?}");
    assert!(
        held.iter().all(|&b| [0, 100 << 10, 200 << 10].contains(&b)),
        "{held:?}"
    );
    assert!(series.iter().all(|s| s.1 >= s.2), "{series:?}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg id=\"timeline\""));
    assert!(page.contains("data-series=\"GET /grow\""));
}

/// Forks 20 children while the timeline samples every millisecond (its
/// ring locked much of the time); each child allocates and exits, writing
/// its report. A child forked with the ring held must not hang on it.
fn fork_child() {
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(3));
        // SAFETY: the child only allocates, then exits (running the exit
        // report, which is what is tested).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            leakscope::track_scope("GET /forked", planted_outside);
            std::process::exit(0);
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}

fn forked_children_still_report() {
    let d = dir().join("fork");
    std::fs::create_dir_all(&d).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "fork")
        .env("LEAKSCOPE_TIMELINE_MS", "1")
        .env("LEAKSCOPE_LEAK_CHECK", "no")
        .env("LEAKSCOPE_REPORT", d.join("r-%p.json"))
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("a forked child hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success());
    // The 20 children's reports and the parent's.
    let reports: Vec<serde_json::Value> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| {
            serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(reports.len(), 21);
    let forked = reports
        .iter()
        .filter(|r| {
            r["scopes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "GET /forked")
        })
        .count();
    assert_eq!(forked, 20);
}

/// 100 blocks of 1,000 bytes, held while the process is at its peak.
#[inline(never)]
fn dhat_peak(held: &mut Vec<Vec<u8>>) {
    for _ in 0..100 {
        held.push(Vec::with_capacity(std::hint::black_box(1000)));
    }
}

/// 1,000 blocks of 48 bytes, each freed at once.
#[inline(never)]
fn dhat_churn() {
    for _ in 0..1000 {
        drop(std::hint::black_box(Vec::<u8>::with_capacity(
            std::hint::black_box(48),
        )));
    }
}

/// Three blocks of 96 bytes, live at the end.
#[inline(never)]
fn dhat_leak() {
    for _ in 0..3 {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(96));
        KEPT.lock().unwrap().push(v);
    }
}

/// The peak (held 400 ms, the time printed in microseconds), then churn,
/// then the leak, while the timeline samples every 10 ms.
fn dhat_child() {
    KEPT.lock().unwrap().reserve(16);
    let mut held = Vec::with_capacity(100);
    let start = std::time::Instant::now();
    dhat_peak(&mut held);
    std::thread::sleep(std::time::Duration::from_millis(400));
    drop(held);
    println!("{}", start.elapsed().as_micros());
    dhat_churn();
    dhat_leak();
}

/// The DHAT file of [`dhat_child`], with its held time and the longest
/// gap between two timeline points, in microseconds.
fn dhat_file() -> (serde_json::Value, PathBuf, u64, u64) {
    let d = dir().join("dhat");
    std::fs::create_dir_all(&d).unwrap();
    let (file, json) = (d.join("heap.dhat.json"), d.join("report.json"));
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "dhat")
        .env("LEAKSCOPE_TIMELINE_MS", "10")
        .env("LEAKSCOPE_LEAK_CHECK", "no")
        .env(
            "LEAKSCOPE_REPORT",
            format!("{},{}", file.display(), json.display()),
        )
        .output_within(common::CHILD_SECS)
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let doc = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let times: Vec<f64> = (report["timeline"].as_array().unwrap().iter())
        .map(|p| p["seconds"].as_f64().unwrap())
        .collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (doc, file, held, (gap * 1e6) as u64)
}

/// The program point whose innermost frame of ours is `function`.
fn dhat_pp<'a>(doc: &'a serde_json::Value, function: &str) -> &'a serde_json::Value {
    let ftbl = doc["ftbl"].as_array().unwrap();
    let pps: Vec<&serde_json::Value> = (doc["pps"].as_array().unwrap().iter())
        .filter(|pp| {
            (pp["fs"].as_array().unwrap().iter()).any(|f| {
                ftbl[f.as_u64().unwrap() as usize]
                    .as_str()
                    .unwrap()
                    .contains(function)
            })
        })
        .collect();
    assert_eq!(pps.len(), 1, "one program point in {function}");
    pps[0]
}

fn dhat_viewer_reads_the_file() {
    let (doc, file, held_us, gap_us) = dhat_file();
    // The header as DHAT's viewer checks it.
    assert_eq!(doc["dhatFileVersion"], 2);
    assert_eq!(doc["bklt"], true);
    assert_eq!(doc["bkacc"], false);
    assert_eq!(doc["tu"], "µs");
    assert_eq!(doc["ftbl"][0], "[root]");
    assert!(doc["pid"].as_u64().unwrap() > 0);
    let (te, tg) = (doc["te"].as_u64().unwrap(), doc["tg"].as_u64().unwrap());
    // The peak is the first pass that saw the 100 blocks: while they were
    // held (which began at once, so it may be at 0 ms).
    assert!(
        tg <= held_us + gap_us && te >= held_us,
        "tg {tg}, te {te}, held {held_us}"
    );
    let get = |pp: &serde_json::Value, k: &str| pp[k].as_u64().unwrap();
    let fields = ["tb", "tbk", "mb", "mbk", "gb", "gbk", "eb", "ebk"];
    let figures = |pp: &serde_json::Value| fields.map(|k| get(pp, k));

    // Held at the peak, all freed by the end.
    let peak = dhat_pp(&doc, "formats::dhat_peak");
    assert_eq!(
        figures(peak),
        [100_000, 100, 100_000, 100, 100_000, 100, 0, 0],
        "{peak}"
    );
    // Each of the 100 blocks lived about the time it was held: a pass at
    // each point (every 10 ms, later on a busy machine) sees it, so the sum
    // is off by at most the gap before the first pass that saw it and the
    // one after the last.
    let lived = get(peak, "tl") / 100;
    assert!(
        lived.abs_diff(held_us) <= 2 * gap_us + 2000,
        "each block lived {lived} µs, held {held_us} µs, points at most {gap_us} µs apart"
    );
    // Made after the peak, never freed.
    let leak = dhat_pp(&doc, "formats::dhat_leak");
    assert_eq!(figures(leak), [288, 3, 288, 3, 0, 0, 288, 3], "{leak}");
    assert!(get(leak, "tl") <= 3 * te, "{leak}");
    // Churned after the peak: 48 bytes at most at once, short-lived (DHAT's
    // threshold: 1 ms on average).
    let churn = dhat_pp(&doc, "formats::dhat_churn");
    let c = figures(churn);
    assert_eq!(
        [c[0], c[1], c[2], c[4], c[5], c[6], c[7]],
        [48_000, 1000, 48, 0, 0, 0, 0],
        "{churn}"
    );
    assert!(c[3] <= 1, "{churn}");
    assert!(get(churn, "tl") / 1000 <= get(&doc, "tuth"), "{churn}");

    // DHAT's own viewer, in a browser: it builds its tree from the file
    // and shows the leak at t-end.
    let viewer = Path::new("/usr/libexec/valgrind");
    if !viewer.join("dh_view.js").exists() {
        assert!(
            std::env::var_os("LEAKSCOPE_TEST_NEEDS_VALGRIND").is_none(),
            "DHAT's viewer is not installed (Debian: valgrind)"
        );
        eprintln!("skipped: DHAT's viewer is not installed (Debian: valgrind)");
        return;
    }
    let d = file.parent().unwrap();
    for f in ["dh_view.js", "dh_view.css"] {
        std::fs::copy(viewer.join(f), d.join(f)).unwrap();
    }
    let page = d.join("view.html");
    let data = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &page,
        format!(
            r#"<!DOCTYPE html><html><head><meta charset="UTF-8">
<link rel="stylesheet" href="dh_view.css"><script src="dh_view.js"></script>
<script>
function show() {{
  onLoad();
  gFilename = "heap.dhat.json";
  for (let o of gSelect.options) {{ o.selected = o.label.startsWith("At t-end"); }}
  tryFunc(() => {{ gData = {data}; buildTree(); displayTree(); }});
}}
</script></head><body onload="show()"></body></html>"#
        ),
    )
    .unwrap();
    let Some(dom) = chromium(&page, &["--dump-dom"]) else {
        return;
    };
    assert!(!dom.contains("class=\"error\""), "{dom}");
    // The page's text (after the head, which holds the data), by program
    // point: the leak's, at t-end, as the viewer computed it.
    let body = &dom[dom.find("</head>").unwrap()..];
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    assert!(text.contains("Mode:    leakscope heap"), "{text}");
    let leak = (text.split("PP 1."))
        .find(|pp| pp.contains("formats::dhat_leak ("))
        .unwrap_or_else(|| panic!("no program point of the leak in {text}"));
    assert!(
        leak.contains("At t-end:  288 bytes (") && leak.contains(" in 3 blocks ("),
        "{leak}"
    );
    assert!(leak.contains("Max:       288 bytes in 3 blocks"), "{leak}");
}
