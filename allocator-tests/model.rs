//! A randomized model test of the allocation path: threads allocate, free,
//! reallocate and hand blocks to one another to free, inside and outside
//! nested scope runs, from stacks that share their outer frames and differ
//! inside, and from stacks of equal depth whose frames sit at the same
//! addresses but were entered through different callers. A model keeps what
//! every count must be; the tracker's report must agree with it exactly in
//! full mode, and in sampling mode (run as a child of this program) exactly
//! for totals and scope runs, within the sampler's error bound for
//! call-sites and scopes' outstanding bytes.
//!
//! `LEAKSCOPE_MODEL_SEED=N` replays one seed; the seed of a failing run is
//! printed.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use common::Deadline;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Barrier, Mutex};

const THREADS: usize = 3;
const OPS: usize = 6000;
/// The most blocks one thread holds; its list never grows past this.
const HOLD: usize = 400;
const SCOPES: [&str; 3] = ["model-s0", "model-s1", "model-s2"];
/// Deepest chain of `model_rec_a`/`model_rec_b` frames below a batch:
/// 255 chains, so 3,060 stacks (four batch levels, three leaves), of which
/// a run touches about 1,950, far more than a thread's caches hold.
const DEPTH: u8 = 7;
/// Sampling mode's interval in the child run: small, for many samples.
const SAMPLE_BYTES: u64 = 2048;

/// The stack an allocation comes from, as the report shows it: how many
/// batches deep (each batch below the first runs in a nested scope or a
/// plain call), the chain of recursion frames (bit i: frame i from the
/// batch is `model_rec_b`), its length, and the leaf that allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    level: u8,
    path: u8,
    depth: u8,
    leaf: u8,
}

#[derive(Clone, Copy)]
struct Block {
    ptr: usize,
    layout: Layout,
    key: Key,
    /// Index in [`SCOPES`] of the innermost scope open when it was made.
    scope: Option<u8>,
}

/// Everything one thread did, for the model.
struct Log {
    /// Every block made (allocations and reallocations' new blocks).
    made: Vec<Block>,
    /// Runs opened, per scope.
    runs: [u64; 3],
    /// Blocks this thread holds.
    held: Vec<Block>,
}

/// Blocks handed from one thread to another, which frees them.
static EXCHANGE: Mutex<Vec<Block>> = Mutex::new(Vec::new());

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a leaf does.
#[derive(Clone, Copy)]
enum Op {
    Alloc(Layout),
    Zeroed(Layout),
    Realloc(Block, usize),
}

// Each body differs by a constant the optimizer cannot see through, so that
// no two of these functions are merged into one (release builds merge
// identical functions, and their stacks would then be one stack).

#[inline(never)]
fn model_leaf_0(op: Op) -> usize {
    act(op) ^ black_box(10) ^ 10
}

#[inline(never)]
fn model_leaf_1(op: Op) -> usize {
    act(op) ^ black_box(11) ^ 11
}

#[inline(never)]
fn model_leaf_2(op: Op) -> usize {
    act(op) ^ black_box(12) ^ 12
}

#[inline(always)]
fn act(op: Op) -> usize {
    // SAFETY: layouts are non-zero-sized; a realloc's block is live, made
    // with its layout, and held by no one else.
    unsafe {
        match op {
            Op::Alloc(l) => GLOBAL.alloc(l) as usize,
            Op::Zeroed(l) => GLOBAL.alloc_zeroed(l) as usize,
            Op::Realloc(b, size) => GLOBAL.realloc(b.ptr as *mut u8, b.layout, size) as usize,
        }
    }
}

/// One step down the chain: `model_rec_a` and `model_rec_b` have the same
/// body but for a constant, so their frames sit at the same addresses for
/// the same depth.
#[inline(never)]
fn model_rec_a(path: u8, depth: u8, leaf: u8, op: Op) -> usize {
    black_box(step(path, depth, leaf, op)) ^ black_box(1) ^ 1
}

#[inline(never)]
fn model_rec_b(path: u8, depth: u8, leaf: u8, op: Op) -> usize {
    black_box(step(path, depth, leaf, op)) ^ black_box(2) ^ 2
}

#[inline(always)]
fn step(path: u8, depth: u8, leaf: u8, op: Op) -> usize {
    if depth == 0 {
        return match leaf {
            0 => model_leaf_0(op),
            1 => model_leaf_1(op),
            _ => model_leaf_2(op),
        };
    }
    if path & 1 == 0 {
        model_rec_a(path >> 1, depth - 1, leaf, op)
    } else {
        model_rec_b(path >> 1, depth - 1, leaf, op)
    }
}

/// A random stack below batch `level`, and the op run at its leaf.
fn call(rng: &mut Rng, level: u8, op: Op) -> (usize, Key) {
    let depth = rng.below(DEPTH as u64 + 1) as u8;
    let path = (rng.next() as u8) & ((1u8 << depth) - 1);
    let leaf = rng.below(3) as u8;
    // The chain's frames, outermost first: bit (depth - 1 - i) of `path`
    // picks frame i below the batch; the key lists them innermost first.
    let key = Key {
        level,
        path: path.reverse_bits() >> (8 - depth.max(1)) & ((1u8 << depth) - 1),
        depth,
        leaf,
    };
    let ptr = if depth == 0 {
        step(0, 0, leaf, op)
    } else if path & 1 == 0 {
        model_rec_a(path >> 1, depth - 1, leaf, op)
    } else {
        model_rec_b(path >> 1, depth - 1, leaf, op)
    };
    (ptr, key)
}

fn layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(10) {
        0 => 1 + rng.below(6000) as usize,
        1 => 1 + rng.below(70_000) as usize,
        _ => 1 + rng.below(300) as usize,
    };
    let align = [8, 16, 64][rng.below(3) as usize];
    Layout::from_size_align(size, align).unwrap()
}

/// Frees `b`, made by any thread.
fn free(b: Block) {
    // SAFETY: `b` is live and was made with this layout.
    unsafe { GLOBAL.dealloc(b.ptr as *mut u8, b.layout) };
}

/// `ops` random operations at batch `level`, in scope `scope`; some open a
/// nested batch.
#[inline(never)]
fn model_batch(rng: &mut Rng, log: &mut Log, level: u8, scope: Option<u8>, ops: &mut usize) {
    while *ops > 0 {
        *ops -= 1;
        match rng.below(100) {
            0..=39 if log.held.len() < HOLD => {
                let l = layout(rng);
                let op = if rng.below(4) == 0 {
                    Op::Zeroed(l)
                } else {
                    Op::Alloc(l)
                };
                let (ptr, key) = call(rng, level, op);
                assert_ne!(ptr, 0);
                let b = Block {
                    ptr,
                    layout: l,
                    key,
                    scope,
                };
                log.made.push(b);
                log.held.push(b);
            }
            40..=64 if !log.held.is_empty() => {
                let i = rng.below(log.held.len() as u64) as usize;
                free(log.held.swap_remove(i));
            }
            65..=74 if !log.held.is_empty() => {
                let i = rng.below(log.held.len() as u64) as usize;
                let old = log.held[i];
                let size = layout(rng).size();
                let (ptr, key) = call(rng, level, Op::Realloc(old, size));
                assert_ne!(ptr, 0);
                let b = Block {
                    ptr,
                    layout: Layout::from_size_align(size, old.layout.align()).unwrap(),
                    key,
                    scope,
                };
                log.made.push(b);
                log.held[i] = b;
            }
            75..=84 if !log.held.is_empty() => {
                let i = rng.below(log.held.len() as u64) as usize;
                EXCHANGE.lock().unwrap().push(log.held.swap_remove(i));
            }
            85..=92 => {
                let theirs = EXCHANGE.lock().unwrap().pop();
                if let Some(b) = theirs {
                    free(b);
                }
            }
            93..=99 if level < 3 => {
                // A nested batch: in a scope run, or a plain call.
                let mut n = 1 + rng.below(40) as usize;
                n = n.min(*ops);
                *ops -= n;
                if rng.below(3) == 0 {
                    model_batch(rng, log, level + 1, scope, &mut n);
                } else {
                    let s = rng.below(SCOPES.len() as u64) as u8;
                    log.runs[s as usize] += 1;
                    leakscope::track_scope(SCOPES[s as usize], || {
                        model_batch(rng, log, level + 1, Some(s), &mut n)
                    });
                }
            }
            _ => {}
        }
    }
}

/// The key of a report's call-site, from its frames; `None` for stacks
/// that are not the model's.
fn key_of(site: &leakscope::report::Callsite) -> Option<Key> {
    let names: Vec<&str> = site
        .frames
        .iter()
        .filter_map(|f| f.function.as_deref())
        .collect();
    let leaf_at = names.iter().position(|n| n.contains("model_leaf_"))?;
    let leaf = names[leaf_at].rsplit("model_leaf_").next()?.as_bytes()[0] - b'0';
    let (mut path, mut depth, mut level) = (0u8, 0u8, 0u8);
    for n in &names[leaf_at + 1..] {
        if n.ends_with("model_rec_a") || n.ends_with("model_rec_b") {
            if n.ends_with('b') {
                path |= 1 << depth;
            }
            depth += 1;
        } else if n.ends_with("model_batch") {
            level += 1;
        }
    }
    Some(Key {
        level: level.checked_sub(1)?,
        path,
        depth,
        leaf,
    })
}

#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct Counts {
    live_blocks: u64,
    live_bytes: u64,
    total_blocks: u64,
    total_bytes: u64,
}

fn run_model(seed: u64) {
    let sampling = std::env::var_os("LEAKSCOPE_SAMPLE_BYTES").is_some();
    EXCHANGE.lock().unwrap().reserve(THREADS * OPS);
    let start = Barrier::new(THREADS + 1);
    let go = Barrier::new(THREADS + 1);
    let done = Barrier::new(THREADS + 1);
    let checked = Barrier::new(THREADS + 1);
    let logs: Vec<Log> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (start, go, done, checked) = (&start, &go, &done, &checked);
                s.spawn(move || {
                    let mut log = Log {
                        made: Vec::with_capacity(OPS * 2),
                        runs: [0; 3],
                        held: Vec::with_capacity(HOLD + 1),
                    };
                    let mut rng =
                        Rng(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                    start.wait();
                    go.wait();
                    let mut ops = OPS;
                    model_batch(&mut rng, &mut log, 0, None, &mut ops);
                    done.wait();
                    checked.wait();
                    log
                })
            })
            .collect();
        start.wait();
        let before = leakscope::snapshot();
        go.wait();
        done.wait();
        let after = leakscope::snapshot();
        checked.wait();
        let logs: Vec<Log> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        check(&logs, &before, &after, sampling, seed);
        logs
    });
    // The blocks still held and handed over are freed now, after the checks.
    for log in logs {
        log.held.into_iter().for_each(free);
    }
    let rest: Vec<Block> = EXCHANGE.lock().unwrap().drain(..).collect();
    rest.into_iter().for_each(free);
}

fn check(
    logs: &[Log],
    before: &leakscope::Report,
    after: &leakscope::Report,
    sampling: bool,
    seed: u64,
) {
    let ctx = format!("seed {seed} (LEAKSCOPE_MODEL_SEED={seed} replays it)");
    // The model: every block made; live while held by a thread or in the exchange.
    let mut by_key: HashMap<Key, Counts> = HashMap::new();
    let mut scopes = [(0u64, 0u64, 0f64); 3];
    let (mut made, mut made_bytes, mut live, mut live_bytes) = (0u64, 0u64, 0u64, 0u64);
    let held: std::collections::HashSet<usize> = logs
        .iter()
        .flat_map(|l| l.held.iter())
        .chain(EXCHANGE.lock().unwrap().iter())
        .map(|b| b.ptr)
        .collect();
    let mut var_bytes = 0f64;
    for b in logs.iter().flat_map(|l| l.made.iter()) {
        let size = b.layout.size() as u64;
        let c = by_key.entry(b.key).or_default();
        c.total_blocks += 1;
        c.total_bytes += size;
        made += 1;
        made_bytes += size;
    }
    for b in logs
        .iter()
        .flat_map(|l| l.held.iter())
        .chain(EXCHANGE.lock().unwrap().iter())
    {
        let size = b.layout.size() as u64;
        let c = by_key.entry(b.key).or_default();
        c.live_blocks += 1;
        c.live_bytes += size;
        live += 1;
        live_bytes += size;
        // The variance of a sampled block's weighted bytes.
        let p = 1.0 - (-(size as f64) / SAMPLE_BYTES as f64).exp();
        let var = (size as f64).powi(2) * (1.0 - p) / p;
        var_bytes += var;
        if let Some(s) = b.scope {
            let s = &mut scopes[s as usize];
            s.0 += 1;
            s.1 += size;
            s.2 += var;
        }
    }
    assert_eq!(held.len() as u64, live, "{ctx}: one live block per address");
    assert!(made > live + 1000, "{ctx}: the run freed blocks");

    // Totals: exact in both modes (nothing else allocated in between).
    let (a, b) = (&after.totals, &before.totals);
    assert_eq!(a.total_blocks - b.total_blocks, made, "{ctx}: blocks made");
    assert_eq!(
        a.total_bytes - b.total_bytes,
        made_bytes,
        "{ctx}: bytes made"
    );
    assert_eq!(a.live_blocks - b.live_blocks, live, "{ctx}: live blocks");
    assert_eq!(a.live_bytes - b.live_bytes, live_bytes, "{ctx}: live bytes");

    // Scopes: runs exact in both modes; outstanding blocks and bytes exact
    // in full mode, estimates within four standard errors in sampling mode
    // (a run of the model before this one left runs, and no block outstanding).
    for (i, name) in SCOPES.iter().enumerate() {
        let runs: u64 = logs.iter().map(|l| l.runs[i]).sum();
        let earlier = before.scope(name).map_or(0, |s| s.runs);
        let got = after.scope(name).map_or((0, 0, 0), |s| {
            (s.runs - earlier, s.outstanding_blocks, s.outstanding_bytes)
        });
        if sampling {
            assert_eq!(got.0, runs, "{ctx}: scope {name}: runs");
            let err = got.2.abs_diff(scopes[i].1) as f64;
            assert!(
                err <= 4.0 * scopes[i].2.sqrt(),
                "{ctx}: scope {name}: estimated outstanding bytes {}, true {}, sd {:.0}",
                got.2,
                scopes[i].1,
                scopes[i].2.sqrt()
            );
        } else {
            assert_eq!(
                got,
                (runs, scopes[i].0, scopes[i].1),
                "{ctx}: scope {name}: runs, outstanding blocks and bytes"
            );
        }
    }

    // Call-sites, grouped by the model's key, less what the runs of the
    // model before this one made (they left nothing live).
    let mut reported: HashMap<Key, Counts> = HashMap::new();
    for (report, sign) in [(after, 1i64), (before, -1)] {
        for site in &report.callsites {
            if let Some(k) = key_of(site) {
                let c = reported.entry(k).or_default();
                let add = |to: &mut u64, n: u64| *to = (*to as i64 + sign * n as i64) as u64;
                add(&mut c.live_blocks, site.live_blocks);
                add(&mut c.live_bytes, site.live_bytes);
                add(&mut c.total_blocks, site.total_blocks);
                add(&mut c.total_bytes, site.total_bytes);
            }
        }
    }
    reported.retain(|_, c| *c != Counts::default());
    if !sampling {
        let mut keys: Vec<&Key> = by_key.keys().chain(reported.keys()).collect();
        keys.sort();
        keys.dedup();
        assert!(keys.len() > 1000, "{ctx}: {} stacks: too few", keys.len());
        for k in keys {
            assert_eq!(
                reported.get(k).copied().unwrap_or_default(),
                by_key.get(k).copied().unwrap_or_default(),
                "{ctx}: call-sites of {k:?}"
            );
        }
    } else {
        // Sampling: each sampled block weighs 1/p, so the sum over sites is
        // an unbiased estimate of the live bytes; allow four standard errors.
        let est: u64 = reported.values().map(|c| c.live_bytes).sum();
        let err = (est as f64 - live_bytes as f64).abs();
        assert!(
            err <= 4.0 * var_bytes.sqrt(),
            "{ctx}: estimated live bytes {est}, true {live_bytes}, sd {:.0}",
            var_bytes.sqrt()
        );
    }
}

/// Whether this process holds the sampled blocks' region: 12 GiB or more
/// of mappings with no access (16 GiB reserved, split where committed).
fn has_region() -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let reserved: u64 = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let (a, b) = range.split_once('-')?;
            let len = u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?;
            perms.starts_with("---").then_some(len)
        })
        .sum();
    reserved >= 12 << 30
}

fn seed() -> u64 {
    std::env::var("LEAKSCOPE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1EA4_5C0E)
}

fn full_mode_matches_the_model() {
    for i in 0..3 {
        run_model(seed().wrapping_add(i));
    }
}

fn sampling_mode_matches_the_model() {
    sampling_child(None);
}

/// With the address space limited below the sampled blocks' region (16
/// GiB), the region cannot be reserved: every sampled block lives in the
/// inner allocator, noted in a set that every free then looks in.
fn sampling_mode_without_its_region() {
    // AddressSanitizer's shadow memory alone needs terabytes of address
    // space: no limit leaves the sanitizer room and not the region.
    if common::under_asan("which needs the address space this test takes away") {
        return;
    }
    sampling_child(Some(4 << 30));
}

/// Runs the model in sampling mode in a child, its address space limited
/// to `limit` bytes if given.
fn sampling_child(limit: Option<u64>) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.arg("model_child")
        .env("LEAKSCOPE_SAMPLE_BYTES", SAMPLE_BYTES.to_string())
        .env("LEAKSCOPE_SAMPLE_SEED", "11")
        .env("LEAKSCOPE_MODEL_CHILD", "1")
        .env(
            "LEAKSCOPE_MODEL_REGION",
            if limit.is_some() { "no" } else { "yes" },
        );
    if let Some(limit) = limit {
        // SAFETY: setrlimit is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output_within(common::CHILD_SECS).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    if std::env::var_os("LEAKSCOPE_MODEL_CHILD").is_some() {
        for i in 0..3 {
            run_model(seed().wrapping_add(i));
        }
        let region = std::env::var("LEAKSCOPE_MODEL_REGION").unwrap();
        assert_eq!(
            has_region(),
            region == "yes",
            "the sampled blocks' region is reserved: {region}"
        );
        return;
    }
    common::run(&[
        ("full_mode_matches_the_model", full_mode_matches_the_model),
        (
            "sampling_mode_matches_the_model",
            sampling_mode_matches_the_model,
        ),
        (
            "sampling_mode_without_its_region",
            sampling_mode_without_its_region,
        ),
    ]);
}
