//! The JSON document, schema `leakscope/1`, as types: the one place its
//! fields are written down. [`Report::to_json`] serializes a [`Document`]
//! borrowed from the report, [`Report::from_json`] deserializes one and
//! turns it into a report; `docs/report.schema.json` is generated from these
//! types (a unit test keeps it in step).
//!
//! Fields may be added, never renamed. Fields every `leakscope/1` writer
//! wrote (the contract's first document: totals, call-sites, scopes, the
//! leak check's kinds and records) have no default, so a document without
//! one is bad input; fields added later default to their empty value, so a
//! first writer's document still reads; fields this reader does not know
//! are ignored. Derived figures (`blocks_per_run`, `bytes_per_run`) are
//! written for readers and ignored when read back.

use crate::report::leak::{
    BlockTotal, LeakCheck, LeakKind, LossRecord, Retention, RetentionRoot, RootKind,
    ScopeRetention, SuppressionUse,
};
use crate::report::model::{
    Callsite, Changes, Frame, Origin, Report, ScopeCallsite, ScopeChange, ScopeStats, Timeline,
    TimelineCallsite, TimelinePoint, Totals, Unwinder,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The schema this leakscope writes and reads.
pub(crate) const SCHEMA: &str = "leakscope/1";

/// Text the report holds: borrowed when written, owned when read.
type Text<'a> = Cow<'a, str>;

/// The whole document, its fields in the order they are written.
#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(title = "leakscope report, schema leakscope/1"))]
pub(crate) struct Document<'a> {
    /// Always `leakscope/1`.
    #[cfg_attr(test, schemars(extend("const" = "leakscope/1")))]
    pub(crate) schema: Text<'a>,
    /// The process the report was taken in.
    pid: u32,
    totals: DocTotals,
    #[serde(default)]
    untracked_blocks: u64,
    /// Sampling mode's mean interval in bytes; 0 in full mode.
    #[serde(default)]
    sample_bytes: u64,
    /// Seconds since the tracker started.
    #[serde(default)]
    seconds: f64,
    #[serde(default = "frame_pointers", with = "named")]
    #[cfg_attr(test, schemars(with = "DocUnwinder"))]
    unwinder: Unwinder,
    /// The tracker was preloaded into a program that does not link
    /// leakscope (`leakscope run`): no scopes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    preloaded: bool,
    callsites: Vec<DocCallsite<'a>>,
    scopes: Vec<DocScope<'a>>,
    /// What each scope did since the previous report (`Report::changes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    growth: Option<DocChanges<'a>>,
    /// The heap over time, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeline: Option<Vec<DocPoint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeline_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeline_peak_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeline_callsites: Option<Vec<DocTimelineCallsite>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leak_check: Option<DocLeakCheck<'a>>,
    /// Present with `leak_check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss_records: Option<Vec<DocRecord<'a>>>,
}

/// What a first writer's document, which had neither, means.
fn frame_pointers() -> Unwinder {
    Unwinder::FramePointers
}

fn rust() -> Origin {
    Origin::Rust
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "Totals"))]
struct DocTotals {
    live_blocks: u64,
    live_bytes: u64,
    total_blocks: u64,
    total_bytes: u64,
    peak_live_bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "Callsite"))]
struct DocCallsite<'a> {
    id: u32,
    live_blocks: u64,
    live_bytes: u64,
    total_blocks: u64,
    total_bytes: u64,
    peak_live_bytes: u64,
    #[serde(default = "rust", with = "named")]
    #[cfg_attr(test, schemars(with = "DocOrigin"))]
    origin: Origin,
    /// Innermost first, the allocator's own frames left out.
    frames: Vec<DocFrame<'a>>,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "Frame"))]
struct DocFrame<'a> {
    /// The return address, in hex: `0x55d0c0ffee00`.
    #[serde(with = "hex")]
    #[cfg_attr(test, schemars(with = "String", regex(pattern = r"^0x[0-9a-f]+$")))]
    ip: usize,
    function: Option<Text<'a>>,
    file: Option<Text<'a>>,
    line: Option<u32>,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "Scope"))]
struct DocScope<'a> {
    name: Text<'a>,
    runs: u64,
    outstanding_blocks: u64,
    outstanding_bytes: u64,
    /// Written for readers; ignored when read back.
    #[serde(default)]
    blocks_per_run: f64,
    /// Written for readers; ignored when read back.
    #[serde(default)]
    bytes_per_run: f64,
    #[serde(default)]
    growing: bool,
    #[serde(default)]
    recent_bytes_per_run: f64,
    by_callsite: Vec<DocScopeCallsite>,
    /// Written with a leak check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retained_by: Option<Vec<DocScopeRetention<'a>>>,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "ScopeCallsite"))]
struct DocScopeCallsite {
    callsite: u32,
    blocks: u64,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "ScopeRetention"))]
struct DocScopeRetention<'a> {
    /// The retention's fields, beside the blocks and bytes it holds.
    #[serde(flatten)]
    retained_by: DocRetention<'a>,
    blocks: u64,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "Retention"))]
struct DocRetention<'a> {
    root: DocRoot<'a>,
    /// Call-site ids from the block the root points to, to the block itself.
    path: Vec<u32>,
    #[serde(default)]
    via_heuristic: bool,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "RetentionRoot"))]
struct DocRoot<'a> {
    #[serde(with = "named")]
    #[cfg_attr(test, schemars(with = "DocRootKind"))]
    kind: RootKind,
    name: Option<Text<'a>>,
    thread: Option<Text<'a>>,
    function: Option<Text<'a>>,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "Changes"))]
struct DocChanges<'a> {
    /// Since the previous report; null: since the program started.
    seconds: Option<f64>,
    scopes: Vec<DocScopeChange<'a>>,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "ScopeChange"))]
struct DocScopeChange<'a> {
    name: Text<'a>,
    #[serde(default)]
    runs: u64,
    /// A change: negative when earlier runs' blocks were freed.
    #[serde(default)]
    outstanding_blocks: i64,
    #[serde(default)]
    outstanding_bytes: i64,
    #[serde(default)]
    blocks_per_run: f64,
    #[serde(default)]
    bytes_per_run: f64,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "TimelinePoint"))]
struct DocPoint {
    seconds: f64,
    #[serde(default)]
    live_bytes: u64,
    #[serde(default)]
    live_blocks: u64,
    /// Outstanding bytes of the followed scopes, by name.
    #[serde(default, with = "pairs")]
    #[cfg_attr(test, schemars(with = "std::collections::BTreeMap<String, u64>"))]
    scopes: Vec<(String, u64)>,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "TimelineCallsite"))]
struct DocTimelineCallsite {
    id: u32,
    #[serde(default)]
    peak_blocks: u64,
    #[serde(default)]
    peak_bytes: u64,
    #[serde(default)]
    max_blocks: u64,
    #[serde(default)]
    lifetimes_us: u64,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "LeakCheck"))]
struct DocLeakCheck<'a> {
    definitely_lost: DocTotal,
    indirectly_lost: DocTotal,
    possibly_lost: DocTotal,
    still_reachable: DocTotal,
    #[serde(default)]
    reachable_via_heuristic: DocTotal,
    suppressed: DocTotal,
    #[serde(default)]
    suppressions_used: Vec<DocSuppression<'a>>,
    /// Why the check did not run, when it did not.
    #[serde(default)]
    error: Option<Text<'a>>,
}

#[derive(Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "BlockTotal"))]
struct DocTotal {
    blocks: u64,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "SuppressionUse"))]
struct DocSuppression<'a> {
    pattern: Text<'a>,
    #[serde(default)]
    blocks: u64,
    #[serde(default)]
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(rename = "LossRecord"))]
struct DocRecord<'a> {
    #[serde(with = "named")]
    #[cfg_attr(test, schemars(with = "DocLeakKind"))]
    kind: LeakKind,
    blocks: u64,
    bytes: u64,
    callsite: u32,
    scope: Option<Text<'a>>,
    /// Who holds still-reachable and possibly-lost blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retained_by: Option<DocRetention<'a>>,
}

/// The enums' JSON names are their `as_str()`; these say so to the schema.
#[cfg(test)]
#[derive(schemars::JsonSchema)]
#[schemars(rename_all = "snake_case", rename = "Unwinder")]
#[allow(dead_code)]
enum DocUnwinder {
    FramePointers,
    Dwarf,
    DwarfFallback,
}

#[cfg(test)]
#[derive(schemars::JsonSchema)]
#[schemars(rename_all = "snake_case", rename = "Origin")]
#[allow(dead_code)]
enum DocOrigin {
    Rust,
    C,
}

#[cfg(test)]
#[derive(schemars::JsonSchema)]
#[schemars(rename_all = "snake_case", rename = "RootKind")]
#[allow(dead_code)]
enum DocRootKind {
    Static,
    Stack,
    Tls,
    Register,
}

#[cfg(test)]
#[derive(schemars::JsonSchema)]
#[schemars(rename_all = "snake_case", rename = "LeakKind")]
#[allow(dead_code)]
enum DocLeakKind {
    DefinitelyLost,
    IndirectlyLost,
    PossiblyLost,
    StillReachable,
}

impl<'a> Document<'a> {
    /// The report as written: its call-sites those `shows` keeps.
    pub(crate) fn of(r: &'a Report, shows: impl Fn(&Callsite) -> bool) -> Document<'a> {
        let t = &r.totals;
        let with_check = r.leak_check.is_some();
        let timeline = r.timeline.as_ref();
        Document {
            schema: SCHEMA.into(),
            pid: r.pid,
            totals: DocTotals {
                live_blocks: t.live_blocks,
                live_bytes: t.live_bytes,
                total_blocks: t.total_blocks,
                total_bytes: t.total_bytes,
                peak_live_bytes: t.peak_live_bytes,
            },
            untracked_blocks: r.untracked_blocks,
            sample_bytes: r.sample_bytes,
            seconds: r.seconds,
            unwinder: r.unwinder,
            preloaded: r.preloaded,
            callsites: (r.callsites.iter().filter(|c| shows(c)))
                .map(DocCallsite::of)
                .collect(),
            scopes: r
                .scopes
                .iter()
                .map(|s| DocScope::of(s, with_check))
                .collect(),
            growth: r.changes.as_ref().map(|g| DocChanges {
                seconds: g.seconds,
                scopes: g.scopes.iter().map(DocScopeChange::of).collect(),
            }),
            timeline: timeline.map(|t| {
                (t.points.iter())
                    .map(|p| DocPoint {
                        seconds: p.ms as f64 / 1000.0,
                        live_bytes: p.live_bytes,
                        live_blocks: p.live_blocks,
                        scopes: (t.scopes.iter())
                            .zip(&p.scope_bytes)
                            .map(|(name, bytes)| (name.clone(), *bytes))
                            .collect(),
                    })
                    .collect()
            }),
            timeline_interval_ms: timeline.map(|t| t.interval_ms),
            timeline_peak_seconds: timeline.map(|t| t.peak_ms as f64 / 1000.0),
            timeline_callsites: timeline.map(|t| {
                (t.callsites.iter())
                    .map(|c| DocTimelineCallsite {
                        id: c.id,
                        peak_blocks: c.peak_blocks,
                        peak_bytes: c.peak_bytes,
                        max_blocks: c.max_blocks,
                        lifetimes_us: c.lifetimes_us,
                    })
                    .collect()
            }),
            leak_check: r.leak_check.as_ref().map(DocLeakCheck::of),
            loss_records: (r.leak_check.as_ref())
                .map(|lc| lc.loss_records.iter().map(DocRecord::of).collect()),
        }
    }

    /// The report this document holds; an error names what is missing.
    pub(crate) fn into_report(self) -> Result<Report, String> {
        let leak_check = match (self.leak_check, self.loss_records) {
            (Some(lc), Some(records)) => Some(lc.into_check(records)),
            (Some(_), None) => {
                return Err("the report has a \"leak_check\" but no \"loss_records\"".to_owned())
            }
            (None, _) => None,
        };
        let timeline = match self.timeline {
            None => None,
            Some(points) => Some(timeline(
                points,
                self.timeline_interval_ms.unwrap_or(0),
                self.timeline_peak_seconds.unwrap_or(0.0),
                self.timeline_callsites.unwrap_or_default(),
            )),
        };
        let t = self.totals;
        Ok(Report {
            pid: self.pid,
            totals: Totals {
                live_blocks: t.live_blocks,
                live_bytes: t.live_bytes,
                total_blocks: t.total_blocks,
                total_bytes: t.total_bytes,
                peak_live_bytes: t.peak_live_bytes,
            },
            callsites: self
                .callsites
                .into_iter()
                .map(DocCallsite::into_callsite)
                .collect(),
            scopes: self.scopes.into_iter().map(DocScope::into_stats).collect(),
            untracked_blocks: self.untracked_blocks,
            sample_bytes: self.sample_bytes,
            leak_check,
            changes: self.growth.map(|g| Changes {
                seconds: g.seconds,
                scopes: g
                    .scopes
                    .into_iter()
                    .map(DocScopeChange::into_change)
                    .collect(),
            }),
            seconds: self.seconds,
            unwinder: self.unwinder,
            timeline,
            preloaded: self.preloaded,
            in_process: false,
        })
    }
}

/// A timeline read back: the followed scopes in the order they first
/// appear in its points.
fn timeline(
    points: Vec<DocPoint>,
    interval_ms: u64,
    peak_seconds: f64,
    callsites: Vec<DocTimelineCallsite>,
) -> Timeline {
    let mut scopes: Vec<String> = Vec::new();
    for (name, _) in points.iter().flat_map(|p| &p.scopes) {
        if !scopes.iter().any(|s| s == name) {
            scopes.push(name.clone());
        }
    }
    let points = (points.into_iter())
        .map(|p| TimelinePoint {
            ms: ms(p.seconds),
            live_bytes: p.live_bytes,
            live_blocks: p.live_blocks,
            scope_bytes: (scopes.iter())
                .map(|name| (p.scopes.iter().find(|(n, _)| n == name)).map_or(0, |(_, b)| *b))
                .collect(),
        })
        .collect();
    Timeline {
        interval_ms,
        scopes,
        points,
        peak_ms: ms(peak_seconds),
        callsites: (callsites.into_iter())
            .map(|c| TimelineCallsite {
                id: c.id,
                peak_blocks: c.peak_blocks,
                peak_bytes: c.peak_bytes,
                max_blocks: c.max_blocks,
                lifetimes_us: c.lifetimes_us,
            })
            .collect(),
    }
}

fn ms(seconds: f64) -> u64 {
    (seconds * 1000.0).round() as u64
}

fn owned(t: Option<Text<'_>>) -> Option<String> {
    t.map(Cow::into_owned)
}

impl<'a> DocCallsite<'a> {
    fn of(c: &'a Callsite) -> Self {
        DocCallsite {
            id: c.id,
            live_blocks: c.live_blocks,
            live_bytes: c.live_bytes,
            total_blocks: c.total_blocks,
            total_bytes: c.total_bytes,
            peak_live_bytes: c.peak_live_bytes,
            origin: c.origin,
            frames: (c.frames.iter())
                .map(|f| DocFrame {
                    ip: f.ip,
                    function: f.function.as_deref().map(Cow::from),
                    file: f.file.as_deref().map(Cow::from),
                    line: f.line,
                })
                .collect(),
        }
    }

    fn into_callsite(self) -> Callsite {
        Callsite {
            id: self.id,
            live_blocks: self.live_blocks,
            live_bytes: self.live_bytes,
            total_blocks: self.total_blocks,
            total_bytes: self.total_bytes,
            peak_live_bytes: self.peak_live_bytes,
            frames: (self.frames.into_iter())
                .map(|f| Frame {
                    ip: f.ip,
                    function: owned(f.function),
                    file: owned(f.file),
                    line: f.line,
                })
                .collect(),
            origin: self.origin,
        }
    }
}

impl<'a> DocScope<'a> {
    fn of(s: &'a ScopeStats, with_check: bool) -> Self {
        DocScope {
            name: s.name.as_str().into(),
            runs: s.runs,
            outstanding_blocks: s.outstanding_blocks,
            outstanding_bytes: s.outstanding_bytes,
            blocks_per_run: s.blocks_per_run(),
            bytes_per_run: s.bytes_per_run(),
            growing: s.growing,
            recent_bytes_per_run: s.recent_bytes_per_run,
            by_callsite: (s.by_callsite.iter())
                .map(|c| DocScopeCallsite {
                    callsite: c.callsite,
                    blocks: c.blocks,
                    bytes: c.bytes,
                })
                .collect(),
            retained_by: with_check.then(|| {
                (s.retained_by.iter())
                    .map(|r| DocScopeRetention {
                        retained_by: DocRetention::of(&r.retained_by),
                        blocks: r.blocks,
                        bytes: r.bytes,
                    })
                    .collect()
            }),
        }
    }

    fn into_stats(self) -> ScopeStats {
        ScopeStats {
            name: self.name.into_owned(),
            runs: self.runs,
            outstanding_blocks: self.outstanding_blocks,
            outstanding_bytes: self.outstanding_bytes,
            by_callsite: (self.by_callsite.into_iter())
                .map(|c| ScopeCallsite {
                    callsite: c.callsite,
                    blocks: c.blocks,
                    bytes: c.bytes,
                })
                .collect(),
            retained_by: (self.retained_by.unwrap_or_default().into_iter())
                .map(|r| ScopeRetention {
                    retained_by: r.retained_by.into_retention(),
                    blocks: r.blocks,
                    bytes: r.bytes,
                })
                .collect(),
            growing: self.growing,
            recent_bytes_per_run: self.recent_bytes_per_run,
        }
    }
}

impl<'a> DocRetention<'a> {
    fn of(r: &'a Retention) -> Self {
        DocRetention {
            root: DocRoot {
                kind: r.root.kind,
                name: r.root.name.as_deref().map(Cow::from),
                thread: r.root.thread.as_deref().map(Cow::from),
                function: r.root.function.as_deref().map(Cow::from),
            },
            path: r.path.clone(),
            via_heuristic: r.via_heuristic,
        }
    }

    fn into_retention(self) -> Retention {
        Retention {
            root: RetentionRoot {
                kind: self.root.kind,
                name: owned(self.root.name),
                thread: owned(self.root.thread),
                function: owned(self.root.function),
            },
            path: self.path,
            via_heuristic: self.via_heuristic,
        }
    }
}

impl<'a> DocScopeChange<'a> {
    fn of(s: &'a ScopeChange) -> Self {
        DocScopeChange {
            name: s.name.as_str().into(),
            runs: s.runs,
            outstanding_blocks: s.outstanding_blocks,
            outstanding_bytes: s.outstanding_bytes,
            blocks_per_run: s.blocks_per_run(),
            bytes_per_run: s.bytes_per_run(),
        }
    }

    fn into_change(self) -> ScopeChange {
        ScopeChange {
            name: self.name.into_owned(),
            runs: self.runs,
            outstanding_blocks: self.outstanding_blocks,
            outstanding_bytes: self.outstanding_bytes,
        }
    }
}

impl DocTotal {
    fn of(a: BlockTotal) -> Self {
        DocTotal {
            blocks: a.blocks,
            bytes: a.bytes,
        }
    }

    fn total(self) -> BlockTotal {
        BlockTotal {
            blocks: self.blocks,
            bytes: self.bytes,
        }
    }
}

impl<'a> DocLeakCheck<'a> {
    fn of(lc: &'a LeakCheck) -> Self {
        DocLeakCheck {
            definitely_lost: DocTotal::of(lc.definitely_lost),
            indirectly_lost: DocTotal::of(lc.indirectly_lost),
            possibly_lost: DocTotal::of(lc.possibly_lost),
            still_reachable: DocTotal::of(lc.still_reachable),
            reachable_via_heuristic: DocTotal::of(lc.reachable_via_heuristic),
            suppressed: DocTotal::of(lc.suppressed),
            suppressions_used: (lc.suppressions_used.iter())
                .map(|u| DocSuppression {
                    pattern: u.pattern.as_str().into(),
                    blocks: u.blocks,
                    bytes: u.bytes,
                })
                .collect(),
            error: lc.error.as_deref().map(Cow::from),
        }
    }

    fn into_check(self, records: Vec<DocRecord<'_>>) -> LeakCheck {
        LeakCheck {
            definitely_lost: self.definitely_lost.total(),
            indirectly_lost: self.indirectly_lost.total(),
            possibly_lost: self.possibly_lost.total(),
            still_reachable: self.still_reachable.total(),
            reachable_via_heuristic: self.reachable_via_heuristic.total(),
            suppressed: self.suppressed.total(),
            loss_records: (records.into_iter())
                .map(|r| LossRecord {
                    kind: r.kind,
                    blocks: r.blocks,
                    bytes: r.bytes,
                    callsite: r.callsite,
                    scope: owned(r.scope),
                    retained_by: r.retained_by.map(DocRetention::into_retention),
                })
                .collect(),
            suppressions_used: (self.suppressions_used.into_iter())
                .map(|u| SuppressionUse {
                    pattern: u.pattern.into_owned(),
                    blocks: u.blocks,
                    bytes: u.bytes,
                })
                .collect(),
            error: owned(self.error),
        }
    }
}

impl<'a> DocRecord<'a> {
    fn of(r: &'a LossRecord) -> Self {
        DocRecord {
            kind: r.kind,
            blocks: r.blocks,
            bytes: r.bytes,
            callsite: r.callsite,
            scope: r.scope.as_deref().map(Cow::from),
            retained_by: r.retained_by.as_ref().map(DocRetention::of),
        }
    }
}

/// An enum written as its `as_str()` name: the names exist once, there.
trait Named: Copy + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
}

/// `Named` for an enum with these variants.
macro_rules! named {
    ($t:ident: $($v:ident),+) => {
        impl Named for $t {
            const ALL: &'static [Self] = &[$($t::$v),+];
            fn name(self) -> &'static str {
                self.as_str()
            }
        }
    };
}

named!(Unwinder: FramePointers, Dwarf, DwarfFallback);
named!(Origin: Rust, C);
named!(RootKind: Static, Stack, Tls, Register);
named!(LeakKind: DefinitelyLost, IndirectlyLost, PossiblyLost, StillReachable);

mod named {
    use super::Named;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<T: Named, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }

    pub(super) fn deserialize<'de, T: Named, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        (T::ALL.iter().copied().find(|v| v.name() == s)).ok_or_else(|| {
            let names: Vec<&str> = T::ALL.iter().map(|v| v.name()).collect();
            D::Error::custom(format!("{s:?} is not one of {}", names.join(", ")))
        })
    }
}

mod hex {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ip: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{ip:#x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        (s.strip_prefix("0x"))
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                D::Error::custom(format!("{s:?} is not a hex address like 0x55d0c0ffee00"))
            })
    }
}

/// Name-value pairs as a JSON object, in their order.
mod pairs {
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub(super) fn serialize<S: Serializer>(v: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for (k, v) in v {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, u64)>, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Vec<(String, u64)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of scope names and byte counts")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, u64>()? {
                    out.push((k, v));
                }
                Ok(out)
            }
        }
        d.deserialize_map(Pairs)
    }
}
