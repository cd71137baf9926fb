//! Stopping the world for a leak check.
//!
//! Owns the stop signal and its handler, the list of stopped threads (each
//! with its stack pointer and TLS anchor), the helpers that install and
//! inspect signal handlers, and [`Buf`], the memory the check works in while
//! the world is stopped. What the check scans is [`crate::check::roots`]'s.
//!
//! While other threads are stopped one of them may hold a libc lock (malloc's,
//! the dynamic loader's), so everything between [`stop`] and [`World::resume`]
//! is system calls and plain memory: no allocation, no libc call that locks.
//! Whatever needs those (the loaded objects, the signal handler) is prepared
//! before the stop.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};

/// A half-open address range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Range {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// A fixed-capacity array in its own anonymous mapping: usable while other
/// threads are stopped, invisible to the check (no root is in it), and
/// unmapped when dropped, so no leak checker finds the addresses it held.
pub(crate) struct Buf<T: Copy> {
    ptr: *mut T,
    cap: usize,
    len: usize,
}

impl<T: Copy> Buf<T> {
    /// Room for `cap` items; `None` if the mapping fails.
    pub(crate) fn new(cap: usize) -> Option<Buf<T>> {
        let bytes = cap.max(1).checked_mul(std::mem::size_of::<T>().max(1))?;
        let p = crate::alloc::meta::map_zeroed(bytes);
        if p.is_null() {
            return None;
        }
        Some(Buf {
            ptr: p.cast(),
            cap: cap.max(1),
            len: 0,
        })
    }

    /// Appends `v`; `false` when full.
    pub(crate) fn push(&mut self, v: T) -> bool {
        if self.len == self.cap {
            return false;
        }
        // SAFETY: `len < cap`, inside the mapping.
        unsafe { self.ptr.add(self.len).write(v) };
        self.len += 1;
        true
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: the first `len` items are initialised.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Buf<u8> {
    /// Reads from `fd` until its end or a full buffer. Allocation-free.
    pub(crate) fn read_from(&mut self, fd: i32) {
        while self.len < self.cap {
            let room = self.cap - self.len;
            // SAFETY: reads into the unused part of our own mapping.
            let n = unsafe { libc::read(fd, self.ptr.add(self.len).cast(), room.min(1 << 20)) };
            if n <= 0 {
                break;
            }
            self.len += n as usize;
        }
    }
}

impl<T: Copy> Drop for Buf<T> {
    fn drop(&mut self) {
        let bytes = self.cap * std::mem::size_of::<T>().max(1);
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), bytes) };
    }
}

// ---------------------------------------------------------------- stopped threads

/// Most threads a check can stop; past that the check is given up.
const MAX_THREADS: usize = 4096;
/// How long a check waits for a thread to stop before giving up.
const STOP_TIMEOUT_MS: u64 = 3000;

/// What a stopped thread left: its id, its stack pointer inside the handler
/// (the kernel saved its registers above that, on the same stack) and the
/// address of its [`ANCHOR`], which locates its static TLS.
struct Parked {
    tid: AtomicI32,
    sp: AtomicUsize,
    anchor: AtomicUsize,
    /// The kernel's record of the interrupted registers (`ucontext_t`), on
    /// the thread's stack: where a retention path's "register" roots are,
    /// and where its frames begin.
    ctx: AtomicUsize,
    /// The thread is one of leakscope's own ([`mark_own_thread`]).
    own: AtomicBool,
}

static PARKED: [Parked; MAX_THREADS] = [const {
    Parked {
        tid: AtomicI32::new(0),
        sp: AtomicUsize::new(0),
        anchor: AtomicUsize::new(0),
        ctx: AtomicUsize::new(0),
        own: AtomicBool::new(false),
    }
}; MAX_THREADS];
/// Entries of `PARKED` claimed in this stop.
static CLAIMED: AtomicUsize = AtomicUsize::new(0);
/// The stop in progress (0: none). Odd numbers only.
static EPOCH: AtomicU32 = AtomicU32::new(0);
/// Equal to the stop's epoch once its threads may go on.
static RELEASE: AtomicU32 = AtomicU32::new(0);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// A byte of this crate's static TLS: every thread has it at the same
    /// offset from its thread pointer, so its address locates the thread's
    /// static TLS blocks.
    static ANCHOR: u8 = const { 0 };
}

thread_local! {
    /// This thread is one of leakscope's own (the report signal's, the
    /// timeline's, the live server's): a check scans none of its stack or
    /// registers, which hold nothing of the program's but stale words.
    static OWN: Cell<bool> = const { Cell::new(false) };
}

thread_local! {
    /// The record (`ucontext_t`) of the registers a fatal signal
    /// interrupted on this thread, parked in its handler until the process
    /// dies ([`park_until_death`]); 0 when not parked.
    static PARKED_AT: Cell<usize> = const { Cell::new(0) };
}

/// Parks the calling thread, inside a handler of a signal that ends the
/// process, until the process ends, for `secs` seconds at most; `ctx` is
/// the handler's record of the registers the signal interrupted. A check
/// that stops it meanwhile scans the program's frames from there, as if
/// the handler were not there: what lies below (the kernel's signal frame,
/// the handler's, over dead stack) is not the program's. The limit: the
/// signal may have come while the thread held a lock of glibc's `malloc`
/// (a C call) that the report then waits for; after it the thread goes on.
/// Async-signal-safe.
pub(crate) fn park_until_death(ctx: usize, secs: i64) {
    let _ = PARKED_AT.try_with(|p| p.set(ctx));
    let now = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: fills `t`; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        t.tv_sec
    };
    let until = now() + secs;
    while now() < until {
        let nap = libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        // SAFETY: sleeps; a check's stop signal wakes it early.
        unsafe { libc::nanosleep(&nap, std::ptr::null_mut()) };
    }
    let _ = PARKED_AT.try_with(|p| p.set(0));
}

/// Marks the calling thread as one of leakscope's own (see [`OWN`]).
pub(crate) fn mark_own_thread() {
    let _ = OWN.try_with(|o| o.set(true));
}

/// Whether the calling thread is one of leakscope's own.
fn own_thread() -> bool {
    OWN.try_with(Cell::get).unwrap_or(false)
}

pub(crate) fn anchor() -> usize {
    ANCHOR.try_with(|a| a as *const u8 as usize).unwrap_or(0)
}

pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

extern "C" fn on_stop(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is this thread's; it is put back before returning.
    let errno = unsafe { *libc::__errno_location() };
    let epoch = EPOCH.load(Ordering::Acquire);
    if epoch != 0 && RELEASE.load(Ordering::Acquire) != epoch {
        let marker = 0usize;
        let sp = std::hint::black_box(&marker) as *const usize as usize;
        let i = CLAIMED.fetch_add(1, Ordering::AcqRel);
        if let Some(p) = PARKED.get(i) {
            p.sp.store(sp, Ordering::Relaxed);
            p.anchor.store(anchor(), Ordering::Relaxed);
            // A thread parked by a fatal signal: the registers it interrupted.
            let parked = PARKED_AT.try_with(Cell::get).unwrap_or(0);
            let ctx = if parked != 0 { parked } else { ctx as usize };
            p.ctx.store(ctx, Ordering::Relaxed);
            p.own.store(own_thread(), Ordering::Relaxed);
            p.tid.store(gettid(), Ordering::Release);
        }
        while RELEASE.load(Ordering::Acquire) != epoch {
            futex_wait(&RELEASE, RELEASE.load(Ordering::Acquire), epoch);
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Sleeps while `word` holds `seen` (and is not `until`).
fn futex_wait(word: &AtomicU32, seen: u32, until: u32) {
    if seen == until {
        return;
    }
    // SAFETY: FUTEX_WAIT reads the word at a valid address; no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

/// Installs the stop handler on a real-time signal nobody else handles
/// (once). `None` if there is none free.
fn stop_signal() -> Option<i32> {
    let s = SIGNAL.load(Ordering::Acquire);
    if s != 0 {
        return Some(s);
    }
    let handler = on_stop as *const () as usize;
    let (lo, hi) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    for sig in (lo..=hi).rev() {
        if signal_owner(sig, handler).is_ok()
            && set_handler(sig, handler, libc::SA_SIGINFO, true).is_ok()
        {
            SIGNAL.store(sig, Ordering::Release);
            return Some(sig);
        }
    }
    None
}

/// The action of `sig` now (a handler's address, `SIG_DFL` or `SIG_IGN`).
/// Async-signal-safe: a handler calls it to see whether it is still the
/// installed one, or was chained to by a handler installed after it.
pub(crate) fn current_action(sig: i32) -> std::io::Result<usize> {
    // SAFETY: sigaction writes the current action into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(old.sa_sigaction)
    }
}

/// Who handles `sig` now: `Ok(true)` if `handler` does, `Ok(false)` if
/// nobody (the default action), an `AlreadyExists` error if the program does.
pub(crate) fn signal_owner(sig: i32, handler: usize) -> std::io::Result<bool> {
    match current_action(sig)? {
        h if h == handler => Ok(true),
        libc::SIG_DFL => Ok(false),
        _ => Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)),
    }
}

/// Makes `handler` the action of `sig`, with `SA_RESTART` and `flags`;
/// `block_all`: every other signal waits while it runs.
pub(crate) fn set_handler(
    sig: i32,
    handler: usize,
    flags: i32,
    block_all: bool,
) -> std::io::Result<()> {
    // SAFETY: sigaction reads the struct given; `handler` is an
    // `extern "C"` function of the signature `flags` says.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_RESTART | flags;
        if block_all {
            libc::sigfillset(&mut sa.sa_mask);
        } else {
            libc::sigemptyset(&mut sa.sa_mask);
        }
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One stopped thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stopped {
    pub(crate) tid: i32,
    pub(crate) sp: usize,
    pub(crate) anchor: usize,
    /// Its interrupted registers' record (`ucontext_t`), 0 if unknown.
    pub(crate) ctx: usize,
    /// One of leakscope's own threads.
    pub(crate) own: bool,
}

/// The other threads, stopped until [`World::resume`] (or drop).
pub(crate) struct World {
    epoch: u32,
    pub(crate) threads: Buf<Stopped>,
}

impl World {
    pub(crate) fn resume(self) {}
}

impl Drop for World {
    fn drop(&mut self) {
        RELEASE.store(self.epoch, Ordering::Release);
        futex_wake_all(&RELEASE);
        EPOCH.store(0, Ordering::Release);
    }
}

/// Calls `f(tid)` for every thread of the process; `false` if the list
/// could not be read.
fn each_task(mut f: impl FnMut(i32)) -> bool {
    // SAFETY: open/getdents64/close on a buffer of ours.
    unsafe {
        let fd = libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                break;
            }
            let mut off = 0usize;
            while off + 19 < n as usize {
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                if reclen == 0 {
                    break;
                }
                let name = &buf[off + 19..(off + reclen).min(n as usize)];
                let mut tid = 0i32;
                let mut digits = 0;
                for &c in name {
                    if !c.is_ascii_digit() {
                        break;
                    }
                    tid = tid.saturating_mul(10).saturating_add((c - b'0') as i32);
                    digits += 1;
                }
                if digits > 0 {
                    f(tid);
                }
                off += reclen;
            }
        }
        libc::close(fd);
    }
    true
}

fn now_ms() -> u64 {
    // SAFETY: clock_gettime fills the struct.
    unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t);
        t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
    }
}

/// Stops every other thread of the process. Allocation-free. Callers hold
/// the check lock, so stops never overlap.
pub(crate) fn stop() -> Result<World, &'static str> {
    let sig = stop_signal().ok_or("no free real-time signal to stop threads with")?;
    let mut signalled: Buf<i32> = Buf::new(MAX_THREADS).ok_or("no memory to stop threads")?;
    let threads: Buf<Stopped> = Buf::new(MAX_THREADS).ok_or("no memory to stop threads")?;
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let epoch = NEXT.fetch_add(2, Ordering::Relaxed) | 1;
    CLAIMED.store(0, Ordering::Relaxed);
    for p in &PARKED {
        p.tid.store(0, Ordering::Relaxed);
    }
    EPOCH.store(epoch, Ordering::Release);
    let mut world = World { epoch, threads };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let me = gettid();
    let start = now_ms();
    // Signal every thread not signalled yet, wait for them, and look again
    // until a look finds no new thread (a thread can only be made by a
    // running one).
    loop {
        let mut new = 0;
        let mut full = false;
        let listed = each_task(|tid| {
            if tid == me || signalled.as_slice().contains(&tid) {
                return;
            }
            // SAFETY: tgkill sends a signal whose handler we installed.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) } == 0 {
                full |= !signalled.push(tid);
                new += 1;
            }
        });
        if !listed {
            return Err("cannot list the threads (/proc/self/task)");
        }
        if full {
            return Err("too many threads to stop");
        }
        if new == 0 {
            break;
        }
        // Wait until every signalled thread that still exists has parked.
        loop {
            let parked = CLAIMED.load(Ordering::Acquire).min(MAX_THREADS);
            let mut missing = 0;
            for &tid in signalled.as_slice() {
                let here = PARKED[..parked]
                    .iter()
                    .any(|p| p.tid.load(Ordering::Acquire) == tid);
                // SAFETY: signal 0 only checks that the thread exists.
                if !here && unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) } == 0 {
                    missing += 1;
                }
            }
            if missing == 0 {
                break;
            }
            if now_ms() - start > STOP_TIMEOUT_MS {
                return Err("a thread did not stop (does it block real-time signals?)");
            }
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
    let parked = CLAIMED.load(Ordering::Acquire).min(MAX_THREADS);
    for p in &PARKED[..parked] {
        if p.tid.load(Ordering::Acquire) != 0 {
            world.threads.push(Stopped {
                tid: p.tid.load(Ordering::Relaxed),
                sp: p.sp.load(Ordering::Relaxed),
                anchor: p.anchor.load(Ordering::Relaxed),
                ctx: p.ctx.load(Ordering::Relaxed),
                own: p.own.load(Ordering::Relaxed),
            });
        }
    }
    Ok(world)
}
