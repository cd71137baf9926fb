//! A real axum service on 127.0.0.1 with leakscope's tower layer: a clean
//! route, a route that leaks by accumulation (a global cache), and a route
//! pair that leaks only after a particular sequence (a session opened with
//! `POST /session` and never closed with `DELETE /session/{id}`). A load
//! loop in the same process drives a few thousand requests over loopback,
//! fetches the live report from `serve_report` while the load runs, and
//! prints the report at the end, with the full leak check saying who holds
//! the blocks that grew.
//!
//! ```text
//! cargo run --release --example axum_service
//! ```

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

use axum::extract::Path;
use axum::routing::{delete, get, post};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /users/{id}` memoizes every rendered page here and never evicts.
static PAGES: Mutex<Option<HashMap<u64, String>>> = Mutex::new(None);
/// Open sessions, by id; `DELETE /session/{id}` closes one.
static SESSIONS: Mutex<Option<HashMap<u64, Session>>> = Mutex::new(None);
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

#[allow(dead_code)] // held for what it owns
struct Session {
    user: String,
    scratch: Vec<u8>,
}

async fn health() -> &'static str {
    "ok"
}

async fn user(Path(id): Path<u64>) -> String {
    let page = format!("<h1>user {id}</h1><p>{}</p>", "profile ".repeat(4));
    PAGES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id, page.clone());
    page
}

async fn open_session(user: String) -> String {
    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let session = Session {
        user,
        scratch: vec![0; 256],
    };
    SESSIONS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id, session);
    id.to_string()
}

async fn close_session(Path(id): Path<u64>) -> &'static str {
    let gone = SESSIONS
        .lock()
        .unwrap()
        .as_mut()
        .and_then(|s| s.remove(&id));
    if gone.is_some() {
        "closed"
    } else {
        "unknown"
    }
}

/// One HTTP/1.1 request over a fresh loopback connection; the body of the answer.
async fn send(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.expect("receive");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// The live report's scope table and what grew since the report before,
/// fetched over HTTP from `serve_report`.
async fn live_scopes(report: std::net::SocketAddr) -> String {
    let text = send(report, "GET", "/report", "").await;
    let mut lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("Scopes"))
        .take_while(|l| !l.contains("loss record"))
        .collect();
    // The blank line before the first loss record.
    lines.pop();
    lines.join("\n")
}

fn main() {
    let live = leakscope::serve_report("127.0.0.1:0").expect("report server");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let app = axum::Router::new()
            .route("/health", get(health))
            .route("/users/{id}", get(user))
            .route("/session", post(open_session))
            .route("/session/{id}", delete(close_session))
            .layer(leakscope::tower::LeakScopeLayer::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        println!(
            "serving on http://{addr}, live report on http://{}/report",
            live.local_addr()
        );

        // The load: 500 rounds of a health check, a user page and a session;
        // every fifth session is never closed. Eight clients at a time.
        let rounds = 500u64;
        for batch in 0..rounds / 8 {
            let mut clients = Vec::new();
            for r in batch * 8..batch * 8 + 8 {
                clients.push(tokio::spawn(async move {
                    send(addr, "GET", "/health", "").await;
                    send(addr, "GET", &format!("/users/{r}"), "").await;
                    let id = send(addr, "POST", "/session", &format!("user{r}")).await;
                    if r % 5 != 0 {
                        send(addr, "DELETE", &format!("/session/{id}"), "").await;
                    }
                }));
            }
            for c in clients {
                c.await.expect("client");
            }
            if batch == rounds / 32 {
                // A first look; the next one says what grew since.
                live_scopes(live.local_addr()).await;
            }
            if batch == rounds / 16 {
                println!(
                    "live report, half way through the load:\n{}\n",
                    live_scopes(live.local_addr()).await
                );
            }
        }
    });
    // Stop the server: its connections and responses are dropped. Then the
    // full leak check: nothing is lost, but it says who holds what grew (the
    // cache's and the sessions' static maps).
    drop(rt);
    print!("{}", leakscope::leak_check());
}
