//! The serve layer: the process's edges.
//!
//! Configuration from the environment, read when the tracker starts
//! ([`env`](mod@env)); the report at exit and the gate's exit status ([`exit`]); and
//! the report of a running program, over HTTP on loopback ([`live`]) or on
//! a signal, and before a fatal signal ends it ([`signal`]). Everything here runs outside the allocation path, on the
//! thread that exits or on threads of its own, and never panics the host.

pub(crate) mod env;
pub(crate) mod exit;
pub(crate) mod live;
pub(crate) mod signal;

pub use exit::report_on_exit;
pub use live::{serve_report, ReportServer};
pub use signal::report_on_signal;
