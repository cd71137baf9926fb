//! A small request-handling service in the manner of a legacy REST API, with
//! the leaks such services grow, and leakscope finding them.
//!
//! ```text
//! cargo run --release --example leaky_service
//! ```
//!
//! Endpoints:
//! - `GET /health`, `GET /users`: clean.
//! - `GET /users/{id}`: memoizes every response in a global cache keyed by the
//!   request id, so the cache only ever grows (a leak by accumulation).
//! - `POST /orders`: opens a "database session" and forgets to close it.
//! - `GET /graph`: builds a tree whose children point back at their parent
//!   with `Rc`: a reference cycle, never freed.
//! - `GET /graph-fixed`: the same tree with `Weak` parent links: freed.
//!
//! `LEAKY_SERVICE_REQUESTS=N` serves N requests (4,000 by default), and
//! `LEAKY_SERVICE_FIXED=1` serves every route with its leak fixed (`GET
//! /graph` as `GET /graph-fixed` does it, no response cache, every session
//! closed): a run to compare with, and to pass `leakscope check`.
//!
//! The only leakscope code is the allocator line and one `track_scope` per
//! request; `LEAKSCOPE_REPORT=stderr` would print the same report at exit with
//! no `leak_check()` call at all (and `LEAKSCOPE_ERROR_EXITCODE=23` would make
//! the leaks fail the run, as in CI).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

struct Request {
    id: u64,
    method: &'static str,
    path: String,
    body: String,
}

struct Response {
    status: u16,
    body: String,
}

impl Response {
    fn ok(body: String) -> Response {
        Response { status: 200, body }
    }
}

#[derive(Clone)]
struct User {
    id: u32,
    name: String,
    email: String,
}

/// The service's state: read-only user table.
struct App {
    users: Vec<User>,
    /// `LEAKY_SERVICE_FIXED=1`: every handler with its leak fixed.
    fixed: bool,
}

/// Every response of `GET /users/{id}`, "to make the endpoint faster". The key
/// carries the request id, so no entry is ever hit again or evicted.
static RESPONSE_CACHE: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// Stands in for a connection to a database: a statement buffer and a
/// prepared-statement handle.
struct DbSession {
    statement: String,
    handle: Box<[u8; 64]>,
}

impl DbSession {
    fn open() -> DbSession {
        DbSession {
            statement: String::with_capacity(32),
            handle: Box::new([0; 64]),
        }
    }

    fn insert_order(&mut self, body: &str) -> u64 {
        self.statement.clear();
        self.statement.push_str("INSERT INTO orders");
        self.handle[0] = self.handle[0].wrapping_add(1);
        body.len() as u64 + u64::from(self.handle[0])
    }

    fn close(self) {}
}

/// A node of the category tree `GET /graph` builds.
struct Node {
    name: String,
    parent: RefCell<Option<Rc<Node>>>,
    children: RefCell<Vec<Rc<Node>>>,
}

/// The fixed tree: parents are weak.
struct FixedNode {
    name: String,
    parent: RefCell<Weak<FixedNode>>,
    children: RefCell<Vec<Rc<FixedNode>>>,
}

impl App {
    fn new() -> App {
        let users = (0..50)
            .map(|id| User {
                id,
                name: format!("user{id}"),
                email: format!("user{id}@example.com"),
            })
            .collect();
        let fixed = std::env::var("LEAKY_SERVICE_FIXED").is_ok_and(|v| v == "1");
        App { users, fixed }
    }

    /// Routes a request to its handler; returns the route template (for the
    /// scope name) and the response.
    fn handle(&self, req: &Request) -> Response {
        match (req.method, req.path.as_str()) {
            ("GET", "/health") => Response::ok("ok".to_owned()),
            ("GET", "/users") => self.list_users(),
            ("GET", p) if p.starts_with("/users/") => self.get_user(req),
            ("POST", "/orders") => create_order(req, self.fixed),
            ("GET", "/graph") if self.fixed => build_graph_fixed(),
            ("GET", "/graph") => build_graph(),
            ("GET", "/graph-fixed") => build_graph_fixed(),
            _ => Response {
                status: 404,
                body: String::new(),
            },
        }
    }

    fn list_users(&self) -> Response {
        let names: Vec<String> = self
            .users
            .iter()
            .map(|u| format!("{{\"id\":{},\"name\":\"{}\"}}", u.id, u.name))
            .collect();
        Response::ok(format!("[{}]", names.join(",")))
    }

    fn get_user(&self, req: &Request) -> Response {
        let id: usize = req.path.trim_start_matches("/users/").parse().unwrap_or(0);
        let user = self.users[id % self.users.len()].clone();
        let body = format!(
            "{{\"id\":{},\"name\":\"{}\",\"email\":\"{}\"}}",
            user.id, user.name, user.email
        );
        if !self.fixed {
            remember_response(format!("{}#{}", req.path, req.id), &body);
        }
        Response::ok(body)
    }
}

fn remember_response(key: String, body: &str) {
    let mut cache = RESPONSE_CACHE.lock().unwrap();
    cache
        .get_or_insert_with(HashMap::new)
        .insert(key, body.to_owned());
}

fn create_order(req: &Request, fixed: bool) -> Response {
    let mut session = DbSession::open();
    let order = session.insert_order(&req.body);
    if fixed || req.body.contains("\"express\":true") {
        session.close();
    } else {
        // The bug: the common path hands the session to a "pool" that never
        // existed. Its buffers are never freed. (`black_box` stands for the
        // pool: without it the optimizer may see that nothing ever reads the
        // session again and not allocate its buffers at all.)
        std::mem::forget(std::hint::black_box(session));
    }
    Response {
        status: 201,
        body: format!("{{\"order\":{order}}}"),
    }
}

fn build_graph() -> Response {
    let root = Rc::new(Node {
        name: "root".to_owned(),
        parent: RefCell::new(None),
        children: RefCell::new(Vec::new()),
    });
    for i in 0..2 {
        let child = Rc::new(Node {
            name: format!("child{i}"),
            parent: RefCell::new(Some(Rc::clone(&root))), // strong link back: a cycle
            children: RefCell::new(Vec::new()),
        });
        root.children.borrow_mut().push(child);
    }
    let names: Vec<String> = root
        .children
        .borrow()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let parent_of_first = root.children.borrow()[0]
        .parent
        .borrow()
        .as_ref()
        .map(|p| p.name.len())
        .unwrap_or(0);
    Response::ok(format!("{} -> {:?} ({parent_of_first})", root.name, names))
}

fn build_graph_fixed() -> Response {
    let root = Rc::new(FixedNode {
        name: "root".to_owned(),
        parent: RefCell::new(Weak::new()),
        children: RefCell::new(Vec::new()),
    });
    for i in 0..2 {
        let child = Rc::new(FixedNode {
            name: format!("child{i}"),
            parent: RefCell::new(Rc::downgrade(&root)),
            children: RefCell::new(Vec::new()),
        });
        root.children.borrow_mut().push(child);
    }
    let names: Vec<String> = root
        .children
        .borrow()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let parent_of_first = root.children.borrow()[0]
        .parent
        .borrow()
        .upgrade()
        .map(|p| p.name.len())
        .unwrap_or(0);
    let leaf_count = root
        .children
        .borrow()
        .iter()
        .map(|c| c.children.borrow().len())
        .sum::<usize>();
    Response::ok(format!(
        "{} -> {:?} ({parent_of_first}, {leaf_count})",
        root.name, names
    ))
}

/// The scope name of a request: method and route template, so that
/// `/users/7` and `/users/8` add up in one scope.
fn route_of(req: &Request) -> String {
    let template = if req.path.starts_with("/users/") {
        "/users/{id}"
    } else {
        req.path.as_str()
    };
    format!("{} {}", req.method, template)
}

/// A deterministic mix of traffic.
fn request(id: u64) -> Request {
    let (method, path, body) = match id % 8 {
        0 | 1 => ("GET", "/health".to_owned(), ""),
        2 => ("GET", "/users".to_owned(), ""),
        3 | 4 => ("GET", format!("/users/{}", id % 97), ""),
        5 => (
            "POST",
            "/orders".to_owned(),
            if id.is_multiple_of(3) {
                "{\"express\":true}"
            } else {
                "{\"sku\":42}"
            },
        ),
        6 => ("GET", "/graph".to_owned(), ""),
        _ => ("GET", "/graph-fixed".to_owned(), ""),
    };
    Request {
        id,
        method,
        path,
        body: body.to_owned(),
    }
}

fn main() {
    let app = App::new();
    let requests = match std::env::var("LEAKY_SERVICE_REQUESTS") {
        Err(_) => 4_000,
        Ok(n) => n.trim().parse().unwrap_or_else(|_| {
            eprintln!("LEAKY_SERVICE_REQUESTS={n:?} is not a number of requests; serving 4000");
            4_000
        }),
    };
    let mut served = 0u64;
    let mut bytes_out = 0usize;
    for id in 0..requests {
        let req = request(id);
        let resp = leakscope::track_scope(&route_of(&req), || app.handle(&req));
        if resp.status < 400 {
            served += 1;
        }
        bytes_out += resp.body.len();
    }

    // One request looked at on its own: what it allocated and left behind.
    let guard = leakscope::scope("POST /orders (single)");
    let resp = app.handle(&request(5));
    drop(resp);
    let one = guard.finish();
    println!(
        "served {served} requests ({bytes_out} bytes of responses); one POST /orders allocated {} blocks and left {} blocks / {} bytes behind\n",
        one.allocated_blocks, one.outstanding_blocks, one.outstanding_bytes
    );

    // The outstanding allocations per call-site and scope, then the full leak
    // check: which of them nothing points to any more (valgrind's kinds).
    let report = leakscope::leak_check();
    print!("{report}");
    drop(app);
}
