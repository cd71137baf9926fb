//! Retention paths: who holds a still-reachable block. Planted, exact: a
//! static `HashMap` (its table the first hop, reached through the control
//! bytes' heuristic), a three-node chain from a static, a linked list (one
//! hop), a `Vec` local in a parked thread, a `thread_local!`, and a lost
//! `Rc` cycle (no path).

#![allow(clippy::vec_box)] // the boxes are the planted blocks

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use leakscope::report::{LeakKind, LossRecord, Report, RootKind};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Mutex;

static USER_CACHE: Mutex<Option<HashMap<u64, Box<[u8; 40]>>>> = Mutex::new(None);

struct First {
    _next: Box<Second>,
}
struct Second {
    _next: Box<Third>,
}
struct Third {
    _data: [u64; 9],
}

static CHAIN: Mutex<Option<Box<First>>> = Mutex::new(None);

struct ListNode {
    _next: Option<Box<ListNode>>,
    _value: u64,
}

static LIST: Mutex<Option<Box<ListNode>>> = Mutex::new(None);

/// A static array of pointers, each word a root of its own (its first word
/// is the static's first byte).
static ARRAY: [std::sync::atomic::AtomicUsize; ARRAY_LEN] =
    [const { std::sync::atomic::AtomicUsize::new(0) }; ARRAY_LEN];
const ARRAY_LEN: usize = 1000;

#[inline(never)]
fn fill_array() {
    for slot in &ARRAY {
        let b = Box::into_raw(black_box(Box::new([7u64; 2])));
        slot.store(b as usize, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A linked list of 50 nodes, every one made here.
#[inline(never)]
fn fill_list() {
    let mut head = None;
    for v in 0..50 {
        head = Some(Box::new(ListNode {
            _next: head,
            _value: v,
        }));
    }
    *LIST.lock().unwrap() = head;
}

thread_local! {
    static TLS_LIST: RefCell<Vec<Box<[u8; 56]>>> = const { RefCell::new(Vec::new()) };
}

/// Ten entries of 40 bytes in a static map (made with room for them).
#[inline(never)]
fn fill_cache() {
    let mut map = HashMap::with_capacity(16);
    for k in 0..10 {
        map.insert(k, Box::new([k as u8; 40]));
    }
    *USER_CACHE.lock().unwrap() = Some(map);
}

#[inline(never)]
fn make_third() -> Box<Third> {
    Box::new(Third { _data: [3; 9] })
}

#[inline(never)]
fn make_second() -> Box<Second> {
    Box::new(Second {
        _next: make_third(),
    })
}

#[inline(never)]
fn make_first() -> Box<First> {
    Box::new(First {
        _next: make_second(),
    })
}

#[inline(never)]
fn fill_chain() {
    *CHAIN.lock().unwrap() = Some(make_first());
}

#[inline(never)]
fn fill_tls() {
    TLS_LIST.with(|l| {
        let mut l = l.borrow_mut();
        l.reserve(8);
        for i in 0..4 {
            l.push(Box::new([i; 56]));
        }
    });
}

/// Four boxes of 24 bytes in a `Vec` local to this function, on a thread
/// that then waits until told to go.
#[inline(never)]
fn hold_in_parked_thread(ready: std::sync::mpsc::Sender<i32>, go: std::sync::mpsc::Receiver<()>) {
    let mut held: Vec<Box<[u8; 24]>> = Vec::with_capacity(8);
    for i in 0..4 {
        held.push(Box::new([i; 24]));
    }
    let held = black_box(held);
    // SAFETY: gettid has no preconditions.
    ready.send(unsafe { libc::gettid() }).unwrap();
    go.recv().unwrap();
    drop(black_box(held));
}

struct Link {
    next: RefCell<Option<Rc<Link>>>,
    _pad: [u64; 3],
}

#[inline(never)]
fn lose_cycle() {
    let a = Rc::new(Link {
        next: RefCell::new(None),
        _pad: [0; 3],
    });
    let b = Rc::new(Link {
        next: RefCell::new(Some(a.clone())),
        _pad: [0; 3],
    });
    *a.next.borrow_mut() = Some(b.clone());
}

/// The report's records of blocks made in `function`. (A closure is
/// `{{closure}}` in stable's debug info and `{closure#0}` in nightly's.)
fn records<'a>(report: &'a Report, function: &str) -> Vec<&'a LossRecord> {
    let lc = report.leak_check.as_ref().unwrap();
    let named = |f: &str| f.replace("{closure#0}", "{{closure}}").ends_with(function);
    lc.loss_records
        .iter()
        .filter(|r| (report.callsite(r.callsite)).is_some_and(|c| c.function().is_some_and(named)))
        .collect()
}

/// The one record of blocks made in `function`.
fn record<'a>(report: &'a Report, function: &str) -> &'a LossRecord {
    let r = records(report, function);
    assert_eq!(r.len(), 1, "records of {function}: {r:#?}");
    r[0]
}

/// The two records of blocks made in `function`: a `Vec`'s buffer (one
/// block) and the boxes it holds.
fn buffer_and_boxes<'a>(report: &'a Report, function: &str) -> (&'a LossRecord, &'a LossRecord) {
    let mut r = records(report, function);
    assert_eq!(r.len(), 2, "records of {function}: {r:#?}");
    r.sort_by_key(|r| r.blocks);
    (r[0], r[1])
}

/// A call-site's first frame as the text shows a hop: `function (file:line)`.
fn first_frame(report: &Report, id: u32) -> String {
    let f = &report.callsite(id).unwrap().frames[0];
    format!(
        "{} ({}:{})",
        f.function.as_deref().unwrap(),
        f.file.as_deref().unwrap(),
        f.line.unwrap()
    )
}

/// The first function of call-site `id`, and whether its stack passes
/// through `through`.
fn site(report: &Report, id: u32, through: &str) -> (String, bool) {
    let c = report.callsite(id).unwrap();
    (
        c.function().unwrap_or("").to_owned(),
        c.frames
            .iter()
            .any(|f| f.function.as_deref().is_some_and(|n| n.contains(through))),
    )
}

fn main() {
    common::run(&[
        ("planted_paths_are_exact", planted_paths_are_exact),
        (
            "each_word_of_a_static_array_names_it",
            each_word_of_a_static_array_names_it,
        ),
    ]);
}

/// Waits until thread `tid` of this process is blocked in `futex` (system
/// call 202 on x86_64): stopped anywhere else on its way there (inside
/// glibc, which keeps no frame pointers), its frame chain could not name the
/// function whose frame holds its `Vec`.
fn blocked_in_futex(tid: i32) {
    for _ in 0..1000 {
        let now = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"));
        if now.is_ok_and(|s| s.starts_with("202 ")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the holder never blocked");
}

fn planted_paths_are_exact() {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let holder = std::thread::Builder::new()
        .name("retention-hold".to_owned())
        .spawn(move || hold_in_parked_thread(ready_tx, go_rx))
        .unwrap();
    let tid = ready.recv().unwrap();
    blocked_in_futex(tid);
    // Planted after the holder parked, so that its stack holds nothing of
    // theirs; then this thread's dead stack is scrubbed of their addresses.
    leakscope::track_scope("GET /cache", fill_cache);
    fill_chain();
    fill_list();
    fill_tls();
    lose_cycle();
    common::scrub_all();
    let report = leakscope::leak_check();
    go.send(()).unwrap();
    holder.join().unwrap();

    // The static map: its values are reached through the map's table,
    // which the static holds by a pointer to its control bytes.
    // Both are made in fill_cache: the table (32 buckets of 16 bytes and
    // 48 control bytes) and the ten values.
    let mut made = records(&report, "retention::fill_cache");
    made.sort_by_key(|r| r.blocks);
    let (table, values) = (made[0], made[1]);
    assert_eq!(made.len(), 2, "{made:#?}");
    assert_eq!(
        (table.kind, table.blocks, table.bytes),
        (LeakKind::StillReachable, 1, 560)
    );
    assert_eq!(
        (values.kind, values.blocks, values.bytes),
        (LeakKind::StillReachable, 10, 400)
    );
    let by = table.retained_by.as_ref().unwrap();
    assert_eq!(by.root.kind, RootKind::Static);
    assert_eq!(by.root.name.as_deref(), Some("retention::USER_CACHE"));
    assert_eq!(by.path, [table.callsite]);
    assert!(
        by.via_heuristic,
        "the static holds the table by its control bytes"
    );
    let by = values.retained_by.as_ref().unwrap();
    assert_eq!(by.root.name.as_deref(), Some("retention::USER_CACHE"));
    assert_eq!(by.path, [table.callsite, values.callsite]);
    assert!(by.via_heuristic);
    // The scope that made them says who holds them.
    let scope = report.scope("GET /cache").unwrap();
    let held: Vec<_> = scope
        .retained_by
        .iter()
        .filter(|r| r.retained_by.root.name.as_deref() == Some("retention::USER_CACHE"))
        .collect();
    assert_eq!(
        held.iter().map(|r| (r.blocks, r.bytes)).collect::<Vec<_>>(),
        [(1, 560), (10, 400)],
        "{:#?}",
        scope.retained_by
    );

    // The chain: the third node is three blocks from the static.
    let third = record(&report, "retention::make_third");
    let by = third.retained_by.as_ref().unwrap();
    assert_eq!(by.root.name.as_deref(), Some("retention::CHAIN"));
    let hops: Vec<String> = by.path.iter().map(|&id| site(&report, id, "").0).collect();
    assert_eq!(
        hops,
        [
            "retention::make_first",
            "retention::make_second",
            "retention::make_third"
        ]
    );
    assert!(!by.via_heuristic);

    // The linked list: fifty nodes of one call-site, one hop from the static.
    let nodes = record(&report, "retention::fill_list");
    assert_eq!((nodes.blocks, nodes.bytes), (50, 800));
    let by = nodes.retained_by.as_ref().unwrap();
    assert_eq!(by.root.name.as_deref(), Some("retention::LIST"));
    assert_eq!(by.path, [nodes.callsite]);

    // The thread-local list: its buffer, then the boxes.
    let (buffer, boxes) = buffer_and_boxes(&report, "retention::fill_tls::{{closure}}");
    assert_eq!((buffer.blocks, buffer.bytes), (1, 64));
    assert_eq!((boxes.blocks, boxes.bytes), (4, 224));
    let by = boxes.retained_by.as_ref().unwrap();
    assert_eq!(by.root.kind, RootKind::Tls, "{by:?}");
    assert_eq!(by.path, [buffer.callsite, boxes.callsite]);
    let main_thread = by.root.thread.clone().unwrap();
    assert!("retention".starts_with(&main_thread) || main_thread.starts_with("retention"));

    // The parked thread's local `Vec`: its stack, in that function. The
    // frame may also keep a copy of the last box's pointer (the machine's
    // truth: that box is then held straight from the stack).
    let made = records(&report, "retention::hold_in_parked_thread");
    for r in &made {
        let by = r.retained_by.as_ref().unwrap();
        assert_eq!(by.root.kind, RootKind::Stack, "{by:?}");
        assert_eq!(by.root.thread.as_deref(), Some("retention-hold"), "{by:?}");
        assert_eq!(
            by.root.function.as_deref(),
            Some("retention::hold_in_parked_thread"),
            "{by:?}"
        );
    }
    let buffer = made.iter().find(|r| r.bytes == 64).unwrap();
    assert_eq!(buffer.retained_by.as_ref().unwrap().path, [buffer.callsite]);
    let through_buffer: Vec<_> = made
        .iter()
        .filter(|r| r.retained_by.as_ref().unwrap().path.len() == 2)
        .collect();
    assert_eq!(through_buffer.len(), 1, "{made:#?}");
    let direct = made
        .iter()
        .filter(|r| r.bytes != 64 && r.retained_by.as_ref().unwrap().path.len() == 1);
    assert_eq!(
        through_buffer[0].blocks + direct.map(|r| r.blocks).sum::<u64>(),
        4,
        "{made:#?}"
    );
    assert!(through_buffer[0].blocks >= 3, "{made:#?}");

    // The text, the page and the JSON say it.
    let text = report.to_string();
    assert!(
        text.contains("Who holds the scopes' outstanding blocks (the shortest way from a root):"),
        "{text}"
    );
    let (table_at, values_at) = (
        first_frame(&report, table.callsite),
        first_frame(&report, values.callsite),
    );
    let expected = format!(
        "     400 bytes in 10 blocks\n{p}       held by static `retention::USER_CACHE`\n\
         {p}       -> a block, from {table_at}\n\
         {p}       -> these blocks, from {values_at}\n",
        p = format!("=={}==", report.pid),
    );
    assert!(text.contains(&expected), "{expected}\n{text}");
    let html = report.to_html();
    assert!(html.contains("<h2>Who holds it</h2>"));
    assert!(
        html.contains("<tr data-scope=\"GET /cache\"><td>GET /cache</td><td>400</td><td>10</td>"),
        "{html}"
    );
    let doc = common::report_doc(&report.to_json());
    let rec = doc["loss_records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["callsite"] == values.callsite && r["kind"] == "still_reachable")
        .unwrap();
    assert_eq!(rec["retained_by"]["root"]["kind"], "static");
    assert_eq!(rec["retained_by"]["root"]["name"], "retention::USER_CACHE");
    assert_eq!(
        rec["retained_by"]["path"],
        serde_json::json!([table.callsite, values.callsite])
    );
    let back = Report::from_json(&report.to_json()).unwrap();
    assert_eq!(back.leak_check, report.leak_check);
    assert_eq!(
        back.scope("GET /cache").unwrap().retained_by,
        scope.retained_by
    );

    // The lost cycle has no path.
    let lost = records(&report, "retention::lose_cycle");
    assert!(!lost.is_empty());
    for r in lost {
        assert!(
            matches!(r.kind, LeakKind::DefinitelyLost | LeakKind::IndirectlyLost),
            "{r:?}"
        );
        assert!(r.retained_by.is_none(), "{r:?}");
    }
}

/// Every word of a static array names the array, its first included, and
/// again in a second check (after the first symbolized its report).
fn each_word_of_a_static_array_names_it() {
    fill_array();
    common::scrub_all();
    for check in 0..2 {
        let report = leakscope::leak_check();
        let made = records(&report, "retention::fill_array");
        let held: Vec<_> = made
            .iter()
            .map(|r| {
                let by = r.retained_by.as_ref().unwrap();
                (
                    by.root.kind,
                    by.root.name.as_deref(),
                    by.path.len(),
                    r.blocks,
                )
            })
            .collect();
        assert_eq!(
            held,
            [(RootKind::Static, Some("retention::ARRAY"), 1, 1000)],
            "check {check}"
        );
    }
}
