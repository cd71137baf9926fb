//! The tower layer over a real HTTP server on loopback: an axum router on a
//! two-worker tokio runtime, 1,200 concurrent requests over three routes,
//! each scope named by the matched route template and counted exactly. And
//! a plain tower service (no axum, so no templates) whose scopes a namer
//! gives.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use axum::extract::Path;
use axum::routing::{get, post};
use std::hint::black_box;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the leaking routes keep for ever (room reserved up front, so a
/// request never grows it).
static KEPT: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

const PER_ROUTE: usize = 400;

/// Leaks one 24-byte block per call.
async fn user(Path(id): Path<u64>) -> String {
    KEPT.lock()
        .unwrap()
        .push(black_box(vec![id as u8; 24]).into_boxed_slice());
    tokio::task::yield_now().await;
    format!("user {id}")
}

/// Leaks one 40-byte block per call.
async fn order(body: String) -> String {
    let copy = black_box(body.clone());
    tokio::task::yield_now().await;
    KEPT.lock()
        .unwrap()
        .push(black_box(vec![1u8; 40]).into_boxed_slice());
    format!("ordered {}", copy.len())
}

/// Clean.
async fn health() -> String {
    let parts: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    tokio::task::yield_now().await;
    parts.concat()
}

async fn send(addr: std::net::SocketAddr, request: String) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

fn every_route_scope_is_exact() {
    KEPT.lock().unwrap().reserve(4 * PER_ROUTE);
    let rt = common::two_worker_runtime();
    rt.block_on(async {
        let app = axum::Router::new()
            .route("/users/{id}", get(user))
            .route("/orders", post(order))
            .route("/health", get(health))
            .layer(leakscope::tower::LeakScopeLayer::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let mut clients = Vec::new();
        for i in 0..3 * PER_ROUTE {
            let request = match i % 3 {
                0 => format!("GET /users/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                1 => "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                    .to_owned(),
                _ => "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            };
            clients.push(tokio::spawn(send(addr, request)));
        }
        for c in clients {
            let response = c.await.unwrap();
            assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        }
    });
    // Stops the server: every connection and response is dropped.
    drop(rt);
    let report = leakscope::snapshot();
    let scope = |name: &str| {
        let s = report
            .scope(name)
            .unwrap_or_else(|| panic!("no scope {name}: {:?}", report.scopes));
        (s.runs, s.outstanding_blocks, s.outstanding_bytes)
    };
    let n = PER_ROUTE as u64;
    assert_eq!(scope("GET /users/{id}"), (n, n, 24 * n));
    assert_eq!(scope("POST /orders"), (n, n, 40 * n));
    assert_eq!(scope("GET /health"), (n, 0, 0));
    // Named by template: no scope per raw path.
    assert!(report.scope("GET /users/3").is_none());
}

/// A plain tower service: `/items/{n}` keeps a 16-byte block when `n` is a
/// multiple of 3, and makes a temporary one otherwise.
#[derive(Clone)]
struct Items;

impl tower_service::Service<http::Request<()>> for Items {
    type Response = usize;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<usize, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<()>) -> Self::Future {
        let n: usize = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap_or(1);
        let block = black_box(vec![n as u8; 16].into_boxed_slice());
        if n.is_multiple_of(3) {
            KEPT.lock().unwrap().push(block);
        }
        std::future::ready(Ok(n))
    }
}

fn a_namer_names_scopes_without_axum() {
    use tower_layer::Layer;
    use tower_service::Service;
    KEPT.lock().unwrap().reserve(64);
    let layer = leakscope::tower::LeakScopeLayer::new().name_with(|head| {
        if head.uri.path().starts_with("/items/") {
            std::borrow::Cow::Borrowed("GET /items/{n}")
        } else {
            std::borrow::Cow::Owned(format!("{} {}", head.method, head.uri.path()))
        }
    });
    let mut svc = layer.layer(Items);
    // Requests made first, so that the scopes hold only what the service does.
    let requests: Vec<_> = (0..30)
        .map(|i| http::Request::get(format!("/items/{i}")).body(()).unwrap())
        .chain([http::Request::get("/other").body(()).unwrap()])
        .collect();
    for req in requests {
        let mut fut = svc.call(req);
        assert!(common::poll_once(&mut fut).is_ready());
    }
    let r = leakscope::snapshot();
    assert_eq!(common::scope(&r, "GET /items/{n}"), (30, 10, 160));
    assert_eq!(common::scope(&r, "GET /other"), (1, 0, 0));
    assert!(r.scope("GET /items/3").is_none());
}

fn main() {
    common::run(&[
        ("every_route_scope_is_exact", every_route_scope_is_exact),
        (
            "a_namer_names_scopes_without_axum",
            a_namer_names_scopes_without_axum,
        ),
    ]);
}
