//! Looking at a running program: the report over HTTP on loopback.
//!
//! Owns [`serve_report`] (a small HTTP/1.1 server on a thread of its own,
//! std only) and what a live report adds to a snapshot: the growth since the
//! previous one of the same channel ([`Previous`], which the signal reports
//! use too). Builds reports outside the allocation path, on its own thread,
//! with that thread's allocations untracked.

use crate::alloc::thread;
use crate::check::roots::Caller;
use crate::report::metrics::{render, Exposition, Readings};
use crate::report::model::{growth, Changes, Report, ScopeStats};
use crate::serve::exit;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The server [`serve_report`] started; dropping it stops it.
#[derive(Debug)]
pub struct ReportServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<crate::serve::OwnThread>,
}

impl ReportServer {
    /// Where it listens (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ReportServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

/// Serves the live report over HTTP on `addr`, which must be a loopback
/// address (`127.0.0.1:0` picks a free port): `GET /` gives the HTML page
/// ([`Report::to_html`]), `/report` the text, `GET /report.json` the JSON document, and `/leak-check` and
/// `/leak-check.json` the same with a full leak check (it stops the
/// program's threads for the time of the check), `GET /metrics` the
/// metrics for Prometheus ([`metrics_text`], or OpenMetrics when the
/// request's `Accept` asks for it). `GET /debug/pprof/heap`
/// gives the live blocks as a pprof profile (with the `formats` feature;
/// the path Parca and Pyroscope scrape), `/report.folded` as folded
/// stacks and `/flamegraph.svg` as their flamegraph, `/timeline.svg` the
/// heap over time, and `/dhat.json` every call-site in DHAT's format
/// ([`Report::to_dhat_json`]). Each report served says
/// what every scope did since the one served before it ([`Report::changes`]),
/// so the endpoint that grows now stands out.
pub fn serve_report(addr: impl ToSocketAddrs) -> std::io::Result<ReportServer> {
    crate::serve::timeline::start(crate::serve::env::timeline_ms());
    thread::untracked(|| {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("serve_report listens on loopback only, not {addr}"),
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = crate::serve::spawn_own(c"leakscope-serve", move || {
            let mut previous = Previous::default();
            for conn in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = answer(conn, &mut previous);
                }
            }
        })?;
        Ok(ReportServer {
            addr,
            stop,
            thread: Some(thread),
        })
    })
}

/// The metrics now, in Prometheus's text exposition format (version
/// 0.0.4), for a service that serves `/metrics` from its own router: the
/// same text as the live server's `GET /metrics`
/// ([`serve_report`]). The process's live, allocated and peak bytes and
/// blocks and the sampling interval; per scope (label `scope`) its
/// outstanding bytes and blocks, its runs and whether it keeps growing;
/// the live bytes and blocks of the call-sites whose first frame in the
/// program's code is in a function (label `function`), for the `LEAKSCOPE_METRICS_SITES`
/// functions holding the most (10 by default). Read from counters: no leak
/// check and no stack walk; the first time a call-site holds live bytes at
/// a read, its first frame is symbolized, and kept.
pub fn metrics_text() -> String {
    metrics(Exposition::Prometheus)
}

/// [`metrics_text`] in the OpenMetrics 1.0.0 text format
/// (`application/openmetrics-text`), as Prometheus asks for it first.
pub fn openmetrics_text() -> String {
    metrics(Exposition::OpenMetrics)
}

fn metrics(format: Exposition) -> String {
    thread::untracked(|| render(&Readings::now(crate::serve::env::metrics_sites()), format))
}

/// The scopes of the last report a channel (the server, the signal) gave,
/// so that the next one says what grew in between.
#[derive(Default)]
pub(crate) struct Previous(Option<(f64, Vec<ScopeStats>)>);

impl Previous {
    /// Sets `report`'s growth since the previous one (the time between the
    /// two snapshots), and remembers it.
    pub(crate) fn mark(&mut self, report: &mut Report) {
        let (seconds, scopes) = match &self.0 {
            Some((at, earlier)) => (Some(report.seconds - at), growth(&report.scopes, earlier)),
            None => (None, growth(&report.scopes, &[])),
        };
        report.changes = Some(Changes { seconds, scopes });
        self.0 = Some((report.seconds, report.scopes.clone()));
    }
}

/// The report as served: with its growth since the previous one served.
fn live_report(previous: &mut Previous) -> Report {
    let mut report = exit::snapshot_now();
    previous.mark(&mut report);
    report
}

/// Whether a request's `Accept` header names OpenMetrics (Prometheus's
/// does, first, before the text format).
fn asks_for_openmetrics(head: &str) -> bool {
    head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    })
}

/// Reads one request and writes its answer.
fn answer(mut conn: TcpStream, previous: &mut Previous) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json; charset=utf-8";
    let (status, kind, body): (&str, &str, Vec<u8>) = match (method, path) {
        ("GET", "/") => (
            "200 OK",
            "text/html; charset=utf-8",
            live_report(previous).to_html().into(),
        ),
        ("GET", "/metrics") => {
            let format = if asks_for_openmetrics(&head) {
                Exposition::OpenMetrics
            } else {
                Exposition::Prometheus
            };
            ("200 OK", format.content_type(), metrics(format).into())
        }
        ("GET", "/report") => ("200 OK", TEXT, live_report(previous).to_string().into()),
        ("GET", "/report.json") => ("200 OK", JSON, exit::json(&live_report(previous)).into()),
        ("GET", "/leak-check") => ("200 OK", TEXT, exit::checked_report(Caller::OWN_THREAD).to_string().into()),
        ("GET", "/leak-check.json") => ("200 OK", JSON, exit::json(&exit::checked_report(Caller::OWN_THREAD)).into()),
        #[cfg(feature = "formats")]
        ("GET", "/debug/pprof/heap") => (
            "200 OK",
            "application/octet-stream",
            exit::snapshot_now().to_pprof(),
        ),
        // The same profile, showing what was allocated first, as Go's: the
        // path Grafana Pyroscope scrapes for memory by default.
        #[cfg(feature = "formats")]
        ("GET", "/debug/pprof/allocs") => (
            "200 OK",
            "application/octet-stream",
            exit::snapshot_now().pprof_with_default("alloc_space"),
        ),
        ("GET", "/dhat.json") => (
            "200 OK",
            JSON,
            exit::snapshot_all_sites().to_dhat_json().into(),
        ),
        ("GET", "/report.folded") => ("200 OK", TEXT, exit::snapshot_now().to_folded().into()),
        ("GET", "/timeline.svg") => match exit::snapshot_now().timeline_svg() {
            Some(svg) => ("200 OK", "image/svg+xml", svg.into()),
            None => ("404 Not Found", TEXT, "no timeline yet (two points or more)\n".into()),
        },
        #[cfg(feature = "formats")]
        ("GET", "/flamegraph.svg") => {
            let mut svg = Vec::new();
            match exit::snapshot_now().write_flamegraph(&mut svg) {
                Ok(()) => ("200 OK", "image/svg+xml", svg),
                Err(e) => ("500 Internal Server Error", TEXT, format!("{e}\n").into()),
            }
        }
        ("GET", _) => (
            "404 Not Found",
            TEXT,
            "try /report, /report.json, /metrics, /leak-check, /leak-check.json, /debug/pprof/heap, /report.folded, /flamegraph.svg, /timeline.svg or /dhat.json\n".into(),
        ),
        _ => ("405 Method Not Allowed", TEXT, "GET only\n".into()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(&body)?;
    conn.flush()
}
