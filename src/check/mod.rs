//! The check layer: valgrind's full leak check, in process.
//!
//! Stopping the world ([`stop`]), the memory it scans ([`roots`]), marking
//! and classifying every live block and grouping loss records
//! ([`classify`]), who holds the reachable ones ([`retain`]),
//! suppressions ([`suppress`]), and keeping blocks out of
//! the check from code ([`controls`]), and growth per run for tests
//! ([`growth`]). Its result is the report layer's
//! `LeakCheck`; it runs outside the allocation path.

pub(crate) mod classify;
pub(crate) mod controls;
pub(crate) mod growth;
pub(crate) mod retain;
pub(crate) mod roots;
pub(crate) mod stop;
pub(crate) mod suppress;

pub use classify::leak_check;
pub use controls::{disable, ignore, DisableGuard};
pub use growth::growth;
