//! Feature `c-heap`: what C code allocates is counted, scoped and checked
//! like Rust's blocks. The C code is `c-lib/leaky.c`, built as
//! distributions build libraries (optimized, no frame pointers): it
//! `strdup`s, `malloc`s, `calloc`s, `realloc`s, `posix_memalign`s and
//! `aligned_alloc`s, loses some of it, keeps a block in a static, and runs
//! a thread of its own. The planted program's lost blocks are the ones
//! valgrind finds, block for block.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use common::Deadline;

use leakscope::report::{Origin, Report};
use leakscope_c_lib as c;
use std::ffi::c_void;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Barrier, Mutex};

const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

/// Ten blocks of 100 bytes from Rust, through C's `malloc`, lost.
#[inline(never)]
fn rust_calls_malloc() {
    for _ in 0..10 {
        // SAFETY: malloc has no preconditions; the block is lost on purpose.
        black_box(unsafe { libc::malloc(100) });
    }
}

/// Everything `leaky.c` loses, and a Rust function's `malloc`s; a block C
/// hands to Rust, freed there; a block a C static keeps.
#[inline(never)]
fn plant() {
    // SAFETY: the C functions take plain values and allocate on their own.
    unsafe {
        c::c_lost_strings(10);
        c::c_lost_tree();
        c::c_lost_realloc();
        c::c_lost_aligned();
        c::c_thread(8);
        c::c_keep();
        libc::free(c::c_give(55));
    }
    rust_calls_malloc();
}

/// What the planted program loses: 10 strings (25 bytes), a tree's node
/// (48), a reallocated block (256), two aligned ones (100, 64), four blocks
/// of the C thread (32 each) and ten from Rust (100 each); and the tree's
/// child (48), indirectly.
const DEFINITELY: (u64, u64) = (28, 250 + 48 + 256 + 100 + 64 + 4 * 32 + 1000);
const INDIRECTLY: (u64, u64) = (1, 48);

/// The frames' function names, innermost first.
fn names(report: &Report, site: u32) -> Vec<String> {
    let c = report.callsite(site).unwrap();
    c.frames
        .iter()
        .map(|f| f.function.clone().unwrap_or_default())
        .collect()
}

/// C blocks in a scope are the scope's; a C call-site's stack runs from
/// the C function through the Rust function that called it, whose frame a
/// walk by frame pointers would skip.
fn c_blocks_are_counted_scoped_and_named() {
    leakscope::track_scope("GET /c", || {
        // SAFETY: as in `plant`.
        unsafe {
            c::c_lost_strings(10);
            c::c_lost_tree();
        }
        rust_calls_malloc();
    });
    let report = leakscope::snapshot();
    let scope = report.scope("GET /c").unwrap();
    assert_eq!(
        (
            scope.runs,
            scope.outstanding_blocks,
            scope.outstanding_bytes
        ),
        (1, 22, 250 + 96 + 1000)
    );
    let strings = scope
        .by_callsite
        .iter()
        .find(|s| names(&report, s.callsite)[1] == "c_lost_strings")
        .expect("the strdup call-site");
    assert_eq!((strings.blocks, strings.bytes), (10, 250));
    let site = report.callsite(strings.callsite).unwrap();
    assert_eq!(site.origin, Origin::C);
    let n = names(&report, strings.callsite);
    assert!(n[0].contains("strdup"), "{n:?}");
    assert!(
        n[2].ends_with("c_blocks_are_counted_scoped_and_named::{{closure}}"),
        "{n:?}"
    );
    // Past the C frames, the Rust frames that called it, up to `main` (the
    // walk follows the frame-pointer chain from the closure's frame on).
    let after: Vec<&str> = n[3..].iter().map(String::as_str).collect();
    assert!(
        after.contains(&"c_heap::c_blocks_are_counted_scoped_and_named"),
        "{n:?}"
    );
    assert!(after.contains(&"c_heap::main"), "{n:?}");
    let from_rust: Vec<_> = report.callsites_in("rust_calls_malloc").collect();
    assert_eq!(from_rust.len(), 1);
    assert_eq!(
        (from_rust[0].live_blocks, from_rust[0].live_bytes),
        (10, 1000)
    );
    assert_eq!(from_rust[0].origin, Origin::C);
    // A Rust block through the global allocator is counted once, as Rust's.
    let v = black_box(vec![1u8; 4321]);
    let report = leakscope::snapshot();
    let rust: Vec<_> = report
        .callsites
        .iter()
        .filter(|c| c.live_bytes == 4321)
        .collect();
    assert_eq!(rust.len(), 1);
    assert_eq!(rust[0].origin, Origin::Rust);
    drop(v);
}

/// Rust threads allocate through C, C threads free, and the other way
/// round: every block is counted once, freed once.
fn c_and_rust_threads_free_each_others_blocks() {
    const N: usize = 2000;
    struct Blocks(Vec<*mut c_void>);
    // SAFETY: plain addresses of C blocks, handed from thread to thread.
    unsafe impl Send for Blocks {}
    let before = common::site_now("c_alloc_for");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut blocks = Blocks(vec![std::ptr::null_mut(); N]);
                // SAFETY: `N` slots for the C function to fill.
                unsafe { c::c_alloc_for(blocks.0.as_mut_ptr(), N as i32) };
                let freer = std::thread::spawn(move || {
                    let mut blocks = blocks;
                    if t % 2 == 0 {
                        // SAFETY: blocks of C's malloc, freed once.
                        unsafe { c::c_free_all(blocks.0.as_mut_ptr(), N as i32) };
                    } else {
                        for &p in &blocks.0 {
                            // SAFETY: as above, by Rust calling C's free.
                            unsafe { libc::free(p) };
                        }
                    }
                });
                freer.join().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let after = common::site_now("c_alloc_for");
    assert_eq!(after.live_blocks, before.live_blocks);
    assert_eq!(after.total_blocks - before.total_blocks, 4 * N as u64);
    assert_eq!(after.total_bytes - before.total_bytes, 4 * N as u64 * 48);
}

/// glibc's own function `name`, past the program's (the tracker's).
fn glibc(name: &std::ffi::CStr) -> usize {
    // SAFETY: dlsym with a NUL-terminated name.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    assert_ne!(f, 0, "{name:?}");
    f
}

fn errno() -> i32 {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = v };
}

/// Sizes and alignments glibc refuses are refused the same way (the same
/// result and errno as glibc's own function), and the odd cases of the C
/// standard behave as glibc's: `free(NULL)`, `realloc(NULL, n)`,
/// `realloc(p, 0)` (which frees), `malloc(0)`.
fn odd_and_failing_calls_are_glibcs() {
    type Alloc = unsafe extern "C" fn(usize) -> *mut c_void;
    type Aligned = unsafe extern "C" fn(usize, usize) -> *mut c_void;
    type Posix = unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> i32;
    type Array = unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void;
    // SAFETY: glibc's functions, of these signatures, called as the
    // program's are; every block made is freed.
    unsafe {
        let g_malloc: Alloc = std::mem::transmute(glibc(c"malloc"));
        let g_aligned: Aligned = std::mem::transmute(glibc(c"aligned_alloc"));
        let g_memalign: Aligned = std::mem::transmute(glibc(c"memalign"));
        let g_posix: Posix = std::mem::transmute(glibc(c"posix_memalign"));
        let g_array: Array = std::mem::transmute(glibc(c"reallocarray"));
        // Each call with errno cleared first: null or not, and errno, alike.
        let same =
            |what: &str, ours: &dyn Fn() -> *mut c_void, theirs: &dyn Fn() -> *mut c_void| {
                set_errno(0);
                let p = ours();
                let e1 = errno();
                set_errno(0);
                let q = theirs();
                assert_eq!((p.is_null(), e1), (q.is_null(), errno()), "{what}");
                libc::free(p);
                libc::free(q);
            };
        for size in [usize::MAX, usize::MAX / 2, 1 << 62] {
            same("malloc", &|| libc::malloc(size), &|| g_malloc(size));
        }
        for (align, size) in [(3, 10), (0, 10), (1 << 63, 10), (64, usize::MAX - 100)] {
            let what = format!("({align}, {size})");
            same(&what, &|| libc::aligned_alloc(align, size), &|| {
                g_aligned(align, size)
            });
            same(&what, &|| libc::memalign(align, size), &|| {
                g_memalign(align, size)
            });
            let (mut p, mut q) = (std::ptr::null_mut(), std::ptr::null_mut());
            let (r1, r2) = (
                libc::posix_memalign(&mut p, align, size),
                g_posix(&mut q, align, size),
            );
            assert_eq!(r1, r2, "posix_memalign({align}, {size})");
            libc::free(p);
            libc::free(q);
        }
        same(
            "reallocarray",
            &|| libc::reallocarray(std::ptr::null_mut(), usize::MAX, 2),
            &|| g_array(std::ptr::null_mut(), usize::MAX, 2),
        );
        // The standard's odd cases, counted as what they are.
        let before = common::site_now("odd_and_failing_calls_are_glibcs");
        libc::free(std::ptr::null_mut());
        let p = libc::realloc(std::ptr::null_mut(), 40);
        assert!(!p.is_null());
        assert!(libc::malloc_usable_size(p) >= 40);
        assert!(libc::realloc(p, 0).is_null());
        let z = libc::malloc(0);
        assert!(!z.is_null());
        libc::free(z);
        let after = common::site_now("odd_and_failing_calls_are_glibcs");
        assert_eq!(after.total_blocks - before.total_blocks, 2);
        assert_eq!(after.live_blocks, before.live_blocks);
    }
}

/// `malloc_usable_size` of a block the tracker counts is the size asked
/// (glibc's would include its slack: 56 for 41), wherever the block's entry
/// is: this thread's young table, the shared table (2,000 blocks push most
/// out of the young one), another thread's; a block glibc made past the
/// tracker gets glibc's answer.
fn malloc_usable_size_is_the_size_asked() {
    type Usable = unsafe extern "C" fn(*mut c_void) -> usize;
    // SAFETY: glibc's function of this signature; every block is freed.
    unsafe {
        let g_usable: Usable = std::mem::transmute(glibc(c"malloc_usable_size"));
        let p = libc::malloc(41);
        assert_eq!((libc::malloc_usable_size(p), g_usable(p)), (41, 56));
        let many: Vec<usize> = (0..2000).map(|_| libc::malloc(45) as usize).collect();
        for &q in &many {
            assert_eq!(libc::malloc_usable_size(q as *mut c_void), 45);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(libc::malloc(43) as usize).unwrap();
            // Alive, its young table holding the block, until asked.
            done_rx.recv().unwrap();
        });
        let theirs = rx.recv().unwrap() as *mut c_void;
        assert_eq!(libc::malloc_usable_size(theirs), 43);
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(libc::malloc_usable_size(theirs), 43);
        let past = glibc_malloc(41);
        assert_eq!(libc::malloc_usable_size(past), 56);
        for q in many {
            libc::free(q as *mut c_void);
        }
        libc::free(p);
        libc::free(theirs);
        libc::free(past);
    }
}

/// glibc's `__libc_malloc`: a block the tracker never sees.
unsafe fn glibc_malloc(size: usize) -> *mut c_void {
    extern "C" {
        fn __libc_malloc(size: usize) -> *mut c_void;
    }
    // SAFETY: glibc's malloc, same contract.
    unsafe { __libc_malloc(size) }
}

/// How a block of the model test was made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Maker {
    /// By C code (`c_m_malloc`, `c_m_calloc`, `c_m_realloc`).
    C,
    /// By Rust calling `libc::malloc` (`model_libc_alloc`).
    Libc,
    /// Through the global allocator (`model_rust_alloc`).
    Rust,
}

#[derive(Clone, Copy, Debug)]
struct MBlock {
    ptr: usize,
    size: usize,
    maker: Maker,
    /// Made inside a run of scope `model-c`.
    scoped: bool,
}

// SAFETY: plain addresses, handed from thread to thread as C code does.
unsafe impl Send for MBlock {}

/// What one thread changed: per maker, (live blocks, live bytes, total
/// blocks, total bytes); the scope's outstanding blocks and bytes; its runs.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Delta {
    by: [[i64; 4]; 3],
    scope: [i64; 2],
    runs: i64,
}

impl Delta {
    fn made(&mut self, b: &MBlock) {
        let d = &mut self.by[b.maker as usize];
        d[0] += 1;
        d[1] += b.size as i64;
        d[2] += 1;
        d[3] += b.size as i64;
        if b.scoped {
            self.scope[0] += 1;
            self.scope[1] += b.size as i64;
        }
    }

    fn freed(&mut self, b: &MBlock) {
        let d = &mut self.by[b.maker as usize];
        d[0] -= 1;
        d[1] -= b.size as i64;
        if b.scoped {
            self.scope[0] -= 1;
            self.scope[1] -= b.size as i64;
        }
    }

    fn add(&mut self, o: &Delta) {
        for (m, om) in self.by.iter_mut().zip(&o.by) {
            for (a, b) in m.iter_mut().zip(om) {
                *a += b;
            }
        }
        self.scope[0] += o.scope[0];
        self.scope[1] += o.scope[1];
        self.runs += o.runs;
    }
}

/// The report's figures in a `Delta`'s shape: per maker, the call-sites
/// whose stack holds its marker function.
fn observed(report: &Report) -> Delta {
    let mut d = Delta::default();
    for c in &report.callsites {
        let has = |name: &str| {
            c.frames
                .iter()
                .any(|f| f.function.as_deref().is_some_and(|n| n.contains(name)))
        };
        let maker = if has("c_m_") {
            Maker::C
        } else if has("model_libc_alloc") {
            Maker::Libc
        } else if has("model_rust_alloc") {
            Maker::Rust
        } else {
            continue;
        };
        let m = &mut d.by[maker as usize];
        m[0] += c.live_blocks as i64;
        m[1] += c.live_bytes as i64;
        m[2] += c.total_blocks as i64;
        m[3] += c.total_bytes as i64;
    }
    if let Some(s) = report.scope("model-c") {
        d.scope = [s.outstanding_blocks as i64, s.outstanding_bytes as i64];
        d.runs = s.runs as i64;
    }
    d
}

/// A block from C's `malloc` or `calloc`, in a C frame.
fn model_c_alloc(zeroed: bool, size: usize) -> usize {
    // SAFETY: the C functions take a size.
    unsafe {
        if zeroed {
            c::c_m_calloc(size) as usize
        } else {
            c::c_m_malloc(size) as usize
        }
    }
}

#[inline(never)]
fn model_libc_alloc(size: usize) -> usize {
    // SAFETY: malloc has no preconditions.
    unsafe { libc::malloc(size) as usize }
}

#[inline(never)]
fn model_rust_alloc(size: usize) -> usize {
    // SAFETY: a non-zero size.
    unsafe { std::alloc::alloc(std::alloc::Layout::from_size_align(size, 8).unwrap()) as usize }
}

/// Frees `b` as its kind is freed: a C block by C's `free` or Rust's
/// `libc::free` (either), a Rust block by the global allocator.
fn model_free(b: &MBlock, by_c: bool) {
    // SAFETY: a live block of the model, freed once, as it was made.
    unsafe {
        match b.maker {
            Maker::Rust => std::alloc::dealloc(
                b.ptr as *mut u8,
                std::alloc::Layout::from_size_align(b.size, 8).unwrap(),
            ),
            _ if by_c => c::c_m_free(b.ptr as *mut c_void),
            _ => libc::free(b.ptr as *mut c_void),
        }
    }
}

/// One thread's operations: makes, frees, reallocations, blocks handed to
/// the pool and blocks taken from it (another thread's) and freed, in
/// batches of 50 of which half run inside scope `model-c`. Returns what it
/// changed, and leaves its held blocks live.
fn model_thread(seed: u64, pool: &Mutex<Vec<MBlock>>, held: &mut Vec<MBlock>) -> Delta {
    const OPS: usize = 3000;
    const HOLD: usize = 200;
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut d = Delta::default();
    let batch =
        |d: &mut Delta, held: &mut Vec<MBlock>, scoped: bool, next: &mut dyn FnMut() -> u64| {
            for _ in 0..50 {
                let r = next();
                let size = 1 + (r >> 20) as usize % 2048;
                match r % 100 {
                    0..=39 if held.len() < HOLD => {
                        let (ptr, maker) = match (r >> 8) % 4 {
                            0 => (model_c_alloc(false, size), Maker::C),
                            1 => (model_c_alloc(true, size), Maker::C),
                            2 => (model_libc_alloc(size), Maker::Libc),
                            _ => (model_rust_alloc(size), Maker::Rust),
                        };
                        assert_ne!(ptr, 0);
                        let b = MBlock {
                            ptr,
                            size,
                            maker,
                            scoped,
                        };
                        d.made(&b);
                        held.push(b);
                    }
                    0..=59 if !held.is_empty() => {
                        let b = held.swap_remove((r >> 8) as usize % held.len());
                        model_free(&b, r & 1 << 40 != 0);
                        d.freed(&b);
                    }
                    60..=69 => {
                        let i = held.iter().position(|b| b.maker != Maker::Rust);
                        if let Some(i) = i {
                            let old = held[i];
                            // SAFETY: a live C block, replaced by the result.
                            let p =
                                unsafe { c::c_m_realloc(old.ptr as *mut c_void, size) } as usize;
                            assert_ne!(p, 0);
                            d.freed(&old);
                            let b = MBlock {
                                ptr: p,
                                size,
                                maker: Maker::C,
                                scoped,
                            };
                            d.made(&b);
                            held[i] = b;
                        }
                    }
                    70..=84 if !held.is_empty() => {
                        let b = held.swap_remove((r >> 8) as usize % held.len());
                        pool.lock().unwrap().push(b);
                    }
                    _ => {
                        let taken = pool.lock().unwrap().pop();
                        if let Some(b) = taken {
                            model_free(&b, r & 1 << 41 != 0);
                            d.freed(&b);
                        }
                    }
                }
            }
        };
    for _ in 0..OPS / 50 {
        if next() % 2 == 0 {
            d.runs += 1;
            leakscope::track_scope("model-c", || batch(&mut d, held, true, &mut next));
        } else {
            batch(&mut d, held, false, &mut next);
        }
    }
    d
}

/// What a thread of C's own runs: `model_thread`, its result put back.
struct COwned<'a> {
    seed: u64,
    pool: &'a Mutex<Vec<MBlock>>,
    start: &'a Barrier,
    out: Option<(Delta, Vec<MBlock>)>,
}

extern "C" fn on_c_thread(arg: *mut c_void) {
    // SAFETY: the `COwned` `c_and_rust_blocks_match_a_model` passes, alive
    // until the C thread is joined.
    let ctx = unsafe { &mut *arg.cast::<COwned>() };
    ctx.start.wait();
    let mut held = Vec::new();
    let d = model_thread(ctx.seed, ctx.pool, &mut held);
    ctx.out = Some((d, held));
}

/// Two Rust threads and a thread C made allocate from C (malloc, calloc,
/// realloc in C frames; malloc from Rust) and from Rust, free their own
/// blocks and each other's (by C's free, Rust's `libc::free`, the global
/// allocator), inside and outside a scope: the report's call-sites, totals
/// and scope agree with a model of every block exactly, while the blocks
/// are live and once all are freed. `LEAKSCOPE_MODEL_SEED=N` replays a seed.
fn c_and_rust_blocks_match_a_model() {
    let seed: u64 = std::env::var("LEAKSCOPE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("model seed {seed}");
    let before = observed(&leakscope::snapshot());
    let pool = Mutex::new(Vec::new());
    let start = Barrier::new(3);
    let mut ctx = COwned {
        seed: seed.wrapping_mul(3),
        pool: &pool,
        start: &start,
        out: None,
    };
    let (mut model, mut live) = std::thread::scope(|s| {
        let rust: Vec<_> = (1..=2u64)
            .map(|t| {
                let (pool, start) = (&pool, &start);
                s.spawn(move || {
                    start.wait();
                    let mut held = Vec::new();
                    let d = model_thread(seed.wrapping_add(t << 32), pool, &mut held);
                    (d, held)
                })
            })
            .collect();
        let arg = std::ptr::addr_of_mut!(ctx).cast::<c_void>();
        // SAFETY: `ctx` outlives the C thread, joined before this returns.
        assert_eq!(unsafe { c::c_run_on_thread(on_c_thread, arg) }, 0);
        let mut model = Delta::default();
        let mut live = Vec::new();
        for t in rust {
            let (d, held) = t.join().unwrap();
            model.add(&d);
            live.extend(held);
        }
        (model, live)
    });
    let (d, held) = ctx.out.take().expect("the C thread ran");
    model.add(&d);
    live.extend(held);
    live.extend(pool.into_inner().unwrap());
    model.add(&before);
    assert!(live.iter().any(|b| b.maker == Maker::C) && model.runs > 0);
    assert_eq!(observed(&leakscope::snapshot()), model, "seed {seed}");
    // Everything freed: nothing live, the totals kept.
    for b in &live {
        model_free(b, b.ptr % 32 == 0);
        model.freed(b);
    }
    assert_eq!(model.scope[0] - before.scope[0], 0);
    assert_eq!(observed(&leakscope::snapshot()), model, "seed {seed}");
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_heap");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The planted program under the gate: it fails, and its report lists
/// exactly the lost C blocks; valgrind finds the same (when installed).
fn planted_c_leaks_are_lost_as_valgrind_says() {
    let json = scratch("planted.json");
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "plant")
        .env("LEAKSCOPE_REPORT", &json)
        .env("LEAKSCOPE_ERROR_EXITCODE", "23")
        .output_within(common::CHILD_SECS)
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(23),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = common::report_doc(&std::fs::read_to_string(&json).unwrap());
    let amount = |kind: &str| {
        let a = &doc["leak_check"][kind];
        (a["blocks"].as_u64().unwrap(), a["bytes"].as_u64().unwrap())
    };
    assert_eq!(amount("definitely_lost"), DEFINITELY);
    assert_eq!(amount("indirectly_lost"), INDIRECTLY);
    // The block the C static keeps is reachable, held by that static.
    let kept: Vec<&serde_json::Value> = (doc["loss_records"].as_array().unwrap().iter())
        .filter(|r| r["bytes"] == 77)
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["kind"], "still_reachable");
    if !common::tool_runs("valgrind", "valgrind", "LEAKSCOPE_TEST_NEEDS_VALGRIND") {
        return;
    }
    let out = Command::new("valgrind")
        .args(["--leak-check=full", "--error-exitcode=0"])
        .arg(std::env::current_exe().unwrap())
        .env(CHILD, "plant")
        .output_within(common::BUILD_SECS)
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let figure = |kind: &str| -> (u64, u64) {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{kind}: ")))
            .unwrap_or_else(|| panic!("{log}"));
        let words: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit() && c != ',')
            .map(|w| w.replace(',', ""))
            .filter_map(|w| w.parse().ok())
            .collect();
        // "==pid==    definitely lost: 1,846 bytes in 28 blocks"
        (words[2], words[1])
    };
    assert_eq!(figure("definitely lost"), DEFINITELY, "{log}");
    assert_eq!(figure("indirectly lost"), INDIRECTLY, "{log}");
}

fn main() {
    if std::env::var(CHILD).as_deref() == Ok("plant") {
        plant();
        common::scrub_all();
        return;
    }
    common::run(&[
        (
            "c_blocks_are_counted_scoped_and_named",
            c_blocks_are_counted_scoped_and_named,
        ),
        (
            "c_and_rust_threads_free_each_others_blocks",
            c_and_rust_threads_free_each_others_blocks,
        ),
        (
            "odd_and_failing_calls_are_glibcs",
            odd_and_failing_calls_are_glibcs,
        ),
        (
            "malloc_usable_size_is_the_size_asked",
            malloc_usable_size_is_the_size_asked,
        ),
        (
            "c_and_rust_blocks_match_a_model",
            c_and_rust_blocks_match_a_model,
        ),
        (
            "planted_c_leaks_are_lost_as_valgrind_says",
            planted_c_leaks_are_lost_as_valgrind_says,
        ),
    ]);
}
