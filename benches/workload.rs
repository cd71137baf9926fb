//! The whole-program workload: a service-like loop (parse a request, build
//! maps, format a response, leak a little), run under several allocators in
//! one run, at 1 and 2 worker threads, with every response freed on another
//! thread than the one that made it. Prints the median time of each and its
//! ratio to the plain allocator it wraps.
//!
//! `cargo bench --bench workload` (LEAKSCOPE_BENCH_ROUNDS=N for more rounds,
//! LEAKSCOPE_BENCH_MODES=system,leakscope,... for a subset, =all to add
//! dhat-rs, which takes 20 to 50 times as long as System here, and Debian's
//! jemalloc with and without its heap profiler (see [`je`]);
//! LEAKSCOPE_BENCH_WORKERS=1,2,4,8 for other worker counts than 1 and 2;
//! `leakscope+served`, `leakscope+scraped` and their `-sampled` twins, run
//! only when named, serve the live report and fetch `/metrics` every second)
//!
//! Each measurement is its own child process (this program, run with
//! LEAKSCOPE_BENCH_MODE set), so that the allocator is chosen before the first
//! allocation and no run inherits another's heap.
//!
//! LEAKSCOPE_BENCH_WORKLOAD picks the shape of a request (each leaks one
//! string in a hundred requests):
//! - `service` (the default): a query string parsed into a map, a list of
//!   items formatted, a JSON-ish body; every response freed on the writer.
//! - `dense`: a request body formatted, split into a few small strings, a
//!   small map, a zeroed buffer of up to 4 KB and a response string, about
//!   20 frames below the thread's start; a quarter of the responses freed
//!   on the writer thread, the rest where they were made.
//! - `siblings`: 13 allocations a request, most of them `format!` in sibling
//!   functions called from one handler at one depth (their stacks start at
//!   the same frame address), strings grown by `push_str`.
//! - `stacks`: each request allocates from 24 of 4,096 distinct stacks (256
//!   functions reached at 16 depths), as a real service's handlers, its
//!   framework and serde do: the hot stacks number in the thousands.
//! - `reallocs`: strings and vectors grown step by step (a realloc each
//!   time the capacity doubles, and each `shrink_to_fit`).
//! - `handoff`: one thread allocates, the writer frees every block, while
//!   LEAKSCOPE_BENCH_IDLE other threads (default 2) that allocated once stay
//!   alive and idle: what a free on another thread costs as threads grow.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use mimalloc::MiMalloc;

const MODE_VAR: &str = "LEAKSCOPE_BENCH_MODE";
const THREADS_VAR: &str = "LEAKSCOPE_BENCH_THREADS";
const REQUESTS: usize = 200_000;

/// Requests per run: [`REQUESTS`], or `LEAKSCOPE_BENCH_REQUESTS` (a multiple
/// of 100), e.g. for a run under callgrind.
fn requests() -> usize {
    std::env::var("LEAKSCOPE_BENCH_REQUESTS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(REQUESTS)
}
/// The sampling interval of the `leakscope-sampled` mode.
const SAMPLE_BYTES: &str = "512k";

/// The allocators under test: (mode name, the plain allocator it is compared with).
/// `leakscope-sites` tracks call-sites only (no scopes); `leakscope` both.
/// `leakscope-sampled` is full tracking in sampling mode (a stack per
/// [`SAMPLE_BYTES`] bytes on average; every block still counted per scope).
/// `jemalloc-prof` is jemalloc's own heap profiler at the same interval
/// (`lg_prof_sample:19`), against jemalloc alone.
/// `leakscope+served` and `leakscope-sampled+served` are those two with the
/// live server up (and so its timeline thread, sampling every 200 ms),
/// against themselves without; `+scraped`, the same with `/metrics` fetched
/// every second (as Prometheus scrapes), against the server up and not
/// asked: what serving metrics costs.
const MODES: [(&str, &str); 13] = [
    ("system", "system"),
    ("leakscope-sites", "system"),
    ("leakscope", "system"),
    ("leakscope-sampled", "system"),
    ("leakscope+served", "leakscope"),
    ("leakscope+scraped", "leakscope+served"),
    ("leakscope-sampled+served", "leakscope-sampled"),
    ("leakscope-sampled+scraped", "leakscope-sampled+served"),
    ("dhat", "system"),
    ("mimalloc", "mimalloc"),
    ("leakscope+mimalloc", "mimalloc"),
    ("jemalloc", "jemalloc"),
    ("jemalloc-prof", "jemalloc"),
];

/// The allocator of this process, chosen once from the environment at the
/// first allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Unknown = 0,
    System,
    Leakscope,
    Dhat,
    Mimalloc,
    LeakscopeMimalloc,
    Jemalloc,
}

struct Switch;

static TRACKER: leakscope::LeakTracker = leakscope::LeakTracker::system();
static TRACKER_MI: leakscope::LeakTracker<MiMalloc> = leakscope::LeakTracker::new(MiMalloc);
static MODE: AtomicU8 = AtomicU8::new(Mode::Unknown as u8);

#[inline]
fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        1 => Mode::System,
        2 => Mode::Leakscope,
        3 => Mode::Dhat,
        4 => Mode::Mimalloc,
        5 => Mode::LeakscopeMimalloc,
        6 => Mode::Jemalloc,
        _ => read_mode(),
    }
}

#[cold]
fn read_mode() -> Mode {
    // SAFETY: getenv with a NUL-terminated name; the value is read in place,
    // not copied, so nothing allocates.
    let value = unsafe {
        let p = libc::getenv(c"LEAKSCOPE_BENCH_MODE".as_ptr());
        if p.is_null() {
            &[][..]
        } else {
            std::ffi::CStr::from_ptr(p).to_bytes()
        }
    };
    let m = match value {
        b"leakscope"
        | b"leakscope-sites"
        | b"leakscope-sampled"
        | b"leakscope+served"
        | b"leakscope+scraped"
        | b"leakscope-sampled+served"
        | b"leakscope-sampled+scraped" => Mode::Leakscope,
        b"dhat" => Mode::Dhat,
        b"mimalloc" => Mode::Mimalloc,
        b"leakscope+mimalloc" => Mode::LeakscopeMimalloc,
        b"jemalloc" | b"jemalloc-prof" if je::open() => Mode::Jemalloc,
        _ => Mode::System,
    };
    MODE.store(m as u8, Ordering::Relaxed);
    m
}

/// Calls `$method` on this process's allocator.
macro_rules! dispatch {
    ($method:ident($($arg:expr),*)) => {
        // SAFETY: forwarded contract; the mode never changes once chosen, so a
        // block is always freed by the allocator that made it.
        unsafe {
            match mode() {
                Mode::Leakscope => TRACKER.$method($($arg),*),
                Mode::Dhat => dhat::Alloc.$method($($arg),*),
                Mode::Mimalloc => MiMalloc.$method($($arg),*),
                Mode::LeakscopeMimalloc => TRACKER_MI.$method($($arg),*),
                Mode::Jemalloc => je::Jemalloc.$method($($arg),*),
                Mode::System | Mode::Unknown => System.$method($($arg),*),
            }
        }
    };
}

// SAFETY: forwards every call to one allocator, the same for the whole process.
unsafe impl GlobalAlloc for Switch {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        dispatch!(alloc(l))
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        dispatch!(alloc_zeroed(l))
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        dispatch!(dealloc(p, l))
    }
    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        dispatch!(realloc(p, l, n))
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

/// Debian's jemalloc (package libjemalloc2, built with its heap profiler),
/// the allocator of modes `jemalloc` and `jemalloc-prof` (the latter with
/// `MALLOC_CONF=prof:true,lg_prof_sample:19`: a stack per 512 KiB on
/// average, as `leakscope-sampled` takes). Opened with `dlopen` and called
/// through its `mallocx` family, as the tikv-jemallocator crate calls it:
/// preloaded, it would come after this program's own `malloc` (leakscope's
/// feature `c-heap`) and never be called.
mod je {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Mallocx = unsafe extern "C" fn(usize, i32) -> *mut u8;
    type Rallocx = unsafe extern "C" fn(*mut u8, usize, i32) -> *mut u8;
    type Sdallocx = unsafe extern "C" fn(*mut u8, usize, i32);
    static FNS: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
    const ZERO: i32 = 0x40;

    /// Loads the library; false if it is not installed. Called at the
    /// process's first allocation: `dlopen`'s own blocks are C's.
    pub(super) fn open() -> bool {
        // SAFETY: dlopen/dlsym with NUL-terminated names.
        unsafe {
            let h = libc::dlopen(
                c"libjemalloc.so.2".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL,
            );
            if h.is_null() {
                return false;
            }
            for (f, name) in FNS.iter().zip([c"mallocx", c"rallocx", c"sdallocx"]) {
                let p = libc::dlsym(h, name.as_ptr());
                if p.is_null() {
                    return false;
                }
                f.store(p as usize, Ordering::Relaxed);
            }
        }
        true
    }

    /// Whether the library was loaded (for the child to say so).
    pub(super) fn loaded() -> bool {
        FNS[0].load(Ordering::Relaxed) != 0
    }

    /// jemalloc's flags for `l`: its alignment, where malloc's is not enough.
    fn flags(l: Layout) -> i32 {
        if l.align() <= 16 && l.align() <= l.size() {
            0
        } else {
            l.align().trailing_zeros() as i32
        }
    }

    pub(super) struct Jemalloc;

    // SAFETY: jemalloc's blocks, with `GlobalAlloc`'s contract (sizes are
    // non-zero; `mallocx` honours the alignment flag).
    unsafe impl GlobalAlloc for Jemalloc {
        #[inline]
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            // SAFETY: `mallocx`, loaded by `open`.
            unsafe {
                let f: Mallocx = std::mem::transmute(FNS[0].load(Ordering::Relaxed));
                f(l.size(), flags(l))
            }
        }
        #[inline]
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            // SAFETY: as in `alloc`.
            unsafe {
                let f: Mallocx = std::mem::transmute(FNS[0].load(Ordering::Relaxed));
                f(l.size(), flags(l) | ZERO)
            }
        }
        #[inline]
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: `sdallocx` of a block `mallocx` made with `l`.
            unsafe {
                let f: Sdallocx = std::mem::transmute(FNS[2].load(Ordering::Relaxed));
                f(p, l.size(), flags(l))
            }
        }
        #[inline]
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            // SAFETY: `rallocx` of a block `mallocx` made with `l`.
            unsafe {
                let f: Rallocx = std::mem::transmute(FNS[1].load(Ordering::Relaxed));
                f(p, n, flags(Layout::from_size_align_unchecked(n, l.align())))
            }
        }
    }
}

static LEAKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

const ROUTES: [&str; 4] = [
    "GET /users",
    "GET /users/{id}",
    "POST /orders",
    "GET /search",
];

/// One request: parse a query string, build a map, format a JSON-ish body.
#[inline(never)]
fn handle(i: usize) -> String {
    let raw = format!(
        "user={}&tags=a,b,c,{}&limit={}&q=item{}",
        i % 1000,
        i % 17,
        10 + i % 5,
        i
    );
    let mut params: HashMap<String, Vec<String>> = HashMap::new();
    for pair in raw.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params
            .entry(k.to_owned())
            .or_default()
            .extend(v.split(',').map(str::to_owned));
    }
    let limit: usize = params["limit"][0].parse().unwrap_or(10);
    let items: Vec<String> = (0..limit)
        .map(|n| format!("item-{}-{n}", params["user"][0]))
        .collect();
    let mut body = String::with_capacity(64);
    body.push('{');
    for (k, vs) in &params {
        let _ = write!(body, "\"{k}\":{:?},", vs);
    }
    let _ = write!(body, "\"items\":{items:?}}}");
    leak(i);
    body
}

/// The request shapes (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Service,
    Dense,
    Siblings,
    Stacks,
    Reallocs,
    Handoff,
}

/// LEAKSCOPE_BENCH_WORKLOAD: the shape of a request.
fn shape() -> Shape {
    match std::env::var("LEAKSCOPE_BENCH_WORKLOAD").as_deref() {
        Ok("dense") => Shape::Dense,
        Ok("siblings") => Shape::Siblings,
        Ok("stacks") => Shape::Stacks,
        Ok("reallocs") => Shape::Reallocs,
        Ok("handoff") => Shape::Handoff,
        Ok("service") | Err(_) => Shape::Service,
        Ok(other) => panic!("unknown LEAKSCOPE_BENCH_WORKLOAD {other:?}"),
    }
}

/// The planted leak of request `i`: one small string per hundred requests
/// (its call-site's first frame of the program is this function).
#[inline(never)]
fn leak(i: usize) {
    if i.is_multiple_of(100) {
        LEAKED.lock().unwrap().push(format!("audit {i}"));
    }
}

// ---------------------------------------------------------------- siblings

#[inline(never)]
fn header_line(name: &str, value: usize) -> String {
    format!("{name}: {value}")
}

#[inline(never)]
fn user_key(params: &HashMap<String, String>) -> String {
    format!("user:{}", params.get("user").map_or("", |u| u.as_str()))
}

#[inline(never)]
fn cache_key(i: usize) -> String {
    format!("cache/{}/{}", i % 64, i % 7)
}

#[inline(never)]
fn trace_id(i: usize) -> String {
    format!("{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[inline(never)]
fn content_type(json: bool) -> String {
    format!("application/{}", if json { "json" } else { "text" })
}

/// One request of the `siblings` shape: 13 allocations, the `format!`s
/// in sibling functions called from here at one depth.
#[inline(never)]
fn siblings_request(i: usize) -> String {
    let query = format!("user={}&limit={}&q=item{}", i % 1000, 3 + i % 3, i % 50);
    let mut params: HashMap<String, String> = HashMap::with_capacity(4);
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            params.insert(k.to_owned(), v.to_owned());
        }
    }
    let headers = [
        header_line("x-request", i),
        user_key(&params),
        cache_key(i),
        trace_id(i),
        content_type(!i.is_multiple_of(3)),
    ];
    let mut body = String::new();
    for h in &headers {
        body.push_str(h);
        body.push('\n');
    }
    body.push_str(&params["q"]);
    leak(i);
    body
}

// ---------------------------------------------------------------- stacks

/// A block made in a function of its own (one per `N`, never merged: each
/// formats another number), so that every `N` is a call-site.
#[inline(never)]
fn leaf<const N: usize>(i: usize) -> String {
    format!("{N}:{i}")
}

macro_rules! row {
    ($r:literal) => {
        [
            leaf::<{ $r * 16 }>,
            leaf::<{ $r * 16 + 1 }>,
            leaf::<{ $r * 16 + 2 }>,
            leaf::<{ $r * 16 + 3 }>,
            leaf::<{ $r * 16 + 4 }>,
            leaf::<{ $r * 16 + 5 }>,
            leaf::<{ $r * 16 + 6 }>,
            leaf::<{ $r * 16 + 7 }>,
            leaf::<{ $r * 16 + 8 }>,
            leaf::<{ $r * 16 + 9 }>,
            leaf::<{ $r * 16 + 10 }>,
            leaf::<{ $r * 16 + 11 }>,
            leaf::<{ $r * 16 + 12 }>,
            leaf::<{ $r * 16 + 13 }>,
            leaf::<{ $r * 16 + 14 }>,
            leaf::<{ $r * 16 + 15 }>,
        ]
    };
}

/// Makes one string at its own call-site.
type Leaf = fn(usize) -> String;

/// The 256 functions of the `stacks` shape.
const LEAVES: [[Leaf; 16]; 16] = [
    row!(0),
    row!(1),
    row!(2),
    row!(3),
    row!(4),
    row!(5),
    row!(6),
    row!(7),
    row!(8),
    row!(9),
    row!(10),
    row!(11),
    row!(12),
    row!(13),
    row!(14),
    row!(15),
];

/// One request of the `stacks` shape: 24 blocks from 24 of the 4,096
/// stacks (a leaf function reached `depth` frames down), picked by a
/// pseudo-random walk so that every stack is hot in turn.
#[inline(never)]
fn stacks_request(i: usize) -> String {
    let mut out = String::with_capacity(256);
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (f, depth) = ((x % 256) as usize, (x >> 8) as u32 % 16);
        let leaf = LEAVES[f / 16][f % 16];
        let s = deep(depth, &mut || leaf(i));
        out.push_str(&s[..s.len().min(8)]);
    }
    leak(i);
    out
}

// ---------------------------------------------------------------- reallocs

/// One request of the `reallocs` shape: a string and two vectors grown one
/// piece at a time (each doubling of capacity a realloc), one shrunk.
#[inline(never)]
fn reallocs_request(i: usize) -> String {
    let mut s = String::new();
    for n in 0..(20 + i % 24) {
        s.push_str("chunk");
        s.push(char::from(b'a' + (n % 26) as u8));
    }
    let mut ids: Vec<u64> = Vec::new();
    for n in 0..(8 + i % 40) {
        ids.push(n as u64 * 3);
    }
    let mut words: Vec<&str> = Vec::new();
    words.extend(s.as_str().split('k').take(12));
    words.shrink_to_fit();
    s.push_str(&format!("/{}/{}", ids.len(), words.len()));
    leak(i);
    s
}

// ---------------------------------------------------------------- handoff

/// One request of the `handoff` shape: four small blocks, all freed by
/// the writer.
#[inline(never)]
fn handoff_request(i: usize) -> Response {
    leak(i);
    [
        format!("a{i}"),
        format!("bb{}", i % 7),
        format!("ccc{}", i % 13),
        format!("dddd{}", i % 31),
    ]
}

/// What a request sends the writer: one body, or (`handoff`) four blocks.
type Response = [String; 4];

/// A response of one body.
fn body(s: String) -> Response {
    [s, String::new(), String::new(), String::new()]
}

/// Calls `f` `depth` frames further down, so that stacks are as deep as a
/// service's.
#[inline(never)]
fn deep(depth: u32, f: &mut dyn FnMut() -> String) -> String {
    if depth == 0 {
        f()
    } else {
        black_box(deep(depth - 1, f))
    }
}

/// One allocation-dense request (see the module docs).
#[inline(never)]
fn dense_request(i: usize) -> String {
    let body = format!("id={i}&name=user{}&tags=x,y,z", i % 97);
    let parts: Vec<String> = body.split('&').map(str::to_owned).collect();
    let mut fields: HashMap<&str, &str> = HashMap::with_capacity(4);
    for p in &parts {
        if let Some((k, v)) = p.split_once('=') {
            fields.insert(k, v);
        }
    }
    let buf = vec![0u8; 256 + (i * 61) % 3840];
    let response = format!(
        "{{\"id\":{},\"fields\":{},\"buffer\":{}}}",
        fields.get("id").unwrap_or(&""),
        fields.len(),
        black_box(&buf).len()
    );
    leak(i);
    response
}

/// LEAKSCOPE_BENCH_IDLE: the `handoff` shape's idle threads.
fn idle_threads() -> usize {
    std::env::var("LEAKSCOPE_BENCH_IDLE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2)
}

fn workload(threads: usize, scoped: bool) -> usize {
    let shape = shape();
    // Threads that allocated once and then wait, as a pool's idle threads do.
    let idle = if shape == Shape::Handoff {
        idle_threads()
    } else {
        0
    };
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(Mutex::new(stop_rx));
    let ready = std::sync::Arc::new(std::sync::Barrier::new(idle + 1));
    let idlers: Vec<_> = (0..idle)
        .map(|n| {
            let (stop_rx, ready) = (stop_rx.clone(), ready.clone());
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    let held: Vec<String> = (0..8).map(|k| format!("idle {n} {k}")).collect();
                    ready.wait();
                    let _ = stop_rx.lock().unwrap().recv();
                    black_box(held);
                })
                .unwrap()
        })
        .collect();
    ready.wait();
    // A handoff's blocks reach the writer soon after they are made, as a
    // service's responses reach its connection task.
    let queue = if shape == Shape::Handoff { 16 } else { 1024 };
    let (tx, rx) = mpsc::sync_channel::<Response>(queue);
    // The writer: frees every response, on a thread that allocated none of them.
    let writer = std::thread::spawn(move || {
        rx.into_iter()
            .map(|r| black_box(r).iter().map(String::len).sum::<usize>())
            .sum::<usize>()
    });
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let one = |i: usize| match shape {
                    Shape::Service => body(handle(i)),
                    Shape::Dense => body(deep(14, &mut || dense_request(i))),
                    Shape::Siblings => body(deep(8, &mut || siblings_request(i))),
                    Shape::Stacks => body(stacks_request(i)),
                    Shape::Reallocs => body(deep(8, &mut || reallocs_request(i))),
                    Shape::Handoff => handoff_request(i),
                };
                for i in (t..requests()).step_by(threads) {
                    let body = if scoped {
                        leakscope::track_scope(ROUTES[i % ROUTES.len()], || one(i))
                    } else {
                        one(i)
                    };
                    if shape != Shape::Dense || i % 4 == 0 {
                        tx.send(body).unwrap();
                    } else {
                        drop(black_box(body));
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for w in workers {
        w.join().unwrap();
    }
    let bytes = writer.join().unwrap();
    drop(stop_tx);
    for t in idlers {
        t.join().unwrap();
    }
    bytes
}

/// Live blocks the memory phase keeps, and their sizes (16 to 128 bytes).
const RETAINED: usize = 1_000_000;

/// The memory phase: a million small live blocks (made in a scope where
/// the mode has scopes), then the process's peak RSS in KiB.
fn retain(scoped: bool) -> i64 {
    let make = || {
        (0..RETAINED)
            .map(|i| black_box(vec![i as u8; 16 + (i * 7) % 113]))
            .collect::<Vec<Vec<u8>>>()
    };
    let kept = if scoped {
        leakscope::track_scope("retain", make)
    } else {
        make()
    };
    let rss = peak_rss_kib();
    drop(black_box(kept));
    rss
}

/// The thread phase: `n` threads that each make and free 100 strings,
/// then wait; the process's resident memory in KiB while they wait.
fn idle_rss(n: usize) -> i64 {
    let ready = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
    let done = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
    let threads: Vec<_> = (0..n)
        .map(|t| {
            let (ready, done) = (ready.clone(), done.clone());
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    for k in 0..100 {
                        drop(black_box(format!("thread {t} string {k}")));
                    }
                    ready.wait();
                    done.wait();
                })
                .unwrap()
        })
        .collect();
    ready.wait();
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    done.wait();
    for t in threads {
        t.join().unwrap();
    }
    pages * 4
}

/// The heap phase: `n` boxes of 32 bytes held in a `Vec`, as a large
/// cache is; prints the seconds it took and leaves by `process::exit`
/// (the boxes still held from this frame: reachable, for the gate).
fn build_heap(n: usize) -> ! {
    let start = Instant::now();
    let held: Vec<Box<[u8; 32]>> = (0..n).map(|i| Box::new([i as u8; 32])).collect();
    println!("{}", start.elapsed().as_secs_f64());
    black_box(&held);
    std::process::exit(0)
}

/// Runs this program as a child with `vars` set; its output, wall time
/// and peak resident memory (KiB).
#[allow(clippy::zombie_processes)] // waited for by `wait4`, which gives its own peak memory
fn timed_child(exe: &std::path::Path, mode: &str, vars: &[(&str, &str)]) -> (String, f64, i64) {
    let mut cmd = child_command(exe, mode);
    cmd.stdout(std::process::Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("run the workload");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: waits for our own child and fills a zeroed struct.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut u);
        u
    };
    let secs = start.elapsed().as_secs_f64();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{mode} {vars:?}: status {status}"
    );
    (out, secs, usage.ru_maxrss)
}

/// LEAKSCOPE_BENCH_HEAP: the heap phase's blocks (0: no heap phase).
fn heap_blocks() -> usize {
    std::env::var("LEAKSCOPE_BENCH_HEAP")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000)
}

/// The heap phase, run by the parent: the time to build the heap under
/// each allocator, and what the gate's leak check of it adds at exit.
fn heap_phase(exe: &std::path::Path, modes: &[(&str, &str)], rounds: usize) {
    let n = heap_blocks();
    if n == 0 {
        return;
    }
    let blocks = n.to_string();
    println!();
    println!("heap: {n} live blocks of 32 bytes built and held, then exit (median of {rounds} runs each); the gate: LEAKSCOPE_ERROR_EXITCODE=23, a full leak check at exit");
    println!(
        "{:<19} {:>10} {:>9} {:>14} {:>12} {:>12}",
        "allocator", "build s", "ratio", "gate adds s", "gate adds", "per block"
    );
    // Per mode: the median build time, and (tracked, full mode) the gate's
    // median extra time and its extra peak memory in bytes.
    let mut runs: Vec<(f64, Option<(f64, i64)>)> = Vec::new();
    for (mode, _) in modes {
        let mut build = Vec::new();
        let mut gate = Vec::new();
        let mut rss = (0, 0);
        for _ in 0..rounds {
            let vars = [("LEAKSCOPE_BENCH_HEAP_CHILD", blocks.as_str())];
            let (out, plain_secs, plain_rss) = timed_child(exe, mode, &vars);
            build.push(out.trim().parse::<f64>().expect("seconds"));
            if mode.starts_with("leakscope") && !mode.starts_with("leakscope-sampled") {
                let vars = [
                    ("LEAKSCOPE_BENCH_HEAP_CHILD", blocks.as_str()),
                    ("LEAKSCOPE_ERROR_EXITCODE", "23"),
                ];
                let (_, gate_secs, gate_rss) = timed_child(exe, mode, &vars);
                gate.push(gate_secs - plain_secs);
                rss = (rss.0.max(plain_rss), rss.1.max(gate_rss));
            }
        }
        let gate = (!gate.is_empty()).then(|| (median(&mut gate), (rss.1 - rss.0) * 1024));
        runs.push((median(&mut build), gate));
    }
    for (m, (mode, base)) in modes.iter().enumerate() {
        let Some(b) = plain_of(modes, base) else {
            continue;
        };
        let (secs, gate) = runs[m];
        let ratio = secs / runs[b].0;
        match gate {
            None => println!("{mode:<19} {secs:>10.3} {ratio:>8.2}x"),
            Some((gate_secs, extra)) => println!(
                "{:<19} {:>10.3} {:>8.2}x {:>14.3} {:>8} MiB {:>10.1} B  vs {}",
                mode,
                secs,
                ratio,
                gate_secs,
                extra >> 20,
                extra as f64 / n as f64,
                base
            ),
        }
    }
}

fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage fills a zeroed struct.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_maxrss
    }
}

/// Prometheus, in a benchmark: the live server, and with `scrapes` a
/// thread that fetches `/metrics` from it at once and then every second,
/// asleep in between (woken only by the second or by `stop`).
struct Scraper {
    scrapes: bool,
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<usize>,
    _server: leakscope::ReportServer,
}

impl Scraper {
    fn start(scrapes: bool) -> Scraper {
        use std::io::{Read, Write};
        let server = leakscope::serve_report("127.0.0.1:0").expect("serve");
        let addr = server.local_addr();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if !scrapes {
                return 0;
            }
            let start = Instant::now();
            let mut body = Vec::with_capacity(1 << 16);
            let mut scrapes = 0;
            loop {
                let mut c = std::net::TcpStream::connect(addr).expect("connect");
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                body.clear();
                c.read_to_end(&mut body).unwrap();
                assert!(body.starts_with(b"HTTP/1.1 200 OK"));
                scrapes += 1;
                let next = start + std::time::Duration::from_secs(scrapes as u64);
                let wait = next.saturating_duration_since(Instant::now());
                if stopped.recv_timeout(wait) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return scrapes;
                }
            }
        });
        Scraper {
            scrapes,
            stop,
            thread,
            _server: server,
        }
    }

    /// Stops the scraper: how many scrapes it made.
    fn stop(self) -> usize {
        let _ = self.stop.send(());
        self.thread.join().unwrap()
    }
}

fn child(mode: &str) {
    let threads: usize = std::env::var(THREADS_VAR)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let tracked = matches!(self::mode(), Mode::Leakscope | Mode::LeakscopeMimalloc);
    if mode.starts_with("jemalloc") && !je::loaded() {
        eprintln!(
            "{mode}: libjemalloc.so.2 cannot be loaded (Debian: apt-get install libjemalloc2)"
        );
        std::process::exit(2);
    }
    assert_eq!(
        tracked,
        mode.starts_with("leakscope"),
        "the allocator was chosen before the environment was read"
    );
    // dhat records only while a profiler runs; its output goes nowhere.
    let profiler =
        (mode == "dhat").then(|| dhat::Profiler::builder().file_name("/dev/null").build());
    let scoped = tracked && mode != "leakscope-sites";
    if let Some(n) = std::env::var("LEAKSCOPE_BENCH_HEAP_CHILD")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        build_heap(n);
    }
    if let Some(n) = std::env::var("LEAKSCOPE_BENCH_IDLE_RSS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        println!("{}", idle_rss(n));
        drop(profiler);
        return;
    }
    if std::env::var_os("LEAKSCOPE_BENCH_RETAIN").is_some() {
        println!("{}", retain(scoped));
        drop(profiler);
        return;
    }
    LEAKED.lock().unwrap().reserve(requests() / 100);
    let scraper = (mode.ends_with("+served") || mode.ends_with("+scraped"))
        .then(|| Scraper::start(mode.ends_with("+scraped")));
    let start = Instant::now();
    let bytes = workload(threads, scoped);
    let secs = start.elapsed().as_secs_f64();
    if let Some(scraper) = scraper.filter(|s| s.scrapes) {
        let scrapes = scraper.stop();
        // At the start, then each second (the scraper ran a little longer).
        let whole = secs as usize;
        assert!(
            (whole + 1..=whole + 2).contains(&scrapes),
            "{scrapes} scrapes in {secs} s"
        );
    }
    let rss_kib = peak_rss_kib();
    if tracked {
        let r = leakscope::snapshot();
        // Exact in full mode: per call-site without scopes, per scope with
        // them. In sampling mode those are estimates; runs stay exact.
        if mode.starts_with("leakscope-sampled") {
            let runs = r.scopes.iter().map(|s| s.runs).sum::<u64>();
            assert_eq!(runs, requests() as u64, "the requests' scope runs");
        } else {
            let leaked = if mode == "leakscope-sites" {
                r.callsites_in("workload::leak")
                    .map(|c| c.live_blocks)
                    .sum::<u64>()
            } else {
                r.scopes.iter().map(|s| s.outstanding_blocks).sum::<u64>()
            };
            assert_eq!(leaked, (requests() / 100) as u64, "the planted leaks");
        }
        assert_eq!(r.sample_bytes != 0, mode.starts_with("leakscope-sampled"));
    }
    println!("{secs} {rss_kib} {bytes}");
    drop(profiler);
}

/// Runs this program as a child in `mode`; its one line of output.
fn run_child(exe: &std::path::Path, mode: &str, setup: impl FnOnce(&mut Command)) -> String {
    let mut cmd = child_command(exe, mode);
    setup(&mut cmd);
    let out = cmd.output().expect("run the workload");
    assert!(
        out.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This program, to run as a child in `mode` (with the sampling interval
/// of `leakscope-sampled`, and no report).
fn child_command(exe: &std::path::Path, mode: &str) -> Command {
    let mut cmd = Command::new(exe);
    if mode.starts_with("leakscope-sampled") {
        cmd.env("LEAKSCOPE_SAMPLE_BYTES", SAMPLE_BYTES);
    } else {
        cmd.env_remove("LEAKSCOPE_SAMPLE_BYTES");
    }
    if mode.starts_with("jemalloc") {
        // jemalloc's thread-locals are initial-exec: loaded by `dlopen`,
        // they need room in the static TLS block that glibc keeps only
        // when asked.
        cmd.env("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=65536");
    }
    if mode == "jemalloc-prof" {
        // Profiles are written nowhere: a dump only at request.
        cmd.env(
            "MALLOC_CONF",
            "prof:true,lg_prof_sample:19,prof_final:false",
        );
    } else {
        cmd.env_remove("MALLOC_CONF");
    }
    cmd.env(MODE_VAR, mode).env_remove("LEAKSCOPE_REPORT");
    cmd
}

/// Where in `modes` the plain allocator `base` (a mode's comparison) is.
fn plain_of(modes: &[(&str, &str)], base: &str) -> Option<usize> {
    modes.iter().position(|(name, _)| *name == base)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if let Ok(mode) = std::env::var(MODE_VAR) {
        return child(&mode);
    }
    let rounds: usize = std::env::var("LEAKSCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let wanted = std::env::var("LEAKSCOPE_BENCH_MODES").unwrap_or_default();
    let named: Vec<&str> = wanted.split(',').collect();
    let modes: Vec<(&str, &str)> = MODES
        .iter()
        .copied()
        .filter(|(m, _)| match wanted.as_str() {
            "" => {
                *m != "dhat"
                    && !m.starts_with("jemalloc")
                    && !m.ends_with("+served")
                    && !m.ends_with("+scraped")
            }
            "all" => true,
            // A mode named, or the plain allocator a named mode is compared with.
            _ => named.contains(m) || MODES.iter().any(|(n, base)| named.contains(n) && base == m),
        })
        .collect();
    let exe = std::env::current_exe().unwrap();
    println!(
        "workload ({:?}): {} requests per run, {rounds} rounds; responses freed on a writer thread",
        shape(),
        requests()
    );
    println!("seconds: median run; ratio: median over rounds of the run's time / its plain allocator's run beside it");
    println!(
        "{:<8} {:<19} {:>10} {:>12} {:>9}  (range) vs",
        "workers", "allocator", "seconds", "peak RSS", "ratio"
    );
    let workers: Vec<usize> = std::env::var("LEAKSCOPE_BENCH_WORKERS")
        .ok()
        .map(|w| w.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|w: &Vec<usize>| !w.is_empty())
        .unwrap_or_else(|| vec![1, 2]);
    for threads in workers {
        let mut secs: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        let mut rss: Vec<u64> = vec![0; modes.len()];
        for _ in 0..rounds {
            // Interleaved, so that drift in the machine's speed hits all alike.
            for (m, (mode, _)) in modes.iter().enumerate() {
                let line = run_child(&exe, mode, |c| {
                    c.env(THREADS_VAR, threads.to_string());
                });
                let mut f = line.split_whitespace();
                secs[m].push(f.next().unwrap().parse().unwrap());
                rss[m] = rss[m].max(f.next().unwrap().parse().unwrap());
            }
        }
        for (m, (mode, base)) in modes.iter().enumerate() {
            let Some(b) = plain_of(&modes, base) else {
                continue;
            };
            // Each round's ratio to its plain allocator's run next to it, then
            // the median: drift in the machine's speed between rounds cancels out.
            let mut ratios: Vec<f64> = secs[m]
                .iter()
                .zip(&secs[b])
                .map(|(t, base)| t / base)
                .collect();
            let ratio = median(&mut ratios);
            println!(
                "{:<8} {:<19} {:>10.3} {:>9} MiB {:>8.2}x  ({:.2}-{:.2}) {}",
                threads,
                mode,
                median(&mut secs[m]),
                rss[m] / 1024,
                ratio,
                ratios[0],
                ratios[ratios.len() - 1],
                base,
            );
        }
    }
    println!();
    println!("memory per thread: resident memory with 200 threads alive less with 10, over 190 (median of {rounds} runs each); each thread made and freed 100 strings, then waits");
    println!(
        "{:<19} {:>16} {:>12}",
        "allocator", "KiB per thread", "extra"
    );
    let per_thread: Vec<f64> = modes
        .iter()
        .map(|(mode, _)| {
            let mut v: Vec<f64> = (0..rounds)
                .map(|_| {
                    let rss = |n: usize| -> f64 {
                        let line = run_child(&exe, mode, |c| {
                            c.env("LEAKSCOPE_BENCH_IDLE_RSS", n.to_string());
                        });
                        line.trim().parse().expect("resident KiB")
                    };
                    (rss(200) - rss(10)) / 190.0
                })
                .collect();
            median(&mut v)
        })
        .collect();
    for (m, (mode, base)) in modes.iter().enumerate() {
        let Some(b) = plain_of(&modes, base) else {
            continue;
        };
        println!(
            "{:<19} {:>16.1} {:>12.1}  vs {}",
            mode,
            per_thread[m],
            per_thread[m] - per_thread[b],
            base
        );
    }
    heap_phase(&exe, &modes, rounds.min(3));
    println!();
    println!("memory: {RETAINED} live blocks of 16-128 bytes held at once (one run each)");
    println!(
        "{:<19} {:>12} {:>9} {:>22}",
        "allocator", "peak RSS", "ratio", "extra bytes per block"
    );
    let rss: Vec<i64> = modes
        .iter()
        .map(|(mode, _)| {
            let line = run_child(&exe, mode, |c| {
                c.env("LEAKSCOPE_BENCH_RETAIN", "1");
            });
            line.trim().parse().expect("peak RSS")
        })
        .collect();
    for (m, (mode, base)) in modes.iter().enumerate() {
        let Some(b) = plain_of(&modes, base) else {
            continue;
        };
        println!(
            "{:<19} {:>8} MiB {:>8.2}x {:>22.1}  vs {}",
            mode,
            rss[m] / 1024,
            rss[m] as f64 / rss[b] as f64,
            (rss[m] - rss[b]) as f64 * 1024.0 / RETAINED as f64,
            base
        );
    }
}
