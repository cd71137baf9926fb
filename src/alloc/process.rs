//! The allocation layer's process-wide edges: its start, `fork`, and the
//! count of blocks it could not track.
//!
//! Owns [`start`], which the first allocation runs once (with the thread's
//! re-entrancy flag up): it chooses how stacks are captured, installs the
//! `fork` handlers that keep a child from inheriting one of this layer's
//! locks held, then runs the hook a
//! layer above registered with [`on_start`] (the report layer reads the
//! environment and arms the exit report there). The layers above register
//! before `main` or at any time later: a hook registered after the start
//! runs at once. Nothing here may block on a lock the allocation path holds.

use crate::alloc::{blocks, callsite, cfi, ignored, meta, region, runs, thread, unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

static UNTRACKED: AtomicU64 = AtomicU64::new(0);
/// `CLOCK_MONOTONIC` at the start, in nanoseconds.
static STARTED_NS: AtomicU64 = AtomicU64::new(0);

/// `CLOCK_MONOTONIC` now, in nanoseconds (no allocation, no lock).
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The CPU time this thread has used, in nanoseconds: what a piece of work
/// cost, not counting the time the thread waited for a core.
pub(crate) fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills a valid timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Seconds since the tracker started (the first allocation).
pub(crate) fn seconds_since_start() -> f64 {
    monotonic_ns().saturating_sub(STARTED_NS.load(Ordering::Relaxed)) as f64 / 1e9
}

/// A block went untracked for lack of table memory.
pub(crate) fn note_untracked() {
    UNTRACKED.fetch_add(1, Ordering::Relaxed);
}

/// Blocks that went untracked for lack of table memory, so far.
pub(crate) fn untracked_count() -> u64 {
    UNTRACKED.load(Ordering::Relaxed)
}

/// The hook for the start, as a `fn()` cast to an address (0: none yet).
static HOOK: AtomicUsize = AtomicUsize::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);
/// The hook ran (or is running): it runs once, whichever side comes second.
static HOOK_RAN: AtomicBool = AtomicBool::new(false);

/// Registers `hook` to run once when the tracker starts, or now if it has
/// started (then with this thread's allocations untracked). One hook: a
/// later registration replaces one that has not run.
pub(crate) fn on_start(hook: fn()) {
    HOOK.store(hook as usize, Ordering::SeqCst);
    if STARTED.load(Ordering::SeqCst) {
        run_hook();
    }
}

/// Whether the tracker has started: it is the global allocator, and
/// something allocated.
pub(crate) fn started() -> bool {
    STARTED.load(Ordering::SeqCst)
}

/// Runs once, from the first allocation, with this thread's allocations
/// untracked.
pub(crate) fn start() {
    #[cfg(all(
        feature = "c-heap",
        target_os = "linux",
        target_env = "gnu",
        target_arch = "x86_64"
    ))]
    crate::alloc::c_heap::keep();
    STARTED_NS.store(monotonic_ns(), Ordering::Relaxed);
    unwind::choose();
    // SAFETY: the handlers are `extern "C"` functions that only take and
    // release the allocation path's spin locks (the child's also settles
    // young-block entries).
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork_child)) };
    STARTED.store(true, Ordering::SeqCst);
    run_hook();
}

/// Both sides store their flag before they look at the other's (SeqCst),
/// so at least one of them sees both and calls this; the swap lets one run.
fn run_hook() {
    let hook = HOOK.load(Ordering::SeqCst);
    if hook == 0 || HOOK_RAN.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: a non-zero HOOK was stored from a `fn()` in `on_start`.
    let hook: fn() = unsafe { std::mem::transmute::<usize, fn()>(hook) };
    thread::untracked(hook);
}

/// The forking thread's re-entrancy flag before [`before_fork`] raised it.
static FORK_WAS_BUSY: AtomicBool = AtomicBool::new(false);

extern "C" fn before_fork() {
    // From here to the last handler, whatever the forking thread allocates
    // (other handlers, glibc) goes straight to the inner allocator: this
    // layer's locks are held.
    FORK_WAS_BUSY.store(thread::enter_fork(), Ordering::Relaxed);
    // The layers above first (a report or a check holds theirs while it
    // takes this layer's), then this layer's in the order the allocation
    // path nests them (the region's are never held with another; a check
    // takes the ignored set before the block table).
    meta::lock_upper_for_fork();
    region::lock_for_fork();
    runs::lock_for_fork();
    callsite::lock_for_fork();
    ignored::lock_for_fork();
    blocks::lock_for_fork();
    cfi::lock_for_fork();
    meta::lock_for_fork();
}

extern "C" fn after_fork_child() {
    after_fork();
    blocks::settle_after_fork();
}

extern "C" fn after_fork() {
    // SAFETY: `before_fork` took exactly these locks in this process (or in the
    // parent this child was forked from), and nothing used them since.
    unsafe {
        meta::unlock_after_fork();
        cfi::unlock_after_fork();
        blocks::unlock_after_fork();
        ignored::unlock_after_fork();
        callsite::unlock_after_fork();
        runs::unlock_after_fork();
        region::unlock_after_fork();
        meta::unlock_upper_after_fork();
    }
    thread::leave_fork(FORK_WAS_BUSY.load(Ordering::Relaxed));
}
