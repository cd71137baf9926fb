//! The report layer: what a report holds and how it is shown.
//!
//! The model ([`model`], with the leak check's result types in [`leak`]),
//! taking a snapshot of the live state ([`collect`]), symbolization
//! ([`symbolize`], reading the program's debug info with [`dwarf`]), one file per rendering ([`text`], [`json`], [`folded`], [`html`], [`dhat`], and with
//! the `formats` feature `pprof`), and the one
//! line on stderr everything above uses to say what went wrong ([`warn`]).
//! Runs outside the allocation path, with the thread's own allocations
//! untracked.

pub(crate) mod collect;
pub(crate) mod dhat;
pub(crate) mod dwarf;
pub(crate) mod folded;
pub(crate) mod from_json;
pub(crate) mod html;
pub(crate) mod json;
pub(crate) mod leak;
pub(crate) mod model;
#[cfg(feature = "formats")]
pub(crate) mod pprof;
pub(crate) mod symbolize;
pub(crate) mod text;
pub(crate) mod warn;

pub use collect::snapshot;
pub use from_json::ParseReportError;
pub use leak::{
    Amount, LeakCheck, LeakKind, LossRecord, Retention, Root, RootKind, ScopeRetention,
    SuppressionUse,
};
pub use model::{
    CallsiteStats, Frame, Growth, Origin, Report, ScopeCallsite, ScopeGrowth, ScopeStats, Timeline,
    TimelineCallsite, TimelinePoint, Totals, Unwinder,
};
