//! Blocks kept out of leak reports by address: the set `ignore()` fills.
//!
//! Owns the set of ignored addresses (hidden, see [`hide`], so no scan sees
//! them as pointers). It sits with the allocation path because a free must
//! take its block out: [`on_free`] costs a relaxed load unless the set was
//! ever used. Never allocates through the global allocator (the set grows in
//! libc's memory) and takes only a spin lock.

use crate::alloc::meta::{hide, mix, MetaAlloc, SpinGuard, SpinLock};
use hashbrown::HashTable;
use std::sync::atomic::{AtomicBool, Ordering};

/// Addresses of ignored live blocks, hidden.
pub(crate) type Set = HashTable<usize, MetaAlloc>;

static IGNORED: SpinLock<Set> = SpinLock::new(HashTable::new_in(MetaAlloc {}));
/// Whether [`IGNORED`] was ever used: frees look there only then.
static IGNORING: AtomicBool = AtomicBool::new(false);

fn hidden_hash(hidden: &usize) -> u64 {
    mix(hide(*hidden) as u64)
}

/// Adds the block at `addr` (if the set has room). Outside the allocation
/// path, with the thread's allocations untracked.
pub(crate) fn insert(addr: usize) {
    let mut set = IGNORED.lock();
    let h = mix(addr as u64);
    let hidden = hide(addr);
    if set.find(h, |&a| a == hidden).is_none() && set.try_reserve(1, hidden_hash).is_ok() {
        set.insert_unique(h, hidden, hidden_hash);
    }
    IGNORING.store(true, Ordering::Relaxed);
}

/// The set, locked: the leak check holds it while the world is stopped.
pub(crate) fn lock() -> SpinGuard<'static, Set> {
    IGNORED.lock()
}

/// Holds the set's lock across `fork` so the child never inherits it held.
pub(crate) fn lock_for_fork() {
    IGNORED.lock_for_fork();
}

/// # Safety
/// Pairs with [`lock_for_fork`] in the fork handlers.
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: forwarded contract; `lock_for_fork` took this lock.
    unsafe { IGNORED.force_unlock() };
}

/// Whether `set` (from [`lock`]) holds `addr`.
pub(crate) fn contains(set: &Set, addr: usize) -> bool {
    let hidden = hide(addr);
    set.find(mix(addr as u64), |&a| a == hidden).is_some()
}

/// A tracked block at `addr` is freed. Allocation path: a relaxed load
/// unless [`insert`] was ever called.
#[inline]
pub(crate) fn on_free(addr: usize) {
    if IGNORING.load(Ordering::Relaxed) {
        forget(addr);
    }
}

#[cold]
fn forget(addr: usize) {
    let hidden = hide(addr);
    if let Ok(e) = IGNORED
        .lock()
        .find_entry(mix(addr as u64), |&a| a == hidden)
    {
        e.remove();
    }
}
