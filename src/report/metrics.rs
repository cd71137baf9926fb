//! The live state as metrics: what Prometheus scrapes from `/metrics`
//! (the text exposition format, or OpenMetrics), and what the `metrics`
//! feature publishes through the `metrics` facade.
//!
//! Read from the threads' counters alone ([`collect::counters`] and
//! [`collect::site_levels`]): no leak check, no block walk, no stack walk.
//! The one lookup beyond counters is the function of each live
//! call-site's first frame, symbolized once per call-site and kept. Label
//! cardinality is bounded: the first [`SCOPE_LABELS`] scopes (in the order
//! they were first seen, so that a scope's series never moves) by name, the
//! rest summed under [`OTHER_SCOPES`]; the `top` functions by the live
//! bytes of the call-sites whose first frame is in them.

use crate::alloc::{callsite, sample, thread};
use crate::report::collect;
use crate::report::model::{Frame, ScopeStats, Totals};
use crate::report::symbolize::{is_standard_library, loaded_object, Symbolizer};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Scopes that get a label value of their own.
pub(crate) const SCOPE_LABELS: usize = 100;

/// The label value under which the scopes past the first [`SCOPE_LABELS`]
/// are summed.
pub(crate) const OTHER_SCOPES: &str = "(other scopes)";

/// One scope's (or the summed rest's) series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScopeReading {
    pub(crate) scope: String,
    pub(crate) outstanding_bytes: u64,
    pub(crate) outstanding_blocks: u64,
    pub(crate) runs: u64,
    pub(crate) growing: bool,
}

/// The live call-sites whose first frame is in one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SiteReading {
    pub(crate) function: String,
    pub(crate) live_bytes: u64,
    pub(crate) live_blocks: u64,
}

/// Every metric's value now.
#[derive(Clone, Debug)]
pub(crate) struct Readings {
    pub(crate) totals: Totals,
    /// The sampling interval (0: full mode, every figure exact).
    pub(crate) sample_bytes: u64,
    pub(crate) scopes: Vec<ScopeReading>,
    pub(crate) sites: Vec<SiteReading>,
}

impl Readings {
    /// The values now, with the `top` functions by their call-sites' live bytes.
    pub(crate) fn now(top: usize) -> Readings {
        thread::untracked(|| {
            let (totals, scopes) = collect::counters();
            Readings {
                totals,
                sample_bytes: sample::current() as u64,
                scopes: scope_readings(scopes),
                sites: site_readings(top),
            }
        })
    }
}

/// The first [`SCOPE_LABELS`] scopes by name, the rest summed.
fn scope_readings(scopes: Vec<ScopeStats>) -> Vec<ScopeReading> {
    let mut out: Vec<ScopeReading> = Vec::with_capacity(scopes.len().min(SCOPE_LABELS + 1));
    for (i, s) in scopes.into_iter().enumerate() {
        if i < SCOPE_LABELS {
            out.push(ScopeReading {
                scope: s.name,
                outstanding_bytes: s.outstanding_bytes,
                outstanding_blocks: s.outstanding_blocks,
                runs: s.runs,
                growing: s.growing,
            });
            continue;
        }
        if i == SCOPE_LABELS {
            out.push(ScopeReading {
                scope: OTHER_SCOPES.to_owned(),
                outstanding_bytes: 0,
                outstanding_blocks: 0,
                runs: 0,
                growing: false,
            });
        }
        let rest = &mut out[SCOPE_LABELS];
        rest.outstanding_bytes += s.outstanding_bytes;
        rest.outstanding_blocks += s.outstanding_blocks;
        rest.runs += s.runs;
        rest.growing |= s.growing;
    }
    out
}

/// The `top` functions holding the most live bytes, each with every live
/// call-site whose first frame is in it ([`collect::site_levels`]), the
/// most bytes first.
fn site_readings(top: usize) -> Vec<SiteReading> {
    if top == 0 {
        return Vec::new();
    }
    let sites: Vec<(u32, u64, u64)> = (collect::site_levels().into_iter().enumerate())
        .filter(|(_, (_, bytes))| *bytes > 0)
        .map(|(id, (blocks, bytes))| (id as u32, blocks, bytes))
        .collect();
    let names = functions_of(sites.iter().map(|s| s.0));
    let mut by_function: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
    for (&(_, blocks, bytes), name) in sites.iter().zip(names) {
        let sum = by_function.entry(name).or_default();
        sum.0 += bytes;
        sum.1 += blocks;
    }
    let mut out: Vec<SiteReading> = (by_function.into_iter())
        .map(|(function, (live_bytes, live_blocks))| SiteReading {
            function: function.to_string(),
            live_bytes,
            live_blocks,
        })
        .collect();
    out.sort_by(|a, b| (b.live_bytes, &a.function).cmp(&(a.live_bytes, &b.function)));
    out.truncate(top);
    out
}

/// The function of each call-site's first frame in the program's code (past
/// the allocator's and the standard library's; the first frame when all
/// are the standard library's), in the order of `ids`: symbolized at a
/// call-site's first read and kept, since its stack never changes. One
/// name per function, shared.
fn functions_of(ids: impl Iterator<Item = u32> + Clone) -> Vec<Arc<str>> {
    /// Each call-site's function, and each function's one shared name.
    #[derive(Default)]
    struct Names {
        of_site: HashMap<u32, Arc<str>>,
        shared: HashMap<String, Arc<str>>,
    }
    static NAMES: parking_lot::Mutex<Option<Names>> = parking_lot::Mutex::new(None);
    let missing: Vec<u32> = {
        let names = NAMES.lock();
        (ids.clone())
            .filter(|id| names.as_ref().is_none_or(|n| !n.of_site.contains_key(id)))
            .collect()
    };
    // Symbolized without the lock: another reader waits for none of it.
    let mut symbols = (!missing.is_empty()).then(Symbolizer::default);
    let found: Vec<(u32, String)> = (missing.into_iter())
        .map(|id| {
            let frames = (callsite::get(id).zip(symbols.as_mut()))
                .map(|(site, symbols)| symbols.stack(&site.frames()))
                .unwrap_or_default();
            // The program's first frame: past the standard library's.
            let first = (frames.iter().find(|f| !is_standard_library(f))).or(frames.first());
            let name = match first {
                Some(f) => function_label(f),
                None => "(unknown)".to_owned(),
            };
            (id, name)
        })
        .collect();
    drop(symbols);
    let mut guard = NAMES.lock();
    let names = guard.get_or_insert_with(Names::default);
    for (id, name) in found {
        let shared = (names.shared.entry(name)).or_insert_with_key(|n| Arc::from(n.as_str()));
        names.of_site.insert(id, shared.clone());
    }
    ids.map(|id| names.of_site[&id].clone()).collect()
}

/// A frame's function as a label value: the same for every call-site in
/// it and in every process running the same code. A name from a symbol
/// table loses its offset (`Perl_safesysmalloc+0x26`); a frame with no
/// name is named by its object's file (`(libfoo.so.1)`), never by its
/// address, which differs between processes.
fn function_label(f: &Frame) -> String {
    match &f.function {
        Some(name) => match name.rsplit_once("+0x") {
            Some((function, offset))
                if !function.is_empty()
                    && !offset.is_empty()
                    && offset.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                function.to_owned()
            }
            _ => name.clone(),
        },
        None => {
            let object = loaded_object(f.ip).map(|o| o.file).unwrap_or_default();
            let file = object.rsplit('/').next().unwrap_or_default();
            format!("({})", if file.is_empty() { "unknown" } else { file })
        }
    }
}

/// Which exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exposition {
    /// Prometheus's text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0.0 text (counter families without `_total`, `# EOF`).
    OpenMetrics,
}

impl Exposition {
    /// The `Content-Type` of the format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Exposition::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric family: its name (a counter's with `_total`), type and help.
struct Family {
    name: &'static str,
    counter: bool,
    help: &'static str,
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        counter: false,
        help,
    }
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        counter: true,
        help,
    }
}

pub(crate) const LIVE_BYTES: &str = "leakscope_live_bytes";
pub(crate) const LIVE_BLOCKS: &str = "leakscope_live_blocks";
pub(crate) const ALLOCATED_BYTES: &str = "leakscope_allocated_bytes_total";
pub(crate) const ALLOCATED_BLOCKS: &str = "leakscope_allocated_blocks_total";
pub(crate) const PEAK_LIVE_BYTES: &str = "leakscope_peak_live_bytes";
pub(crate) const SAMPLE_BYTES: &str = "leakscope_sample_bytes";
pub(crate) const SCOPE_BYTES: &str = "leakscope_scope_outstanding_bytes";
pub(crate) const SCOPE_BLOCKS: &str = "leakscope_scope_outstanding_blocks";
pub(crate) const SCOPE_RUNS: &str = "leakscope_scope_runs_total";
pub(crate) const SCOPE_GROWING: &str = "leakscope_scope_growing";
pub(crate) const SITE_BYTES: &str = "leakscope_callsite_live_bytes";
pub(crate) const SITE_BLOCKS: &str = "leakscope_callsite_live_blocks";

const PROCESS: [Family; 6] = [
    gauge(LIVE_BYTES, "Bytes allocated and not yet freed (exact in sampling mode too)."),
    gauge(LIVE_BLOCKS, "Blocks allocated and not yet freed (exact in sampling mode too)."),
    counter(ALLOCATED_BYTES, "Bytes allocated since the tracker started."),
    counter(ALLOCATED_BLOCKS, "Blocks allocated since the tracker started."),
    gauge(PEAK_LIVE_BYTES, "The highest live bytes so far."),
    gauge(SAMPLE_BYTES, "The sampling interval in bytes; 0 in full mode, where every figure is exact, otherwise scope and call-site figures are estimates."),
];

const SCOPES: [Family; 4] = [
    gauge(SCOPE_BYTES, "Bytes allocated in runs of the scope and not freed since, by any thread."),
    gauge(SCOPE_BLOCKS, "Blocks allocated in runs of the scope and not freed since."),
    counter(SCOPE_RUNS, "Runs of the scope begun."),
    gauge(SCOPE_GROWING, "1 while the scope's outstanding bytes still rise with its runs (the exit gate's verdict), else 0."),
];

const SITES: [Family; 2] = [
    gauge(
        SITE_BYTES,
        "Live bytes of the call-sites whose first frame is in the function, for the functions holding the most.",
    ),
    gauge(
        SITE_BLOCKS,
        "Live blocks of the call-sites whose first frame is in the function, for the functions holding the most.",
    ),
];

/// Every family as (name, counter or gauge, help), in the order rendered.
pub(crate) fn families() -> impl Iterator<Item = (&'static str, bool, &'static str)> {
    (PROCESS.iter().chain(&SCOPES).chain(&SITES)).map(|f| (f.name, f.counter, f.help))
}

/// `readings` in `format`.
pub(crate) fn render(readings: &Readings, format: Exposition) -> String {
    let t = &readings.totals;
    let mut out = String::with_capacity(4096 + 256 * readings.scopes.len());
    let process = [
        t.live_bytes,
        t.live_blocks,
        t.total_bytes,
        t.total_blocks,
        t.peak_live_bytes,
        readings.sample_bytes,
    ];
    for (family, value) in PROCESS.iter().zip(process) {
        head(&mut out, family, format);
        let _ = writeln!(out, "{} {value}", family.name);
    }
    for (f, family) in SCOPES.iter().enumerate() {
        head(&mut out, family, format);
        for s in &readings.scopes {
            let value = [
                s.outstanding_bytes,
                s.outstanding_blocks,
                s.runs,
                u64::from(s.growing),
            ][f];
            sample(&mut out, family.name, "scope", &s.scope, value);
        }
    }
    for (f, family) in SITES.iter().enumerate() {
        head(&mut out, family, format);
        for s in &readings.sites {
            let value = [s.live_bytes, s.live_blocks][f];
            sample(&mut out, family.name, "function", &s.function, value);
        }
    }
    if format == Exposition::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// A family's `# HELP` and `# TYPE` lines (in OpenMetrics a counter's family
/// is named without its samples' `_total`).
fn head(out: &mut String, family: &Family, format: Exposition) {
    let name = match (format, family.counter) {
        (Exposition::OpenMetrics, true) => family.name.trim_end_matches("_total"),
        _ => family.name,
    };
    let kind = if family.counter { "counter" } else { "gauge" };
    let _ = writeln!(out, "# HELP {name} {}", family.help);
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample with one label.
fn sample(out: &mut String, name: &str, label: &str, value_of_label: &str, value: u64) {
    let _ = write!(out, "{name}{{{label}=\"");
    for c in value_of_label.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    let _ = writeln!(out, "\"}} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(scopes: usize) -> Readings {
        Readings {
            totals: Totals {
                live_blocks: 3,
                live_bytes: 300,
                total_blocks: 10,
                total_bytes: 1000,
                peak_live_bytes: 400,
            },
            sample_bytes: 0,
            scopes: scope_readings(
                (0..scopes)
                    .map(|i| ScopeStats {
                        name: format!("GET /{i}"),
                        runs: 2,
                        outstanding_blocks: 1,
                        outstanding_bytes: 10 + i as u64,
                        by_callsite: Vec::new(),
                        retained_by: Vec::new(),
                        growing: i == 150,
                        recent_bytes_per_run: 0.0,
                    })
                    .collect(),
            ),
            sites: vec![SiteReading {
                function: "a\\b \"c\"\nd".to_owned(),
                live_bytes: 64,
                live_blocks: 2,
            }],
        }
    }

    #[test]
    fn a_functions_label_is_the_same_in_every_process() {
        let frame = |function: Option<&str>, ip: usize| Frame {
            ip,
            function: function.map(str::to_owned),
            file: None,
            line: None,
        };
        let label = |function| function_label(&frame(function, 0x1000));
        assert_eq!(label(Some("Perl_safesysmalloc+0x26")), "Perl_safesysmalloc");
        assert_eq!(label(Some("app::handler")), "app::handler");
        assert_eq!(
            label(Some("<dyn Fn() + Send>::call")),
            "<dyn Fn() + Send>::call"
        );
        assert_eq!(label(Some("odd+0xzz")), "odd+0xzz");
        // No name: the object's file (this test program), or "(unknown)".
        let here = a_functions_label_is_the_same_in_every_process as fn() as usize;
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert_eq!(function_label(&frame(None, here)), format!("({name})"));
        assert_eq!(function_label(&frame(None, 16)), "(unknown)");
    }

    #[test]
    fn the_rest_of_the_scopes_is_one_series() {
        let r = readings(SCOPE_LABELS + 60);
        assert_eq!(r.scopes.len(), SCOPE_LABELS + 1);
        assert_eq!(r.scopes[0].scope, "GET /0");
        assert_eq!(r.scopes[SCOPE_LABELS - 1].scope, "GET /99");
        let rest = &r.scopes[SCOPE_LABELS];
        // GET /100 to GET /159: 60 scopes of 110 to 169 bytes, one growing.
        assert_eq!(
            rest,
            &ScopeReading {
                scope: OTHER_SCOPES.to_owned(),
                outstanding_bytes: (110..170).sum(),
                outstanding_blocks: 60,
                runs: 120,
                growing: true,
            }
        );
        assert_eq!(readings(SCOPE_LABELS).scopes.len(), SCOPE_LABELS);
    }

    #[test]
    fn both_formats_as_their_parsers_want_them() {
        let r = readings(1);
        let text = render(&r, Exposition::Prometheus);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# HELP leakscope_live_bytes Bytes allocated and not yet freed (exact in sampling mode too).");
        assert_eq!(lines[1], "# TYPE leakscope_live_bytes gauge");
        assert_eq!(lines[2], "leakscope_live_bytes 300");
        assert!(text.contains("# TYPE leakscope_allocated_bytes_total counter\nleakscope_allocated_bytes_total 1000\n"));
        assert!(text.contains("\nleakscope_scope_outstanding_bytes{scope=\"GET /0\"} 10\n"));
        assert!(text.contains("\nleakscope_scope_runs_total{scope=\"GET /0\"} 2\n"));
        assert!(text.contains("\nleakscope_scope_growing{scope=\"GET /0\"} 0\n"));
        assert!(text
            .contains("\nleakscope_callsite_live_bytes{function=\"a\\\\b \\\"c\\\"\\nd\"} 64\n"));
        assert!(!text.contains("# EOF"));
        let open = render(&r, Exposition::OpenMetrics);
        assert!(open.contains(
            "# TYPE leakscope_allocated_bytes counter\nleakscope_allocated_bytes_total 1000\n"
        ));
        assert!(open.contains("# TYPE leakscope_scope_runs counter\n"));
        assert!(open.ends_with(
            "\nleakscope_callsite_live_blocks{function=\"a\\\\b \\\"c\\\"\\nd\"} 2\n# EOF\n"
        ));
        // 12 families, each with HELP and TYPE; 6 process samples, 4 of the
        // scope, 2 of the call-site.
        assert_eq!(lines.len(), 12 * 2 + 6 + 4 + 2);
    }
}
