//! The report in DHAT's format (`dhatFileVersion` 2, heap mode), which
//! DHAT's viewer (`dh_view.html`, shipped with valgrind) opens: one program
//! point per call-site, with its total, maximum, at-peak and at-end blocks
//! and bytes and its blocks' lifetimes.
//!
//! Totals and at-end figures are the report's own (exact in full mode).
//! Maximum bytes are the tracker's per-call-site peak. The at-peak figures,
//! the maximum blocks and the lifetimes come from the timeline's call-site
//! passes ([`crate::report::TimelineCallsite`]): sampled, not exact. Without
//! a timeline the at-peak figures are the at-end ones and lifetimes are 0,
//! and the file's `mode` says so. Time is in microseconds.

use crate::alloc::thread;
use crate::report::model::{Frame, Report, TimelineCallsite};
use crate::report::symbolize::loaded_object;
use crate::report::text::where_of;
use serde_json::{json, Value};
use std::collections::HashMap;

/// DHAT's "short-lived" threshold: blocks living 1 ms or less on average.
const SHORT_LIVED_US: u64 = 1000;

impl Report {
    /// The report as a DHAT file: open it in DHAT's viewer
    /// (`/usr/libexec/valgrind/dh_view.html` on Debian, or
    /// <https://nnethercote.github.io/dh_view/dh_view.html>) with "Load…".
    /// Lists the report's call-sites: in the exit report with a `.dhat.json`
    /// destination, and in a [`snapshot`](crate::report::collect::snapshot), every one seen.
    pub fn to_dhat_json(&self) -> String {
        thread::untracked(|| self.write_dhat())
    }

    fn write_dhat(&self) -> String {
        let te = (self.seconds * 1e6) as u64;
        // The timeline's call-site passes, if it made any.
        let passes = self.timeline.as_ref().filter(|t| !t.callsites.is_empty());
        let seen: HashMap<u32, &TimelineCallsite> = (passes.iter())
            .flat_map(|t| t.callsites.iter().map(|c| (c.id, c)))
            .collect();
        let mut frames = FrameTable {
            in_process: self.in_process,
            ..FrameTable::default()
        };
        // Two call-sites can show the same frames (their stacks differ only
        // in frames a report leaves out); DHAT's viewer wants each sequence
        // once, so they are one program point, their figures summed (the
        // maxima too: at most that much).
        let mut pps: Vec<(Vec<usize>, [u64; 9])> = Vec::new();
        let mut by_frames: HashMap<Vec<usize>, usize> = HashMap::new();
        for c in self.callsites.iter().filter(|c| c.total_blocks > 0) {
            let t = seen.get(&c.id);
            let (gb, gbk) = match (passes, t) {
                (Some(_), Some(t)) => (t.peak_bytes, t.peak_blocks),
                (Some(_), None) => (0, 0),
                (None, _) => (c.live_bytes, c.live_blocks),
            };
            let figures = [
                c.total_bytes,
                c.total_blocks,
                // No block outlives the program (the last pass may come a
                // little after the report's moment).
                t.map_or(0, |t| t.lifetimes_us.min(c.total_blocks.saturating_mul(te))),
                c.peak_live_bytes.max(gb),
                t.map_or(0, |t| t.max_blocks).max(c.live_blocks).max(gbk),
                gb,
                gbk,
                c.live_bytes,
                c.live_blocks,
            ];
            let fs: Vec<usize> = c.frames.iter().map(|f| frames.index(f)).collect();
            match by_frames.get(&fs) {
                Some(&i) => {
                    for (sum, add) in pps[i].1.iter_mut().zip(figures) {
                        *sum = sum.saturating_add(add);
                    }
                }
                None => {
                    by_frames.insert(fs.clone(), pps.len());
                    pps.push((fs, figures));
                }
            }
        }
        let pps: Vec<Value> = pps
            .into_iter()
            .map(|(fs, [tb, tbk, tl, mb, mbk, gb, gbk, eb, ebk])| {
                json!({
                    "tb": tb, "tbk": tbk, "tl": tl, "mb": mb, "mbk": mbk,
                    "gb": gb, "gbk": gbk, "eb": eb, "ebk": ebk, "fs": fs,
                })
            })
            .collect();
        let tg = passes.map_or(te, |t| (t.peak_ms * 1000).min(te));
        let mut mode = "leakscope heap".to_owned();
        if self.sample_bytes > 0 {
            mode.push_str(&format!(
                ", sampled every {} bytes on average: the figures are estimates",
                self.sample_bytes
            ));
        }
        if passes.is_none() {
            mode.push_str(
                ", no timeline (LEAKSCOPE_TIMELINE_MS): at t-gmax is at t-end, lifetimes are 0",
            );
        }
        json!({
            "dhatFileVersion": 2,
            "mode": mode,
            "verb": "Allocated",
            "bklt": true,
            "bkacc": false,
            "tu": "µs",
            "Mtu": "s",
            "tuth": SHORT_LIVED_US,
            "cmd": std::env::args().collect::<Vec<_>>().join(" "),
            "pid": self.pid,
            "te": te,
            "tg": tg,
            "pps": pps,
            "ftbl": frames.names,
        })
        .to_string()
    }
}

/// DHAT's frame table: each distinct frame once, `[root]` first.
struct FrameTable {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Whether the frames' objects can be looked up in this process.
    in_process: bool,
}

impl Default for FrameTable {
    fn default() -> Self {
        FrameTable {
            names: vec!["[root]".to_owned()],
            index: HashMap::new(),
            in_process: false,
        }
    }
}

impl FrameTable {
    /// The index of `f`, written as valgrind writes a frame:
    /// `0x1234: function (file:line)`, or `0x1234: ??? (in object)`.
    fn index(&mut self, f: &Frame) -> usize {
        let function = f.function.as_deref().unwrap_or("???");
        let mut place = where_of(f);
        if place.is_empty() && self.in_process {
            if let Some(o) = loaded_object(f.ip) {
                place = format!(" (in {})", o.file);
            }
        }
        let name = format!("0x{:X}: {function}{place}", f.ip);
        let next = self.names.len();
        *self.index.entry(name).or_insert_with_key(|name| {
            self.names.push(name.clone());
            next
        })
    }
}
