//! Sampling mode: which blocks get a stack, and what each sampled block weighs.
//!
//! With `LEAKSCOPE_SAMPLE_BYTES=N` (or [`crate::alloc::tracker::LeakTracker::sample_bytes`]),
//! every block is still counted in the process totals, exactly, but only
//! some get a stack and a place in the block table: Poisson sampling by
//! bytes, as tcmalloc and heapprofd do. Each thread draws the distance to
//! its next sample point from an exponential distribution of mean N bytes; a
//! block that covers a sample point is sampled. A block of `s` bytes is thus
//! sampled with probability `p = 1 - exp(-s/N)`, whatever came before it,
//! and counts in the call-site and scope figures as `1/p` blocks and `s/p`
//! bytes: an unbiased estimate.
//!
//! Error: for a call-site with `B` live bytes, the standard deviation of its
//! estimated bytes is at most `sqrt(B * N)` (each block of size `s`
//! contributes a variance `s^2 (1-p)/p <= s * N`), so the relative error is at
//! most `sqrt(N / B)`: 10% once a site holds 100 times the sampling interval.
//! Blocks much larger than N are sampled almost surely and weigh about 1.
//!
//! The mode is fixed at the first allocation and never changes: sampled
//! blocks live in their own region ([`crate::alloc::region`]), so every
//! block must be made and freed the same way. Nothing here allocates;
//! reading the environment uses `getenv` in place.

use crate::alloc::meta::mix;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Not decided yet.
const UNSET: usize = usize::MAX;

/// The process's mean sampling interval in bytes; 0 means every block is
/// tracked with its stack (full mode).
static SAMPLE_BYTES: AtomicUsize = AtomicUsize::new(UNSET);
/// A bad `LEAKSCOPE_SAMPLE_BYTES` value was seen (warned about by the report layer at the start).
static BAD_VALUE: AtomicUsize = AtomicUsize::new(0);
/// Seed of every thread's generator (`LEAKSCOPE_SAMPLE_SEED`), fixed at the
/// first allocation.
static SEED: AtomicU64 = AtomicU64::new(0);
/// Threads seeded so far: each gets its own stream.
static STREAMS: AtomicU64 = AtomicU64::new(0);

/// Block counts of sampled call-sites are kept in 1/2^16 blocks.
pub(crate) const UNIT_SHIFT: u32 = 16;

/// [`SAMPLE_BYTES`], decided: 1 for full mode, 2 for sampling (0: not yet).
/// The allocation path reads this one byte.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Whether this process samples: the environment's interval, or else
/// `configured` (the tracker's constructor value), is not 0. Decided once.
#[inline(always)]
pub(crate) fn sampling(configured: usize) -> bool {
    let mode = MODE.load(Ordering::Relaxed);
    // One compare on the sampling path.
    if mode > 1 {
        return true;
    }
    mode == 0 && decide(configured) != 0
}

/// The interval once decided (0 before the first allocation and in full mode).
pub(crate) fn current() -> usize {
    match SAMPLE_BYTES.load(Ordering::Relaxed) {
        UNSET => 0,
        n => n,
    }
}

/// Block units of one block in the call-site counters.
pub(crate) fn block_unit() -> u64 {
    if current() == 0 {
        1
    } else {
        1 << UNIT_SHIFT
    }
}

/// Blocks, to the nearest, in `units` block units ([`block_unit`]): the
/// block counts reports show for call-sites, scopes and runs.
pub(crate) fn blocks(units: u64) -> u64 {
    let unit = block_unit();
    (units + unit / 2) / unit
}

#[cold]
fn decide(configured: usize) -> usize {
    let n = match getenv(c"LEAKSCOPE_SAMPLE_BYTES") {
        None => configured,
        Some(v) => match parse_bytes(v) {
            Some(n) => n,
            None => {
                BAD_VALUE.store(1, Ordering::Relaxed);
                configured
            }
        },
    };
    let seed = getenv(c"LEAKSCOPE_SAMPLE_SEED")
        .and_then(parse_bytes)
        .map_or_else(
            || mix(&SEED as *const AtomicU64 as u64 ^ time_seed()),
            |s| s as u64,
        );
    SEED.store(seed, Ordering::Relaxed);
    // The first decision wins; a racing thread adopts it.
    let n = match SAMPLE_BYTES.compare_exchange(
        UNSET,
        n.min(UNSET - 1),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => n.min(UNSET - 1),
        Err(now) => now,
    };
    MODE.store(if n == 0 { 1 } else { 2 }, Ordering::Relaxed);
    if n != 0 {
        crate::alloc::region::start_sampling();
    }
    n
}

/// Whether `LEAKSCOPE_SAMPLE_BYTES` had a value that is not a byte count.
pub(crate) fn bad_value() -> bool {
    BAD_VALUE.load(Ordering::Relaxed) != 0
}

fn time_seed() -> u64 {
    crate::alloc::process::monotonic_ns()
}

fn getenv(name: &std::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv takes a NUL-terminated name and returns null or a
    // NUL-terminated string; it is read in place (the environment is not
    // changed while the first allocation runs).
    unsafe {
        let p = libc::getenv(name.as_ptr());
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_bytes())
    }
}

/// A byte count: digits with an optional `k`, `m` or `g` (binary units).
/// `0` means full mode.
pub(crate) fn parse_bytes(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    let (digits, shift) = match v.last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 10),
        b'm' | b'M' => (&v[..v.len() - 1], 20),
        b'g' | b'G' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add((d - b'0') as usize)
    })?;
    n.checked_mul(1 << shift)
}

/// A thread's sampler: bytes left to its next sample point and its generator.
/// All zero before the thread's first tracked allocation.
#[derive(Clone, Copy)]
pub(crate) struct Sampler {
    left: i64,
    rng: u64,
}

/// Taken off a paused sampler's countdown: [`Sampler::skip`] then fails
/// for every size, without a flag of its own to look at.
const PAUSED: i64 = 1 << 62;

impl Sampler {
    pub(crate) const fn new() -> Self {
        Sampler { left: 0, rng: 0 }
    }

    /// Makes [`Sampler::skip`] fail until [`Sampler::resume`] (the thread is
    /// inside the tracker: its blocks are the tracker's own). Does not nest.
    #[inline(always)]
    pub(crate) fn pause(&mut self) {
        self.left = self.left.wrapping_sub(PAUSED);
    }

    #[inline(always)]
    pub(crate) fn resume(&mut self) {
        self.left = self.left.wrapping_add(PAUSED);
    }

    /// Forgets the distance to the next sample point, so that `skip` fails
    /// until the slow path draws a new one (memoryless: nothing is biased).
    pub(crate) fn reset(&mut self, paused: bool) {
        self.left = if paused { -PAUSED } else { 0 };
    }

    /// Counts `size` bytes allocated; whether this block is sampled.
    #[inline]
    pub(crate) fn take(&mut self, size: usize, mean: usize) -> bool {
        if self.skip(size) {
            return false;
        }
        self.cross(size, mean)
    }

    /// Counts `size` bytes allocated if they stay short of the sample point;
    /// `false`, counting nothing, if they reach it (or the sampler is new).
    #[inline(always)]
    pub(crate) fn skip(&mut self, size: usize) -> bool {
        // Sizes are at most isize::MAX, so `size as i64` is not negative.
        if self.left <= size as i64 {
            return false;
        }
        self.left -= size as i64;
        true
    }

    /// The block reaches the sample point (or the sampler is new).
    #[cold]
    fn cross(&mut self, size: usize, mean: usize) -> bool {
        if self.rng == 0 {
            let stream = STREAMS.fetch_add(1, Ordering::Relaxed);
            self.rng = mix(SEED.load(Ordering::Relaxed) ^ mix(stream + 1)) | 1;
            self.left = self.next_gap(mean);
            return self.take(size, mean);
        }
        // Memoryless: the next sample point is a fresh draw from here.
        self.left = self.next_gap(mean);
        true
    }

    /// xorshift64*: a uniform 64-bit number.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// An exponentially distributed gap of mean `mean` bytes, at least 1.
    fn next_gap(&mut self, mean: usize) -> i64 {
        // Uniform in (0, 1]: 53 random bits, plus one so that ln never sees 0.
        let u = ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let gap = -u.ln() * mean as f64;
        if gap < 1.0 {
            1
        } else if gap > i64::MAX as f64 / 2.0 {
            i64::MAX / 2
        } else {
            gap as i64
        }
    }
}

/// The probability that a block of `size` bytes is sampled at mean `mean`.
pub(crate) fn probability(size: usize, mean: usize) -> f64 {
    if mean == 0 {
        return 1.0;
    }
    -(-(size as f64) / mean as f64).exp_m1()
}

/// What a block counts for in the call-site, scope and run counters: (block
/// units, bytes). A unit is one block in full mode, 1/2^16 block in
/// sampling mode ([`block_unit`]).
pub(crate) type Weight = (u64, u64);

/// What one sampled block of `size` bytes counts for: (block units of
/// 1/2^16 block, bytes). The same every time for the same size, so a free
/// takes away exactly what the allocation added.
#[inline]
pub(crate) fn weight(size: usize, mean: usize) -> Weight {
    let p = probability(size, mean);
    if p <= 0.0 {
        return (1 << UNIT_SHIFT, size as u64);
    }
    (
        ((1u64 << UNIT_SHIFT) as f64 / p).round() as u64,
        (size as f64 / p).round() as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_byte_counts() {
        assert_eq!(parse_bytes(b"4096"), Some(4096));
        assert_eq!(parse_bytes(b" 512k "), Some(512 * 1024));
        assert_eq!(parse_bytes(b"2M"), Some(2 << 20));
        assert_eq!(parse_bytes(b"0"), Some(0));
        assert_eq!(parse_bytes(b""), None);
        assert_eq!(parse_bytes(b"k"), None);
        assert_eq!(parse_bytes(b"-5"), None);
        assert_eq!(parse_bytes(b"1.5m"), None);
        assert_eq!(parse_bytes(b"99999999999999999999999"), None);
    }

    #[test]
    fn weights_undo_the_sampling_probability() {
        // A block as large as the interval is sampled with p = 1 - 1/e.
        let p = probability(4096, 4096);
        assert!((p - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        let (units, bytes) = weight(4096, 4096);
        assert_eq!(units, ((65536.0 / p).round()) as u64);
        assert_eq!(bytes, (4096.0 / p).round() as u64);
        // Tiny blocks weigh about mean/size; huge ones about 1.
        assert!(weight(1, 1 << 20).1.abs_diff(1 << 20) <= 1);
        assert_eq!(weight(1 << 30, 4096), (1 << UNIT_SHIFT, 1 << 30));
    }

    #[test]
    fn gaps_average_the_interval() {
        let mut s = Sampler {
            left: 0,
            rng: 0x1234_5678_9abc_def1,
        };
        let n = 200_000;
        let mean = 4096;
        let sum: i64 = (0..n).map(|_| s.next_gap(mean)).sum();
        let avg = sum as f64 / n as f64;
        // Standard error of the mean: 4096 / sqrt(200000) = 9.2 bytes.
        assert!((avg - 4096.0).abs() < 5.0 * 9.2, "mean gap {avg}");
    }
}
