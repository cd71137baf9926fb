//! Integrations: request scopes for the frameworks services are built on.
//!
//! Feature `tower` (with `axum` for route templates): a layer that runs
//! each request in a scope ([`tower`]). Feature `tracing`: every span opens
//! a scope run ([`tracing`]). Each is built on the scope layer alone.
//! Feature `metrics`: leakscope's metrics published through the `metrics`
//! facade ([`metrics`]), read from the report layer.

#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "tracing")]
pub mod tracing;
