//! The report model and how a snapshot of the live state is taken.
//!
//! Owns [`Report`] and its parts, the merge of the per-thread counters, the
//! per-scope view (from the block table) and symbolization. Runs outside the
//! allocation path with the thread's own allocations untracked; symbolizing
//! (the backtrace crate) happens only here.

use crate::blocks;
use crate::callsite;
use crate::thread;
use crate::{sample, scope};
use std::collections::HashMap;

/// One frame of an allocating stack, innermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Frame {
    /// The return address (the same for the inlined frames of one call).
    pub ip: usize,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Whole-process counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Totals {
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub total_blocks: u64,
    pub total_bytes: u64,
    /// Exact when one thread at a time allocates; with several threads it may be
    /// off by up to 64 KiB per other thread (threads publish live bytes in batches).
    pub peak_live_bytes: u64,
}

/// Counts of one call-site (one distinct allocating stack).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallsiteStats {
    pub id: u32,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub total_blocks: u64,
    pub total_bytes: u64,
    /// As precise as [`Totals::peak_live_bytes`].
    pub peak_live_bytes: u64,
    /// Innermost first, the allocator's own frames left out.
    pub frames: Vec<Frame>,
}

impl CallsiteStats {
    /// The function of the first frame: the code that allocated.
    pub fn function(&self) -> Option<&str> {
        self.frames.first().and_then(|f| f.function.as_deref())
    }
}

/// Blocks of one scope at one call-site.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeCallsite {
    pub callsite: u32,
    pub blocks: u64,
    pub bytes: u64,
}

/// One scope name over all its runs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ScopeStats {
    pub name: String,
    pub runs: u64,
    /// Blocks opened in a run of this scope and never freed since.
    pub outstanding_blocks: u64,
    pub outstanding_bytes: u64,
    /// Largest first.
    pub by_callsite: Vec<ScopeCallsite>,
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
fn per_run(n: f64, runs: u64) -> f64 {
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
    pub pid: u32,
    pub totals: Totals,
    /// Every call-site that allocated, largest live bytes first.
    pub callsites: Vec<CallsiteStats>,
    /// Every scope name opened so far, largest outstanding bytes first.
    pub scopes: Vec<ScopeStats>,
    /// Blocks the tracker could not record for lack of memory for its tables.
    pub untracked_blocks: u64,
    /// Sampling mode's mean interval in bytes, 0 in full mode. When not 0,
    /// call-site figures (and scopes' `by_callsite`) are estimates from
    /// sampled blocks; totals and scopes' outstanding counts are exact.
    pub sample_bytes: u64,
    /// The full leak check, in a report from [`crate::leak_check`] (and at
    /// exit, unless `LEAKSCOPE_LEAK_CHECK=no`); `None` in a [`snapshot`].
    pub leak_check: Option<crate::LeakCheck>,
    /// What each scope did since the previous report of the same kind: set
    /// in the reports [`crate::serve_report`] serves and a signal writes
    /// (see [`Report::scope_growth_since`]); `None` in a [`snapshot`].
    pub growth: Option<Growth>,
}

/// Scopes' growth between an earlier report and this one.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Growth {
    /// Seconds since the earlier report; `None`: it is the first, and the
    /// figures run from the program's start.
    pub seconds: Option<f64>,
    /// Scopes that ran or changed in between, largest byte growth first.
    pub scopes: Vec<ScopeGrowth>,
}

/// How one scope moved between two reports ([`Report::scope_growth_since`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ScopeGrowth {
    pub name: String,
    /// Runs opened in between.
    pub runs: u64,
    /// Change in outstanding blocks and bytes: what the runs in between left
    /// behind, less the earlier runs' blocks freed since (so it can be
    /// negative).
    pub outstanding_blocks: i64,
    pub outstanding_bytes: i64,
}

impl ScopeGrowth {
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
    pub fn callsite(&self, id: u32) -> Option<&CallsiteStats> {
        self.callsites.iter().find(|c| c.id == id)
    }

    pub fn scope(&self, name: &str) -> Option<&ScopeStats> {
        self.scopes.iter().find(|s| s.name == name)
    }

    /// What each scope did since `earlier`, an earlier report of this
    /// process: the runs opened in between and the change in its outstanding
    /// blocks and bytes. [`ScopeStats`]' per-run figures average over the
    /// program's whole life; these say which endpoint grows now. Scopes that
    /// neither ran nor changed are left out; largest byte growth first.
    pub fn scope_growth_since(&self, earlier: &Report) -> Vec<ScopeGrowth> {
        growth(&self.scopes, &earlier.scopes)
    }

    /// Call-sites whose first frame (the code that allocated) is in a function
    /// whose name contains `function`.
    pub fn callsites_in<'a>(
        &'a self,
        function: &'a str,
    ) -> impl Iterator<Item = &'a CallsiteStats> + 'a {
        self.callsites
            .iter()
            .filter(move |c| c.function().is_some_and(|f| f.contains(function)))
    }
}

/// The live state now: totals, per call-site, per scope.
pub fn snapshot() -> Report {
    thread::untracked(build)
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
    fn add(&mut self, c: &crate::thread::Counts) {
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

fn build() -> Report {
    use std::sync::atomic::Ordering::Relaxed;
    thread::flush_current();
    let mean = sample::current();
    let unit = sample::block_unit();
    let n = callsite::count();
    let mut sums = vec![Sum::default(); n as usize];
    let mut totals = Sum::default();
    let entries = scope::scope_entries();
    let mut scope_sums = vec![Sum::default(); entries.len() + 1];
    for slot in thread::slots() {
        totals.add(slot.total_counts());
        for (id, sum) in sums.iter_mut().enumerate() {
            if let Some(c) = slot.site_counts(id as u32) {
                sum.add(c);
            }
        }
        for (id, sum) in scope_sums.iter_mut().enumerate() {
            if let Some(c) = slot.scope_counts(id as u32) {
                sum.add(c);
            }
        }
    }
    // Call-site block counts are in units of 1/`unit` block (sampling mode).
    let blocks = |units: u64| (units + unit / 2) / unit;

    // Per scope and call-site, from the live blocks themselves (in sampling
    // mode, the sampled ones, weighted).
    let mut by_scope: HashMap<(u32, u32), (u64, u64)> = HashMap::new();
    blocks::for_each(|_, meta| {
        if meta.scope != 0 {
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

    let mut symbols = Symbolizer::default();
    let mut callsites: Vec<CallsiteStats> = sums
        .iter()
        .enumerate()
        .filter(|(_, s)| s.alloc_blocks > 0)
        .filter_map(|(id, s)| {
            let site = callsite::get(id as u32)?;
            let (live_units, live_bytes) = s.live();
            Some(CallsiteStats {
                id: id as u32,
                live_blocks: blocks(live_units),
                live_bytes,
                total_blocks: blocks(s.alloc_blocks),
                total_bytes: s.alloc_bytes,
                peak_live_bytes: site.peak.peak.load(Relaxed).max(live_bytes),
                frames: symbols.stack(&site.frames()),
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
            // Exact in both modes: every block opened in a run of this
            // scope, less every such block freed since, by any thread.
            let (outstanding_blocks, outstanding_bytes) =
                scope_sums.get(id as usize).map_or((0, 0), Sum::live);
            ScopeStats {
                name: entry.name.clone(),
                runs: entry
                    .runs
                    .load(Relaxed)
                    .wrapping_add(scope_sums.get(id as usize).map_or(0, |s| s.runs)),
                outstanding_blocks,
                outstanding_bytes,
                by_callsite,
            }
        })
        .collect();
    scopes.sort_by(|a, b| {
        (b.outstanding_bytes, b.outstanding_blocks)
            .cmp(&(a.outstanding_bytes, a.outstanding_blocks))
            .then_with(|| a.name.cmp(&b.name))
    });

    let (live_blocks, live_bytes) = totals.live();
    Report {
        pid: std::process::id(),
        totals: Totals {
            live_blocks,
            live_bytes,
            total_blocks: totals.alloc_blocks,
            total_bytes: totals.alloc_bytes,
            peak_live_bytes: thread::TOTAL_PEAK.peak.load(Relaxed).max(live_bytes),
        },
        callsites,
        scopes,
        untracked_blocks: crate::exit::untracked_count(),
        sample_bytes: mean as u64,
        leak_check: None,
        growth: None,
    }
}

/// What a frame is to the allocating stack: the allocator, the standard
/// library's allocation plumbing, or the code that allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `__rust_alloc` and friends: everything inside them is the allocator.
    Shim,
    /// leakscope itself.
    Tracker,
    /// `alloc::`/`core::` code between the user's call and the allocator.
    Plumbing,
    User,
}

/// leakscope's own sources, as the debug info names them.
const OWN_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

impl Role {
    /// By name where the name is qualified; by source file too, because the
    /// names of inlined frames in line-tables-only debug info are bare
    /// (`alloc`, `with_capacity<u8>`).
    fn of(name: &str, path: Option<&str>) -> Role {
        let path = path.unwrap_or("");
        if is_alloc_shim(name) {
            Role::Shim
        } else if is_tracker_frame(name) || path.starts_with(OWN_SRC) {
            Role::Tracker
        } else if is_std_alloc_frame(name) || is_std_alloc_file(path) {
            Role::Plumbing
        } else {
            Role::User
        }
    }
}

/// Symbolizes return addresses, each once per report.
#[derive(Default)]
pub(crate) struct Symbolizer {
    cache: HashMap<usize, Vec<(Frame, Role)>>,
    cwd: Option<String>,
}

impl Symbolizer {
    /// The frames of a stack, innermost first, allocator frames left out.
    pub(crate) fn stack(&mut self, ips: &[usize]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for &ip in ips {
            if !self.cache.contains_key(&ip) {
                let resolved = self.resolve(ip);
                self.cache.insert(ip, resolved);
            }
            if let Some(f) = self.cache.get(&ip) {
                frames.extend(f.iter().cloned());
            }
        }
        strip_allocator_frames(frames)
    }

    fn resolve(&mut self, ip: usize) -> Vec<(Frame, Role)> {
        if self.cwd.is_none() {
            let mut cwd = std::env::current_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if !cwd.is_empty() && !cwd.ends_with('/') {
                cwd.push('/');
            }
            self.cwd = Some(cwd);
        }
        let cwd = self.cwd.as_deref().unwrap_or("");
        let mut out = Vec::new();
        // A return address points after the call; the call itself is one byte before.
        backtrace::resolve(ip.saturating_sub(1) as *mut std::ffi::c_void, |sym| {
            let path = sym.filename().map(|p| p.display().to_string());
            let function = sym.name().map(|n| format!("{n:#}"));
            let role = Role::of(function.as_deref().unwrap_or(""), path.as_deref());
            let file = path.map(|p| match p.strip_prefix(cwd) {
                Some(rel) if !cwd.is_empty() => rel.to_owned(),
                _ => p,
            });
            let frame = Frame {
                ip,
                function,
                file,
                line: sym.lineno(),
            };
            out.push((frame, role));
        });
        if out.is_empty() {
            let frame = Frame {
                ip,
                function: None,
                file: None,
                line: None,
            };
            out.push((frame, Role::User));
        }
        out
    }
}

/// Leaves out the frames of the tracker, the allocator shims and the standard
/// library's allocation plumbing (`alloc::`, `core::`), so that the first frame
/// is the user's code that allocated. Keeps everything if that would leave nothing.
fn strip_allocator_frames(frames: Vec<(Frame, Role)>) -> Vec<Frame> {
    // Everything up to the global allocator's entry (`__rust_alloc` and
    // friends) is the allocator itself; without a shim in the stack (a direct
    // `GlobalAlloc` call, or a shim inlined away), the leading frames of the
    // tracker are.
    let own = match frames.iter().position(|(_, r)| *r == Role::Shim) {
        Some(i) => i + 1,
        None => frames
            .iter()
            .position(|(_, r)| *r != Role::Tracker)
            .unwrap_or(frames.len()),
    };
    let user = frames
        .iter()
        .skip(own)
        .position(|(_, r)| !matches!(r, Role::Plumbing | Role::Tracker))
        .map(|i| i + own);
    let start = match user {
        Some(i) => i,
        None if own < frames.len() => own,
        None => 0,
    };
    frames.into_iter().skip(start).map(|(f, _)| f).collect()
}

fn is_alloc_shim(f: &str) -> bool {
    [
        "__rust_alloc",
        "__rust_realloc",
        "__rust_dealloc",
        "__rg_alloc",
        "__rg_realloc",
        "__rdl_alloc",
        "__rdl_realloc",
    ]
    .iter()
    .any(|shim| f.contains(shim))
}

fn is_tracker_frame(f: &str) -> bool {
    f.starts_with("leakscope::")
        || f.starts_with("<leakscope::")
        || f.starts_with("std::thread::local::")
        || f.starts_with("<std::thread::local::")
        || f.contains(" as core::alloc::global::GlobalAlloc>::")
}

fn is_std_alloc_frame(f: &str) -> bool {
    let f = f.strip_prefix('<').unwrap_or(f);
    let crate_of = |s: &str| s.starts_with("alloc::") || s.starts_with("core::");
    // `<T as alloc::string::ToString>::to_string` belongs to the trait's crate.
    let path = match f.split_once(" as ") {
        Some((ty, tr)) if !crate_of(ty) => tr,
        _ => f,
    };
    crate_of(path)
}

/// The sources of the standard library's `alloc` and `core` crates, wherever
/// the toolchain put them (`/rustc/<hash>/library/alloc/src/...`).
/// The standard library's allocation plumbing by source file: `alloc`,
/// `core`, std's collections, and the crates std vendors (`hashbrown`, as
/// the debug info names it: `/rust/deps/hashbrown-*/`).
fn is_std_alloc_file(path: &str) -> bool {
    path.contains("/library/alloc/src/")
        || path.contains("/library/core/src/")
        || path.contains("/library/std/src/collections/")
        || path.starts_with("/rust/deps/")
}

/// Whether `f` is the runtime's frame just below `main`, where a stack shown to
/// a person can stop.
pub(crate) fn is_runtime_boundary(f: &Frame) -> bool {
    f.function
        .as_deref()
        .is_some_and(|n| n.contains("__rust_begin_short_backtrace"))
}

/// Per scope of `now`, the change since `earlier` (scopes of the same process).
pub(crate) fn growth(now: &[ScopeStats], earlier: &[ScopeStats]) -> Vec<ScopeGrowth> {
    let before: std::collections::HashMap<&str, &ScopeStats> =
        earlier.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut out: Vec<ScopeGrowth> = now
        .iter()
        .map(|s| {
            let (runs, blocks, bytes) = before.get(s.name.as_str()).map_or((0, 0, 0), |e| {
                (e.runs, e.outstanding_blocks, e.outstanding_bytes)
            });
            ScopeGrowth {
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

    fn frame(name: &str) -> (Frame, Role) {
        frame_in(name, None)
    }

    fn frame_in(name: &str, file: Option<&str>) -> (Frame, Role) {
        let f = Frame {
            ip: 1,
            function: Some(name.to_owned()),
            file: file.map(str::to_owned),
            line: None,
        };
        (f, Role::of(name, file))
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .collect()
    }

    #[test]
    fn strips_tracker_shims_and_std_plumbing() {
        let frames = vec![
            frame("std::thread::local::LocalKey<T>::try_with"),
            frame("leakscope::thread::with_tracking"),
            frame("<leakscope::LeakTracker<A> as core::alloc::global::GlobalAlloc>::alloc"),
            frame("<bench::Switch as core::alloc::global::GlobalAlloc>::alloc"),
            frame("__rustc::__rust_alloc"),
            frame("alloc::raw_vec::RawVecInner<A>::finish_grow"),
            frame("<alloc::string::String as core::fmt::Write>::write_str"),
            frame("<str as alloc::string::ToString>::to_string"),
            frame("app::handler"),
            frame("alloc::vec::Vec<T>::push"),
            frame("main"),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            ["app::handler", "alloc::vec::Vec<T>::push", "main"]
        );
    }

    #[test]
    fn std_collections_and_vendored_hashbrown_are_plumbing() {
        let frames = vec![
            frame("__rustc::__rust_alloc"),
            frame_in(
                "hashbrown::raw::alloc::inner::do_alloc",
                Some("/rust/deps/hashbrown-0.16.1/src/raw/alloc.rs"),
            ),
            frame_in(
                "std::collections::hash::map::HashMap<K,V,S,A>::insert",
                Some("/rustc/59807616/library/std/src/collections/hash/map.rs"),
            ),
            frame_in("app::user::{{closure}}", Some("src/main.rs")),
            frame("main"),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            ["app::user::{{closure}}", "main"]
        );
    }

    #[test]
    fn keeps_std_frames_when_nothing_else_is_left() {
        let frames = vec![
            frame("__rust_alloc"),
            frame("alloc::alloc::alloc"),
            frame("core::ops::function::FnOnce::call_once"),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            [
                "alloc::alloc::alloc",
                "core::ops::function::FnOnce::call_once"
            ]
        );
    }

    #[test]
    fn without_a_shim_strips_leading_tracker_frames() {
        let frames = vec![
            frame("leakscope::tracker::on_alloc"),
            frame("<leakscope::LeakTracker<A> as core::alloc::global::GlobalAlloc>::alloc"),
            frame("app::direct_call"),
            frame("std::sys::backtrace::__rust_begin_short_backtrace"),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            [
                "app::direct_call",
                "std::sys::backtrace::__rust_begin_short_backtrace"
            ]
        );
    }

    #[test]
    fn bare_inlined_names_are_told_apart_by_file() {
        // Release builds with line-tables-only debug info: inlined frames
        // carry bare names, and no shim frame is left.
        let own = format!("{OWN_SRC}tracker.rs");
        let frames = vec![
            frame_in("on_alloc", Some(&own)),
            frame_in("alloc", Some("/rustc/59807616e/library/alloc/src/alloc.rs")),
            frame_in(
                "with_capacity<u8>",
                Some("/rustc/59807616e/library/alloc/src/vec/mod.rs"),
            ),
            frame_in("repeat", Some("/rustc/59807616e/library/alloc/src/str.rs")),
            frame_in("json_site", Some("/home/u/app/src/main.rs")),
            frame_in("main", Some("/home/u/app/src/main.rs")),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            ["json_site", "main"]
        );
    }

    #[test]
    fn per_run_growth() {
        assert_eq!(per_run(150.0, 50), 3.0);
        assert_eq!(per_run(-20.0, 8), -2.5);
        assert_eq!(per_run(5.0, 0), 0.0);
    }
}
