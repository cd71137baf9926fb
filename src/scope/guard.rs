//! Scope runs from code: [`scope`] and its guard, [`track_scope`], and the
//! summary of one run.
//!
//! Opens and closes runs (a name, a run record from `crate::alloc::runs`,
//! or for `track_scope` a light run on its frame; the run entered on this
//! thread) and turns a closed run's counts into a [`ScopeSummary`]. Runs
//! outside the allocation path, allocating nothing but a new name and a
//! summary (both untracked); never panics the host (a run that cannot open
//! leaves its blocks in the enclosing scope).

use crate::alloc::runs::{self, RunRecord, SiteRun};
use crate::alloc::{sample, thread};
use crate::scope::{history, names};
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;

/// Allocates nothing unless the name is new (interning it is untracked).
/// Inside a growth run, counts the run and opens none ([`growth_run`]).
pub(crate) fn open_run(name: &str, counts: bool) -> Option<&'static RunRecord> {
    let scope = count_run(name);
    if in_growth() {
        return None;
    }
    runs::open(scope, counts)
}

std::thread_local! {
    /// Growth runs entered on this thread now ([`growth_run`]).
    static GROWTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether a growth run is entered on this thread.
fn in_growth() -> bool {
    GROWTH.try_with(|g| g.get() > 0).unwrap_or(false)
}

/// Runs `f` in a run of scope `name` that keeps every block this thread
/// allocates meanwhile: scopes opened inside it (guards, `track_scope`,
/// futures polled here, spans) count their runs, but their blocks stay in
/// this run, so that what `f` leaves behind is all in one place
/// (`growth`'s question). Blocks of `disable()`
/// guards stay theirs.
pub(crate) fn growth_run<R>(name: &str, f: impl FnOnce() -> R) -> R {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            let _ = GROWTH.try_with(|g| g.set(g.get().saturating_sub(1)));
        }
    }
    let run = runs::LightRun::new(count_run(name));
    let _entered = run.enter();
    let _ = GROWTH.try_with(|g| g.set(g.get() + 1));
    let _depth = Depth;
    f()
}

/// Closes a run; with `summarize`, says what it left behind.
pub(crate) fn close_run(rec: &'static RunRecord, summarize: bool) -> Option<ScopeSummary> {
    let (scope, counts) = runs::close(rec, summarize)?;
    Some(thread::untracked(|| summary(scope, &counts)))
}

fn summary(scope: u32, counts: &[SiteRun]) -> ScopeSummary {
    let mut summary = ScopeSummary {
        name: names::scope_entry(scope)
            .map(|e| e.name.clone())
            .unwrap_or_default(),
        ..ScopeSummary::default()
    };
    // Block counts are in block units (sampling mode: the run's sampled
    // blocks, weighted, as for call-sites).
    let blocks = sample::blocks;
    for s in counts {
        let c = RunCallsite {
            callsite: s.site,
            allocated_blocks: blocks(s.allocated_blocks),
            allocated_bytes: s.allocated_bytes,
            outstanding_blocks: blocks(s.allocated_blocks.saturating_sub(s.freed_blocks)),
            outstanding_bytes: s.allocated_bytes.saturating_sub(s.freed_bytes),
        };
        summary.allocated_blocks += c.allocated_blocks;
        summary.allocated_bytes += c.allocated_bytes;
        summary.outstanding_blocks += c.outstanding_blocks;
        summary.outstanding_bytes += c.outstanding_bytes;
        summary.by_callsite.push(c);
    }
    summary.by_callsite.sort_by(|a, b| {
        (b.outstanding_bytes, b.allocated_bytes, a.callsite).cmp(&(
            a.outstanding_bytes,
            a.allocated_bytes,
            b.callsite,
        ))
    });
    summary
}

/// Counts of one call-site within one scope run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunCallsite {
    /// The call-site id, as in the report (`Report::callsites`) and its JSON.
    pub callsite: u32,
    /// Blocks made in the run at this call-site.
    pub allocated_blocks: u64,
    /// Their bytes.
    pub allocated_bytes: u64,
    /// Still live when the scope closed.
    pub outstanding_blocks: u64,
    /// Their bytes.
    pub outstanding_bytes: u64,
}

/// What one run of a scope allocated and left behind.
///
/// Counts the blocks that belong to this run: allocated while it was the
/// innermost open scope on the allocating thread (blocks of nested scopes
/// belong to those). "Outstanding" means still live when the scope closed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeSummary {
    /// The scope's name.
    pub name: String,
    /// Blocks made in the run (not in scopes nested in it).
    pub allocated_blocks: u64,
    /// Their bytes.
    pub allocated_bytes: u64,
    /// Of those, blocks still live when the run closed.
    pub outstanding_blocks: u64,
    /// Their bytes.
    pub outstanding_bytes: u64,
    /// Largest outstanding first.
    pub by_callsite: Vec<RunCallsite>,
}

/// An open scope run on this thread; closes when finished or dropped.
#[must_use = "the scope closes when this guard is dropped"]
pub struct ScopeGuard {
    rec: Option<&'static RunRecord>,
    /// Tied to the thread that opened it.
    _not_send: PhantomData<*const ()>,
}

impl ScopeGuard {
    /// Closes the scope and returns what this run allocated and left behind.
    pub fn finish(mut self) -> ScopeSummary {
        self.close(true).unwrap_or_default()
    }

    fn close(&mut self, summarize: bool) -> Option<ScopeSummary> {
        let rec = self.rec.take()?;
        runs::leave(rec);
        close_run(rec, summarize)
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        self.close(false);
    }
}

impl std::fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeGuard").finish_non_exhaustive()
    }
}

/// Opens a scope named `name` on this thread until the guard is finished or
/// dropped. Every block allocated meanwhile on this thread (outside any inner
/// scope) is tagged with this run.
///
/// The run counts its blocks per call-site, for [`ScopeGuard::finish`]'s
/// summary. [`track_scope`] and [`scoped`](crate::scope::scoped) give the same per-scope figures in
/// the report for less: their runs are never asked for a summary, so they
/// count nothing per call-site.
///
/// Inside `growth()`'s runs, the scope counts its run but
/// its blocks stay the growth run's, and its summary is empty.
pub fn scope(name: &str) -> ScopeGuard {
    if in_growth() {
        count_run(name);
        return ScopeGuard {
            rec: None,
            _not_send: PhantomData,
        };
    }
    enter_scope(name, true)
}

/// [`scope`], with a run that counts per call-site only if `counts`; opened
/// inside growth runs too.
pub(crate) fn enter_scope(name: &str, counts: bool) -> ScopeGuard {
    let rec = runs::open(count_run(name), counts);
    if let Some(rec) = rec {
        runs::enter(rec);
    }
    ScopeGuard {
        rec,
        _not_send: PhantomData,
    }
}

/// Runs `f` inside a scope named `name`. A panic in `f` still closes the scope.
///
/// Inside `growth()`'s runs, the scope counts its run but
/// its blocks stay the growth run's.
pub fn track_scope<R>(name: &str, f: impl FnOnce() -> R) -> R {
    if in_growth() {
        count_run(name);
        return f();
    }
    // A run nobody asks for a summary: it lives on this frame, no record.
    let run = runs::LightRun::new(count_run(name));
    let _entered = run.enter();
    f()
}

/// Counts a run of scope `name` opened on this thread (and now and then
/// samples the scope's outstanding bytes for its history); its scope id.
/// Allocates nothing unless the name is new (interning it is untracked).
#[inline]
fn count_run(name: &str) -> u32 {
    let entry = names::intern(name);
    // Per thread, so that threads serving the same route do not fight
    // over one counter; the shared one is for threads without counters.
    let n = thread::count_run(entry.id)
        .unwrap_or_else(|| entry.runs.fetch_add(1, Ordering::Relaxed).wrapping_add(1));
    if history::due(n) {
        history::sample(entry);
    }
    entry.id
}
