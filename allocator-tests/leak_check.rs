//! The full leak check: planted cases of each kind, classified exactly, and
//! the same program under `valgrind --leak-check=full` (when valgrind is
//! installed) classifying each planted case the same way.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use common::Deadline;

use leakscope::report::{LeakKind, Report};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

static KEPT: Mutex<Option<Box<[u64; 5]>>> = Mutex::new(None);
static INTERIOR: AtomicUsize = AtomicUsize::new(0);

struct Node {
    child: Box<[u64; 6]>,
    tag: u64,
}

struct Link {
    next: RefCell<Option<Rc<Link>>>,
}

/// A leaked `Box` whose address is gone: 32 bytes definitely lost.
#[inline(never)]
fn plant_definite() {
    std::mem::forget(black_box(Box::new([7u64; 4])));
}

/// A lost node (16 bytes, definitely lost) that owns a child (48 bytes,
/// indirectly lost).
#[inline(never)]
fn plant_indirect() {
    let n = Box::new(Node {
        child: Box::new([1; 6]),
        tag: 2,
    });
    black_box((n.tag, n.child[0]));
    std::mem::forget(black_box(n));
}

/// Only a pointer 16 bytes into the block is kept: 64 bytes possibly lost.
#[inline(never)]
fn plant_possible() {
    let b = Box::new([3u64; 8]);
    INTERIOR.store(Box::into_raw(b) as usize + 16, Ordering::Relaxed);
}

/// Kept in a static: 40 bytes still reachable.
#[inline(never)]
fn plant_reachable() {
    *KEPT.lock().unwrap() = Some(Box::new([5u64; 5]));
}

/// Two `Rc`s that point to each other, both handles dropped: one block
/// leads the lost cycle (definitely lost), the other is indirectly lost.
#[inline(never)]
fn plant_cycle() {
    let a = Rc::new(Link {
        next: RefCell::new(None),
    });
    let b = Rc::new(Link {
        next: RefCell::new(Some(a.clone())),
    });
    *a.next.borrow_mut() = Some(b.clone());
    drop(black_box(a));
    drop(black_box(b));
}

/// Ignored on purpose: reported as still reachable.
#[inline(never)]
fn plant_ignored() {
    let b = Box::new([9u64; 3]);
    leakscope::ignore(&*b);
    std::mem::forget(b);
}

/// Made while checking is disabled on this thread: still reachable.
#[inline(never)]
fn plant_disabled() {
    let _off = leakscope::disable();
    std::mem::forget(black_box(Box::new([4u64; 7])));
}

#[inline(never)]
fn plant_all() {
    plant_definite();
    plant_indirect();
    plant_possible();
    plant_reachable();
    plant_cycle();
}

const PLANTED: [&str; 5] = [
    "plant_definite",
    "plant_indirect",
    "plant_possible",
    "plant_reachable",
    "plant_cycle",
];

/// Blocks per (planted function, kind) in a leak check.
fn by_plant(report: &Report) -> BTreeMap<(String, &'static str), u64> {
    let lc = report.leak_check.as_ref().expect("a leak check");
    let mut out = BTreeMap::new();
    for r in &lc.loss_records {
        let Some(c) = report.callsite(r.callsite) else {
            continue;
        };
        for name in PLANTED
            .iter()
            .chain(["plant_ignored", "plant_disabled"].iter())
        {
            let here = c
                .frames
                .iter()
                .any(|f| f.function.as_deref().is_some_and(|n| n.ends_with(name)));
            if here {
                *out.entry((name.to_string(), r.kind.as_str())).or_default() += r.blocks;
            }
        }
    }
    out
}

fn expected() -> BTreeMap<(String, &'static str), u64> {
    [
        ("plant_definite", "definitely_lost", 1),
        ("plant_indirect", "definitely_lost", 1),
        ("plant_indirect", "indirectly_lost", 1),
        ("plant_possible", "possibly_lost", 1),
        ("plant_reachable", "still_reachable", 1),
        ("plant_cycle", "definitely_lost", 1),
        ("plant_cycle", "indirectly_lost", 1),
    ]
    .into_iter()
    .map(|(f, k, n)| ((f.to_string(), k), n))
    .collect()
}

/// The planted cases, checked at the exit of a child process (where no
/// frame of the test runner is left on the stack), from the JSON report.
fn planted_cases_are_classified_exactly() {
    let dir = scratch("exact");
    let json = dir.join("report.json");
    let out = child_run(
        "1",
        &[
            ("LEAKSCOPE_REPORT", json.as_ref()),
            ("LEAKSCOPE_ERROR_EXITCODE", "23".as_ref()),
        ],
    );
    // Definitely lost blocks remain: the exit status says so.
    assert_eq!(
        out.status.code(),
        Some(23),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = read_json(&json);
    assert_eq!(planted_in_json(&doc), expected_strings());
    let lc = &doc["leak_check"];
    assert_eq!(lc["error"], serde_json::Value::Null);
    // Sizes: 32 + 16 (node) + 32 (one Rc box) definitely lost, 48 + 32
    // indirectly, 64 possibly; nothing else in this program is lost.
    assert_eq!(lc["definitely_lost"]["bytes"], 32 + 16 + 32);
    assert_eq!(lc["definitely_lost"]["blocks"], 3);
    assert_eq!(lc["indirectly_lost"]["bytes"], 48 + 32);
    assert_eq!(lc["possibly_lost"]["bytes"], 64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs this program as a child in `mode` with `env` set.
fn child_run(mode: &str, env: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env(CHILD, mode);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output_within(common::CHILD_SECS).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("leakscope-lc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn expected_strings() -> BTreeMap<(String, String), u64> {
    expected()
        .into_iter()
        .map(|((f, k), n)| ((f, k.to_string()), n))
        .collect()
}

/// Blocks per (planted function, kind) in a JSON report.
fn planted_in_json(doc: &serde_json::Value) -> BTreeMap<(String, String), u64> {
    let mut ours: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in doc["loss_records"].as_array().unwrap() {
        let site = doc["callsites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == r["callsite"])
            .unwrap();
        for name in PLANTED {
            let here = site["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"].as_str().is_some_and(|n| n.ends_with(name)));
            if here {
                *ours
                    .entry((name.to_string(), r["kind"].as_str().unwrap().to_string()))
                    .or_default() += r["blocks"].as_u64().unwrap();
            }
        }
    }
    ours
}

fn ignored_and_disabled_blocks_are_not_leaks() {
    plant_ignored();
    plant_disabled();
    common::scrub_all();
    let report = leakscope::leak_check();
    let got = by_plant(&report);
    assert_eq!(
        got.get(&("plant_ignored".to_string(), "still_reachable")),
        Some(&1)
    );
    assert_eq!(
        got.get(&("plant_disabled".to_string(), "still_reachable")),
        Some(&1)
    );
    assert_eq!(
        got.get(&("plant_ignored".to_string(), "definitely_lost")),
        None
    );
    assert_eq!(
        got.get(&("plant_disabled".to_string(), "definitely_lost")),
        None
    );
}

fn a_later_check_lists_only_new_leaks() {
    let first = leakscope::leak_check();
    plant_definite();
    plant_definite();
    common::scrub_all();
    let second = leakscope::leak_check();
    let added = second
        .leak_check
        .as_ref()
        .unwrap()
        .added_since(first.leak_check.as_ref().unwrap());
    let new_definite: Vec<(u64, u64)> = added
        .iter()
        .filter(|r| r.kind == LeakKind::DefinitelyLost)
        .map(|r| (r.blocks, r.bytes))
        .collect();
    // Two calls from two places: two call-sites, a block each.
    assert_eq!(new_definite, vec![(1, 32), (1, 32)]);
}

fn other_threads_stacks_are_roots() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
    let t = std::thread::spawn(move || {
        let held = black_box(vec![0xABu8; 777]);
        ready_tx.send(held.as_ptr() as usize).unwrap();
        rx.recv().unwrap();
        black_box(&held);
    });
    let addr = ready_rx.recv().unwrap();
    let report = leakscope::leak_check();
    tx.send(()).unwrap();
    t.join().unwrap();
    let lc = report.leak_check.as_ref().unwrap();
    let held: Vec<_> = lc.loss_records.iter().filter(|r| r.bytes == 777).collect();
    assert_eq!(held.len(), 1, "the thread's vector at {addr:#x}: {held:?}");
    assert_eq!(held[0].kind, LeakKind::StillReachable);
}

/// The address of a new 99-byte block, disguised (xor `HIDE`): no word
/// in memory points to the block.
#[inline(never)]
fn hidden_block() -> usize {
    Box::into_raw(black_box(Box::new([0x99u8; 99]))) as usize ^ HIDE
}

const HIDE: usize = 0x5555_5555_5555_5555;

/// A thread whose only pointer to a block is in a vector register, as a
/// `memcpy` stopped half way carries one: the check reads the stopped
/// thread's vector registers too, so the block is reachable, held by a
/// register.
#[cfg(target_arch = "x86_64")]
fn a_pointer_in_a_vector_register_is_a_root() {
    use std::sync::atomic::AtomicU8;
    static READY: AtomicU8 = AtomicU8::new(0);
    static GO: AtomicU8 = AtomicU8::new(0);
    let t = std::thread::spawn(|| {
        let hidden = hidden_block();
        // Nothing left of the block's address on the dead stack either.
        common::scrub_all();
        let back: usize;
        // SAFETY: register moves, and byte loads and stores of two statics.
        unsafe {
            std::arch::asm!(
                "movq xmm8, {h}",
                "movq xmm9, {k}",
                "pxor xmm8, xmm9",
                "xor {h}, {h}",
                "pxor xmm9, xmm9",
                "mov byte ptr [{ready}], 1",
                "2:",
                "pause",
                "cmp byte ptr [{go}], 0",
                "je 2b",
                "movq {h}, xmm8",
                h = inout(reg) hidden => back,
                k = in(reg) HIDE,
                ready = in(reg) READY.as_ptr(),
                go = in(reg) GO.as_ptr(),
                out("xmm8") _,
                out("xmm9") _,
            );
            drop(Box::from_raw(back as *mut [u8; 99]));
        }
    });
    while READY.load(Ordering::Acquire) == 0 {
        std::thread::yield_now();
    }
    let report = leakscope::leak_check();
    GO.store(1, Ordering::Release);
    t.join().unwrap();
    let lc = report.leak_check.as_ref().unwrap();
    let held: Vec<_> = lc.loss_records.iter().filter(|r| r.bytes == 99).collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].kind, LeakKind::StillReachable);
    let root = &held[0].retained_by.as_ref().unwrap().root;
    assert_eq!(root.kind, leakscope::report::RootKind::Register, "{root:?}");
}

/// A word of libc's own data, past any copy in the program: glibc's
/// `program_invocation_name` or `program_invocation_short_name`.
fn libc_word(name: &std::ffi::CStr) -> *mut usize {
    // SAFETY: dlsym with a NUL-terminated name; dladdr fills `info`.
    unsafe {
        let at = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        assert!(!at.is_null(), "{name:?}");
        let mut info: libc::Dl_info = std::mem::zeroed();
        assert_ne!(libc::dladdr(at, &mut info), 0);
        let object = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy();
        assert!(object.contains("libc.so"), "{name:?} is in {object}");
        at.cast()
    }
}

/// Two new 99-byte blocks, one pointed into (40 bytes in) by `name`, the
/// other pointed at by `short`; no other word points to them (out of line:
/// their addresses stay in this frame, which the caller scrubs). Returns
/// the words' values before.
#[inline(never)]
fn point_libc_words(name: *mut usize, short: *mut usize) -> (usize, usize) {
    let (a, b) = (hidden_block(), hidden_block());
    // SAFETY: two pointer-sized words of libc's data, restored by the
    // caller; nothing reads them during the check.
    unsafe {
        let saved = (name.read(), short.read());
        name.write((a ^ HIDE) + 40);
        short.write(b ^ HIDE);
        saved
    }
}

/// libc's and the loader's data hold a block by a pointer to its start
/// only: glibc's malloc state points at free chunks' headers, which lie in
/// live blocks' last bytes (the top chunk after a 40-byte block begins 32
/// bytes into it), and would keep lost blocks "possibly lost". Planted in
/// two of libc's words: a pointer 40 bytes into a lost block leaves it
/// definitely lost; a pointer to another's start keeps it still reachable,
/// held by a static.
fn libc_data_holds_a_block_by_its_start_only() {
    let (name, short) = (
        libc_word(c"program_invocation_name"),
        libc_word(c"program_invocation_short_name"),
    );
    let saved = point_libc_words(name, short);
    common::scrub_all();
    let report = leakscope::leak_check();
    // SAFETY: as above.
    let (into, at) = unsafe {
        let now = (name.read(), short.read());
        name.write(saved.0);
        short.write(saved.1);
        now
    };
    // SAFETY: the blocks `hidden_block` made, freed once.
    unsafe {
        drop(Box::from_raw(into.wrapping_sub(40) as *mut [u8; 99]));
        drop(Box::from_raw(at as *mut [u8; 99]));
    }
    let lc = report.leak_check.as_ref().unwrap();
    let records: Vec<_> = lc.loss_records.iter().filter(|r| r.bytes == 99).collect();
    let kinds: Vec<_> = records.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [LeakKind::DefinitelyLost, LeakKind::StillReachable],
        "{records:?}"
    );
    let root = &records[1].retained_by.as_ref().unwrap().root;
    assert_eq!(root.kind, leakscope::report::RootKind::Static, "{root:?}");
}

thread_local! {
    static LOCAL_CACHE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

static NAMES: std::sync::OnceLock<Mutex<std::collections::HashMap<String, Vec<u8>>>> =
    std::sync::OnceLock::new();

/// A program without leaks, doing what programs do: threads, printing,
/// formatting, a lazily made global map, thread-locals on every thread.
fn clean_child() {
    let names = NAMES.get_or_init(Default::default);
    names.lock().unwrap().insert("a".repeat(40), vec![1; 100]);
    LOCAL_CACHE.with(|c| c.borrow_mut().push(format!("main {}", 42)));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                LOCAL_CACHE.with(|c| c.borrow_mut().push(format!("worker {i}")));
                let v: Vec<String> = (0..100).map(|j| j.to_string()).collect();
                NAMES
                    .get()
                    .unwrap()
                    .lock()
                    .unwrap()
                    .insert(format!("w{i}"), v.concat().into_bytes());
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    println!("clean child done: {} names", names.lock().unwrap().len());
    eprintln!("and stderr too");
}

/// Exits while another thread still runs, holding a block on its stack (and
/// a third keeps allocating): the check at exit stops them and scans them.
fn busy_child() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let held = black_box(vec![0x5Au8; 4321]);
        tx.send(()).unwrap();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            black_box(&held);
        }
    });
    std::thread::spawn(|| loop {
        black_box(vec![1u8; 64]);
    });
    rx.recv().unwrap();
}

/// The child for the valgrind run: plants, then exits with the exit report.
fn child() {
    plant_all();
    common::scrub_all();
}

fn suppressions_hide_lost_blocks_and_bad_lines_are_reported() {
    let dir = scratch("supp");
    let json = dir.join("report.json");
    let supp = dir.join("leaks.supp");
    std::fs::write(
        &supp,
        "# the node and its child\nleak:plant_indirect\nnot a suppression\nleak:\n",
    )
    .unwrap();
    let out = child_run(
        "1",
        &[
            ("LEAKSCOPE_REPORT", json.as_ref()),
            ("LEAKSCOPE_SUPPRESSIONS", supp.as_ref()),
        ],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("leaks.supp:3:"), "{stderr}");
    assert!(stderr.contains("leaks.supp:4:"), "{stderr}");
    let doc = read_json(&json);
    let mut want = expected_strings();
    want.retain(|(f, _), _| f != "plant_indirect");
    assert_eq!(planted_in_json(&doc), want);
    let lc = &doc["leak_check"];
    // The node (16 bytes, definitely lost) and its child (48, indirectly).
    assert_eq!(
        lc["suppressed"],
        serde_json::json!({"blocks": 2, "bytes": 64})
    );
    assert_eq!(
        lc["suppressions_used"],
        serde_json::json!([{"pattern": "plant_indirect", "blocks": 2, "bytes": 64}])
    );
    assert_eq!(lc["definitely_lost"]["bytes"], 32 + 32);
    // An unreadable file: said once, and the check goes on.
    let out = child_run(
        "1",
        &[
            ("LEAKSCOPE_REPORT", json.as_ref()),
            ("LEAKSCOPE_SUPPRESSIONS", dir.join("missing.supp").as_ref()),
        ],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("cannot read LEAKSCOPE_SUPPRESSIONS").count(),
        1,
        "{stderr}"
    );
    assert_eq!(planted_in_json(&read_json(&json)), expected_strings());
    let _ = std::fs::remove_dir_all(&dir);
}

fn bad_settings_are_reported_and_ignored() {
    let dir = scratch("env");
    let json = dir.join("report.json");
    let out = child_run(
        "1",
        &[
            ("LEAKSCOPE_REPORT", json.as_ref()),
            ("LEAKSCOPE_LEAK_CHECK", "maybe".as_ref()),
            ("LEAKSCOPE_ERROR_EXITCODE", "lots".as_ref()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LEAKSCOPE_LEAK_CHECK=\"maybe\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("LEAKSCOPE_ERROR_EXITCODE=\"lots\""),
        "{stderr}"
    );
    // The check stays on; the exit status is the program's own.
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(planted_in_json(&read_json(&json)), expected_strings());
    // LEAKSCOPE_LEAK_CHECK=no: the report has no leak check, and the gate
    // cannot pass the program.
    let out = child_run(
        "1",
        &[
            ("LEAKSCOPE_REPORT", json.as_ref()),
            ("LEAKSCOPE_LEAK_CHECK", "no".as_ref()),
            ("LEAKSCOPE_ERROR_EXITCODE", "23".as_ref()),
        ],
    );
    // A gate that cannot look never passes: the status is the gate's, and
    // one line says why.
    assert_eq!(out.status.code(), Some(23));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "the leak check did not run (LEAKSCOPE_LEAK_CHECK=no turns the leak check off)"
        ),
        "{stderr}"
    );
    let doc = read_json(&json);
    assert_eq!(doc.get("leak_check"), None);
    assert!(doc["callsites"].as_array().unwrap().len() > 5);
    // LEAKSCOPE_ERROR_EXITCODE alone: the check runs at exit, one line says
    // what was lost, and the status says so.
    let out = child_run("1", &[("LEAKSCOPE_ERROR_EXITCODE", "42".as_ref())]);
    assert_eq!(out.status.code(), Some(42));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("80 bytes in 3 blocks definitely lost, 80 bytes in 2 blocks indirectly lost"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Workers allocate, free, hand blocks to each other and open scopes as
/// fast as they can while the main thread checks again and again: every
/// check completes (a thread stopped inside the allocator holds no lock the
/// check needs), and nothing the workers hold is lost. (A check that
/// stopped a worker inside `realloc` of its growing `kept` buffer, after
/// the old buffer's entry was taken out, called the boxes it held lost, in
/// about one full debug run in three, until the check was shown the
/// blocks a `realloc` has in flight: see `a_realloc_in_flight_loses_nothing`.)
fn checks_while_threads_allocate() {
    assert_eq!(checks_while_threads_allocate_round(), Vec::<String>::new());
}

/// Passes everything to `System`, but that a `realloc` on a thread that
/// asked for it waits, before it moves the block, until the test lets it go.
struct Pausing;

thread_local! {
    static PAUSE_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
static PARKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static GO_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

// SAFETY: `System`'s blocks, with `System`'s contract.
unsafe impl std::alloc::GlobalAlloc for Pausing {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded contract.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        if PAUSE_HERE.with(|p| p.get()) {
            PARKED.store(true, Ordering::Release);
            while !GO_ON.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        }
        // SAFETY: forwarded contract.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

/// A second tracker over [`Pausing`]: it shares the global one's tables.
static PAUSING: leakscope::LeakTracker<Pausing> = leakscope::LeakTracker::new(Pausing);

/// A check that stops a thread inside `realloc`, after the tracker took the
/// old block's entry out and before the inner allocator moved it: the ten
/// boxes only that block holds are still reachable (not lost), and the
/// block itself, listed nowhere at that moment, is in no record.
fn a_realloc_in_flight_loses_nothing() {
    use std::alloc::{GlobalAlloc, Layout};
    PARKED.store(false, Ordering::Relaxed);
    GO_ON.store(false, Ordering::Relaxed);
    let worker = std::thread::spawn(|| {
        let layout = Layout::from_size_align(80, 8).unwrap();
        let buffer = leakscope::track_scope("in flight", || {
            // SAFETY: a non-zero layout.
            let p = unsafe { PAUSING.alloc(layout) }.cast::<*mut [u64; 3]>();
            assert!(!p.is_null());
            for i in 0..10 {
                // SAFETY: `p` has room for ten pointers.
                unsafe { p.add(i).write(Box::into_raw(Box::new([i as u64; 3]))) };
            }
            p
        });
        PAUSE_HERE.with(|p| p.set(true));
        // SAFETY: `buffer` is live with `layout`.
        let moved = unsafe { PAUSING.realloc(buffer.cast(), layout, 8000) };
        PAUSE_HERE.with(|p| p.set(false));
        assert!(!moved.is_null());
        let moved = moved.cast::<*mut [u64; 3]>();
        for i in 0..10 {
            // SAFETY: the ten boxes, moved with the buffer.
            drop(unsafe { Box::from_raw(moved.add(i).read()) });
        }
        // SAFETY: `moved` is live with 8000 bytes.
        unsafe { PAUSING.dealloc(moved.cast(), Layout::from_size_align(8000, 8).unwrap()) };
    });
    while !PARKED.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    let report = leakscope::leak_check();
    GO_ON.store(true, Ordering::Release);
    worker.join().unwrap();
    let lc = report.leak_check.as_ref().unwrap();
    assert_eq!(lc.error, None);
    // By kind (a box whose pointer the worker's stack still holds has a
    // path of its own, so a record of its own).
    let mut mine = BTreeMap::new();
    for r in &lc.loss_records {
        if r.scope.as_deref() == Some("in flight") {
            let e = mine.entry(format!("{:?}", r.kind)).or_insert((0, 0));
            *e = (e.0 + r.blocks, e.1 + r.bytes);
        }
    }
    assert_eq!(
        mine,
        BTreeMap::from([("StillReachable".to_owned(), (10, 240))])
    );
}

/// One round of [`checks_while_threads_allocate`]: the loss records of the
/// workers' blocks that its checks called lost.
fn checks_while_threads_allocate_round() -> Vec<String> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded: senders that outran the receivers would grow the heap each
    // check scans without end (the test slowed down under load).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u64>>(256);
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            let tx = tx.clone();
            let rx = rx.clone();
            std::thread::spawn(move || {
                let mut kept: Vec<Box<[u64; 3]>> = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    leakscope::track_scope("stress", || {
                        kept.push(Box::new([n; 3]));
                        if kept.len() > 64 {
                            kept.drain(..32);
                        }
                        let v: Vec<u64> = (0..(n % 50)).collect();
                        if i % 2 == 0 {
                            let _ = tx.try_send(v);
                        } else if let Ok(v) = rx.lock().unwrap().try_recv() {
                            black_box(v);
                        }
                    });
                    n += 1;
                }
                black_box(&kept);
                kept.len()
            })
        })
        .collect();
    drop(tx);
    let mut lost_in_stress = Vec::new();
    for _ in 0..20 {
        let report = leakscope::leak_check();
        let lc = report.leak_check.as_ref().unwrap();
        assert_eq!(lc.error, None);
        for r in &lc.loss_records {
            if r.scope.as_deref() == Some("stress")
                && matches!(r.kind, LeakKind::DefinitelyLost | LeakKind::IndirectlyLost)
            {
                let site = report.callsite(r.callsite).unwrap();
                let frames: Vec<_> = site.frames.iter().map(|f| f.function.clone()).collect();
                lost_in_stress.push(format!("{r:?} {:?} {frames:?}", site.origin));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
    // Drain what is left in the channel.
    while rx.lock().unwrap().try_recv().is_ok() {}
    lost_in_stress
}

fn a_clean_program_loses_nothing() {
    let dir = scratch("clean");
    let json = dir.join("report.json");
    let out = child_run(
        "clean",
        &[
            ("LEAKSCOPE_REPORT", json.as_ref()),
            ("LEAKSCOPE_ERROR_EXITCODE", "23".as_ref()),
        ],
    );
    let doc = read_json(&json);
    let lc = &doc["leak_check"];
    assert_eq!(lc["error"], serde_json::Value::Null);
    assert_eq!(
        (
            &lc["definitely_lost"]["blocks"],
            &lc["indirectly_lost"]["blocks"]
        ),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "{}",
        serde_json::to_string_pretty(&doc["loss_records"]).unwrap()
    );
    assert_eq!(out.status.code(), Some(0));
    // The map is held through a pointer into the middle of its table (to
    // hashbrown's control bytes), which valgrind takes for an interior
    // pointer: it reports the table (408 bytes), its five keys and five
    // values possibly lost. The hashbrown heuristic knows the table: all
    // still reachable, the table through the heuristic.
    assert_eq!(lc["possibly_lost"]["blocks"], 0);
    assert_eq!(
        lc["reachable_via_heuristic"],
        serde_json::json!({"blocks": 1, "bytes": 408})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn the_check_at_exit_stops_running_threads() {
    let dir = scratch("busy");
    let json = dir.join("report.json");
    let out = child_run("busy", &[("LEAKSCOPE_REPORT", json.as_ref())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = read_json(&json);
    assert_eq!(doc["leak_check"]["error"], serde_json::Value::Null);
    let held: Vec<&serde_json::Value> = doc["loss_records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["bytes"] == 4321)
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["kind"], "still_reachable");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A thread that blocks every signal cannot be stopped: the check gives up
/// with the reason, and every thread (it too) runs on.
fn a_thread_that_cannot_be_stopped_fails_the_check_not_the_program() {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (ready, is_ready) = std::sync::mpsc::channel::<()>();
    let deaf = std::thread::spawn(move || {
        // SAFETY: blocks every signal on this thread only.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        ready.send(()).unwrap();
        wait.recv().unwrap();
        black_box(vec![1u8; 10]).len()
    });
    is_ready.recv().unwrap();
    let start = std::time::Instant::now();
    let report = leakscope::leak_check();
    let lc = report.leak_check.as_ref().unwrap();
    assert!(
        lc.error
            .as_deref()
            .is_some_and(|e| e.contains("did not stop")),
        "{:?}",
        lc.error
    );
    assert_eq!(lc.definitely_lost, leakscope::report::BlockTotal::default());
    assert!(start.elapsed().as_secs() < 10);
    go.send(()).unwrap();
    assert_eq!(deaf.join().unwrap(), 10);
    // The next check, with that thread gone, works.
    assert_eq!(leakscope::leak_check().leak_check.unwrap().error, None);
}

fn same_classification_as_valgrind() {
    if common::under_asan("which valgrind cannot run under")
        || !common::tool_runs("valgrind", "valgrind", "LEAKSCOPE_TEST_NEEDS_VALGRIND")
    {
        return;
    }
    let dir = scratch("valgrind");
    let json = dir.join("report.json");
    let log = dir.join("valgrind.log");
    let status = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--show-leak-kinds=all",
            "--num-callers=50",
            &format!("--log-file={}", log.display()),
        ])
        .arg(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("LEAKSCOPE_REPORT", &json)
        .status_within(common::BUILD_SECS)
        .unwrap();
    assert!(status.success(), "child under valgrind: {status}");
    let ours = planted_in_json(&read_json(&json));
    // valgrind's, from its log: "N bytes in M blocks are <kind> in loss record".
    let text = std::fs::read_to_string(&log).unwrap();
    let mut theirs: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut current: Option<(String, u64)> = None;
    for line in text.lines() {
        let body = line.split_once("== ").map_or(line, |(_, b)| b).trim();
        if let Some((head, _)) = body.split_once(" in loss record ") {
            let words: Vec<&str> = head.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "in").unwrap();
            let blocks: u64 = words[i + 1].replace(',', "").parse().unwrap();
            let kind = words[i + 4..].join("_");
            current = Some((kind, blocks));
            continue;
        }
        if body.is_empty() {
            current = None;
            continue;
        }
        // The tracker's own tables (libc memory, allocated when a planted
        // call first needed room) are not the program's blocks. (Not all of
        // `leakscope::alloc`: every planted block's own stack passes
        // through the tracker's `alloc` below the planted function.)
        if [
            "hashbrown",
            "leakscope::alloc::callsite",
            "leakscope::alloc::blocks",
            "leakscope::alloc::dense",
            "leakscope::scope::",
        ]
        .iter()
        .any(|m| body.contains(m))
        {
            current = None;
            continue;
        }
        if let Some((kind, blocks)) = &current {
            if let Some(name) = PLANTED.iter().find(|n| body.contains(&format!("::{n} ("))) {
                *theirs.entry((name.to_string(), kind.clone())).or_default() += blocks;
                current = None;
            }
        }
    }
    assert_eq!(theirs, ours, "valgrind (left) and leakscope (right) differ");
    assert_eq!(ours, expected_strings());
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    match std::env::var(CHILD).as_deref() {
        Ok("clean") => return clean_child(),
        Ok("busy") => return busy_child(),
        Ok(_) => return child(),
        Err(_) => {}
    }
    common::run(&[
        (
            "planted_cases_are_classified_exactly",
            planted_cases_are_classified_exactly,
        ),
        (
            "ignored_and_disabled_blocks_are_not_leaks",
            ignored_and_disabled_blocks_are_not_leaks,
        ),
        (
            "a_later_check_lists_only_new_leaks",
            a_later_check_lists_only_new_leaks,
        ),
        (
            "other_threads_stacks_are_roots",
            other_threads_stacks_are_roots,
        ),
        #[cfg(target_arch = "x86_64")]
        (
            "a_pointer_in_a_vector_register_is_a_root",
            a_pointer_in_a_vector_register_is_a_root,
        ),
        (
            "libc_data_holds_a_block_by_its_start_only",
            libc_data_holds_a_block_by_its_start_only,
        ),
        (
            "a_clean_program_loses_nothing",
            a_clean_program_loses_nothing,
        ),
        (
            "checks_while_threads_allocate",
            checks_while_threads_allocate,
        ),
        (
            "a_realloc_in_flight_loses_nothing",
            a_realloc_in_flight_loses_nothing,
        ),
        (
            "the_check_at_exit_stops_running_threads",
            the_check_at_exit_stops_running_threads,
        ),
        (
            "a_thread_that_cannot_be_stopped_fails_the_check_not_the_program",
            a_thread_that_cannot_be_stopped_fails_the_check_not_the_program,
        ),
        (
            "suppressions_hide_lost_blocks_and_bad_lines_are_reported",
            suppressions_hide_lost_blocks_and_bad_lines_are_reported,
        ),
        (
            "bad_settings_are_reported_and_ignored",
            bad_settings_are_reported_and_ignored,
        ),
        (
            "same_classification_as_valgrind",
            same_classification_as_valgrind,
        ),
    ]);
}
