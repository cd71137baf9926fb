//! The JSON rendering of a [`Report`]: schema `leakscope/1`.
//!
//! Fields may be added, never renamed. Written one call-site and scope at a
//! time into one buffer, never as a tree of the whole document.

use crate::alloc::thread;
use crate::report::leak::{BlockTotal, Retention};
use crate::report::model::{Callsite, Report};
use serde_json::{json, Value};
use std::collections::HashSet;

impl Report {
    /// The JSON document, schema `leakscope/1`. Its `callsites` are the ones
    /// the report shows: with live blocks, or named by a loss record or a
    /// scope's `by_callsite` ([`Report::to_json_all_sites`] lists them all).
    pub fn to_json(&self) -> String {
        thread::untracked(|| self.write_json(false))
    }

    /// [`Report::to_json`], with every call-site the report holds (in a
    /// `snapshot()`, every one seen, freed or not).
    pub fn to_json_all_sites(&self) -> String {
        thread::untracked(|| self.write_json(true))
    }

    /// Whether the JSON lists call-site `c` (see [`Report::to_json`]).
    fn shows(&self, c: &Callsite, named: &HashSet<u32>) -> bool {
        c.live_blocks > 0 || c.live_bytes > 0 || named.contains(&c.id)
    }

    /// Written one call-site and scope at a time, into one buffer: a report
    /// of 10,000 call-sites never holds a tree of the whole document.
    fn write_json(&self, all_sites: bool) -> String {
        let t = &self.totals;
        let head = json!({
            "schema": "leakscope/1",
            "pid": self.pid,
            "totals": {
                "live_blocks": t.live_blocks,
                "live_bytes": t.live_bytes,
                "total_blocks": t.total_blocks,
                "total_bytes": t.total_bytes,
                "peak_live_bytes": t.peak_live_bytes,
            },
            "untracked_blocks": self.untracked_blocks,
            "sample_bytes": self.sample_bytes,
            "seconds": self.seconds,
            "unwinder": self.unwinder.as_str(),
        });
        let mut out: Vec<u8> = Vec::with_capacity(4096);
        let head = head.to_string();
        // `head` is an object: reopen it to add the two lists.
        out.extend_from_slice(head.trim_end_matches('}').as_bytes());
        let named: HashSet<u32> = (self.scopes.iter())
            .flat_map(|s| s.by_callsite.iter().map(|c| c.callsite))
            .chain(
                self.leak_check
                    .iter()
                    .flat_map(|lc| lc.loss_records.iter().map(|r| r.callsite)),
            )
            .collect();
        let sites: Vec<&Callsite> = (self.callsites.iter())
            .filter(|c| all_sites || self.shows(c, &named))
            .collect();
        out.extend_from_slice(b",\"callsites\":");
        write_list(&mut out, &sites, |c| {
            json!({
                "id": c.id,
                "live_blocks": c.live_blocks,
                "live_bytes": c.live_bytes,
                "total_blocks": c.total_blocks,
                "total_bytes": c.total_bytes,
                "peak_live_bytes": c.peak_live_bytes,
                "origin": c.origin.as_str(),
                "frames": c.frames.iter().map(|fr| json!({
                    "ip": format!("{:#x}", fr.ip),
                    "function": fr.function,
                    "file": fr.file,
                    "line": fr.line,
                })).collect::<Vec<_>>(),
            })
        });
        out.extend_from_slice(b",\"scopes\":");
        write_list(&mut out, &self.scopes, |s| {
            let mut v = scope_json(
                &s.name,
                s.runs,
                (s.outstanding_blocks.into(), s.outstanding_bytes.into()),
                (s.blocks_per_run(), s.bytes_per_run()),
            );
            v["growing"] = s.growing.into();
            v["recent_bytes_per_run"] = s.recent_bytes_per_run.into();
            v["by_callsite"] = s
                .by_callsite
                .iter()
                .map(|c| json!({"callsite": c.callsite, "blocks": c.blocks, "bytes": c.bytes}))
                .collect();
            if self.leak_check.is_some() {
                v["retained_by"] = (s.retained_by.iter())
                    .map(|r| {
                        let mut v = retention_json(&r.retained_by);
                        v["blocks"] = r.blocks.into();
                        v["bytes"] = r.bytes.into();
                        v
                    })
                    .collect();
            }
            v
        });
        if let Some(g) = &self.changes {
            let growth = json!({
                "seconds": g.seconds,
                "scopes": g.scopes.iter().map(|s| scope_json(
                    &s.name,
                    s.runs,
                    (s.outstanding_blocks.into(), s.outstanding_bytes.into()),
                    (s.blocks_per_run(), s.bytes_per_run()),
                )).collect::<Vec<_>>(),
            });
            out.extend_from_slice(b",\"growth\":");
            let _ = serde_json::to_writer(&mut out, &growth);
        }
        if let Some(t) = &self.timeline {
            // Oldest first; each point names the followed scopes' bytes.
            out.extend_from_slice(b",\"timeline\":");
            write_list(&mut out, &t.points, |p| {
                let scopes: serde_json::Map<String, Value> = (t.scopes.iter())
                    .zip(&p.scope_bytes)
                    .map(|(name, bytes)| (name.clone(), json!(bytes)))
                    .collect();
                json!({
                    "seconds": p.ms as f64 / 1000.0,
                    "live_bytes": p.live_bytes,
                    "live_blocks": p.live_blocks,
                    "scopes": scopes,
                })
            });
            out.extend_from_slice(b",\"timeline_interval_ms\":");
            let _ = serde_json::to_writer(&mut out, &t.interval_ms);
            // What the call-site passes saw (DHAT's view is made of them).
            out.extend_from_slice(b",\"timeline_peak_seconds\":");
            let _ = serde_json::to_writer(&mut out, &(t.peak_ms as f64 / 1000.0));
            out.extend_from_slice(b",\"timeline_callsites\":");
            write_list(&mut out, &t.callsites, |c| {
                json!({
                    "id": c.id,
                    "peak_blocks": c.peak_blocks,
                    "peak_bytes": c.peak_bytes,
                    "max_blocks": c.max_blocks,
                    "lifetimes_us": c.lifetimes_us,
                })
            });
        }
        if let Some(lc) = &self.leak_check {
            let amount = |a: BlockTotal| json!({"blocks": a.blocks, "bytes": a.bytes});
            let head = json!({
                "definitely_lost": amount(lc.definitely_lost),
                "indirectly_lost": amount(lc.indirectly_lost),
                "possibly_lost": amount(lc.possibly_lost),
                "still_reachable": amount(lc.still_reachable),
                "reachable_via_heuristic": amount(lc.reachable_via_heuristic),
                "suppressed": amount(lc.suppressed),
                "suppressions_used": lc.suppressions_used.iter().map(|u| json!({
                    "pattern": u.pattern, "blocks": u.blocks, "bytes": u.bytes,
                })).collect::<Vec<_>>(),
                "error": lc.error,
            });
            out.extend_from_slice(b",\"leak_check\":");
            let _ = serde_json::to_writer(&mut out, &head);
            out.extend_from_slice(b",\"loss_records\":");
            write_list(&mut out, &lc.loss_records, |r| {
                let mut v = json!({
                    "kind": r.kind.as_str(),
                    "blocks": r.blocks,
                    "bytes": r.bytes,
                    "callsite": r.callsite,
                    "scope": r.scope,
                });
                if let Some(by) = &r.retained_by {
                    v["retained_by"] = retention_json(by);
                }
                v
            });
        }
        out.push(b'}');
        // Only serde_json's output and ASCII went in.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Who holds blocks: `{"root": {"kind", "name", "thread", "function"},
/// "path": [call-site ids], "via_heuristic"}`.
fn retention_json(r: &Retention) -> Value {
    json!({
        "root": {
            "kind": r.root.kind.as_str(),
            "name": r.root.name,
            "thread": r.root.thread,
            "function": r.root.function,
        },
        "path": r.path,
        "via_heuristic": r.via_heuristic,
    })
}

/// A scope's entry, in `scopes` and in `growth` alike: its runs, its
/// outstanding blocks and bytes (or their change), and those per run.
fn scope_json(
    name: &str,
    runs: u64,
    (blocks, bytes): (Value, Value),
    per_run: (f64, f64),
) -> Value {
    json!({
        "name": name,
        "runs": runs,
        "outstanding_blocks": blocks,
        "outstanding_bytes": bytes,
        "blocks_per_run": per_run.0,
        "bytes_per_run": per_run.1,
    })
}

/// A JSON array of `items`, each written as soon as it is made.
fn write_list<T>(out: &mut Vec<u8>, items: &[T], value: impl Fn(&T) -> Value) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &value(item));
    }
    out.push(b']');
}
