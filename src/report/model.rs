//! The report model: what a report holds, whichever way it is rendered.
//!
//! Owns [`Report`] and its parts (totals, call-sites with their frames,
//! scopes with their growth per run) and the growth of scopes between two
//! reports. The leak check's result types are in [`crate::report::leak`].
//! Plain data: nothing here touches the tracker's state.

#[cfg(doc)]
use crate::report::collect::snapshot;
use crate::report::leak::{LeakCheck, Retention, ScopeRetention};
use std::collections::HashMap;

/// One frame of an allocating stack, innermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Frame {
    /// The return address (the same for the inlined frames of one call).
    pub ip: usize,
    /// The function, demangled, when the symbols name it.
    pub function: Option<String>,
    /// The source file: relative to the workspace root under it, absolute otherwise.
    pub file: Option<String>,
    /// The line in `file`.
    pub line: Option<u32>,
}

/// Whole-process counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Totals {
    /// Blocks allocated and not yet freed.
    pub live_blocks: u64,
    /// Their bytes.
    pub live_bytes: u64,
    /// Blocks allocated since the tracker started.
    pub total_blocks: u64,
    /// Their bytes.
    pub total_bytes: u64,
    /// Exact when one thread at a time allocates; with several threads it may be
    /// off by up to 64 KiB per other thread (threads publish live bytes in batches).
    pub peak_live_bytes: u64,
}

/// Counts of one call-site (one distinct allocating stack).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Callsite {
    /// Its id: the same in this report's loss records, scopes and JSON.
    pub id: u32,
    /// Its blocks allocated and not yet freed.
    pub live_blocks: u64,
    /// Their bytes.
    pub live_bytes: u64,
    /// Its blocks allocated since the tracker started.
    pub total_blocks: u64,
    /// Their bytes.
    pub total_bytes: u64,
    /// As precise as [`Totals::peak_live_bytes`].
    pub peak_live_bytes: u64,
    /// Innermost first, the allocator's own frames left out.
    pub frames: Vec<Frame>,
    /// Which allocator made its blocks.
    pub origin: Origin,
}

/// Which allocator made a call-site's blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// Rust's global allocator (the allocator line).
    #[default]
    Rust,
    /// The process's `malloc` family (feature `c-heap`): C code, or Rust
    /// that calls the C allocator (`libc::malloc`, `System` directly).
    C,
}

impl Origin {
    /// The JSON name: `rust` or `c`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Rust => "rust",
            Origin::C => "c",
        }
    }
}

impl Callsite {
    /// The function of the first frame: the code that allocated.
    pub fn function(&self) -> Option<&str> {
        self.frames.first().and_then(|f| f.function.as_deref())
    }
}

/// Blocks of one scope at one call-site.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeCallsite {
    /// The call-site's id ([`Callsite::id`]).
    pub callsite: u32,
    /// The scope's outstanding blocks made there.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One scope name over all its runs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ScopeStats {
    /// The name the runs were opened with.
    pub name: String,
    /// Runs opened (each `track_scope` call, guard, future or span entered).
    pub runs: u64,
    /// Blocks opened in a run of this scope and never freed since.
    pub outstanding_blocks: u64,
    /// Their bytes.
    pub outstanding_bytes: u64,
    /// Largest first.
    pub by_callsite: Vec<ScopeCallsite>,
    /// After a leak check: who holds its still-reachable and possibly-lost
    /// blocks, by retention path, most bytes first (empty without a check).
    pub retained_by: Vec<ScopeRetention>,
    /// Its outstanding bytes keep rising with its runs: with `2^k` the
    /// largest power of two not above its runs, from run `2^(k-1)` on they
    /// never came back down to the most they reached between runs
    /// `2^(k-2)` and `2^(k-1)`, and it ran at least 64 times. A warm-up of
    /// `w` runs (a cache filling) reads as growing until `8w` runs.
    pub growing: bool,
    /// Outstanding bytes gained per run over the later part of its runs
    /// (from about half of them on): how fast it grows now.
    pub recent_bytes_per_run: f64,
}

impl ScopeStats {
    /// Outstanding blocks per run: how fast this scope grows the heap.
    pub fn blocks_per_run(&self) -> f64 {
        per_run(self.outstanding_blocks as f64, self.runs)
    }

    /// Outstanding bytes per run.
    pub fn bytes_per_run(&self) -> f64 {
        per_run(self.outstanding_bytes as f64, self.runs)
    }
}

/// `n` over `runs`, 0 without runs.
pub(crate) fn per_run(n: f64, runs: u64) -> f64 {
    if runs == 0 {
        0.0
    } else {
        n / runs as f64
    }
}

/// The tracker's view of the heap at one moment.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// The process the report was taken in.
    pub pid: u32,
    /// Whole-process counts.
    pub totals: Totals,
    /// Call-sites that allocated, largest live bytes first: in a [`snapshot`],
    /// every one seen; in the exit report and the live ones, those with live
    /// blocks or a loss record (`LEAKSCOPE_REPORT_ALL_SITES=1`: every one).
    pub callsites: Vec<Callsite>,
    /// Every scope name opened so far, largest outstanding bytes first.
    pub scopes: Vec<ScopeStats>,
    /// Blocks the tracker could not record for lack of memory for its tables.
    pub untracked_blocks: u64,
    /// Sampling mode's mean interval in bytes, 0 in full mode. When not 0,
    /// call-site figures (and scopes' `by_callsite`) are estimates from
    /// sampled blocks, and so are scopes' outstanding counts; totals and
    /// scopes' runs are exact.
    pub sample_bytes: u64,
    /// The full leak check, in a report from `leak_check()` (and at exit,
    /// unless `LEAKSCOPE_LEAK_CHECK=no`); `None` in a [`snapshot`].
    pub leak_check: Option<LeakCheck>,
    /// What each scope did since the previous report of the same kind: set
    /// in the reports `serve_report` serves and a signal writes
    /// (see [`Report::scope_changes_since`]); `None` in a [`snapshot`]. The
    /// JSON keeps it under `growth`, its name in schema `leakscope/1`.
    pub changes: Option<Changes>,
    /// When the snapshot was taken: seconds since the tracker started (the
    /// process's first allocation).
    pub seconds: f64,
    /// How the stacks of this report were captured.
    pub unwinder: Unwinder,
    /// The heap over time, when a timeline is kept (`LEAKSCOPE_TIMELINE_MS`):
    /// in the exit report and the live ones; `None` in a [`snapshot`].
    pub timeline: Option<Timeline>,
    /// The tracker was preloaded into a program that does not link
    /// leakscope (`leakscope run`): it counts every allocation, but scopes
    /// need the program's own code, so there are none.
    pub preloaded: bool,
    /// Taken in this process (not read back with [`Report::from_json`]):
    /// its addresses may be looked up in this process's mappings.
    pub(crate) in_process: bool,
}

/// The heap over time, massif's view: live bytes and blocks, and the
/// outstanding bytes of the scopes that held the most, sampled every
/// `interval_ms` (from counters alone: no stacks, no block walk). At most a
/// few hundred points: when full, every other point goes and the interval
/// doubles, so the whole run stays in view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeline {
    /// Between two points now.
    pub interval_ms: u64,
    /// The scopes followed, in the order of each point's `scope_bytes`.
    pub scopes: Vec<String>,
    /// The points, oldest first.
    pub points: Vec<TimelinePoint>,
    /// When the live bytes were highest at a call-site pass (milliseconds
    /// since the tracker started), and what each call-site held then, what
    /// it held at most, and how long its blocks lived: see
    /// [`TimelineCallsite`]. Empty before the first pass.
    pub peak_ms: u64,
    /// Call-sites that held the most at `peak_ms`, most bytes first.
    pub callsites: Vec<TimelineCallsite>,
}

/// What the timeline saw of one call-site, at call-site passes: the points
/// at which it also sums every thread's call-site counters (each one, while
/// a pass takes under 1% of the time between them; less often when there
/// are many call-sites and threads). Figures between two passes are not
/// seen, so these are sampled, not exact: DHAT's view ([`Report::to_dhat_json`])
/// is made of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimelineCallsite {
    /// The call-site's id ([`Callsite::id`]).
    pub id: u32,
    /// Its live blocks and bytes at the pass with the most live bytes in
    /// the process (`peak_ms`).
    pub peak_blocks: u64,
    /// Their bytes.
    pub peak_bytes: u64,
    /// Its most live blocks at any pass.
    pub max_blocks: u64,
    /// The lifetimes of its blocks summed, in microseconds, up to the last
    /// pass: each pass adds its live blocks times the time since the pass
    /// before (so a block living less than a pass interval counts the
    /// interval or nothing, exact on average over many blocks).
    pub lifetimes_us: u64,
}

/// One moment of a [`Timeline`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimelinePoint {
    /// Milliseconds since the tracker started.
    pub ms: u64,
    /// Live bytes in the process.
    pub live_bytes: u64,
    /// Live blocks in the process.
    pub live_blocks: u64,
    /// Outstanding bytes of each of the timeline's `scopes` (0 before one
    /// was followed).
    pub scope_bytes: Vec<u64>,
}

/// How stacks are captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unwinder {
    /// The frame-pointer chain (the program is built with frame pointers).
    FramePointers,
    /// The DWARF unwinder, as `LEAKSCOPE_UNWIND=dwarf` asked.
    Dwarf,
    /// The DWARF unwinder, because the program is built without frame
    /// pointers: right stacks, at a higher cost per allocation.
    DwarfFallback,
}

impl Unwinder {
    /// The JSON name: `frame_pointers`, `dwarf`, `dwarf_fallback`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unwinder::FramePointers => "frame_pointers",
            Unwinder::Dwarf => "dwarf",
            Unwinder::DwarfFallback => "dwarf_fallback",
        }
    }
}

/// What to add for full speed when the fallback is on.
pub(crate) const FRAME_POINTERS_FIX: &str = "for full speed build with frame pointers: in .cargo/config.toml, [build] rustflags = [\"-C\", \"force-frame-pointers=yes\"]";

/// What to add for file and line in frames that have none.
pub(crate) const LINE_TABLES_FIX: &str = "frames have no file and line: build with line tables, in Cargo.toml [profile.release] debug = \"limited\"";

/// What a preloaded run's report says in its header.
pub(crate) const PRELOADED_NO_SCOPES: &str = "preloaded (leakscope run): every allocation is counted, but request scopes need the program's own code (the allocator line and track_scope), so there are none";

/// [`LINE_TABLES_FIX`] for a program that may not be Rust's.
pub(crate) const PRELOADED_LINE_TABLES_FIX: &str = "frames have no file and line: build the program with debug info (cc -g; for Rust, in Cargo.toml [profile.release] debug = \"limited\")";

/// What the scopes did between an earlier report and this one: their runs
/// and the change in what they hold.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Changes {
    /// Seconds since the earlier report; `None`: it is the first, and the
    /// figures run from the program's start.
    pub seconds: Option<f64>,
    /// Scopes that ran or changed in between, largest byte growth first.
    pub scopes: Vec<ScopeChange>,
}

/// How one scope moved between two reports ([`Report::scope_changes_since`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ScopeChange {
    /// The scope's name.
    pub name: String,
    /// Runs opened in between.
    pub runs: u64,
    /// Change in outstanding blocks and bytes: what the runs in between left
    /// behind, less the earlier runs' blocks freed since (so it can be
    /// negative).
    pub outstanding_blocks: i64,
    /// Change in outstanding bytes, as for blocks.
    pub outstanding_bytes: i64,
}

impl ScopeChange {
    /// Outstanding blocks gained per run in between: how fast this scope
    /// grows the heap now.
    pub fn blocks_per_run(&self) -> f64 {
        per_run(self.outstanding_blocks as f64, self.runs)
    }

    /// Outstanding bytes gained per run in between.
    pub fn bytes_per_run(&self) -> f64 {
        per_run(self.outstanding_bytes as f64, self.runs)
    }
}

impl Report {
    /// Adds a leak check's result, and with it who holds each scope's
    /// reachable blocks (from the records' retention paths).
    pub(crate) fn attach_leak_check(&mut self, lc: LeakCheck) {
        type Held<'a> = HashMap<&'a Retention, (u64, u64)>;
        let mut by_scope: HashMap<&str, Held<'_>> = HashMap::new();
        for r in &lc.loss_records {
            if let (Some(scope), Some(by)) = (&r.scope, &r.retained_by) {
                let e = by_scope.entry(scope).or_default().entry(by).or_default();
                e.0 += r.blocks;
                e.1 += r.bytes;
            }
        }
        for s in &mut self.scopes {
            let Some(held) = by_scope.remove(s.name.as_str()) else {
                continue;
            };
            s.retained_by = (held.into_iter())
                .map(|(by, (blocks, bytes))| ScopeRetention {
                    retained_by: by.clone(),
                    blocks,
                    bytes,
                })
                .collect();
            s.retained_by.sort_by(|a, b| {
                (b.bytes, b.blocks, &a.retained_by.path).cmp(&(
                    a.bytes,
                    a.blocks,
                    &b.retained_by.path,
                ))
            });
        }
        self.leak_check = Some(lc);
    }

    /// The call-site with this id, if the report lists it.
    pub fn callsite(&self, id: u32) -> Option<&Callsite> {
        self.callsites.iter().find(|c| c.id == id)
    }

    /// The scope with this name, if it was ever opened.
    pub fn scope(&self, name: &str) -> Option<&ScopeStats> {
        self.scopes.iter().find(|s| s.name == name)
    }

    /// What each scope did since `earlier`, an earlier report of this
    /// process: the runs opened in between and the change in its outstanding
    /// blocks and bytes. [`ScopeStats`]' per-run figures average over the
    /// program's whole life; these say which endpoint grows now. Scopes that
    /// neither ran nor changed are left out; largest byte growth first.
    pub fn scope_changes_since(&self, earlier: &Report) -> Vec<ScopeChange> {
        growth(&self.scopes, &earlier.scopes)
    }

    /// Call-sites whose first frame (the code that allocated) is in a function
    /// whose name contains `function`.
    pub fn callsites_in<'a>(
        &'a self,
        function: &'a str,
    ) -> impl Iterator<Item = &'a Callsite> + 'a {
        self.callsites
            .iter()
            .filter(move |c| c.function().is_some_and(|f| f.contains(function)))
    }
}

/// Per scope of `now`, the change since `earlier` (scopes of the same process).
/// A call-site's live blocks opened in one scope (or in none): the unit the
/// renderings that split a call-site by scope (pprof, folded stacks) draw.
pub(crate) struct Part<'a> {
    pub(crate) site: &'a Callsite,
    /// `None`: blocks opened outside any scope, and the call-site's totals.
    pub(crate) scope: Option<&'a str>,
    #[cfg_attr(not(feature = "formats"), allow(dead_code))]
    pub(crate) blocks: u64,
    pub(crate) bytes: u64,
}

impl Report {
    /// Every call-site's live blocks, split by the scope that opened them:
    /// first the part outside any scope (what the scopes do not account
    /// for; one per call-site, even when empty), then one per scope that
    /// holds some, in the order of the report's scopes.
    pub(crate) fn parts(&self) -> Vec<Part<'_>> {
        let mut by_site: std::collections::HashMap<u32, Vec<(&str, u64, u64)>> =
            std::collections::HashMap::new();
        for s in &self.scopes {
            for c in &s.by_callsite {
                by_site
                    .entry(c.callsite)
                    .or_default()
                    .push((s.name.as_str(), c.blocks, c.bytes));
            }
        }
        let mut out = Vec::with_capacity(self.callsites.len());
        for site in &self.callsites {
            let scoped = by_site.remove(&site.id).unwrap_or_default();
            let (blocks, bytes) = scoped
                .iter()
                .fold((0u64, 0u64), |(n, b), s| (n + s.1, b + s.2));
            out.push(Part {
                site,
                scope: None,
                blocks: site.live_blocks.saturating_sub(blocks),
                bytes: site.live_bytes.saturating_sub(bytes),
            });
            out.extend(scoped.into_iter().map(|(name, blocks, bytes)| Part {
                site,
                scope: Some(name),
                blocks,
                bytes,
            }));
        }
        out
    }
}

pub(crate) fn growth(now: &[ScopeStats], earlier: &[ScopeStats]) -> Vec<ScopeChange> {
    let before: std::collections::HashMap<&str, &ScopeStats> =
        earlier.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut out: Vec<ScopeChange> = now
        .iter()
        .map(|s| {
            let (runs, blocks, bytes) = before.get(s.name.as_str()).map_or((0, 0, 0), |e| {
                (e.runs, e.outstanding_blocks, e.outstanding_bytes)
            });
            ScopeChange {
                name: s.name.clone(),
                runs: s.runs.saturating_sub(runs),
                outstanding_blocks: s.outstanding_blocks as i64 - blocks as i64,
                outstanding_bytes: s.outstanding_bytes as i64 - bytes as i64,
            }
        })
        .filter(|g| g.runs != 0 || g.outstanding_blocks != 0 || g.outstanding_bytes != 0)
        .collect();
    out.sort_by(|a, b| {
        (b.outstanding_bytes, b.outstanding_blocks, &a.name).cmp(&(
            a.outstanding_bytes,
            a.outstanding_blocks,
            &b.name,
        ))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &str, runs: u64, blocks: u64, bytes: u64) -> ScopeStats {
        ScopeStats {
            name: name.to_owned(),
            runs,
            outstanding_blocks: blocks,
            outstanding_bytes: bytes,
            by_callsite: Vec::new(),
            retained_by: Vec::new(),
            growing: false,
            recent_bytes_per_run: 0.0,
        }
    }

    #[test]
    fn growth_between_two_reports() {
        let earlier = [
            stats("a", 10, 5, 500),
            stats("idle", 3, 1, 10),
            stats("b", 4, 4, 40),
        ];
        let now = [
            stats("a", 12, 5, 500),
            stats("idle", 3, 1, 10),
            stats("b", 6, 0, 0),
            stats("new", 2, 2, 64),
        ];
        let g = growth(&now, &earlier);
        let got: Vec<_> = g
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.runs,
                    s.outstanding_blocks,
                    s.outstanding_bytes,
                )
            })
            .collect();
        // Largest byte growth first; a scope that neither ran nor changed is left out.
        assert_eq!(got, [("new", 2, 2, 64), ("a", 2, 0, 0), ("b", 2, -4, -40)]);
        assert_eq!(g[2].blocks_per_run(), -2.0);
        assert_eq!(g[0].bytes_per_run(), 32.0);
    }

    #[test]
    fn per_run_growth() {
        assert_eq!(per_run(150.0, 50), 3.0);
        assert_eq!(per_run(-20.0, 8), -2.5);
        assert_eq!(per_run(5.0, 0), 0.0);
    }
}
