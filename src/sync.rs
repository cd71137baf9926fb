//! Locking and memory for the tracker's own metadata.
//!
//! Owns the spin lock used on the allocation path and the allocator that
//! metadata tables use. Must never allocate through the global allocator and
//! never call anything that could: a lock here is a plain atomic flag, and
//! metadata memory comes from libc's `malloc` (`std::alloc::System`) directly.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

/// Allocator for metadata tables: libc's allocator, never the global one.
pub(crate) type MetaAlloc = std::alloc::System;

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

    #[cold]
    fn lock_slow(&self) {
        let mut spins = 0u32;
        loop {
            while self.locked.load(Ordering::Relaxed) {
                spins = spins.wrapping_add(1);
                if spins % 64 == 0 {
                    // SAFETY: sched_yield has no preconditions and does not allocate.
                    unsafe { libc::sched_yield() };
                } else {
                    std::hint::spin_loop();
                }
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
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

/// Allocates one zeroed `T` from the metadata allocator and leaks it.
///
/// For structures that live for the rest of the process (arena chunks, thread
/// slots). Returns null when libc is out of memory.
pub(crate) fn leak_zeroed<T>() -> *mut T {
    let layout = std::alloc::Layout::new::<T>();
    // SAFETY: every `T` this is used for is non-zero-sized and valid when all
    // bytes are zero (atomics, integers, null pointers).
    unsafe { std::alloc::GlobalAlloc::alloc_zeroed(&MetaAlloc::default(), layout).cast() }
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
