//! The JSON rendering of a [`Report`], schema `leakscope/1`, and reading
//! it back ([`Report::from_json`]), both through the document types of
//! `document.rs`, where the schema is written down once.
//!
//! Owns checking a document's `schema` and the error that says what is
//! wrong with a document, naming the field by its path
//! (`scopes[0]: missing field \`runs\``). Never panics on any input.

use crate::alloc::thread;
use crate::report::document::{Document, SCHEMA};
use crate::report::model::{Callsite, Report};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

impl Report {
    /// The JSON document, schema `leakscope/1`. Its `callsites` are the ones
    /// the report shows: with live blocks, or named by a loss record or a
    /// scope's `by_callsite` ([`Report::to_json_all_sites`] lists them all).
    /// Its JSON Schema is `docs/report.schema.json` in the repository.
    pub fn to_json(&self) -> String {
        thread::untracked(|| self.write_json(false))
    }

    /// [`Report::to_json`], with every call-site the report holds (in a
    /// `snapshot()`, every one seen, freed or not).
    pub fn to_json_all_sites(&self) -> String {
        thread::untracked(|| self.write_json(true))
    }

    /// The document borrows the report's text: writing it copies no
    /// frame's names and builds no tree of values.
    fn write_json(&self, all_sites: bool) -> String {
        let named: HashSet<u32> = (self.scopes.iter())
            .flat_map(|s| s.by_callsite.iter().map(|c| c.callsite))
            .chain(
                (self.leak_check.iter()).flat_map(|lc| lc.loss_records.iter().map(|r| r.callsite)),
            )
            .collect();
        let shows = |c: &Callsite| {
            all_sites || c.live_blocks > 0 || c.live_bytes > 0 || named.contains(&c.id)
        };
        // Serializing plain data to a string cannot fail.
        serde_json::to_string(&Document::of(self, shows)).unwrap_or_default()
    }

    /// A report saved with [`Report::to_json`] (or `LEAKSCOPE_REPORT=<path>.json`),
    /// read back: its text, pprof profile, flamegraph and the other
    /// renderings are then made as from the live report. A report read back
    /// is not of this process: its renderings name no object mapped here.
    ///
    /// Fields every `leakscope/1` writer wrote are required; fields added
    /// since take their empty value when absent; unknown fields are
    /// ignored. The error names the field that is wrong.
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
                    "not a leakscope report: its \"schema\" is {s}, not a string like \"{SCHEMA}\""
                ))
            }
            Some((_, Some(s))) => read_schema(s)?,
        }
        // Read from the text, not the tree: a timeline's scopes keep their order.
        let mut text = serde_json::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, Document<'_>>(&mut text) {
            Ok(d) => d.into_report().map_err(ParseReportError),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                error(if path == "." {
                    format!("the report: {inner}")
                } else {
                    format!("{path}: {inner}")
                })
            }
        }
    }
}

/// Why a document is not a report this leakscope can read: not JSON, not a
/// leakscope report, a report of a newer schema, or a field missing or of
/// the wrong kind (named by its path in the document).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::leak::{
        BlockTotal, LeakCheck, LeakKind, LossRecord, Retention, RetentionRoot, RootKind,
        ScopeRetention, SuppressionUse,
    };
    use crate::report::model::{
        Changes, Frame, Origin, ScopeCallsite, ScopeChange, ScopeStats, Timeline, TimelineCallsite,
        TimelinePoint, Totals, Unwinder,
    };

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
                // Not in name order: read back in the order written.
                scopes: vec![
                    "GET /users/{id}".to_owned(),
                    "DELETE /users/{id}".to_owned(),
                ],
                points: vec![
                    TimelinePoint {
                        ms: 200,
                        live_bytes: 100,
                        live_blocks: 1,
                        scope_bytes: vec![0, 16],
                    },
                    TimelinePoint {
                        ms: 401,
                        live_bytes: 600,
                        live_blocks: 5,
                        scope_bytes: vec![500, 0],
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
            preloaded: true,
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
        // Fields every writer of the schema wrote are required; the error
        // names the field by its path.
        assert_eq!(
            err(r#"{"schema": "leakscope/1"}"#),
            "the report: missing field `pid` at line 1 column 25"
        );
        let mut doc: Value = serde_json::from_str(&planted().to_json()).unwrap();
        let with = |doc: &Value, f: &dyn Fn(&mut Value)| {
            let mut d = doc.clone();
            f(&mut d);
            // Without the position the message ends with.
            let e = err(&d.to_string());
            e.split(" at line ").next().unwrap().to_owned()
        };
        assert_eq!(
            with(&doc, &|d| d["totals"]["live_bytes"] = (-4).into()),
            "totals.live_bytes: invalid value: integer `-4`, expected u64"
        );
        assert_eq!(
            with(&doc, &|d| d["callsites"] = 3.into()),
            "callsites: invalid type: integer `3`, expected a sequence"
        );
        let remove = |at: &dyn Fn(&mut Value) -> &mut Value, key: &'static str| {
            with(&doc, &|d| {
                at(d).as_object_mut().unwrap().remove(key);
            })
        };
        assert_eq!(
            remove(&|d| d, "scopes"),
            "the report: missing field `scopes`"
        );
        assert_eq!(
            remove(&|d| &mut d["scopes"][0], "runs"),
            "scopes[0]: missing field `runs`"
        );
        assert_eq!(
            remove(&|d| &mut d["leak_check"], "definitely_lost"),
            "leak_check: missing field `definitely_lost`"
        );
        assert_eq!(
            remove(&|d| d, "loss_records"),
            "the report has a \"leak_check\" but no \"loss_records\""
        );
        assert_eq!(
            with(&doc, &|d| d["loss_records"][1]["kind"] = "lost".into()),
            "loss_records[1].kind: \"lost\" is not one of definitely_lost, indirectly_lost, possibly_lost, still_reachable"
        );
        assert_eq!(
            with(&doc, &|d| d["callsites"][0]["frames"][1]["ip"] =
                "7f00".into()),
            "callsites[0].frames[1].ip: \"7f00\" is not a hex address like 0x55d0c0ffee00"
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

    /// `docs/report.schema.json` is generated from the document types, so
    /// the schema exists once: a change to them fails here until the file
    /// is rewritten (`LEAKSCOPE_WRITE_SCHEMA=1 cargo test --lib schema`).
    /// Real reports are checked against the file in allocator-tests/schema.rs.
    #[test]
    fn the_schema_file_is_the_document_types() {
        let schema = serde_json::to_value(schemars::schema_for!(Document<'static>)).unwrap();
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/report.schema.json");
        if std::env::var_os("LEAKSCOPE_WRITE_SCHEMA").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let file = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            file == text,
            "docs/report.schema.json is not the document types' schema: \
             LEAKSCOPE_WRITE_SCHEMA=1 cargo test --lib schema rewrites it"
        );
        // It holds what the writer writes, and not what the reader refuses.
        let schema = jsonschema::validator_for(&schema).unwrap();
        let doc: Value = serde_json::from_str(&planted().to_json()).unwrap();
        assert!(schema.is_valid(&doc), "{:?}", schema.validate(&doc));
        let mut bad = doc.clone();
        bad["loss_records"][0]["kind"] = "lost".into();
        assert!(!schema.is_valid(&bad));
        let mut bad = doc.clone();
        bad["schema"] = "leakscope/2".into();
        assert!(!schema.is_valid(&bad));
        let mut bad = doc;
        bad.as_object_mut().unwrap().remove("pid");
        assert!(!schema.is_valid(&bad));
    }
}
