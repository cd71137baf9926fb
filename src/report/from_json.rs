//! Reading a saved report back: [`Report::from_json`], the inverse of
//! [`Report::to_json`], for tools that compare and render saved reports
//! (the `leakscope` command).
//!
//! Owns the check of the document's schema and the error that says what
//! is wrong with a document. Fields every `leakscope/1` writer wrote (the
//! contract's first document: totals, call-sites, scopes, the leak check's
//! kinds and records) are required: a document without one is bad input,
//! and the error names the field. Fields a newer writer added and this one
//! does not know are ignored; fields an older writer lacked take their
//! empty value. Never panics on any input.

use crate::report::leak::{
    BlockTotal, LeakCheck, LeakKind, LossRecord, Retention, RetentionRoot, RootKind,
    ScopeRetention, SuppressionUse,
};
use crate::report::model::{
    Callsite, Changes, Frame, Origin, Report, ScopeCallsite, ScopeChange, ScopeStats, Timeline,
    TimelineCallsite, TimelinePoint, Totals, Unwinder,
};
use serde_json::Value;
use std::fmt;

/// The schema this leakscope writes and reads.
pub(crate) const SCHEMA: &str = "leakscope/1";

/// Why a document is not a report this leakscope can read: not JSON, not a
/// leakscope report, a report of a newer schema, or a field of the wrong kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseReportError(String);

impl fmt::Display for ParseReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseReportError {}

type Result<T> = std::result::Result<T, ParseReportError>;

fn error<T>(message: String) -> Result<T> {
    Err(ParseReportError(message))
}

impl Report {
    /// A report saved with [`Report::to_json`] (or `LEAKSCOPE_REPORT=<path>.json`),
    /// read back: its text, growth, pprof profile, flamegraph and the other
    /// renderings are then made as from the live report. A report read back
    /// is not of this process: its renderings name no object mapped here.
    pub fn from_json(text: &str) -> Result<Report> {
        let doc: Value = match serde_json::from_str(text) {
            Ok(doc) => doc,
            Err(e) => return error(format!("not JSON: {e}")),
        };
        if !doc.is_object() {
            return error("not a leakscope report: the document is not a JSON object".to_owned());
        }
        match doc.get("schema").map(|s| (s, s.as_str())) {
            None | Some((Value::Null, _)) => {
                return error("not a leakscope report: it has no \"schema\" field".to_owned())
            }
            Some((s, None)) => {
                return error(format!(
                    "not a leakscope report: its \"schema\" is {}, not a string like \"{SCHEMA}\"",
                    short(s)
                ))
            }
            Some((_, Some(s))) => read_schema(s)?,
        }
        read_report(&doc)
    }
}

/// `Ok` for this leakscope's schema; what is wrong with any other.
fn read_schema(schema: &str) -> Result<()> {
    match schema {
        SCHEMA => Ok(()),
        s if s.starts_with("leakscope/") => {
            let newer = s["leakscope/".len()..].parse::<u64>().is_ok_and(|v| v > 1);
            error(if newer {
                format!("the report's schema is {s}, newer than this leakscope reads ({SCHEMA}): update leakscope")
            } else {
                format!("the report's schema is {s}: this leakscope reads {SCHEMA}")
            })
        }
        s => error(format!(
            "not a leakscope report: its schema is {s:?} (this leakscope reads {SCHEMA})"
        )),
    }
}

fn read_report(doc: &Value) -> Result<Report> {
    let pid = need(doc, "pid", REPORT, count)?;
    let t = need(doc, "totals", REPORT, |v, k| Ok(field(v, k)))?;
    let totals = Totals {
        live_blocks: need(t, "live_blocks", "\"totals\"", count)?,
        live_bytes: need(t, "live_bytes", "\"totals\"", count)?,
        total_blocks: need(t, "total_blocks", "\"totals\"", count)?,
        total_bytes: need(t, "total_bytes", "\"totals\"", count)?,
        peak_live_bytes: need(t, "peak_live_bytes", "\"totals\"", count)?,
    };
    let callsites = need(doc, "callsites", REPORT, list)?
        .iter()
        .map(read_callsite)
        .collect::<Result<_>>()?;
    const SCOPE: &str = "a scope";
    const SCOPE_SITE: &str = "a scope's call-site";
    let scopes = need(doc, "scopes", REPORT, list)?
        .iter()
        .map(|s| {
            Ok(ScopeStats {
                name: string(s, "name")?,
                runs: need(s, "runs", SCOPE, count)?,
                outstanding_blocks: need(s, "outstanding_blocks", SCOPE, count)?,
                outstanding_bytes: need(s, "outstanding_bytes", SCOPE, count)?,
                by_callsite: need(s, "by_callsite", SCOPE, list)?
                    .iter()
                    .map(|c| {
                        Ok(ScopeCallsite {
                            callsite: need(c, "callsite", SCOPE_SITE, id)?,
                            blocks: need(c, "blocks", SCOPE_SITE, count)?,
                            bytes: need(c, "bytes", SCOPE_SITE, count)?,
                        })
                    })
                    .collect::<Result<_>>()?,
                retained_by: list(s, "retained_by")?
                    .iter()
                    .map(|r| {
                        Ok(ScopeRetention {
                            retained_by: read_retention(r)?,
                            blocks: count(r, "blocks")?,
                            bytes: count(r, "bytes")?,
                        })
                    })
                    .collect::<Result<_>>()?,
                growing: flag(s, "growing")?,
                recent_bytes_per_run: number(s, "recent_bytes_per_run")?,
            })
        })
        .collect::<Result<_>>()?;
    let unwinder = match doc.get("unwinder").and_then(Value::as_str) {
        Some("dwarf") => Unwinder::Dwarf,
        Some("dwarf_fallback") => Unwinder::DwarfFallback,
        _ => Unwinder::FramePointers,
    };
    Ok(Report {
        pid: pid.try_into().unwrap_or(0),
        totals,
        callsites,
        scopes,
        untracked_blocks: count(doc, "untracked_blocks")?,
        sample_bytes: count(doc, "sample_bytes")?,
        leak_check: read_leak_check(doc)?,
        changes: read_growth(doc)?,
        seconds: number(doc, "seconds")?,
        unwinder,
        timeline: read_timeline(doc)?,
        in_process: false,
    })
}

fn read_callsite(c: &Value) -> Result<Callsite> {
    const SITE: &str = "a call-site";
    let frames = need(c, "frames", SITE, list)?
        .iter()
        .map(|f| {
            let ip = match f.get("ip").and_then(Value::as_str) {
                Some(ip) => usize::from_str_radix(ip.trim_start_matches("0x"), 16).ok(),
                None => None,
            };
            let Some(ip) = ip else {
                return error(format!(
                    "a frame's \"ip\" is not a hex address: {}",
                    short(f)
                ));
            };
            Ok(Frame {
                ip,
                function: optional_string(f, "function")?,
                file: optional_string(f, "file")?,
                line: match f.get("line") {
                    None | Some(Value::Null) => None,
                    Some(l) => {
                        Some(l.as_u64().and_then(|l| l.try_into().ok()).ok_or_else(|| {
                            ParseReportError(format!(
                                "a frame's \"line\" is not a line number: {l}"
                            ))
                        })?)
                    }
                },
            })
        })
        .collect::<Result<_>>()?;
    Ok(Callsite {
        id: need(c, "id", SITE, id)?,
        live_blocks: need(c, "live_blocks", SITE, count)?,
        live_bytes: need(c, "live_bytes", SITE, count)?,
        total_blocks: need(c, "total_blocks", SITE, count)?,
        total_bytes: need(c, "total_bytes", SITE, count)?,
        peak_live_bytes: need(c, "peak_live_bytes", SITE, count)?,
        frames,
        origin: match c.get("origin").and_then(Value::as_str) {
            None | Some("rust") => Origin::Rust,
            Some("c") => Origin::C,
            Some(o) => return error(format!("a call-site's \"origin\" is not rust or c: {o:?}")),
        },
    })
}

fn read_leak_check(doc: &Value) -> Result<Option<LeakCheck>> {
    let Some(lc) = doc.get("leak_check").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    // Every writer wrote these; `reachable_via_heuristic` came later.
    let amount = |key: &str, required: bool| -> Result<BlockTotal> {
        if !required && field(lc, key).is_null() {
            return Ok(BlockTotal::default());
        }
        let a = need(lc, key, "\"leak_check\"", |v, k| Ok(field(v, k)))?;
        let what = format!("\"leak_check\".{key}");
        Ok(BlockTotal {
            blocks: need(a, "blocks", &what, count)?,
            bytes: need(a, "bytes", &what, count)?,
        })
    };
    const RECORD: &str = "a loss record";
    let loss_records = need(doc, "loss_records", REPORT_WITH_CHECK, list)?
        .iter()
        .map(|r| {
            let kind = match r.get("kind").and_then(Value::as_str) {
                Some("definitely_lost") => LeakKind::DefinitelyLost,
                Some("indirectly_lost") => LeakKind::IndirectlyLost,
                Some("possibly_lost") => LeakKind::PossiblyLost,
                Some("still_reachable") => LeakKind::StillReachable,
                _ => return error(format!("a loss record's \"kind\" is not one: {}", short(r))),
            };
            Ok(LossRecord {
                kind,
                blocks: need(r, "blocks", RECORD, count)?,
                bytes: need(r, "bytes", RECORD, count)?,
                callsite: need(r, "callsite", RECORD, id)?,
                scope: optional_string(r, "scope")?,
                retained_by: match r.get("retained_by") {
                    None | Some(Value::Null) => None,
                    Some(by) => Some(read_retention(by)?),
                },
            })
        })
        .collect::<Result<_>>()?;
    let suppressions_used = list(lc, "suppressions_used")?
        .iter()
        .map(|u| {
            Ok(SuppressionUse {
                pattern: string(u, "pattern")?,
                blocks: count(u, "blocks")?,
                bytes: count(u, "bytes")?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Some(LeakCheck {
        definitely_lost: amount("definitely_lost", true)?,
        indirectly_lost: amount("indirectly_lost", true)?,
        possibly_lost: amount("possibly_lost", true)?,
        still_reachable: amount("still_reachable", true)?,
        reachable_via_heuristic: amount("reachable_via_heuristic", false)?,
        suppressed: amount("suppressed", true)?,
        loss_records,
        suppressions_used,
        error: optional_string(lc, "error")?,
    }))
}

fn read_retention(v: &Value) -> Result<Retention> {
    let root = field(v, "root");
    let kind = match root.get("kind").and_then(Value::as_str) {
        Some("static") => RootKind::Static,
        Some("stack") => RootKind::Stack,
        Some("tls") => RootKind::Tls,
        Some("register") => RootKind::Register,
        _ => {
            return error(format!(
                "a retention root's \"kind\" is not one: {}",
                short(root)
            ))
        }
    };
    Ok(Retention {
        root: RetentionRoot {
            kind,
            name: optional_string(root, "name")?,
            thread: optional_string(root, "thread")?,
            function: optional_string(root, "function")?,
        },
        path: list(v, "path")?
            .iter()
            .map(|c| match c.as_u64().and_then(|c| u32::try_from(c).ok()) {
                Some(c) => Ok(c),
                None => error(format!("a retention path holds {c}, not a call-site id")),
            })
            .collect::<Result<_>>()?,
        via_heuristic: v
            .get("via_heuristic")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

fn read_growth(doc: &Value) -> Result<Option<Changes>> {
    let Some(g) = doc.get("growth").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let seconds = match g.get("seconds") {
        None | Some(Value::Null) => None,
        Some(_) => Some(number(g, "seconds")?),
    };
    let scopes = list(g, "scopes")?
        .iter()
        .map(|s| {
            Ok(ScopeChange {
                name: string(s, "name")?,
                runs: count(s, "runs")?,
                outstanding_blocks: signed(s, "outstanding_blocks")?,
                outstanding_bytes: signed(s, "outstanding_bytes")?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Some(Changes { seconds, scopes }))
}

fn read_timeline(doc: &Value) -> Result<Option<Timeline>> {
    let Some(points) = doc.get("timeline").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Some(points) = points.as_array() else {
        return error("\"timeline\" is not a list of points".to_owned());
    };
    // The followed scopes, in the order they first appear.
    let mut scopes: Vec<String> = Vec::new();
    for p in points {
        if let Some(m) = p.get("scopes").and_then(Value::as_object) {
            for name in m.keys() {
                if !scopes.contains(name) {
                    scopes.push(name.clone());
                }
            }
        }
    }
    let points = points
        .iter()
        .map(|p| {
            let by_name = p.get("scopes").and_then(Value::as_object);
            Ok(TimelinePoint {
                ms: (number(p, "seconds")? * 1000.0).round() as u64,
                live_bytes: count(p, "live_bytes")?,
                live_blocks: count(p, "live_blocks")?,
                scope_bytes: (scopes.iter())
                    .map(|name| {
                        by_name
                            .and_then(|m| m.get(name))
                            .and_then(Value::as_u64)
                            .unwrap_or(0)
                    })
                    .collect(),
            })
        })
        .collect::<Result<_>>()?;
    let callsites = list(doc, "timeline_callsites")?
        .iter()
        .map(|c| {
            Ok(TimelineCallsite {
                id: id(c, "id")?,
                peak_blocks: count(c, "peak_blocks")?,
                peak_bytes: count(c, "peak_bytes")?,
                max_blocks: count(c, "max_blocks")?,
                lifetimes_us: count(c, "lifetimes_us")?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Some(Timeline {
        interval_ms: count(doc, "timeline_interval_ms")?,
        scopes,
        points,
        peak_ms: (number(doc, "timeline_peak_seconds")? * 1000.0).round() as u64,
        callsites,
    }))
}

/// The document, as an error names it (without showing it).
const REPORT: &str = "the report";
/// A report with a leak check, likewise.
const REPORT_WITH_CHECK: &str = "the report (it has a \"leak_check\")";

/// `v[key]` read by `read`, where every writer of this schema wrote it: an
/// error saying that `what` (`the report`, `a scope`) has no `key` when
/// it is absent or null.
fn need<'a, T>(
    v: &'a Value,
    key: &str,
    what: &str,
    read: impl FnOnce(&'a Value, &str) -> Result<T>,
) -> Result<T> {
    match v.get(key) {
        None | Some(Value::Null) if what == REPORT || what == REPORT_WITH_CHECK => {
            error(format!("{what} has no \"{key}\""))
        }
        None | Some(Value::Null) => error(format!("{what} has no \"{key}\": {}", short(v))),
        Some(_) => read(v, key),
    }
}

/// `v[key]`, or null when absent.
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

/// `v[key]` read by `get`: its default when absent (a field an older
/// writer did not have), an error naming `what` it should be when not that.
fn scalar<T: Default>(
    v: &Value,
    key: &str,
    get: impl Fn(&Value) -> Option<T>,
    what: &str,
) -> Result<T> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(n) => match get(n) {
            Some(n) => Ok(n),
            None => error(format!("\"{key}\" is not {what}: {}", short(n))),
        },
    }
}

/// A count; 0 when absent.
fn count(v: &Value, key: &str) -> Result<u64> {
    scalar(v, key, Value::as_u64, "a count")
}

fn signed(v: &Value, key: &str) -> Result<i64> {
    scalar(v, key, Value::as_i64, "a whole number")
}

fn number(v: &Value, key: &str) -> Result<f64> {
    scalar(v, key, Value::as_f64, "a number")
}

fn flag(v: &Value, key: &str) -> Result<bool> {
    scalar(v, key, Value::as_bool, "true or false")
}

fn id(v: &Value, key: &str) -> Result<u32> {
    let n = count(v, key)?;
    u32::try_from(n).or_else(|_| error(format!("\"{key}\" is not a call-site id: {n}")))
}

fn string(v: &Value, key: &str) -> Result<String> {
    match v.get(key).and_then(Value::as_str) {
        Some(s) => Ok(s.to_owned()),
        None => error(format!(
            "\"{key}\" is missing or not a string in {}",
            short(v)
        )),
    }
}

fn optional_string(v: &Value, key: &str) -> Result<Option<String>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(x) => error(format!("\"{key}\" is not a string: {x}")),
    }
}

/// A list; empty when absent.
fn list<'a>(v: &'a Value, key: &str) -> Result<&'a [Value]> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(x) => error(format!("\"{key}\" is not a list: {}", short(x))),
    }
}

/// A value as an error message quotes it: at most 80 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Retention {
        Retention {
            root: RetentionRoot {
                kind: RootKind::Static,
                name: Some("app::CACHE".to_owned()),
                thread: None,
                function: None,
            },
            path: vec![5, 3],
            via_heuristic: true,
        }
    }

    fn planted() -> Report {
        let frame = |ip, function: &str, line| Frame {
            ip,
            function: Some(function.to_owned()),
            file: Some("src/app.rs".to_owned()),
            line: Some(line),
        };
        let amount = |blocks, bytes| BlockTotal { blocks, bytes };
        Report {
            pid: 42,
            totals: Totals {
                live_blocks: 5,
                live_bytes: 600,
                total_blocks: 90,
                total_bytes: 9000,
                peak_live_bytes: 4000,
            },
            callsites: vec![Callsite {
                id: 3,
                live_blocks: 5,
                live_bytes: 600,
                total_blocks: 9,
                total_bytes: 900,
                peak_live_bytes: 700,
                frames: vec![
                    frame(0x55d0c0ffee00, "app::cache", 12),
                    Frame {
                        ip: 0x7f00,
                        function: None,
                        file: None,
                        line: None,
                    },
                ],
                origin: Origin::C,
            }],
            scopes: vec![ScopeStats {
                name: "GET /users/{id}".to_owned(),
                runs: 10,
                outstanding_blocks: 4,
                outstanding_bytes: 500,
                by_callsite: vec![ScopeCallsite {
                    callsite: 3,
                    blocks: 4,
                    bytes: 500,
                }],
                retained_by: vec![ScopeRetention {
                    retained_by: held(),
                    blocks: 2,
                    bytes: 300,
                }],
                growing: true,
                recent_bytes_per_run: 48.5,
            }],
            untracked_blocks: 1,
            sample_bytes: 0,
            leak_check: Some(LeakCheck {
                definitely_lost: amount(1, 100),
                indirectly_lost: amount(2, 200),
                possibly_lost: amount(0, 0),
                still_reachable: amount(2, 300),
                reachable_via_heuristic: amount(0, 0),
                suppressed: amount(0, 0),
                loss_records: vec![
                    LossRecord {
                        kind: LeakKind::StillReachable,
                        blocks: 2,
                        bytes: 300,
                        callsite: 3,
                        scope: Some("GET /users/{id}".to_owned()),
                        retained_by: Some(held()),
                    },
                    LossRecord {
                        kind: LeakKind::DefinitelyLost,
                        blocks: 1,
                        bytes: 100,
                        callsite: 3,
                        scope: Some("GET /users/{id}".to_owned()),
                        retained_by: None,
                    },
                ],
                suppressions_used: vec![SuppressionUse {
                    pattern: "leak:lazy_init".to_owned(),
                    blocks: 1,
                    bytes: 8,
                }],
                error: None,
            }),
            changes: Some(Changes {
                seconds: Some(1.5),
                scopes: vec![ScopeChange {
                    name: "GET /users/{id}".to_owned(),
                    runs: 4,
                    outstanding_blocks: -1,
                    outstanding_bytes: -100,
                }],
            }),
            seconds: 2.25,
            unwinder: Unwinder::Dwarf,
            timeline: Some(Timeline {
                interval_ms: 200,
                scopes: vec!["GET /users/{id}".to_owned()],
                points: vec![
                    TimelinePoint {
                        ms: 200,
                        live_bytes: 100,
                        live_blocks: 1,
                        scope_bytes: vec![0],
                    },
                    TimelinePoint {
                        ms: 401,
                        live_bytes: 600,
                        live_blocks: 5,
                        scope_bytes: vec![500],
                    },
                ],
                peak_ms: 401,
                callsites: vec![TimelineCallsite {
                    id: 3,
                    peak_blocks: 5,
                    peak_bytes: 600,
                    max_blocks: 5,
                    lifetimes_us: 1_000_000,
                }],
            }),
            in_process: false,
        }
    }

    #[test]
    fn a_saved_report_reads_back_whole() {
        let report = planted();
        let text = report.to_json();
        let back = Report::from_json(&text).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.to_json(), text);
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        let err = |text: &str| Report::from_json(text).unwrap_err().to_string();
        assert!(err("{oops").starts_with("not JSON: "), "{}", err("{oops"));
        assert_eq!(
            err("[1, 2]"),
            "not a leakscope report: the document is not a JSON object"
        );
        assert_eq!(
            err(r#"{"pid": 1}"#),
            "not a leakscope report: it has no \"schema\" field"
        );
        assert_eq!(
            err(r#"{"schema": "pprof"}"#),
            "not a leakscope report: its schema is \"pprof\" (this leakscope reads leakscope/1)"
        );
        assert_eq!(
            err(r#"{"schema": "leakscope/2"}"#),
            "the report's schema is leakscope/2, newer than this leakscope reads (leakscope/1): update leakscope"
        );
        assert_eq!(
            err(r#"{"schema": 999}"#),
            "not a leakscope report: its \"schema\" is 999, not a string like \"leakscope/1\""
        );
        // Fields every writer of the schema wrote are required.
        assert_eq!(
            err(r#"{"schema": "leakscope/1"}"#),
            "the report has no \"pid\""
        );
        let mut doc: Value = serde_json::from_str(&planted().to_json()).unwrap();
        let with = |doc: &Value, f: &dyn Fn(&mut Value)| {
            let mut d = doc.clone();
            f(&mut d);
            err(&d.to_string())
        };
        assert_eq!(
            with(&doc, &|d| d["totals"]["live_bytes"] = (-4).into()),
            "\"live_bytes\" is not a count: -4"
        );
        assert_eq!(
            with(&doc, &|d| d["callsites"] = 3.into()),
            "\"callsites\" is not a list: 3"
        );
        assert_eq!(
            with(&doc, &|d| {
                d.as_object_mut().unwrap().remove("scopes");
            }),
            "the report has no \"scopes\""
        );
        assert_eq!(
            with(&doc, &|d| {
                d["scopes"][0].as_object_mut().unwrap().remove("runs");
            })
            .split(':')
            .next()
            .unwrap(),
            "a scope has no \"runs\""
        );
        assert_eq!(
            with(&doc, &|d| {
                d["leak_check"]
                    .as_object_mut()
                    .unwrap()
                    .remove("definitely_lost");
            })
            .split(':')
            .next()
            .unwrap(),
            "\"leak_check\" has no \"definitely_lost\""
        );
        // Fields later writers added are not: without them, a report of
        // the first writer's shape reads, with their empty values.
        for added in [
            "untracked_blocks",
            "sample_bytes",
            "seconds",
            "unwinder",
            "timeline",
        ] {
            doc.as_object_mut().unwrap().remove(added);
        }
        for s in doc["scopes"].as_array_mut().unwrap() {
            let s = s.as_object_mut().unwrap();
            for added in ["growing", "recent_bytes_per_run", "retained_by"] {
                s.remove(added);
            }
        }
        let old = Report::from_json(&doc.to_string()).unwrap();
        assert!(!old.scopes[0].growing && old.timeline.is_none());
    }
}
