//! Whether a scope keeps growing: its outstanding bytes as its runs went by.
//!
//! Owns each scope name's history and the verdict reports give from it
//! ([`Verdict`]: `growing`, and the bytes per run over the later part of
//! the runs). A scope's outstanding bytes are sampled about eight times per
//! doubling of its runs, from its 16th run on; the history keeps, per
//! doubling of the runs (an octave: runs `2^k` to `2^(k+1) - 1`), the least
//! and the most bytes its samples saw and its first sample.
//!
//! A scope is **growing** when, from `2^(k-1)` runs on (`2^k` the largest
//! power of two not above its runs: the last half to three quarters of
//! them), its outstanding bytes never came down to the most they reached in
//! the octave before (runs `2^(k-2)` to `2^(k-1) - 1`), and it has run at
//! least [`MIN_RUNS`] times. A leak of `b` bytes a run rises through every
//! octave; a cache that filled up and stopped, or a batch that is freed
//! every few runs, comes back to its earlier levels. A warm-up of `w` runs
//! (a cache filling) is told from growth once the scope has run `8w` times
//! (`4w` just past a power of two); before, it reads as growing.
//!
//! A sample is due when a thread opens a run whose count on that thread is
//! ([`due`]: a few instructions a run, no shared write); taking it sums the
//! scope's counters over the threads, off the allocation path. Allocates
//! only a name's history, once, untracked; never waits for a lock (a busy
//! history skips a sample, and a report reads the scope as not growing).

use crate::alloc::meta::SpinLock;
use crate::alloc::thread;
use crate::scope::names::ScopeEntry;
use std::sync::atomic::Ordering;

/// Runs a scope needs before it can read as growing: below, a warm-up
/// cannot be told from growth at all.
pub(crate) const MIN_RUNS: u64 = 64;

/// The first octave sampled: runs 16 to 31. (The verdict at [`MIN_RUNS`]
/// looks back to this octave, never before it.)
const FIRST_OCTAVE: u32 = 4;
/// Octaves kept: runs up to 2^44.
const OCTAVES: usize = 44;

/// One octave of a scope's runs: what its samples saw.
#[derive(Clone, Copy, Debug)]
struct Octave {
    samples: u64,
    least: u64,
    most: u64,
    /// The sample at the fewest runs: (runs, bytes).
    first: (u64, u64),
}

impl Octave {
    const EMPTY: Octave = Octave {
        samples: 0,
        least: u64::MAX,
        most: 0,
        first: (u64::MAX, 0),
    };
}

/// A scope name's history (see the module).
#[derive(Debug)]
pub(crate) struct History {
    octaves: [Octave; OCTAVES],
}

/// A name's history, made at its first sample.
pub(crate) type HistoryCell = SpinLock<Option<Box<History>>>;

/// What a report says of a scope's growth.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) growing: bool,
    /// Outstanding bytes gained per run since the first sample at or after
    /// `2^(k-1)` runs (over all the runs, before the 16th).
    pub(crate) recent_bytes_per_run: f64,
}

impl History {
    fn new() -> History {
        History {
            octaves: [Octave::EMPTY; OCTAVES],
        }
    }

    /// `bytes` outstanding after `runs` runs.
    fn record(&mut self, runs: u64, bytes: u64) {
        let Some(o) = self.octaves.get_mut(octave(runs)) else {
            return;
        };
        o.samples += 1;
        o.least = o.least.min(bytes);
        o.most = o.most.max(bytes);
        if runs < o.first.0 {
            o.first = (runs, bytes);
        }
    }

    /// The verdict on a scope with `bytes` outstanding after `runs` runs.
    fn verdict(&self, runs: u64, bytes: u64) -> Verdict {
        let per_run = |(then_runs, then_bytes): (u64, u64)| {
            (bytes as f64 - then_bytes as f64) / runs.saturating_sub(then_runs).max(1) as f64
        };
        let k = octave(runs);
        let at = |i: Option<usize>| {
            i.and_then(|i| self.octaves.get(i))
                .filter(|o| o.samples > 0)
        };
        let later = [at(k.checked_sub(1)), at(Some(k))];
        let recent = match later.iter().flatten().next() {
            Some(o) if o.first.0 < runs => per_run(o.first),
            _ => per_run((0, 0)),
        };
        let least_later = later
            .iter()
            .flatten()
            .map(|o| o.least)
            .fold(bytes, u64::min);
        let growing = runs >= MIN_RUNS
            && at(k.checked_sub(2)).is_some_and(|earlier| least_later > earlier.most);
        Verdict {
            growing,
            recent_bytes_per_run: recent,
        }
    }
}

/// The octave of `runs`: `k` with `2^k <= runs < 2^(k+1)` (0 for 0 runs).
fn octave(runs: u64) -> usize {
    63usize.saturating_sub(runs.leading_zeros() as usize)
}

/// Whether a thread that has just opened its `n`th run of a scope samples
/// it (after its `n - 1` runs before): from 16 runs before on, eight times
/// per doubling, the first at the doubling.
#[inline]
pub(crate) fn due(n: u64) -> bool {
    let before = n.wrapping_sub(1);
    before >= 1 << FIRST_OCTAVE && before & ((1u64 << octave(before)) / 8 - 1) == 0
}

/// Samples `entry`'s outstanding bytes now, after the runs before the one
/// this thread has just opened. Outside the allocation path; skipped if
/// another thread is recording into the history.
#[cold]
#[inline(never)]
pub(crate) fn sample(entry: &ScopeEntry) {
    let (runs, bytes) = level(entry);
    thread::untracked(|| {
        if let Some(mut h) = entry.history.try_lock() {
            h.get_or_insert_with(|| Box::new(History::new()))
                .record(runs.saturating_sub(1), bytes);
        }
    });
}

/// `entry`'s runs (counted on every thread) and outstanding bytes now.
fn level(entry: &ScopeEntry) -> (u64, u64) {
    let (runs, bytes) = thread::scope_level(entry.id);
    (runs.wrapping_add(entry.runs.load(Ordering::Relaxed)), bytes)
}

/// The verdict on `entry`, which has `bytes` outstanding after `runs` runs.
/// A history held by a thread that stays busy (or by one a `fork` left
/// behind) gives no verdict: not growing.
pub(crate) fn verdict(entry: &ScopeEntry, runs: u64, bytes: u64) -> Verdict {
    for _ in 0..1000 {
        if let Some(h) = entry.history.try_lock() {
            return match h.as_deref() {
                Some(h) => h.verdict(runs, bytes),
                None => History::new().verdict(runs, bytes),
            };
        }
        std::thread::yield_now();
    }
    Verdict::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scope run `runs` times, sampled where a thread would, whose
    /// outstanding bytes after `n` runs are `bytes(n)`.
    fn run(runs: u64, bytes: impl Fn(u64) -> u64) -> Verdict {
        let mut h = History::new();
        for n in 1..=runs {
            if due(n) {
                h.record(n - 1, bytes(n - 1));
            }
        }
        h.verdict(runs, bytes(runs))
    }

    #[test]
    fn samples_eight_times_an_octave_from_the_sixteenth_run() {
        let sampled: Vec<u64> = (1..=65).filter(|&n| due(n)).map(|n| n - 1).collect();
        assert_eq!(
            sampled,
            [16, 18, 20, 22, 24, 26, 28, 30, 32, 36, 40, 44, 48, 52, 56, 60, 64]
        );
        assert_eq!((1..=1 << 20).filter(|&n| due(n)).count(), 16 * 8);
    }

    #[test]
    fn a_leak_grows_a_cache_and_a_batch_do_not() {
        // 64 bytes a run, kept.
        let leak = run(10_000, |n| 64 * n);
        assert_eq!(
            leak,
            Verdict {
                growing: true,
                recent_bytes_per_run: 64.0
            }
        );
        // A cache of 100 entries of 64 bytes, full after 100 runs.
        let cache = run(10_000, |n| 64 * n.min(100));
        assert_eq!(cache, Verdict::default());
        // A batch of up to 36 entries, written out every 37 runs: up and
        // down; since 4,096 runs it rose (26 entries then, 28 now), but it
        // came back down to where it had been.
        let batch = run(10_018, |n| 64 * (n % 37));
        assert!(!batch.growing);
        assert!(batch.recent_bytes_per_run > 0.0, "{batch:?}");
        // A slow leak, a block every 5th run.
        assert!(run(10_000, |n| 48 * (n / 5)).growing);
        // Nothing outstanding.
        assert_eq!(run(10_000, |_| 0), Verdict::default());
    }

    #[test]
    fn too_few_runs_or_a_warm_up_not_yet_past() {
        // A leak, but only 63 runs: no verdict yet.
        let short = run(MIN_RUNS - 1, |n| 64 * n);
        assert!(!short.growing);
        assert_eq!(short.recent_bytes_per_run, 64.0);
        assert!(run(MIN_RUNS, |n| 64 * n).growing);
        // A cache that fills in 1,000 runs reads as growing at 4,000 runs
        // (in the octave before the later part, 512 to 1,023 runs, it was
        // still filling) and not at 8,192.
        assert!(run(4_000, |n| 64 * n.min(1_000)).growing);
        assert!(!run(8_192, |n| 64 * n.min(1_000)).growing);
        // Before the 16th run the recent rate is the whole life's.
        assert_eq!(run(10, |n| 8 * n).recent_bytes_per_run, 8.0);
    }
}
