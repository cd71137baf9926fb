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
//!
//! Without axum (plain hyper, tower), the route is the raw path, one scope
//! per distinct path; [`LeakScopeLayer::name_with`] names them otherwise.

use crate::alloc::thread;
use crate::scope::future::{scoped_with, Scoped};
use std::borrow::Cow;
use std::future::Future;
use std::task::{Context, Poll};

/// Wraps a service in [`LeakScope`]. Zero-sized unless its namer captures
/// something: axum clones a layer's closure per request, and a zero-sized
/// one costs no allocation.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct LeakScopeLayer<N = ByRoute> {
    name: N,
}

impl LeakScopeLayer {
    /// The layer that names each request's scope `"<METHOD> <route>"`: the
    /// route template where axum matched one (`GET /users/{id}`), else the
    /// path.
    pub fn new() -> LeakScopeLayer {
        LeakScopeLayer { name: ByRoute }
    }

    /// Names each request's scope with `name` instead of
    /// `"<METHOD> <route>"`: for services without axum's route templates,
    /// whose raw paths would make a scope per id. It runs before the scope
    /// opens, with its own allocations untracked.
    ///
    /// ```
    /// use std::borrow::Cow;
    /// let layer = leakscope::tower::LeakScopeLayer::new().name_with(|head| {
    ///     match head.uri.path().split('/').nth(1) {
    ///         Some("users") => Cow::Borrowed("GET /users/{id}"),
    ///         _ => Cow::Owned(format!("{} {}", head.method, head.uri.path())),
    ///     }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn name_with<F>(self, name: F) -> LeakScopeLayer<NameWith<F>>
    where
        F: Fn(&http::request::Parts) -> Cow<'static, str> + Clone,
    {
        LeakScopeLayer {
            name: NameWith(name),
        }
    }
}

impl<S, N: Clone> tower_layer::Layer<S> for LeakScopeLayer<N> {
    type Service = LeakScope<S, N>;

    fn layer(&self, inner: S) -> LeakScope<S, N> {
        LeakScope {
            inner,
            name: self.name.clone(),
        }
    }
}

/// A service whose requests each run in a scope `"<METHOD> <route>"` (or
/// as [`LeakScopeLayer::name_with`] names them).
#[derive(Clone, Debug)]
pub struct LeakScope<S, N = ByRoute> {
    inner: S,
    name: N,
}

impl<S, B, N> tower_service::Service<http::Request<B>> for LeakScope<S, N>
where
    S: tower_service::Service<http::Request<B>>,
    N: ScopeNaming,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Scoped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = &mut self.inner;
        self.name.scoped(req, |req| inner.call(req))
    }
}

mod sealed {
    pub trait Sealed {}
}

/// How a [`LeakScope`] names a request's scope: [`ByRoute`], or
/// [`NameWith`] (from [`LeakScopeLayer::name_with`]).
pub trait ScopeNaming: sealed::Sealed + Clone {
    /// Runs `call(req)` in a new run of the request's scope.
    #[doc(hidden)]
    fn scoped<B, F: Future>(
        &self,
        req: http::Request<B>,
        call: impl FnOnce(http::Request<B>) -> F,
    ) -> Scoped<F>;
}

/// Scopes named `"<METHOD> <route>"`: axum's matched route template (feature
/// `axum`), else the path.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByRoute;

impl sealed::Sealed for ByRoute {}

impl ScopeNaming for ByRoute {
    fn scoped<B, F: Future>(
        &self,
        req: http::Request<B>,
        call: impl FnOnce(http::Request<B>) -> F,
    ) -> Scoped<F> {
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
            return scoped_with(name, || call(req));
        }
        let name = thread::untracked(|| scope_name(&req));
        scoped_with(&name, || call(req))
    }
}

/// Scopes named by a function of the request's head
/// ([`LeakScopeLayer::name_with`]).
#[derive(Clone, Copy)]
pub struct NameWith<F>(F);

impl<F> std::fmt::Debug for NameWith<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameWith(..)")
    }
}

impl<F> sealed::Sealed for NameWith<F> {}

impl<N> ScopeNaming for NameWith<N>
where
    N: Fn(&http::request::Parts) -> Cow<'static, str> + Clone,
{
    fn scoped<B, F: Future>(
        &self,
        req: http::Request<B>,
        call: impl FnOnce(http::Request<B>) -> F,
    ) -> Scoped<F> {
        let (head, body) = req.into_parts();
        let name = thread::untracked(|| (self.0)(&head));
        let req = http::Request::from_parts(head, body);
        let fut = scoped_with(&name, || call(req));
        // Untracked, as it was made: the tracker need not look for it.
        thread::untracked(|| drop(name));
        fut
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

#[cfg(test)]
mod tests {
    use super::*;

    /// axum clones the layer per request (inside a box): a zero-sized one
    /// costs no allocation.
    #[test]
    fn layers_are_zero_sized() {
        assert_eq!(std::mem::size_of::<LeakScopeLayer>(), 0);
        let named = LeakScopeLayer::new().name_with(|_| Cow::Borrowed("x"));
        assert_eq!(std::mem::size_of_val(&named), 0);
    }
}
