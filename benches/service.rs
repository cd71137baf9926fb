//! A real tokio/axum service with a blocking pool, for `benches/service.sh`:
//! every request lists a directory of 100 files on tokio's blocking pool
//! (`spawn_blocking`: `read_dir` and `symlink_metadata` of each entry, an
//! item with its name per entry, as a file server does), and renders the
//! page on the async worker, which frees the items: blocks made on the
//! pool's threads are freed on the workers. At the start, 200 blocking tasks run at once and then
//! end, so that the pool keeps 200 threads alive and mostly idle, as a
//! loaded file server's does.
//!
//! `LEAKSCOPE_BENCH_MODE=system|leakscope` picks the allocator (the tracker
//! reads `LEAKSCOPE_SAMPLE_BYTES` as usual); `LEAKSCOPE_BENCH_PORT` the
//! loopback port. Prints `ready` once it listens, and serves until killed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

static TRACKER: leakscope::LeakTracker = leakscope::LeakTracker::system();
/// 0: not chosen yet, 1: System, 2: the tracker.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// System or the tracker, chosen from the environment at the first call.
struct Switch;

#[inline]
fn tracked() -> bool {
    match CHOSEN.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: getenv with a NUL-terminated name, read in place.
            let on = unsafe {
                let p = libc::getenv(c"LEAKSCOPE_BENCH_MODE".as_ptr());
                !p.is_null()
                    && std::ffi::CStr::from_ptr(p)
                        .to_bytes()
                        .starts_with(b"leakscope")
            };
            CHOSEN.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        c => c == 2,
    }
}

// SAFETY: forwards every call to one allocator, the same for the whole process.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            if tracked() {
                TRACKER.alloc(l)
            } else {
                System.alloc(l)
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe {
            if tracked() {
                TRACKER.dealloc(p, l)
            } else {
                System.dealloc(p, l)
            }
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            if tracked() {
                TRACKER.realloc(p, l, n)
            } else {
                System.realloc(p, l, n)
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

/// One directory entry, as a file server lists it.
struct Item {
    name: String,
    size: u64,
    dir: bool,
}

/// One listing, made on the blocking pool: an item per entry (each a
/// block, freed on the async worker that renders the page).
fn list(dir: &std::path::Path) -> Vec<Item> {
    let mut items = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return items;
    };
    for e in entries.flatten() {
        let path = e.path();
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            items.push(Item {
                name: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                size: m.len(),
                dir: m.is_dir(),
            });
        }
    }
    items
}

/// The page, rendered on the async worker.
fn render(items: Vec<Item>) -> String {
    let mut out = String::new();
    for i in &items {
        let _ = writeln!(
            out,
            "<li>{} {} {}</li>",
            i.name,
            i.size,
            if i.dir { "dir" } else { "file" }
        );
    }
    out
}

fn main() {
    let port: u16 = std::env::var("LEAKSCOPE_BENCH_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8099);
    let dir = std::env::temp_dir().join(format!("leakscope-service-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..100 {
        std::fs::write(dir.join(format!("file-{i}.txt")), vec![b'x'; i * 37]).unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(std::time::Duration::from_secs(3600))
        .enable_all()
        .build()
        .unwrap();
    let served = dir.clone();
    rt.block_on(async move {
        let warm: Vec<_> = (0..200)
            .map(|_| {
                tokio::task::spawn_blocking(|| {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                })
            })
            .collect();
        for w in warm {
            w.await.unwrap();
        }
        let shared = std::sync::Arc::new(served);
        let app = axum::Router::new().route(
            "/list",
            axum::routing::get(move || {
                let dir = shared.clone();
                async move {
                    render(
                        tokio::task::spawn_blocking(move || list(&dir))
                            .await
                            .unwrap_or_default(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        println!("ready");
        axum::serve(listener, app).await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
