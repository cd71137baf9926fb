//! The heap timeline: a thread of its own samples the live bytes and blocks
//! and the outstanding bytes of the scopes that hold the most, every
//! `LEAKSCOPE_TIMELINE_MS` (from the counters alone: no stacks, no block
//! walk, nothing on the allocation path), into a bounded ring that the
//! reports copy ([`crate::report::Timeline`]).
//!
//! Owns the ring and its thread. The thread starts before `main` when
//! `LEAKSCOPE_REPORT` is set (and the interval is not 0), or with
//! `serve_report`; a child made by `fork` has no such thread, and its
//! reports carry the parent's points up to the fork.

use crate::alloc::thread;
use crate::report::collect::levels;
use crate::report::model::{Timeline, TimelinePoint};
use crate::scope::names;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Points kept; when full, every other one goes and the interval doubles.
const CAPACITY: usize = 512;
/// Scopes followed at most (those with the most outstanding bytes when first seen).
const SCOPES: usize = 12;
/// The interval when `LEAKSCOPE_TIMELINE_MS` does not say.
pub(crate) const DEFAULT_MS: u64 = 200;

struct Ring {
    interval_ms: u64,
    /// Scope ids followed, in the order of each point's values.
    scopes: Vec<u32>,
    points: Vec<TimelinePoint>,
}

static RING: parking_lot::Mutex<Ring> = parking_lot::const_mutex(Ring {
    interval_ms: DEFAULT_MS,
    scopes: Vec::new(),
    points: Vec::new(),
});
static STARTED: AtomicBool = AtomicBool::new(false);

/// Parses `LEAKSCOPE_TIMELINE_MS`: milliseconds between two points, `0` for none.
pub(crate) fn parse_ms(value: &str) -> Result<u64, String> {
    value.trim().parse::<u64>().map_err(|_| {
        format!(
            "LEAKSCOPE_TIMELINE_MS={value:?} is not a number of milliseconds; using {DEFAULT_MS}"
        )
    })
}

/// Starts the sampling thread, once, taking a point every `every_ms`.
pub(crate) fn start(every_ms: u64) {
    if every_ms == 0 || STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    thread::untracked(|| {
        RING.lock().interval_ms = every_ms;
        let spawned = crate::serve::with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("leakscope-timeline".to_owned())
                .spawn(|| thread::untracked(run))
        });
        if spawned.is_err() {
            STARTED.store(false, Ordering::Release);
        }
    });
}

fn run() {
    loop {
        let every = {
            let mut ring = RING.lock();
            take_point(&mut ring);
            ring.interval_ms
        };
        std::thread::sleep(Duration::from_millis(every));
    }
}

fn take_point(ring: &mut Ring) {
    let l = levels();
    // Follow the largest scopes not followed yet, while there is room.
    let mut new: Vec<(u32, u64)> = (l.scopes.iter())
        .filter(|(id, _)| !ring.scopes.contains(id))
        .copied()
        .collect();
    new.sort_by(|a, b| (b.1, a.0).cmp(&(a.1, b.0)));
    for (id, _) in new
        .into_iter()
        .take(SCOPES.saturating_sub(ring.scopes.len()))
    {
        ring.scopes.push(id);
    }
    let scope_bytes = ring
        .scopes
        .iter()
        .map(|id| l.scopes.iter().find(|s| s.0 == *id).map_or(0, |s| s.1))
        .collect();
    ring.points.push(TimelinePoint {
        ms: (crate::alloc::process::seconds_since_start() * 1000.0) as u64,
        live_bytes: l.live_bytes,
        live_blocks: l.live_blocks,
        scope_bytes,
    });
    if ring.points.len() >= CAPACITY {
        let mut keep = false;
        ring.points.retain(|_| {
            keep = !keep;
            keep
        });
        ring.interval_ms = ring.interval_ms.saturating_mul(2);
    }
}

/// The timeline so far, if one is kept (`None` also when the ring stays
/// busy for 100 ms, as in a child forked while the sampler held it).
pub(crate) fn timeline() -> Option<Timeline> {
    if !STARTED.load(Ordering::Acquire) {
        return None;
    }
    // Tries without parking: in a child forked while another thread was
    // parked in parking_lot's table, parking could hang.
    let ring = (0..100).find_map(|_| {
        let r = RING.try_lock();
        if r.is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        r
    })?;
    let scopes = ring
        .scopes
        .iter()
        .map(|&id| names::scope_entry(id).map_or_else(String::new, |e| e.name.clone()))
        .collect();
    let mut points = ring.points.clone();
    // Points taken before a scope was followed lack its value: 0.
    for p in &mut points {
        p.scope_bytes.resize(ring.scopes.len(), 0);
    }
    Some(Timeline {
        interval_ms: ring.interval_ms,
        scopes,
        points,
    })
}
