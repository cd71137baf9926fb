//! Growth per run, for tests: [`growth`] and [`assert_no_growth!`].
//!
//! Owns running a closure again and again in a scope of its own and saying
//! what the runs left behind, per run and per call-site. The runs'
//! blocks are told apart by that scope, not by time, so tests running at
//! once on other threads do not count in. Runs outside the allocation path;
//! never panics but in `assert_no_growth!`, which is asked to.

use crate::alloc::{callsite, sample, thread};
use crate::report::collect::scope_holds;
use crate::report::growth::{GrowthCallsite, GrowthSummary};
use crate::report::model;
use crate::report::symbolize::Symbolizer;
use crate::scope::guard::growth_run;
use crate::scope::names;
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs `f` once as a warm-up (lazy statics, caches that fill once), then
/// `runs` times, each run in a scope run of its own, and says what the runs
/// allocated and did not free: in all, per run, and by call-site.
///
/// A sequence of calls is one closure: `growth(100, || { post(); get();
/// delete(); })` gives the growth per sequence. Counts only what this
/// thread allocates during the runs (tests running at once on other
/// threads do not count in), including inside scopes the closure opens:
/// those count their runs, but their blocks stay with the growth run.
/// Work the closure hands to other threads (a spawned task on a runtime's
/// workers) is not counted. Exact in full mode; estimates in sampling mode
/// ([`GrowthSummary::sample_bytes`]).
///
/// ```
/// #[global_allocator]
/// static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();
///
/// /// A small in-process service: its handlers, and what they keep.
/// #[derive(Default)]
/// struct Users {
///     by_id: std::collections::HashMap<u32, String>,
///     log: Vec<String>,
/// }
///
/// impl Users {
///     fn post(&mut self, id: u32) {
///         leakscope::track_scope("POST /users", || {
///             self.by_id.insert(id, format!("user {id}"));
///         })
///     }
///     fn get(&mut self, id: u32) -> Option<String> {
///         leakscope::track_scope("GET /users/{id}", || {
///             // The bug: every read is logged, and the log is never trimmed.
///             self.log.push(format!("read {id}"));
///             self.by_id.get(&id).cloned()
///         })
///     }
///     fn delete(&mut self, id: u32) {
///         leakscope::track_scope("DELETE /users/{id}", || {
///             self.by_id.remove(&id);
///         })
///     }
/// }
///
/// fn main() {
///     let mut users = Users::default();
///     users.log.reserve(1000);
///     // One create-read-delete sequence per run.
///     let g = leakscope::growth(100, || {
///         users.post(7);
///         let _ = users.get(7);
///         users.delete(7);
///     });
///     // Each sequence leaves one log line behind, from `get`.
///     assert_eq!(g.blocks_per_run, 1.0);
///     assert_eq!(g.by_callsite.len(), 1);
///     assert_eq!((g.by_callsite[0].blocks, g.by_callsite[0].bytes), (100, g.outstanding_bytes));
///     println!("{g}");
///
///     // The same check as a test assertion, with a budget.
///     leakscope::assert_no_growth!(100, || { users.post(8); users.delete(8); });
///     leakscope::assert_no_growth!(100, || { let _ = users.get(8); }, max_bytes_per_run = 16);
/// }
/// ```
pub fn growth<R>(runs: usize, mut f: impl FnMut() -> R) -> GrowthSummary {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    drop(f());
    let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    let name = thread::untracked(|| format!("leakscope::growth #{n}"));
    for _ in 0..runs {
        growth_run(&name, || drop(f()));
    }
    thread::untracked(|| summarize(name, runs as u64))
}

fn summarize(scope: String, runs: u64) -> GrowthSummary {
    let id = names::intern(&scope).id;
    let holds = scope_holds(id);
    let ((blocks, bytes), tracked) = (holds.outstanding, holds.counted);
    let per_run = |n: u64| model::per_run(n as f64, runs);
    let mut symbols = Symbolizer::default();
    let mut by_callsite: Vec<GrowthCallsite> = (holds.sites.into_iter())
        .map(|(site, blocks, bytes)| GrowthCallsite {
            callsite: site,
            blocks,
            bytes,
            blocks_per_run: per_run(blocks),
            bytes_per_run: per_run(bytes),
            frames: callsite::get(site).map_or_else(Vec::new, |s| {
                let mut frames = symbols.stack(&s.frames());
                // The runs' own machinery, between the closure and its caller.
                frames.retain(|f| {
                    !f.function.as_deref().is_some_and(|n| {
                        n.starts_with("leakscope::check::growth::growth")
                            || n.starts_with("leakscope::scope::guard::growth_run")
                    })
                });
                frames
            }),
        })
        .collect();
    by_callsite
        .sort_by(|a, b| (b.bytes, b.blocks, a.callsite).cmp(&(a.bytes, a.blocks, b.callsite)));
    GrowthSummary {
        runs,
        blocks_per_run: per_run(blocks),
        bytes_per_run: per_run(bytes),
        outstanding_blocks: blocks,
        outstanding_bytes: bytes,
        by_callsite,
        scope,
        sample_bytes: sample::current() as u64,
        tracked,
    }
}

/// Panics with the [`GrowthSummary`] when `work`, run `runs` times after a
/// warm-up run ([`growth`]), leaves anything behind, or more than
/// `max_bytes_per_run` bytes per run when a budget is given.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();
///
/// fn main() {
///     leakscope::assert_no_growth!(100, || vec![0u8; 4096].len());
///     let mut kept = Vec::with_capacity(100);
///     leakscope::assert_no_growth!(50, || kept.push(Box::new(1u64)), max_bytes_per_run = 8);
/// }
/// ```
#[macro_export]
macro_rules! assert_no_growth {
    ($runs:expr, $work:expr $(,)?) => {
        $crate::assert_no_growth!($runs, $work, max_bytes_per_run = 0)
    };
    ($runs:expr, $work:expr, max_bytes_per_run = $max:expr $(,)?) => {{
        let summary = $crate::growth($runs, $work);
        let max = $max as f64;
        if summary.exceeds(max) {
            ::std::panic!("the runs grew (budget: {} bytes per run)\n{}", max, summary);
        }
    }};
}

#[cfg(test)]
mod tests {
    // The library's unit tests run without the tracker as the global
    // allocator: nothing can be counted, and that must not pass.
    #[test]
    fn without_the_tracker_nothing_passes() {
        let g = super::growth(10, || vec![1u8; 100]);
        assert!(!g.tracked);
        assert_eq!((g.outstanding_blocks, g.runs), (0, 10));
        assert!(g.exceeds(1e9));
        assert!(g
            .to_string()
            .contains("is not this program's #[global_allocator]"));
        let failed = std::panic::catch_unwind(|| assert_no_growth!(3, || ()));
        assert!(failed.is_err());
    }
}
