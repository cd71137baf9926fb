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
//! keeps every count that scopes and totals need exact and a stack for about
//! one block per `N` bytes, with unbiased weights for the call-site figures.
//!
//! [`leak_check`] adds valgrind's full leak check (definitely, indirectly,
//! possibly lost, still reachable) with suppressions and an exit status for
//! CI; [`serve_report`] and `kill -USR2` show the report of a running
//! service; features `tower`/`axum` and `tracing` give request scopes to
//! async services.
//!
//! Where the hot path lives: [`LeakTracker`]'s `GlobalAlloc` impl in
//! `tracker.rs` (both modes), the per-thread state it uses in `thread.rs`
//! (with sampling mode's thread-local fast path), and the block table
//! (per-thread young blocks, then a shared table) in `blocks.rs`.

mod blocks;
mod callsite;
mod exit;
mod leakcheck;
mod live;
mod render;
mod report;
mod sample;
mod scope;
mod stop;
mod suppress;
mod sync;
mod thread;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "tracing")]
pub mod tracing;
mod tracker;
mod unwind;

pub use exit::report_on_exit;
pub use leakcheck::{
    disable, ignore, leak_check, Amount, Disabled, LeakCheck, LeakKind, LossRecord, SuppressionUse,
};
pub use live::{report_on_signal, serve_report, ReportServer};
pub use report::{
    snapshot, CallsiteStats, Frame, Growth, Report, ScopeCallsite, ScopeGrowth, ScopeStats, Totals,
};
pub use scope::{
    scope, scoped, scoped_with, track_scope, CallsiteCount, ScopeGuard, ScopeSummary, Scoped,
    TrackScopeExt,
};
pub use tracker::LeakTracker;
