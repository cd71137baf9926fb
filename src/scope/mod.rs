//! The scope layer: request scopes as users open them.
//!
//! Names ([`names`]), runs opened and closed from code with their summaries
//! ([`guard`]), futures that run inside a scope ([`future`]), and whether a
//! scope keeps growing with its runs ([`history`]). Built on
//! the run records of `crate::alloc::runs`, which is all the allocation path
//! knows of scopes; nothing here runs inside an allocation.

pub(crate) mod future;
pub(crate) mod guard;
pub(crate) mod history;
pub(crate) mod names;

pub use future::{scoped, scoped_with, Scoped, TrackScopeExt};
pub use guard::{scope, track_scope, RunCallsite, ScopeGuard, ScopeSummary};
