//! A `tower` layer that runs every request of a service in a scope named by
//! its method and route (feature `tower`; with feature `axum`, the route is
//! axum's matched template, `GET /users/{id}`, not the raw path).
//!
//! ```no_run
//! # async fn user() -> &'static str { "ada" }
//! let app: axum::Router = axum::Router::new()
//!     .route("/users/{id}", axum::routing::get(user))
//!     .layer(leakscope::tower::LeakScopeLayer::new());
//! ```
//!
//! The scope covers the service's `call` and every poll of its future, on
//! whichever thread polls it (one run per request). A response body streamed
//! after the future completed is outside it.

use crate::scope::{scoped_with, Scoped};
use std::task::{Context, Poll};

/// Wraps a service in [`LeakScope`].
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct LeakScopeLayer {}

impl LeakScopeLayer {
    pub fn new() -> LeakScopeLayer {
        LeakScopeLayer {}
    }
}

impl<S> tower_layer::Layer<S> for LeakScopeLayer {
    type Service = LeakScope<S>;

    fn layer(&self, inner: S) -> LeakScope<S> {
        LeakScope { inner }
    }
}

/// A service whose requests each run in a scope `"<METHOD> <route>"`.
#[derive(Clone, Debug)]
pub struct LeakScope<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for LeakScope<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Scoped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The name is put together on the stack: no allocation per request
        // unless it is longer than the buffer.
        let (method, route) = (req.method().as_str(), route(&req));
        let mut buf = [0u8; 256];
        let len = method.len() + 1 + route.len();
        if let Some(b) = buf.get_mut(..len) {
            b[..method.len()].copy_from_slice(method.as_bytes());
            b[method.len()] = b' ';
            b[method.len() + 1..].copy_from_slice(route.as_bytes());
            // SAFETY: `b` is two whole `str`s and an ASCII space, so UTF-8.
            let name = unsafe { std::str::from_utf8_unchecked(b) };
            return scoped_with(name, || self.inner.call(req));
        }
        let name = crate::thread::untracked(|| scope_name(&req));
        scoped_with(&name, || self.inner.call(req))
    }
}

/// The matched route template where axum gives one (feature `axum`), else
/// the path.
fn route<B>(req: &http::Request<B>) -> &str {
    #[cfg(feature = "axum")]
    if let Some(route) = req.extensions().get::<axum::extract::MatchedPath>() {
        return route.as_str();
    }
    req.uri().path()
}

/// The scope a request runs in: `"<METHOD> <route>"`, with the matched
/// route template where axum gives one (feature `axum`), else the path.
pub fn scope_name<B>(req: &http::Request<B>) -> String {
    format!("{} {}", req.method(), route(req))
}
