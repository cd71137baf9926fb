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

use crate::alloc::{process, thread};
use crate::report::collect::{levels, site_levels, Levels};
use crate::report::model::{Timeline, TimelineCallsite, TimelinePoint};
use crate::scope::names;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
    sites: SitePasses,
}

/// What the call-site passes saw: see [`TimelineCallsite`].
#[derive(Clone)]
struct SitePasses {
    /// Microseconds since the start at the last pass (0: none yet).
    last_us: u64,
    /// By call-site id: most live blocks at a pass, lifetimes summed (µs).
    seen: Vec<(u64, u64)>,
    /// The pass with the most live bytes in the process: when, how many,
    /// and the live blocks and bytes of each call-site that had any.
    peak_us: u64,
    peak_bytes: Option<u64>,
    at_peak: Vec<(u32, u64, u64)>,
}

impl SitePasses {
    const EMPTY: SitePasses = SitePasses {
        last_us: 0,
        seen: Vec::new(),
        peak_us: 0,
        peak_bytes: None,
        at_peak: Vec::new(),
    };
}

/// A call-site pass takes at most this share of the time between passes
/// (1%: the next waits a hundred times the CPU time this one took).
const PASS_SHARE: u32 = 100;

static RING: parking_lot::Mutex<Ring> = parking_lot::const_mutex(Ring {
    interval_ms: DEFAULT_MS,
    scopes: Vec::new(),
    points: Vec::new(),
    sites: SitePasses::EMPTY,
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
    thread::untracked(|| RING.lock().interval_ms = every_ms);
    if crate::serve::spawn_own(c"leakscope-time", run).is_err() {
        STARTED.store(false, Ordering::Release);
    }
}

fn run() {
    // The tracker starts at the first allocation through it: in a program
    // with the allocator line, before `main` (the runtime allocates). Not
    // started after a second, it is not the global allocator (a program
    // that links leakscope without the line, as its command does), and
    // there is nothing to sample.
    if !crate::serve::tracker_started() {
        STARTED.store(false, Ordering::Release);
        return;
    }
    let mut next_pass = Instant::now();
    loop {
        // The call-site pass is summed before the ring is locked: with many
        // call-sites and threads it takes a while, and reports wait for the ring.
        let l = levels();
        let pass = (Instant::now() >= next_pass).then(|| {
            // Its cost in CPU time: on a busy machine, the time the thread
            // waited for a core is not the pass's.
            let cpu = process::thread_cpu_ns();
            let sites = site_levels();
            let cost = Duration::from_nanos(process::thread_cpu_ns().saturating_sub(cpu));
            next_pass = Instant::now() + cost * PASS_SHARE;
            (now_us(), sites)
        });
        let every = {
            let mut ring = RING.lock();
            if let Some((at, sites)) = &pass {
                ring.sites.add_pass(*at, l.live_bytes, sites);
            }
            take_point(&mut ring, &l);
            ring.interval_ms
        };
        std::thread::sleep(Duration::from_millis(every));
    }
}

/// Microseconds since the tracker started.
fn now_us() -> u64 {
    (process::seconds_since_start() * 1e6) as u64
}

impl SitePasses {
    /// Adds a pass made at `at_us` (the process then had `live_bytes`): each
    /// call-site's live blocks and bytes by id.
    fn add_pass(&mut self, at_us: u64, live_bytes: u64, sites: &[(u64, u64)]) {
        let since = at_us.saturating_sub(self.last_us);
        if self.seen.len() < sites.len() {
            self.seen.resize(sites.len(), (0, 0));
        }
        for (seen, &(blocks, _)) in self.seen.iter_mut().zip(sites) {
            seen.0 = seen.0.max(blocks);
            seen.1 = seen.1.saturating_add(blocks.saturating_mul(since));
        }
        if self.peak_bytes.is_none_or(|p| live_bytes > p) {
            self.peak_us = at_us;
            self.peak_bytes = Some(live_bytes);
            self.at_peak = (sites.iter().enumerate())
                .filter(|(_, s)| **s != (0, 0))
                .map(|(id, &(blocks, bytes))| (id as u32, blocks, bytes))
                .collect();
        }
        self.last_us = at_us;
    }

    /// What the passes saw, as the report's call-sites.
    fn callsites(&self) -> Vec<TimelineCallsite> {
        (self.seen.iter().enumerate())
            .filter(|(_, s)| **s != (0, 0))
            .map(|(id, &(max_blocks, lifetimes_us))| {
                let id = id as u32;
                // `at_peak` is in id order.
                let (peak_blocks, peak_bytes) = (self.at_peak)
                    .binary_search_by_key(&id, |p| p.0)
                    .map_or((0, 0), |i| (self.at_peak[i].1, self.at_peak[i].2));
                TimelineCallsite {
                    id,
                    peak_blocks,
                    peak_bytes,
                    max_blocks,
                    lifetimes_us,
                }
            })
            .collect()
    }
}

fn take_point(ring: &mut Ring, l: &Levels) {
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
        ms: now_us() / 1000,
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
    // A last call-site pass, now, counted in the copy only: the report's
    // lifetimes run to the report, and its own moment may be the peak.
    let (at, live_bytes, sites) = (now_us(), levels().live_bytes, site_levels());
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
    let mut passes = ring.sites.clone();
    let interval_ms = ring.interval_ms;
    drop(ring);
    passes.add_pass(at, live_bytes, &sites);
    Some(Timeline {
        interval_ms,
        scopes,
        points,
        peak_ms: passes.peak_us / 1000,
        callsites: passes.callsites(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_sum_lifetimes_and_keep_the_peak() {
        let mut p = SitePasses::EMPTY;
        // (live blocks, live bytes) by call-site id, at three passes.
        p.add_pass(1000, 200, &[(2, 200)]);
        p.add_pass(3000, 600, &[(1, 100), (5, 500)]);
        p.add_pass(4000, 10, &[(0, 0), (1, 10), (0, 0)]);
        let site = |id, peak_blocks, peak_bytes, max_blocks, lifetimes_us| TimelineCallsite {
            id,
            peak_blocks,
            peak_bytes,
            max_blocks,
            lifetimes_us,
        };
        assert_eq!(p.peak_us, 3000);
        assert_eq!(
            p.callsites(),
            [
                // 2 blocks for 1 ms, then 1 for 2 ms.
                site(0, 1, 100, 2, 2 * 1000 + 2000),
                // 5 blocks for 2 ms, then 1 for 1 ms.
                site(1, 5, 500, 5, 5 * 2000 + 1000),
            ]
        );
    }
}
