//! What a report holds: the data types of [`Report`] (from
//! [`snapshot`](crate::report::collect::snapshot), `leakscope::leak_check`, the exit
//! report and the live server), of a scope run's [`ScopeSummary`] and of
//! `leakscope::growth`'s [`GrowthSummary`].
//!
//! A report lists call-sites ([`Callsite`]: one allocating stack, its
//! [`Frame`]s innermost first) and scopes ([`ScopeStats`]); each other type
//! says what one of those holds, named after whose view it is:
//! [`ScopeCallsite`] (a scope's outstanding blocks at one call-site),
//! [`RunCallsite`] (one scope run's), [`GrowthCallsite`] (what growth runs
//! left there) and [`TimelineCallsite`] (the timeline's). A leak check adds
//! [`LeakCheck`]: valgrind's kinds ([`LeakKind`], each a [`BlockTotal`]), its
//! [`LossRecord`]s and who holds the reachable ones ([`Retention`] from a
//! [`RetentionRoot`]). [`Changes`] is what the scopes did since the previous
//! report. [`Report::from_json`] reads a report back.
//!
//! [`Report`], [`ScopeSummary`] and [`GrowthSummary`] are also at the
//! crate's root, beside the functions that return them.

// The report layer: the model (`model`, with the leak check's result types
// in `leak` and growth()'s in `growth`), taking a snapshot of the live state
// (`collect`), symbolization (`symbolize`, reading the program's debug info
// with `dwarf`), one file per rendering (`text`, `json`, `folded`, `html`,
// `dhat`, and with the `formats` feature `pprof`), and the one line on stderr
// everything above uses to say what went wrong (`warn`). Runs outside the
// allocation path, with the thread's own allocations untracked.

pub(crate) mod collect;
pub(crate) mod dhat;
pub(crate) mod document;
pub(crate) mod dwarf;
pub(crate) mod folded;
pub(crate) mod growth;
pub(crate) mod html;
pub(crate) mod json;
pub(crate) mod leak;
pub(crate) mod metrics;
pub(crate) mod model;
#[cfg(feature = "formats")]
pub(crate) mod pprof;
pub(crate) mod symbolize;
pub(crate) mod text;
pub(crate) mod warn;

pub use crate::scope::{RunCallsite, ScopeSummary};
pub use growth::{GrowthCallsite, GrowthSummary};
pub use json::ParseReportError;
pub use leak::{
    BlockTotal, LeakCheck, LeakKind, LossRecord, Retention, RetentionRoot, RootKind,
    ScopeRetention, SuppressionUse,
};
pub use model::{
    Callsite, Changes, Frame, Origin, Report, ScopeCallsite, ScopeChange, ScopeStats, Timeline,
    TimelineCallsite, TimelinePoint, Totals, Unwinder,
};
