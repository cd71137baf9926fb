//! # leakscope
//!
//! A global allocator that turns a Rust program into its own leak checker. It
//! counts live blocks per call-site (the stack that allocated them), exactly,
//! on every thread; tags each block with the request scope that opened it; and
//! reports what is outstanding, per call-site and per scope, with how much each
//! scope grows per run.
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();
//!
//! fn users() -> Vec<String> {
//!     vec!["ada".to_owned(), "grace".to_owned()]
//! }
//!
//! fn main() {
//!     for _ in 0..10 {
//!         let page = leakscope::track_scope("GET /users", users);
//!         std::mem::forget(page); // a leak: 3 blocks per call
//!     }
//!     let report = leakscope::snapshot();
//!     assert_eq!(report.scope("GET /users").unwrap().outstanding_blocks, 30);
//!     println!("{report}");
//! }
//! // Or, with no code beyond the allocator line:
//! // LEAKSCOPE_REPORT=stderr ./service   -> outstanding-allocation report at exit
//! ```
//!
//! Sampling mode ([`LeakTracker::sample_bytes`] or `LEAKSCOPE_SAMPLE_BYTES`)
//! keeps the totals and scope runs exact and a stack for about one block per
//! `N` bytes, with unbiased weights for the call-site and scope figures; an
//! unsampled block costs a few thread-local instructions.
//!
//! [`leak_check`] adds valgrind's full leak check (definitely, indirectly,
//! possibly lost, still reachable) with suppressions and an exit status for
//! CI; [`serve_report`] and `kill -USR2` show the report of a running
//! service; features `tower`/`axum` and `tracing` give request scopes to
//! async services.
//!
//! The default feature `c-heap` (Linux, glibc, x86_64) makes the tracker the
//! process's `malloc` family too, so what C libraries allocate is counted,
//! scoped and checked like Rust's blocks (call-sites say their
//! [`report::Origin`]); `default-features = false, features = ["formats"]` turns it
//! off and changes nothing else. Elsewhere it builds nothing.
//!
//! Where things are: `src/alloc/` is everything that runs inside an
//! allocation (the hot path: [`LeakTracker`]'s `GlobalAlloc` impl in
//! `alloc/tracker.rs` and the per-thread state in `alloc/thread.rs`, with the
//! block table in `alloc/blocks.rs`); `scope/` the scope API; `report/` the
//! report model, snapshot, symbolization and renderings; `check/` the full
//! leak check; `serve/` the environment, the exit report, signals and the
//! live server; `integrations/` tower and tracing. Each layer imports only
//! the layers before it in that list.

#![deny(missing_docs)]

mod alloc;
mod check;
mod integrations;
pub mod report;
mod scope;
mod serve;

pub use alloc::tracker::LeakTracker;
pub use check::{disable, growth, ignore, leak_check, DisableGuard};
#[cfg(feature = "metrics")]
pub use integrations::metrics::{publish_metrics, MetricsPublisher};
#[cfg(feature = "tower")]
pub use integrations::tower;
#[cfg(feature = "tracing")]
pub use integrations::tracing;
pub use report::collect::snapshot;
#[doc(no_inline)]
pub use report::{GrowthSummary, Report, ScopeSummary};
pub use scope::{scope, scoped, scoped_with, track_scope, ScopeGuard, Scoped, TrackScopeExt};
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use serve::fuzz as __fuzz;
pub use serve::{
    metrics_text, openmetrics_text, report_on_exit, report_on_signal, serve_report, ReportServer,
};
