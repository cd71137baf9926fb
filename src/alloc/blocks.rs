//! The block table: what the tracker knows about every live block it saw.
//!
//! Owns the side table from block address to [`Meta`]. A side table (rather than
//! a header in front of each block) keeps the inner allocator's size classes and
//! in-place `realloc`, passes through frees of blocks the tracker never saw, and
//! lets a report enumerate the live blocks.
//!
//! Two levels. Each thread has a small table of its young blocks ([`Young`]),
//! which it alone writes, with plain stores: most blocks are freed soon, by the
//! thread that made them, and never cost a lock or a locked instruction. A
//! block that stays live is moved, when its place is needed, to the shared
//! table: shards under spin locks, picked by the allocator's 64 MiB region
//! (glibc, jemalloc and mimalloc give each thread its own regions, so threads'
//! blocks mostly land on their own shards). A block freed by another thread
//! is looked for in the shared table, then in the other threads' young
//! tables, where the freeing thread claims it with one compare-and-swap.
//!
//! Must never allocate through the global allocator (the shared table grows in
//! libc's memory) and never hold a lock while calling anything that could
//! re-enter the tracker.

use crate::alloc::meta::{hide, mix, MetaAlloc, SpinLock};
use hashbrown::HashTable;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

// ---------------------------------------------------------------- young blocks

/// Entries in a thread's young-block table.
const YOUNG: usize = 512;
/// How far from its home entry a young block may sit.
const WINDOW: usize = 4;
/// Flags in a young entry's address word. User-space addresses never have the
/// top two bits set, so blocks at such addresses go straight to the shared table.
const FREED: usize = 1 << 63;
/// The owner is moving this block to the shared table: wait, then look there.
const MOVING: usize = 1 << 62;
const FLAGS: usize = FREED | MOVING;

/// One young block (32 bytes). `addr` is 0 when empty; the owner writes the
/// other fields before it publishes `addr` (release), and only while `addr`
/// is not live.
#[derive(Default)]
struct YoungEntry {
    addr: AtomicUsize,
    size: AtomicUsize,
    /// Call-site id, and scope id << 32.
    ids: AtomicU64,
    /// Run slot << 32 | run generation.
    run: AtomicU64,
}

impl YoungEntry {
    #[inline]
    fn meta(&self) -> Meta {
        let ids = self.ids.load(Ordering::Relaxed);
        let run = self.run.load(Ordering::Relaxed);
        Meta {
            size: self.size.load(Ordering::Relaxed),
            site: ids as u32,
            scope: (ids >> 32) as u32,
            run_slot: (run >> 32) as u32,
            run_gen: run as u32,
        }
    }

    #[inline]
    fn publish(&self, addr: usize, m: Meta) {
        self.size.store(m.size, Ordering::Relaxed);
        self.ids
            .store(m.site as u64 | (m.scope as u64) << 32, Ordering::Relaxed);
        self.run.store(
            (m.run_slot as u64) << 32 | m.run_gen as u64,
            Ordering::Relaxed,
        );
        self.addr.store(hide(addr), Ordering::Release);
    }
}

/// One thread's young blocks: written by the thread that owns it (its slot's
/// owner); other threads only read it and claim entries of blocks they free.
/// All-zero bytes are an empty table.
pub(crate) struct Young {
    entries: [YoungEntry; YOUNG],
}

impl Young {
    #[inline]
    fn entry(&self, home: usize, i: usize) -> &YoungEntry {
        let e = &self.entries;
        e.get((home + i) % YOUNG).unwrap_or(&e[0])
    }

    #[inline]
    fn home(addr: usize) -> usize {
        (mix(addr as u64) >> 24) as usize % YOUNG
    }

    /// The owner takes back its own young block `addr`, if it is here.
    #[inline]
    fn take(&self, addr: usize) -> Option<Meta> {
        let home = Young::home(addr);
        for i in 0..WINDOW {
            let e = self.entry(home, i);
            if e.addr.load(Ordering::Relaxed) == hide(addr) {
                let meta = e.meta();
                // Nobody else frees this block now (that would be a double
                // free), so no other thread writes this entry: a plain store.
                e.addr.store(0, Ordering::Release);
                return Some(meta);
            }
        }
        None
    }

    /// Another thread claims young block `addr` that it is freeing.
    fn claim(&self, addr: usize) -> Claim {
        let home = Young::home(addr);
        let hidden = hide(addr);
        for i in 0..WINDOW {
            let e = self.entry(home, i);
            let a = e.addr.load(Ordering::Acquire);
            if a == hidden | MOVING {
                return Claim::Moving;
            }
            if a != hidden {
                continue;
            }
            // Read before the swap: once the entry is marked freed, its owner
            // may reuse it at any time.
            let meta = e.meta();
            return match e.addr.compare_exchange(
                hidden,
                hidden | FREED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => Claim::Got(meta),
                Err(now) if now == hidden | MOVING => Claim::Moving,
                // The owner moved it to the shared table meanwhile.
                Err(_) => Claim::Missing,
            };
        }
        Claim::Missing
    }
}

enum Claim {
    Got(Meta),
    Moving,
    Missing,
}

pub(crate) enum Inserted {
    New,
    /// A block that is no longer tracked, to count as freed: an entry the
    /// table still had for this address (its block was freed without the
    /// tracker seeing it), or a block moved out to the shared table that could
    /// not grow (libc out of memory).
    Replaced(usize, Meta),
    /// The new block itself is not tracked (the shared table could not grow).
    Dropped,
}

/// Records a new block at `addr`, allocated by the thread that owns `own`.
#[inline]
pub(crate) fn insert(own: &Young, addr: usize, meta: Meta) -> Inserted {
    if addr & FLAGS != 0 {
        return match insert_shared(addr, meta) {
            Shared::New => Inserted::New,
            Shared::Replaced(stale) => Inserted::Replaced(addr, stale),
            Shared::Dropped => Inserted::Dropped,
        };
    }
    let home = Young::home(addr);
    for i in 0..WINDOW {
        let e = own.entry(home, i);
        let a = e.addr.load(Ordering::Relaxed);
        if a == 0 || a & FREED != 0 {
            e.publish(addr, meta);
            return Inserted::New;
        }
        if a == hide(addr) {
            let stale = e.meta();
            e.publish(addr, meta);
            return Inserted::Replaced(addr, stale);
        }
    }
    move_out(own.entry(home, 0), addr, meta)
}

/// Moves the block of a full window's home entry `e` to the shared table and
/// puts the new block in its place.
#[cold]
fn move_out(e: &YoungEntry, addr: usize, meta: Meta) -> Inserted {
    let old = e.addr.load(Ordering::Relaxed);
    let mut result = Inserted::New;
    // Mark it first, so that a thread freeing it meanwhile waits rather than
    // missing it in both tables. (It may have been freed by another thread
    // since the window was scanned: then there is nothing to move.)
    if old & FLAGS == 0
        && e.addr
            .compare_exchange(old, old | MOVING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        let moved = e.meta();
        let old = hide(old);
        result = match insert_shared(old, moved) {
            Shared::New => Inserted::New,
            Shared::Replaced(stale) => Inserted::Replaced(old, stale),
            Shared::Dropped => {
                crate::alloc::process::note_untracked();
                Inserted::Replaced(old, moved)
            }
        };
    }
    // Otherwise another thread freed it (the entry says FREED): just reuse it.
    e.publish(addr, meta);
    result
}

/// Forgets the block at `addr`, freed by the thread that owns `own`, and
/// returns what was known of it; `None` for a block the tracker never saw.
#[inline]
pub(crate) fn remove(own: &Young, addr: usize) -> Option<Meta> {
    if addr & FLAGS == 0 {
        if let Some(meta) = own.take(addr) {
            return Some(meta);
        }
    }
    remove_elsewhere(addr)
}

fn remove_elsewhere(addr: usize) -> Option<Meta> {
    if let Some(meta) = remove_shared(addr) {
        return Some(meta);
    }
    if addr & FLAGS != 0 {
        return None;
    }
    let mut spins = 0u32;
    'search: loop {
        for young in crate::alloc::thread::young_tables() {
            match young.claim(addr) {
                Claim::Got(meta) => return Some(meta),
                Claim::Missing => {}
                Claim::Moving => {
                    // Its owner is moving it into the shared table right now.
                    spins = spins.wrapping_add(1);
                    if spins % 64 == 0 {
                        // SAFETY: sched_yield has no preconditions and does not allocate.
                        unsafe { libc::sched_yield() };
                    }
                    std::hint::spin_loop();
                    if let Some(meta) = remove_shared(addr) {
                        return Some(meta);
                    }
                    continue 'search;
                }
            }
        }
        break;
    }
    // A block moved to the shared table after the first look there was no
    // longer in its young table when we looked: it is in the shared table now.
    remove_shared(addr)
}

/// Calls `f` for every live block, one shard at a time, then the young
/// tables. `f` runs with a shard locked, so it must not free tracked blocks; it
/// may allocate only while the calling thread's re-entrancy flag is up
/// (allocations then bypass the table). Blocks that move or are freed while
/// this runs may be missed or seen twice; with the other threads quiet, it is
/// exact.
pub(crate) fn for_each(mut f: impl FnMut(usize, &Meta)) {
    for s in &TABLE {
        let t = s.0.lock();
        for &(key, w) in t.main.iter() {
            f(key_addr(key), &t.get(key, w));
        }
    }
    for young in crate::alloc::thread::young_tables() {
        for e in &young.entries {
            let a = e.addr.load(Ordering::Acquire);
            if a != 0 && a & FLAGS == 0 {
                f(hide(a), &e.meta());
            }
        }
    }
}

/// For the leak check, with the world stopped and [`lock_for_fork`] held:
/// calls `f` once for every live block. A block its owner was moving to the
/// shared table when stopped is taken from there if it got there (its young
/// entry may already hold part of the next block's fields), else from its
/// young entry (not yet touched).
pub(crate) fn for_each_held(mut f: impl FnMut(usize, &Meta)) {
    for s in &TABLE {
        // SAFETY: the caller holds every shard's lock (see above).
        let t = unsafe { s.0.held() };
        for &(key, w) in t.main.iter() {
            f(key_addr(key), &t.get(key, w));
        }
    }
    for young in crate::alloc::thread::young_tables() {
        for e in &young.entries {
            let a = e.addr.load(Ordering::Acquire);
            if a == 0 || a & FREED != 0 {
                continue;
            }
            let addr = hide(a & !MOVING);
            if a & MOVING != 0 && addr <= ADDR_MASK {
                // SAFETY: as above.
                let shared = unsafe { shard(addr).0.held() }
                    .main
                    .find(hash(addr), |e| key_addr(e.0) == addr)
                    .is_some();
                if shared {
                    continue;
                }
            }
            f(addr, &e.meta());
        }
    }
}

/// Live blocks in the tables now (an upper bound while threads run).
pub(crate) fn count_held() -> usize {
    let mut n = 0;
    for s in &TABLE {
        // SAFETY: as in `for_each_held`.
        n += unsafe { s.0.held() }.main.len();
    }
    n + crate::alloc::thread::young_tables().count() * YOUNG
}

// ---------------------------------------------------------------- shared table
//
// A shared entry is 16 bytes: a key word (the address shifted up 16 bits, the
// scope id in the low 16, the top bit set: see `key`) and one packed word (call-site, run slot, size). A
// size of 1 GiB or more lives in the shard's second, small table. A block
// moved here while its run was open keeps only the run's slot: the run lists
// it by address (see `runs::note_moved`), so no generation is needed here.

const SHARDS: usize = 256;

/// Addresses the shared table keeps: user-space addresses below 2^47.
const ADDR_MASK: usize = (1 << 47) - 1;

/// The key word of the block at `addr` (below 2^47) in scope `scope`: never
/// a user-space address (the top bit is set), so that no leak checker
/// scanning the table, ours or valgrind's, takes it for a pointer.
#[inline]
fn key(addr: usize, scope: u32) -> usize {
    addr << 16 | (scope & 0xFFFF) as usize | 1 << 63
}

#[inline]
fn key_addr(key: usize) -> usize {
    (key << 1) >> 17
}
/// Packed word: call-site id in bits 0-15, run slot in bits 16-31, size in
/// bits 32-61, and two flags.
const SIZE_SHIFT: u32 = 32;
const SIZE_MAX: usize = (1 << 30) - 1;
/// The size is in the shard's `big` table (1 GiB or more).
const BIG: u64 = 1 << 62;
/// The block is listed in its run (bits 16-31).
const TAGGED: u64 = 1 << 63;

/// The entry of `meta` at `addr`: (key word, packed word). A size too big
/// for the packed word is flagged [`BIG`]; the caller keeps it beside.
/// Ids fit in 16 bits: call-sites and scope names are capped at 65,536, open
/// runs at 65,535.
fn pack(addr: usize, m: &Meta) -> (usize, u64) {
    let key = key(addr, m.scope);
    let mut w = (m.site & 0xFFFF) as u64;
    if m.size <= SIZE_MAX {
        w |= (m.size as u64) << SIZE_SHIFT;
    } else {
        w |= BIG;
    }
    if m.run_slot != 0 {
        w |= TAGGED | ((m.run_slot & 0xFFFF) as u64) << 16;
    }
    (key, w)
}

/// The [`Meta`] of an entry; `big`: its size when the entry says it is big.
fn unpack(key: usize, w: u64, big: Option<usize>) -> Meta {
    let tagged = w & TAGGED != 0;
    Meta {
        size: if w & BIG != 0 {
            big.unwrap_or(SIZE_MAX)
        } else {
            ((w >> SIZE_SHIFT) as usize) & SIZE_MAX
        },
        site: (w & 0xFFFF) as u32,
        scope: (key & 0xFFFF) as u32,
        run_slot: if tagged {
            ((w >> 16) & 0xFFFF) as u32
        } else {
            0
        },
        run_gen: crate::alloc::runs::MOVED,
    }
}

struct Tables {
    main: HashTable<(usize, u64), MetaAlloc>,
    /// Sizes of 1 GiB and more, by address (hidden: [`hide`]).
    big: HashTable<(usize, usize), MetaAlloc>,
}

impl Tables {
    /// Takes out the entry of `addr`.
    fn take(&mut self, addr: usize) -> Option<Meta> {
        let (key, w) = self
            .main
            .find_entry(hash(addr), |e| key_addr(e.0) == addr)
            .ok()?
            .remove()
            .0;
        let big = if w & BIG != 0 {
            self.big
                .find_entry(hash(addr), |e| e.0 == hide(addr))
                .ok()
                .map(|e| e.remove().0 .1)
        } else {
            None
        };
        Some(unpack(key, w, big))
    }

    fn get(&self, key: usize, w: u64) -> Meta {
        let addr = key_addr(key);
        let big = if w & BIG != 0 {
            self.big
                .find(hash(addr), |e| e.0 == hide(addr))
                .map(|e| e.1)
        } else {
            None
        };
        unpack(key, w, big)
    }
}

#[repr(align(64))]
struct Shard(SpinLock<Tables>);

static TABLE: [Shard; SHARDS] = [const {
    Shard(SpinLock::new(Tables {
        main: HashTable::new_in(MetaAlloc {}),
        big: HashTable::new_in(MetaAlloc {}),
    }))
}; SHARDS];

/// The shard of a block: its allocator region, and 64 KiB within it, so a
/// region's blocks spread over a few shards.
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

#[inline]
fn key_addr_hash(key: usize) -> u64 {
    hash(key_addr(key))
}

enum Shared {
    New,
    Replaced(Meta),
    /// The table could not take it (libc out of memory, or an address
    /// above 2^48).
    Dropped,
}

/// Enters the block at `addr`. A block of a run still open is listed in
/// its run first (a tag from a run that closed is dropped).
fn insert_shared(addr: usize, mut meta: Meta) -> Shared {
    if addr > ADDR_MASK {
        return Shared::Dropped;
    }
    if meta.run_slot != 0
        && meta.run_gen != crate::alloc::runs::MOVED
        && !crate::alloc::runs::note_moved(meta.run_slot, meta.run_gen, addr)
    {
        meta.run_slot = 0;
    }
    let h = hash(addr);
    let (key, mut w) = pack(addr, &meta);
    let mut t = shard(addr).0.lock();
    let t = &mut *t;
    // Room first, so that inserting below never has to grow a table (its own
    // growth would abort on failure instead of reporting it).
    let room = t.main.try_reserve(1, |e| key_addr_hash(e.0)).is_ok();
    if w & BIG != 0 && t.big.try_reserve(1, |e| hash(hide(e.0))).is_err() {
        // Out of libc memory: keep the block, with the largest size it holds.
        crate::alloc::process::note_untracked();
        w = w & !BIG | (SIZE_MAX as u64) << SIZE_SHIFT;
    }
    // An entry still here is of a block freed unseen: replaced in place.
    let stale = match t.main.find_mut(h, |e| key_addr(e.0) == addr) {
        Some(e) => Some(std::mem::replace(e, (key, w))),
        None if room => {
            t.main.insert_unique(h, (key, w), |e| key_addr_hash(e.0));
            None
        }
        None => return Shared::Dropped,
    };
    let stale = stale.map(|(okey, ow)| {
        let big = if ow & BIG != 0 {
            t.big
                .find_entry(h, |e| e.0 == hide(addr))
                .ok()
                .map(|e| e.remove().0 .1)
        } else {
            None
        };
        unpack(okey, ow, big)
    });
    if w & BIG != 0 {
        t.big
            .insert_unique(h, (hide(addr), meta.size), |e| hash(hide(e.0)));
    }
    stale.map_or(Shared::New, Shared::Replaced)
}

fn remove_shared(addr: usize) -> Option<Meta> {
    if addr > ADDR_MASK {
        return None;
    }
    shard(addr).0.lock().take(addr)
}

fn in_shared(addr: usize) -> bool {
    shard(addr)
        .0
        .lock()
        .main
        .find(hash(addr), |e| key_addr(e.0) == addr)
        .is_some()
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

/// In a child just forked: a thread of the parent that was moving a young
/// block to the shared table is gone, and would leave the entry marked for
/// ever. Finish its move (the block is in the shared table) or undo it.
pub(crate) fn settle_after_fork() {
    for young in crate::alloc::thread::young_tables() {
        for e in &young.entries {
            let a = e.addr.load(Ordering::Acquire);
            if a & MOVING != 0 {
                let addr = hide(a & !FLAGS);
                e.addr.store(
                    if in_shared(addr) { 0 } else { hide(addr) },
                    Ordering::Release,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::runs::MOVED;

    fn meta(size: usize, run_slot: u32) -> Meta {
        Meta {
            size,
            site: 65_535,
            scope: 12,
            run_slot,
            run_gen: MOVED,
        }
    }

    #[test]
    fn packs_into_two_words() {
        let addr = 0x7F12_3456_7890;
        for m in [
            meta(0, 0),
            meta(24, 0),
            meta(SIZE_MAX, 0),
            meta(100, 65_535),
            meta(SIZE_MAX, 7),
        ] {
            let (key, w) = pack(addr, &m);
            assert_eq!(key_addr(key), addr);
            assert_eq!(w & BIG, 0);
            assert_eq!(unpack(key, w, None), m);
        }
        let huge = meta(5 << 40, 3);
        let (key, w) = pack(addr, &huge);
        assert_ne!(w & BIG, 0);
        assert_eq!(unpack(key, w, Some(5 << 40)), huge);
    }

    #[test]
    fn shared_entries_keep_scopes_slots_and_huge_sizes() {
        // Addresses no allocator hands out here, so nothing else meets them;
        // run slot 0, or a tag already listed (MOVED), so no run is asked.
        let base = 0x7F00_0000_0000usize;
        let blocks: Vec<(usize, Meta)> = (0..1000)
            .map(|i| {
                let m = match i % 3 {
                    0 => meta(i, 0),
                    1 => meta(i, i as u32),
                    _ => meta((1 << 31) + i, 0),
                };
                (base + i * 64, m)
            })
            .collect();
        for &(addr, m) in &blocks {
            assert!(matches!(insert_shared(addr, m), Shared::New));
        }
        // A second insert at an address replaces (and returns) the first.
        let (a, m) = blocks[2];
        match insert_shared(a, meta(8, 0)) {
            Shared::Replaced(old) => assert_eq!(old, m),
            _ => panic!("not replaced"),
        }
        assert_eq!(remove_shared(a), Some(meta(8, 0)));
        for &(addr, m) in blocks.iter().filter(|b| b.0 != a) {
            assert_eq!(remove_shared(addr), Some(m));
            assert_eq!(remove_shared(addr), None);
        }
        assert!(matches!(
            insert_shared(1 << 50, meta(8, 0)),
            Shared::Dropped
        ));
    }
}
