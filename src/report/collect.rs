//! Taking a snapshot: the live state of the process as a [`Report`].
//!
//! Merges every thread's counters (call-sites, scopes, totals), reads the
//! per-scope view from the block table, and symbolizes the call-sites it
//! lists: every one seen ([`snapshot`], for code that asks), or only those a
//! report shows ([`Sites::Shown`], for the exit report and the live ones),
//! so that a report costs what it shows. Runs outside the allocation path,
//! with the thread's own allocations untracked.

use crate::alloc::{blocks, callsite, process, sample, thread, unwind};
use crate::report::model::{
    Callsite, Origin, Report, ScopeCallsite, ScopeStats, Totals, Unwinder, FRAME_POINTERS_FIX,
};
use crate::report::symbolize::{self, Symbolizer};
use crate::report::warn::warn;
use crate::scope::history;
use crate::scope::names::{self, ScopeEntry};
use std::collections::{HashMap, HashSet};

/// The live state now: totals, per call-site (every one seen so far, with
/// its stack), per scope.
pub fn snapshot() -> Report {
    snapshot_of(Sites::All)
}

/// Which call-sites a report lists (and so symbolizes).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sites<'a> {
    /// Every call-site seen so far.
    All,
    /// Those with live blocks, and those named in `also` (a leak check's
    /// loss records): what a report shows.
    Shown { also: &'a [u32] },
}

/// The live state now, listing `sites`. The first report of a process
/// whose stacks come from the DWARF fallback says so, once, on stderr.
pub(crate) fn snapshot_of(sites: Sites<'_>) -> Report {
    let report = thread::untracked(|| build(sites));
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if report.unwinder == Unwinder::DwarfFallback
        && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        thread::untracked(|| {
            warn(&format!(
                "stacks come from DWARF unwinding, since this program is built without frame pointers; {FRAME_POINTERS_FIX}"
            ))
        });
    }
    report
}

#[derive(Default, Clone, Copy)]
struct Sum {
    alloc_blocks: u64,
    alloc_bytes: u64,
    free_blocks: u64,
    free_bytes: u64,
    runs: u64,
}

impl Sum {
    fn add(&mut self, c: &thread::Counts) {
        use std::sync::atomic::Ordering::Relaxed;
        self.alloc_blocks = self.alloc_blocks.wrapping_add(c.alloc_blocks.load(Relaxed));
        self.alloc_bytes = self.alloc_bytes.wrapping_add(c.alloc_bytes.load(Relaxed));
        self.free_blocks = self.free_blocks.wrapping_add(c.free_blocks.load(Relaxed));
        self.free_bytes = self.free_bytes.wrapping_add(c.free_bytes.load(Relaxed));
        self.runs = self.runs.wrapping_add(c.runs.load(Relaxed));
    }

    fn live(&self) -> (u64, u64) {
        (
            self.alloc_blocks.saturating_sub(self.free_blocks),
            self.alloc_bytes.saturating_sub(self.free_bytes),
        )
    }
}

/// Every thread's totals, and its counts of scope ids 0 to `scopes`, summed.
fn totals_and_scopes(scopes: usize) -> (Sum, Vec<Sum>) {
    let mut totals = Sum::default();
    let mut scope_sums = vec![Sum::default(); scopes + 1];
    for slot in thread::slots() {
        totals.add(slot.total_counts());
        for (id, sum) in scope_sums.iter_mut().enumerate() {
            if let Some(c) = slot.scope_counts(id as u32) {
                sum.add(c);
            }
        }
    }
    (totals, scope_sums)
}

/// Every thread's counts of each call-site seen so far, summed, by id.
fn site_sums() -> Vec<Sum> {
    let mut sums = vec![Sum::default(); callsite::count() as usize];
    for slot in thread::slots() {
        for (id, sum) in sums.iter_mut().enumerate() {
            if let Some(c) = slot.site_counts(id as u32) {
                sum.add(c);
            }
        }
    }
    sums
}

/// Live block units and bytes per (scope, call-site), from the live blocks
/// themselves (in sampling mode, the sampled ones, weighted): of every
/// scope, or of scope `only`.
fn by_scope_and_site(only: Option<u32>) -> HashMap<(u32, u32), (u64, u64)> {
    let mean = sample::current();
    let mut by_scope: HashMap<(u32, u32), (u64, u64)> = HashMap::new();
    blocks::for_each(|_, meta| {
        if meta.scope != 0 && only.is_none_or(|s| s == meta.scope) {
            let (units, bytes) = if mean == 0 {
                (1, meta.size as u64)
            } else {
                sample::weight(meta.size, mean)
            };
            let e = by_scope.entry((meta.scope, meta.site)).or_default();
            e.0 += units;
            e.1 += bytes;
        }
    });
    by_scope
}

/// What one scope holds now (block counts as reports give them).
pub(crate) struct ScopeHolds {
    /// Its outstanding blocks and bytes, from the threads' counters.
    pub(crate) outstanding: (u64, u64),
    /// Its live blocks and bytes by call-site, from the blocks: (site, blocks, bytes).
    pub(crate) sites: Vec<(u32, u64, u64)>,
    /// Whether anything was ever counted in the process (`false`: the
    /// tracker is not the global allocator).
    pub(crate) counted: bool,
}

/// What scope `id` holds now.
pub(crate) fn scope_holds(id: u32) -> ScopeHolds {
    thread::untracked(|| {
        let (totals, scopes) = totals_and_scopes(id as usize);
        let (units, bytes) = scopes.get(id as usize).map_or((0, 0), Sum::live);
        let sites = by_scope_and_site(Some(id))
            .into_iter()
            .map(|((_, site), (units, bytes))| (site, sample::blocks(units), bytes))
            .collect();
        ScopeHolds {
            outstanding: (sample::blocks(units), bytes),
            sites,
            counted: totals.alloc_blocks > 0,
        }
    })
}

fn build(sites: Sites<'_>) -> Report {
    use std::sync::atomic::Ordering::Relaxed;
    let mean = sample::current();
    let sums = site_sums();
    let entries = names::scope_entries();
    let (totals, scope_sums) = totals_and_scopes(entries.len());
    // Call-site block counts are in block units (sampling mode: 1/2^16 block).
    let blocks = sample::blocks;

    let by_scope = by_scope_and_site(None);

    let also: HashSet<u32> = match sites {
        Sites::All => HashSet::new(),
        Sites::Shown { also } => also.iter().copied().collect(),
    };
    let mut symbols = Symbolizer::default();
    let mut callsites: Vec<Callsite> = sums
        .iter()
        .enumerate()
        .filter(|(id, s)| {
            s.alloc_blocks > 0
                && match sites {
                    Sites::All => true,
                    Sites::Shown { .. } => s.live() != (0, 0) || also.contains(&(*id as u32)),
                }
        })
        .filter_map(|(id, s)| {
            let site = callsite::get(id as u32)?;
            let (live_units, live_bytes) = s.live();
            Some(Callsite {
                id: id as u32,
                live_blocks: blocks(live_units),
                live_bytes,
                total_blocks: blocks(s.alloc_blocks),
                total_bytes: s.alloc_bytes,
                peak_live_bytes: site.peak.peak.load(Relaxed).max(live_bytes),
                frames: symbols.stack(&site.frames()),
                origin: match site.origin() {
                    callsite::Origin::Rust => Origin::Rust,
                    callsite::Origin::C => Origin::C,
                },
            })
        })
        .collect();
    callsites.sort_by(|a, b| {
        (b.live_bytes, b.live_blocks, a.id).cmp(&(a.live_bytes, a.live_blocks, b.id))
    });

    let mut scopes: Vec<ScopeStats> = entries
        .into_iter()
        .map(|(id, entry)| {
            let mut by_callsite: Vec<ScopeCallsite> = by_scope
                .iter()
                .filter(|((s, _), _)| *s == id)
                .map(|(&(_, callsite), &(units, bytes))| ScopeCallsite {
                    callsite,
                    blocks: blocks(units),
                    bytes,
                })
                .collect();
            by_callsite.sort_by(|a, b| {
                (b.bytes, b.blocks, a.callsite).cmp(&(a.bytes, a.blocks, b.callsite))
            });
            ScopeStats {
                by_callsite,
                ..scope_stats(entry, scope_sums.get(id as usize))
            }
        })
        .collect();
    scopes.sort_by(|a, b| {
        (b.outstanding_bytes, b.outstanding_blocks)
            .cmp(&(a.outstanding_bytes, a.outstanding_blocks))
            .then_with(|| a.name.cmp(&b.name))
    });

    Report {
        pid: std::process::id(),
        totals: process_totals(&totals),
        callsites,
        scopes,
        untracked_blocks: process::untracked_count(),
        sample_bytes: mean as u64,
        leak_check: None,
        changes: None,
        seconds: process::seconds_since_start(),
        unwinder: match unwind::unwinder() {
            (false, _) => Unwinder::FramePointers,
            (true, false) => Unwinder::Dwarf,
            (true, true) => Unwinder::DwarfFallback,
        },
        timeline: None,
        preloaded: symbolize::preloaded(),
        in_process: true,
    }
}

/// A scope's figures from its counters, `sum` (none: it has none yet):
/// every block opened in a run of it, less every such block freed since,
/// by any thread (sampling mode: the sampled ones, weighted, as for
/// call-sites), its runs and whether it keeps growing. Not its call-sites.
fn scope_stats(entry: &ScopeEntry, sum: Option<&Sum>) -> ScopeStats {
    let (outstanding_units, outstanding_bytes) = sum.map_or((0, 0), Sum::live);
    let runs = (entry.runs.load(std::sync::atomic::Ordering::Relaxed))
        .wrapping_add(sum.map_or(0, |s| s.runs));
    let verdict = history::verdict(entry, runs, outstanding_bytes);
    ScopeStats {
        name: entry.name.clone(),
        runs,
        outstanding_blocks: sample::blocks(outstanding_units),
        outstanding_bytes,
        by_callsite: Vec::new(),
        retained_by: Vec::new(),
        growing: verdict.growing,
        recent_bytes_per_run: verdict.recent_bytes_per_run,
    }
}

/// Every scope's figures but its call-sites, from the threads' counters
/// alone (no block walk, no symbols): what the gate at exit looks at when
/// no report is written.
pub(crate) fn scopes_from_counters() -> Vec<ScopeStats> {
    counters().1
}

/// What the metrics read ([`crate::report::metrics`]), from the threads'
/// counters alone (no block walk, no symbols): the process's totals, and
/// every scope's figures but its call-sites (in id order: first seen
/// first). Its call-sites' figures are [`site_levels`].
pub(crate) fn counters() -> (Totals, Vec<ScopeStats>) {
    thread::untracked(|| {
        let entries = names::scope_entries();
        let (totals, sums) = totals_and_scopes(entries.len());
        let scopes = (entries.into_iter())
            .map(|(id, entry)| scope_stats(entry, sums.get(id as usize)))
            .collect();
        (process_totals(&totals), scopes)
    })
}

/// The process's totals from the threads' summed counters.
fn process_totals(totals: &Sum) -> Totals {
    let (live_blocks, live_bytes) = totals.live();
    Totals {
        live_blocks,
        live_bytes,
        total_blocks: totals.alloc_blocks,
        total_bytes: totals.alloc_bytes,
        peak_live_bytes: (thread::TOTAL_PEAK.peak)
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(live_bytes),
    }
}

/// The process's live bytes and blocks, and the outstanding bytes of every
/// scope that has any (by scope id), from the threads' counters alone: no
/// block walk, no symbols. What the timeline samples.
pub(crate) struct Levels {
    pub(crate) live_bytes: u64,
    pub(crate) live_blocks: u64,
    pub(crate) scopes: Vec<(u32, u64)>,
}

pub(crate) fn levels() -> Levels {
    thread::untracked(|| {
        let (totals, scope_sums) = totals_and_scopes(names::scope_entries().len());
        let (live_blocks, live_bytes) = totals.live();
        let scopes = scope_sums
            .iter()
            .enumerate()
            .map(|(id, s)| (id as u32, s.live().1))
            .filter(|&(id, bytes)| id != 0 && bytes > 0)
            .collect();
        Levels {
            live_bytes,
            live_blocks,
            scopes,
        }
    })
}

/// Each call-site's live blocks and bytes now, by id, from the threads'
/// counters alone (in sampling mode, the estimates): what the timeline's
/// call-site passes sum, and the metrics' functions.
pub(crate) fn site_levels() -> Vec<(u64, u64)> {
    thread::untracked(|| {
        site_sums()
            .iter()
            .map(|s| {
                let (units, bytes) = s.live();
                (sample::blocks(units), bytes)
            })
            .collect()
    })
}
