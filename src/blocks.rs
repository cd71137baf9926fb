//! The block table: what the tracker knows about every live block it saw.
//!
//! Owns the side table from block address to [`Meta`]. A side table (rather than
//! a header in front of each block) keeps the inner allocator's size classes and
//! in-place `realloc`, passes through frees of blocks the tracker never saw, and
//! lets a report enumerate the live blocks.
//!
//! Sharded by a hash of the address: a block is allocated on one thread and
//! often freed on another (a response handed to a writer), so sharding by
//! thread or by the allocator's per-thread regions would put both threads on
//! one lock; with many small shards picked by hash, two threads rarely meet. Must never allocate through the global
//! allocator (tables grow in libc's memory) and never hold a lock while calling
//! anything that could re-enter the tracker.

use crate::sync::{mix, MetaAlloc, SpinLock};
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

/// What the tracker keeps per live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) size: usize,
    pub(crate) site: u32,
    /// Scope name id, 0 when allocated outside any scope.
    pub(crate) scope: u32,
    /// Run record slot and its generation at allocation time (0: no run).
    pub(crate) run_slot: u32,
    pub(crate) run_gen: u32,
}

const SHARDS: usize = 256;

#[repr(align(64))]
struct Shard(SpinLock<HashTable<(usize, Meta), MetaAlloc>>);

static TABLE: [Shard; SHARDS] =
    [const { Shard(SpinLock::new(HashTable::new_in(MetaAlloc {}))) }; SHARDS];

/// The shard of a block, from bits of its hash that the table's own probing
/// (low bits) and tags (top 7 bits) do not use.
#[inline]
fn shard(addr: usize) -> &'static Shard {
    let region = mix((addr >> 26) as u64) as usize;
    let i = region.wrapping_add((addr >> 16) & 7) % SHARDS;
    // `i < SHARDS`, so this never falls back; the fallback only avoids a panic path.
    TABLE.get(i).unwrap_or(&TABLE[0])
}

#[inline]
fn hash(addr: usize) -> u64 {
    mix(addr as u64)
}

pub(crate) enum Inserted {
    New,
    /// The table still had an entry for this address: its block was freed
    /// without the tracker seeing it, so the caller counts it as freed.
    Replaced(Meta),
    /// The table could not grow (libc out of memory): the block goes untracked.
    Dropped,
}

#[inline]
pub(crate) fn insert(addr: usize, meta: Meta) -> Inserted {
    let h = hash(addr);
    let mut t = shard(addr).0.lock();
    // Room first, so that `entry` below never has to grow the table (its own
    // growth would abort on failure instead of reporting it).
    if t.try_reserve(1, |e| hash(e.0)).is_err() {
        return match t.find_mut(h, |e| e.0 == addr) {
            Some(entry) => Inserted::Replaced(std::mem::replace(&mut entry.1, meta)),
            None => Inserted::Dropped,
        };
    }
    match t.entry(h, |e| e.0 == addr, |e| hash(e.0)) {
        Entry::Occupied(mut e) => Inserted::Replaced(std::mem::replace(&mut e.get_mut().1, meta)),
        Entry::Vacant(e) => {
            e.insert((addr, meta));
            Inserted::New
        }
    }
}

#[inline]
pub(crate) fn remove(addr: usize) -> Option<Meta> {
    let h = hash(addr);
    let mut t = shard(addr).0.lock();
    t.find_entry(h, |e| e.0 == addr)
        .ok()
        .map(|e| e.remove().0 .1)
}

/// Calls `f` for every live block, one shard at a time. `f` runs with a shard
/// locked, so it must not free tracked blocks; it may allocate only while the
/// calling thread's re-entrancy flag is up (allocations then bypass the table).
pub(crate) fn for_each(mut f: impl FnMut(usize, &Meta)) {
    for s in &TABLE {
        let t = s.0.lock();
        for (addr, meta) in t.iter() {
            f(*addr, meta);
        }
    }
}

pub(crate) fn lock_for_fork() {
    for s in &TABLE {
        s.0.lock_for_fork();
    }
}

/// # Safety
/// Pairs with [`lock_for_fork`] in the fork handlers.
pub(crate) unsafe fn unlock_after_fork() {
    for s in &TABLE {
        // SAFETY: forwarded contract.
        unsafe { s.0.force_unlock() };
    }
}
