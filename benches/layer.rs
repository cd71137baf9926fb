//! What the tower layer adds per request: the same axum router, tracked by
//! leakscope, called with `LeakScopeLayer`, with a layer that only forwards
//! (what any layer costs in axum), and with no layer, in one process, rounds
//! interleaved; prints the median ratios (the target is at most 1.3x). No
//! network: requests go straight into the router, so the ratio is the
//! layer's cost against the routing and handler work alone.
//! `cargo bench --bench layer` (`LEAKSCOPE_BENCH_ROUNDS`, default 9).

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use std::hint::black_box;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_service::Service;

async fn user(Path(id): Path<u64>) -> String {
    let parts: Vec<String> = (0..4).map(|i| format!("{id}-{i}")).collect();
    parts.join(",")
}

#[derive(Clone, Copy, PartialEq)]
enum Layer {
    None,
    /// A layer that only forwards: what any layer costs in axum (a boxed
    /// service and future per route).
    PassThrough,
    LeakScope,
}

#[derive(Clone)]
struct Forward<S>(S);

impl<S, R> Service<R> for Forward<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.0.call(req)
    }
}

fn router(layer: Layer) -> axum::Router {
    let app = axum::Router::new()
        .route("/users/{id}", get(user))
        .route("/health", get(|| async { "ok" }));
    match layer {
        Layer::None => app,
        Layer::PassThrough => app.layer(tower_layer::layer_fn(Forward)),
        Layer::LeakScope => app.layer(leakscope::tower::LeakScopeLayer::new()),
    }
}

const REQUESTS: u64 = 20_000;

/// Seconds for `REQUESTS` requests through `app`.
fn run(rt: &tokio::runtime::Runtime, app: &axum::Router) -> f64 {
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..REQUESTS {
            let uri = if i % 2 == 0 {
                format!("/users/{i}")
            } else {
                "/health".to_owned()
            };
            let req = http::Request::builder()
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            let resp = app.clone().call(req).await.unwrap();
            black_box(resp);
        }
        start.elapsed().as_secs_f64()
    })
}

fn main() {
    let rounds: usize = std::env::var("LEAKSCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (plain, forward, scoped) = (
        router(Layer::None),
        router(Layer::PassThrough),
        router(Layer::LeakScope),
    );
    // For a profiler: one side only, many requests.
    if let Ok(side) = std::env::var("LEAKSCOPE_BENCH_LAYER_ONLY") {
        let app = match side.as_str() {
            "scoped" => &scoped,
            "forward" => &forward,
            _ => &plain,
        };
        for _ in 0..rounds {
            run(&rt, app);
        }
        return;
    }
    // Warm up (call-sites interned, tables grown).
    for app in [&plain, &forward, &scoped] {
        run(&rt, app);
    }
    let (mut over_plain, mut over_forward) = (Vec::new(), Vec::new());
    let mut last = (0.0, 0.0, 0.0);
    for _ in 0..rounds {
        let a = run(&rt, &plain);
        let f = run(&rt, &forward);
        let b = run(&rt, &scoped);
        over_plain.push(b / a);
        over_forward.push(b / f);
        last = (a, f, b);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let per_request = |s: f64| s / REQUESTS as f64 * 1e9;
    let (p, p_lo, p_hi) = median(&mut over_plain);
    let (f, f_lo, f_hi) = median(&mut over_forward);
    println!("tower layer on the same tracked axum router, {REQUESTS} requests x {rounds} rounds (medians, rounds in brackets):");
    println!("  LeakScopeLayer vs a pass-through layer: {f:.2}x ({f_lo:.2}-{f_hi:.2})");
    println!("  LeakScopeLayer vs no layer at all:      {p:.2}x ({p_lo:.2}-{p_hi:.2})");
    println!(
        "  last round: {:.0} ns no layer, {:.0} ns pass-through, {:.0} ns LeakScopeLayer per request",
        per_request(last.0),
        per_request(last.1),
        per_request(last.2),
    );
    // The same over HTTP on loopback: a server per layer, a client sending
    // keep-alive requests on one connection.
    let loopback = |layer: Layer| -> f64 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = router(layer);
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = REQUESTS / 4;
            let start = Instant::now();
            for i in 0..n {
                let req = format!("GET /users/{i} HTTP/1.1\r\nHost: x\r\n\r\n");
                c.write_all(req.as_bytes()).await.unwrap();
                // One small response per request; read until its body ends.
                let mut got = 0;
                loop {
                    let k = c.read(&mut buf[got..]).await.unwrap();
                    got += k;
                    let text = &buf[..got];
                    if k == 0 || text.windows(4).any(|w| w == b"\r\n\r\n") && text.ends_with(b"-3")
                    {
                        break;
                    }
                }
            }
            start.elapsed().as_secs_f64() / n as f64
        })
    };
    let mut over_http = Vec::new();
    let mut last_http = (0.0, 0.0);
    for _ in 0..rounds.min(5) {
        let a = loopback(Layer::None);
        let b = loopback(Layer::LeakScope);
        over_http.push(b / a);
        last_http = (a, b);
    }
    let (h, h_lo, h_hi) = median(&mut over_http);
    println!(
        "  over HTTP on loopback (keep-alive): LeakScopeLayer vs no layer {h:.2}x ({h_lo:.2}-{h_hi:.2}); {:.1} us vs {:.1} us per request",
        last_http.1 * 1e6,
        last_http.0 * 1e6
    );
    let report = leakscope::snapshot();
    let s = report.scope("GET /users/{id}").expect("the layer's scope");
    assert_eq!(s.outstanding_blocks, 0);
}
