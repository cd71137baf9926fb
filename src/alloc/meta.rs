//! Locking and memory for the tracker's own metadata.
//!
//! Owns the spin lock used on the allocation path and the allocator that
//! metadata tables use. Must never allocate through the global allocator and
//! never call anything that could: a lock here is a plain atomic flag, and
//! metadata memory comes from libc's `malloc` (`std::alloc::System`) directly.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

/// Allocator for metadata: libc's allocator, never the global one.
///
/// Hash tables get their memory as [`allocator_api2`]'s `Allocator`, and
/// hashbrown keeps only a pointer into the middle of it (to its control
/// bytes). So that valgrind, run over a tracked program, sees those blocks
/// as still reachable rather than possibly lost, each one starts with a link
/// in a list whose head is a static. Memory taken through `GlobalAlloc`
/// (never freed, held from statics by its start) is plain `malloc`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MetaAlloc {}

// SAFETY: forwards to `Raw`, which upholds the contract.
unsafe impl std::alloc::GlobalAlloc for MetaAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { Raw.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { Raw.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded contract.
        unsafe { Raw.dealloc(ptr, layout) }
    }
}

/// Where the tracker's own memory comes from: `System`, or, where the
/// process's `malloc` family is the tracker's (feature `c-heap`), glibc's
/// allocator directly, so that the tracker's tables are never counted as
/// the program's C blocks.
#[cfg(not(all(
    feature = "c-heap",
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64"
)))]
pub(crate) use std::alloc::System as Raw;

#[cfg(all(
    feature = "c-heap",
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64"
))]
pub(crate) use glibc::Raw;

/// glibc's allocator under its own names, past the process's `malloc`
/// family (which `c_heap` defines).
#[cfg(all(
    feature = "c-heap",
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64"
))]
pub(crate) mod glibc {
    use std::ffi::c_void;

    extern "C" {
        pub(crate) fn __libc_malloc(size: usize) -> *mut c_void;
        pub(crate) fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
        pub(crate) fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
        pub(crate) fn __libc_free(p: *mut c_void);
        pub(crate) fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
        pub(crate) fn __libc_valloc(size: usize) -> *mut c_void;
        pub(crate) fn __libc_pvalloc(size: usize) -> *mut c_void;
    }

    /// glibc's allocator as a `GlobalAlloc`.
    pub(crate) struct Raw;

    /// What glibc's malloc aligns every block to.
    const MIN_ALIGN: usize = 16;

    // SAFETY: glibc's malloc, calloc and memalign return blocks of at least
    // the size asked, aligned to MIN_ALIGN (memalign: to `align`), or null;
    // free takes any of them.
    unsafe impl std::alloc::GlobalAlloc for Raw {
        #[inline]
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            // SAFETY: see the impl.
            unsafe {
                if layout.align() <= MIN_ALIGN {
                    __libc_malloc(layout.size()).cast()
                } else {
                    __libc_memalign(layout.align(), layout.size()).cast()
                }
            }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            if layout.align() <= MIN_ALIGN {
                // SAFETY: see the impl.
                return unsafe { __libc_calloc(1, layout.size()).cast() };
            }
            // SAFETY: forwarded contract; a new block of `size` bytes.
            unsafe {
                let p = self.alloc(layout);
                if !p.is_null() {
                    std::ptr::write_bytes(p, 0, layout.size());
                }
                p
            }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
            // SAFETY: a block of this allocator.
            unsafe { __libc_free(ptr.cast()) }
        }

        #[inline]
        unsafe fn realloc(
            &self,
            ptr: *mut u8,
            layout: std::alloc::Layout,
            new_size: usize,
        ) -> *mut u8 {
            if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
                // SAFETY: a block of this allocator; glibc's realloc keeps
                // MIN_ALIGN.
                return unsafe { __libc_realloc(ptr.cast(), new_size).cast() };
            }
            // SAFETY: as `GlobalAlloc::realloc` does it: a new block, the
            // old one's bytes copied, the old one freed.
            unsafe {
                let new = std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
                let p = self.alloc(new);
                if !p.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                p
            }
        }
    }
}

/// The link at the start of every table block (see [`MetaAlloc`]).
struct Link {
    prev: *mut Link,
    next: *mut Link,
}

/// The first table block.
struct Tables(*mut Link);

// SAFETY: the list is only touched under `TABLES`' lock.
unsafe impl Send for Tables {}

static TABLES: SpinLock<Tables> = SpinLock::new(Tables(std::ptr::null_mut()));

/// Room in front of a table block for its link, keeping its alignment.
fn link_room(layout: std::alloc::Layout) -> Option<(std::alloc::Layout, usize)> {
    let room = layout.align().max(std::mem::size_of::<Link>());
    let outer =
        std::alloc::Layout::from_size_align(layout.size().checked_add(room)?, layout.align());
    Some((outer.ok()?, room))
}

// SAFETY: blocks come from `Raw` with room for the link in front; the
// caller gets memory of the layout it asked for, valid until deallocated.
unsafe impl allocator_api2::alloc::Allocator for MetaAlloc {
    fn allocate(
        &self,
        layout: std::alloc::Layout,
    ) -> Result<std::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        let (outer, room) = link_room(layout).ok_or(allocator_api2::alloc::AllocError)?;
        // SAFETY: `outer` is non-zero-sized (it holds the link).
        let base = unsafe { std::alloc::GlobalAlloc::alloc(&Raw, outer) };
        if base.is_null() {
            return Err(allocator_api2::alloc::AllocError);
        }
        let link = base.cast::<Link>();
        let mut t = TABLES.lock();
        // SAFETY: `base` is a fresh block with room for a `Link`; the list's
        // blocks are ours and live (under the lock).
        unsafe {
            link.write(Link {
                prev: std::ptr::null_mut(),
                next: t.0,
            });
            if let Some(first) = t.0.as_mut() {
                first.prev = link;
            }
        }
        t.0 = link;
        drop(t);
        // SAFETY: `room < outer.size()`.
        let p = unsafe { base.add(room) };
        let slice = std::ptr::slice_from_raw_parts_mut(p, layout.size());
        std::ptr::NonNull::new(slice).ok_or(allocator_api2::alloc::AllocError)
    }

    unsafe fn deallocate(&self, ptr: std::ptr::NonNull<u8>, layout: std::alloc::Layout) {
        let Some((outer, room)) = link_room(layout) else {
            return;
        };
        // SAFETY: `ptr` came from `allocate` with this layout: its link is
        // `room` below it, and the list's blocks are live (under the lock).
        unsafe {
            let base = ptr.as_ptr().sub(room);
            let link = &mut *base.cast::<Link>();
            let mut t = TABLES.lock();
            match link.prev.as_mut() {
                Some(prev) => prev.next = link.next,
                None => t.0 = link.next,
            }
            if let Some(next) = link.next.as_mut() {
                next.prev = link.prev;
            }
            drop(t);
            std::alloc::GlobalAlloc::dealloc(&Raw, base, outer);
        }
    }
}

/// For the fork handlers: the table list's lock, innermost of the tracker's.
pub(crate) fn lock_for_fork() {
    TABLES.lock_for_fork();
}

/// # Safety
/// Pairs with [`lock_for_fork`].
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: forwarded contract.
    unsafe { TABLES.force_unlock() };
}

/// A test-and-test-and-set lock that needs no memory and cannot allocate.
///
/// Held only for short table operations. After a short spin it yields the CPU,
/// so a holder that was preempted gets to run on a machine with few cores.
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value; `T: Send` is all that needs.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        SpinGuard { lock: self }
    }

    /// The lock if it is free now; `None` if anyone holds it.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then_some(SpinGuard { lock: self })
    }

    #[cold]
    fn lock_slow(&self) {
        take(&self.locked);
    }

    /// The value, for a caller that holds the lock some other way.
    ///
    /// # Safety
    /// The caller took the lock with [`SpinLock::lock_for_fork`] and keeps it
    /// while the reference lives.
    pub(crate) unsafe fn held(&self) -> &T {
        // SAFETY: forwarded contract: the lock is held, nobody else writes.
        unsafe { &*self.value.get() }
    }

    /// Takes the lock and keeps it until [`SpinLock::force_unlock`]: for the
    /// `fork` handlers, which lock in one callback and unlock in another.
    pub(crate) fn lock_for_fork(&self) {
        std::mem::forget(self.lock());
    }

    /// # Safety
    /// The caller took the lock with [`SpinLock::lock_for_fork`] (in this
    /// process, or in the parent of this forked child) and nobody uses it since.
    pub(crate) unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// Sets `locked` once it is clear: a spin lock's slow path, spinning,
/// then yielding the CPU.
#[cold]
fn take(locked: &AtomicBool) {
    let mut spins = 0u32;
    loop {
        while locked.load(Ordering::Relaxed) {
            back_off(&mut spins);
        }
        if locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// One wait of a spinning thread, `spins` its count so far: a spin hint,
/// and every 64th time the CPU given up instead.
#[inline]
pub(crate) fn back_off(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if (*spins).is_multiple_of(64) {
        // SAFETY: sched_yield has no preconditions and does not allocate.
        unsafe { libc::sched_yield() };
    } else {
        std::hint::spin_loop();
    }
}

pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: holding the guard means holding the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: holding the guard means holding the lock, so access is unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

// ---------------------------------------------------------------- the layers above, across fork

/// A spin lock of a layer above this one that a report or a check takes
/// (the report's destinations, the leak check's, the scope names'). The
/// `fork` handlers hold it across `fork`, as they hold this layer's own
/// locks, so that a child never inherits it held by a thread the child does
/// not have (and waits for it forever). It joins them at its first use;
/// `rank` orders it among them: the handlers take the highest rank first,
/// the order in which the layers nest them (serve above check above
/// scope), and all of them before this layer's locks.
pub(crate) struct ForkSafeLock<T> {
    lock: SpinLock<T>,
    rank: u8,
    /// [`NOT_JOINED`], [`JOINING`] or [`JOINED`].
    joined: AtomicU8,
}

const NOT_JOINED: u8 = 0;
const JOINING: u8 = 1;
const JOINED: u8 = 2;

/// The thread (`pthread_self`) whose `fork` is under way, from its first
/// handler to its last; 0 for none.
static FORKING: AtomicUsize = AtomicUsize::new(0);
/// Threads joining a lock to the handlers' list now. A fork's first handler
/// announces the fork ([`FORKING`]), then waits for this to be 0 before it
/// takes the listed locks; a joiner counts itself here, then looks at
/// [`FORKING`] (both sequentially consistent), and stands back while another
/// thread forks. So a fork never misses a lock that is then taken before
/// it ends (its child would inherit it held, and wait for it forever: seen
/// under AddressSanitizer, a child forked while another thread took the
/// check's lock for the first time), nor copies a half-joined one.
static JOINING_NOW: AtomicUsize = AtomicUsize::new(0);

fn this_thread() -> usize {
    // SAFETY: no precondition.
    unsafe { libc::pthread_self() as usize }
}

/// Ranks of the layers' fork-safe locks: a report's destinations (serve)
/// are never taken inside a check, the check takes scope names.
pub(crate) const FORK_RANK_SERVE: u8 = 3;
pub(crate) const FORK_RANK_CHECK: u8 = 2;
pub(crate) const FORK_RANK_SCOPE: u8 = 1;

/// Most locks that can join the fork handlers.
const FORK_SAFE: usize = 8;

/// The locks that joined, each a lock's flag and its rank; claimed by an
/// atomic count, never removed. No lock guards them: one would nest with
/// the locks themselves (a thread that holds one and joins another).
static FORK_SAFE_FLAGS: [AtomicPtr<AtomicBool>; FORK_SAFE] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; FORK_SAFE];
static FORK_SAFE_RANKS: [AtomicU8; FORK_SAFE] = [const { AtomicU8::new(0) }; FORK_SAFE];
static FORK_SAFE_JOINED: AtomicUsize = AtomicUsize::new(0);

impl<T> ForkSafeLock<T> {
    pub(crate) const fn new(rank: u8, value: T) -> Self {
        ForkSafeLock {
            lock: SpinLock::new(value),
            rank,
            joined: AtomicU8::new(NOT_JOINED),
        }
    }

    pub(crate) fn lock(&'static self) -> SpinGuard<'static, T> {
        if self.joined.load(Ordering::Acquire) != JOINED {
            self.join();
        }
        self.lock.lock()
    }

    /// Joins the fork handlers' list (one thread does; others wait for it),
    /// never while another thread forks ([`JOINING_NOW`]).
    #[cold]
    fn join(&'static self) {
        let me = this_thread();
        loop {
            JOINING_NOW.fetch_add(1, Ordering::SeqCst);
            let forking = FORKING.load(Ordering::SeqCst);
            if forking == 0 || forking == me {
                break;
            }
            JOINING_NOW.fetch_sub(1, Ordering::SeqCst);
            while FORKING.load(Ordering::SeqCst) != 0 {
                std::thread::yield_now();
            }
        }
        let first =
            self.joined
                .compare_exchange(NOT_JOINED, JOINING, Ordering::AcqRel, Ordering::Acquire);
        if first.is_ok() {
            let i = FORK_SAFE_JOINED.fetch_add(1, Ordering::SeqCst);
            if let (Some(flag), Some(rank)) = (FORK_SAFE_FLAGS.get(i), FORK_SAFE_RANKS.get(i)) {
                rank.store(self.rank, Ordering::SeqCst);
                flag.store(
                    &self.lock.locked as *const AtomicBool as *mut AtomicBool,
                    Ordering::SeqCst,
                );
            }
            self.joined.store(JOINED, Ordering::Release);
        } else {
            // The first joiner is past the same gate: no fork waits on us.
            while self.joined.load(Ordering::Acquire) != JOINED {
                std::hint::spin_loop();
            }
        }
        JOINING_NOW.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Which of the joined locks the fork handlers hold now (bit `i`: entry
/// `i`): a lock that joins while a fork is under way was not taken, and is
/// not released.
static FORK_SAFE_HELD: AtomicU8 = AtomicU8::new(0);

/// The joined locks, by entry, highest rank first.
fn fork_safe_flags() -> impl Iterator<Item = (usize, &'static AtomicBool)> {
    let joined = FORK_SAFE_JOINED.load(Ordering::SeqCst).min(FORK_SAFE);
    (0..=u8::MAX).rev().flat_map(move |rank| {
        (0..joined).filter_map(move |i| {
            let flag = FORK_SAFE_FLAGS[i].load(Ordering::SeqCst);
            // SAFETY: a non-null entry is the flag of a `ForkSafeLock` in a
            // static (`join` takes `&'static self`).
            let flag = unsafe { flag.as_ref()? };
            (FORK_SAFE_RANKS[i].load(Ordering::SeqCst) == rank).then_some((i, flag))
        })
    })
}

/// For the `fork` handlers: takes every joined lock of the layers above,
/// highest rank first, and keeps them until [`unlock_upper_after_fork`].
pub(crate) fn lock_upper_for_fork() {
    FORKING.store(this_thread(), Ordering::SeqCst);
    while JOINING_NOW.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    let mut held = 0u8;
    for (i, flag) in fork_safe_flags() {
        take(flag);
        held |= 1 << i;
    }
    FORK_SAFE_HELD.store(held, Ordering::Relaxed);
}

/// # Safety
/// Pairs with [`lock_upper_for_fork`] in the fork handlers.
pub(crate) unsafe fn unlock_upper_after_fork() {
    let held = FORK_SAFE_HELD.swap(0, Ordering::Relaxed);
    for (i, flag) in fork_safe_flags() {
        if held & 1 << i != 0 {
            flag.store(false, Ordering::Release);
        }
    }
    FORKING.store(0, Ordering::SeqCst);
}

/// A value on cache lines of its own, so that writes to it do not slow
/// down readers of its neighbours (nor theirs it).
#[repr(align(64))]
#[derive(Default)]
pub(crate) struct CacheAligned<T>(pub(crate) T);

impl<T> Deref for CacheAligned<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Allocates one zeroed `T` and leaks it: from the metadata allocator, or,
/// a page or more, mapped from the kernel ([`map_zeroed`]), so that only
/// the pages it touches take memory (libc's `calloc` would clear all of
/// it, and a thread's slot is mostly caches it may never fill).
///
/// For structures that live for the rest of the process (arena chunks, thread
/// slots). Returns null when there is no memory.
pub(crate) fn leak_zeroed<T>() -> *mut T {
    let layout = std::alloc::Layout::new::<T>();
    if layout.size() >= PAGE && layout.align() <= PAGE {
        return map_zeroed(layout.size()).cast();
    }
    // SAFETY: every `T` this is used for is non-zero-sized and valid when all
    // bytes are zero (atomics, integers, null pointers).
    unsafe { std::alloc::GlobalAlloc::alloc_zeroed(&MetaAlloc {}, layout).cast() }
}

/// The smallest page size of the systems this runs on.
const PAGE: usize = 4096;

/// `len` zeroed bytes, page-aligned, in a new anonymous mapping of their
/// own (the caller's to unmap, or to keep for good): its pages take memory
/// only once touched. Null when the kernel refuses.
pub(crate) fn map_zeroed(len: usize) -> *mut u8 {
    // SAFETY: a new anonymous private mapping at an address the kernel
    // picks: it touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    p.cast()
}

/// Adds to a counter that only one thread writes: a plain load and store, no
/// locked instruction. Readers on other threads see whole values.
#[inline]
pub(crate) fn bump(c: &std::sync::atomic::AtomicU64, by: u64) {
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// An address as the tracker's tables keep it (and back: the same step): with
/// bits 56-61 set, so never an address a block can have. A leak checker that
/// scans the tables (ours, or valgrind run over a tracked program) then
/// finds no pointers to the blocks in them. Leaves bits 62-63 free for flags.
#[inline(always)]
pub(crate) fn hide(addr: usize) -> usize {
    addr ^ 0x3F << 56
}

/// Fast 64-bit mixer (folded multiply): good high and low bits for table indexes.
#[inline]
pub(crate) fn mix(x: u64) -> u64 {
    let m = (x as u128) * 0x9E37_79B9_7F4A_7C15_u128;
    (m as u64) ^ ((m >> 64) as u64)
}
