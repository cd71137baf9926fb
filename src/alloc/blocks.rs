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
//! is looked for in the young table its address's owner hint names (see
//! "owner hints" below), then in the shared table, and only when the hint
//! was wrong in every thread's young table; the freeing thread claims a
//! young block with one compare-and-swap.
//!
//! Must never allocate through the global allocator (the shared table grows in
//! libc's memory) and never hold a lock while calling anything that could
//! re-enter the tracker.

use crate::alloc::dense::{Dense, Fields, Put, SIZE_LIMIT};
use crate::alloc::meta::{back_off, hide, map_zeroed, mix, MetaAlloc, SpinLock};
use hashbrown::HashTable;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicU64, AtomicUsize, Ordering};

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
#[repr(C)]
pub(crate) struct Young {
    /// Its number in [`Owners`] (0: none), set once before it is used.
    /// (First: it shares a page with the fields of its slot before it.)
    number: AtomicU16,
    entries: [YoungEntry; YOUNG],
    /// The owner's `realloc` in flight, if any (see [`InFlight`]).
    in_flight: InFlight,
}

/// The blocks that hold a `realloc`'s contents while no table lists them:
/// the old block from just before its entry is taken out until the inner
/// allocator returns, then the new block until its entry is in. The leak
/// check, which may stop the owner anywhere, scans them when reached and
/// never reports them: without them, what the moving block holds would be
/// called lost. Hidden addresses (0: none) and sizes; written by the owner
/// alone, read with the owner stopped (a signal sees its thread's stores in
/// program order: release stores keep the compiler to it).
#[derive(Default)]
struct InFlight {
    old: AtomicUsize,
    old_size: AtomicUsize,
    new: AtomicUsize,
    new_size: AtomicUsize,
}

impl Young {
    /// The owner's `realloc` of `addr` (`size` bytes) begins: before its
    /// entry is taken out.
    #[inline]
    pub(crate) fn realloc_begins(&self, addr: usize, size: usize) {
        let f = &self.in_flight;
        f.old_size.store(size, Ordering::Relaxed);
        f.old.store(hide(addr), Ordering::Release);
    }

    /// The inner allocator returned `addr` (`size` bytes; null: the old
    /// block stays): before its entry is made.
    #[inline]
    pub(crate) fn realloc_returned(&self, addr: usize, size: usize) {
        let f = &self.in_flight;
        if addr != 0 {
            f.new_size.store(size, Ordering::Relaxed);
            f.new.store(hide(addr), Ordering::Release);
            f.old.store(0, Ordering::Release);
        }
    }

    /// The `realloc`'s blocks are listed again (or freed).
    #[inline]
    pub(crate) fn realloc_ends(&self) {
        let f = &self.in_flight;
        f.old.store(0, Ordering::Release);
        f.new.store(0, Ordering::Release);
    }
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

    /// Where young block `addr` is, looked for by a thread that may not
    /// own it: its entry, or that its owner is moving it.
    fn look(&self, addr: usize) -> Claim<&YoungEntry> {
        let home = Young::home(addr);
        let hidden = hide(addr);
        for i in 0..WINDOW {
            let e = self.entry(home, i);
            let a = e.addr.load(Ordering::Acquire);
            if a == hidden | MOVING {
                return Claim::Moving;
            }
            if a == hidden {
                return Claim::Got(e);
            }
        }
        Claim::Missing
    }

    /// The size of young block `addr`, read by any thread without taking
    /// it: its fields are read between two looks at its address, which
    /// its owner changes before it reuses them.
    fn peek(&self, addr: usize) -> Claim<usize> {
        let e = match self.look(addr) {
            Claim::Got(e) => e,
            Claim::Moving => return Claim::Moving,
            Claim::Missing => return Claim::Missing,
        };
        let size = e.size.load(Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Acquire);
        if e.addr.load(Ordering::Relaxed) == hide(addr) {
            return Claim::Got(size);
        }
        Claim::Moving
    }

    /// Another thread claims young block `addr` that it is freeing.
    fn claim(&self, addr: usize) -> Claim<Meta> {
        let e = match self.look(addr) {
            Claim::Got(e) => e,
            Claim::Moving => return Claim::Moving,
            Claim::Missing => return Claim::Missing,
        };
        let hidden = hide(addr);
        // Read before the swap: once the entry is marked freed, its owner
        // may reuse it at any time.
        let meta = e.meta();
        match e
            .addr
            .compare_exchange(hidden, hidden | FREED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Claim::Got(meta),
            Err(now) if now == hidden | MOVING => Claim::Moving,
            // The owner moved it to the shared table meanwhile.
            Err(_) => Claim::Missing,
        }
    }
}

/// What a look in another thread's young table found of a block.
enum Claim<T> {
    Got(T),
    /// Its owner is moving it to the shared table (or its entry changed
    /// under the look): look again.
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
    note_owner(own, addr);
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
    elsewhere(addr, remove_shared, Young::claim)
}

/// What `in_shared` or `in_young` finds of block `addr` outside the
/// asking thread's young table: the young table its owner hint names, the
/// shared table, then (unless the hints say it was never young) every
/// thread's young table, looking again while an owner is moving it.
#[inline(always)]
fn elsewhere<T>(
    addr: usize,
    in_shared: impl Fn(usize) -> Option<T>,
    in_young: impl Fn(&Young, usize) -> Claim<T>,
) -> Option<T> {
    if addr & FLAGS != 0 {
        return in_shared(addr);
    }
    // Most blocks freed by another thread are still young.
    let hint = owner_hint(addr);
    if let Hint::Table(young) = hint {
        if let Claim::Got(found) = in_young(young, addr) {
            return Some(found);
        }
    }
    if let Some(found) = in_shared(addr) {
        return Some(found);
    }
    if let Hint::Never = hint {
        return None;
    }
    let mut spins = 0u32;
    'search: loop {
        for young in crate::alloc::thread::young_tables() {
            match in_young(young, addr) {
                Claim::Got(found) => return Some(found),
                Claim::Missing => {}
                Claim::Moving => {
                    // Its owner is moving it into the shared table right now.
                    back_off(&mut spins);
                    if let Some(found) = in_shared(addr) {
                        return Some(found);
                    }
                    continue 'search;
                }
            }
        }
        break;
    }
    // A block moved to the shared table after the first look there was no
    // longer in its young table when we looked: it is in the shared table now.
    in_shared(addr)
}

/// The size the tracker counts for live block `addr`, asked by the thread
/// that owns `own` (C's `malloc_usable_size`); `None` for a block it does
/// not hold. Takes nothing out: its own young table, then as a free from
/// another thread looks.
pub(crate) fn size_of(own: &Young, addr: usize) -> Option<usize> {
    if addr & FLAGS == 0 {
        if let Claim::Got(size) = own.peek(addr) {
            return Some(size);
        }
    }
    elsewhere(addr, shared_size, Young::peek)
}

fn shared_size(addr: usize) -> Option<usize> {
    let t = shard(addr).0.lock();
    if let Some(f) = t.dense.get(addr) {
        return Some(t.meta(addr, f).size);
    }
    let hidden = hide(addr);
    t.other
        .find(hash(addr), |e| e.0 == hidden)
        .map(|e| e.1.size)
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
        t.each(&mut f);
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
        unsafe { s.0.held() }.each(&mut f);
    }
    for young in crate::alloc::thread::young_tables() {
        for e in &young.entries {
            let a = e.addr.load(Ordering::Acquire);
            if a == 0 || a & FREED != 0 {
                continue;
            }
            let addr = hide(a & !MOVING);
            // SAFETY: as above.
            if a & MOVING != 0 && unsafe { shard(addr).0.held() }.holds(addr) {
                continue;
            }
            f(addr, &e.meta());
        }
    }
}

/// For the leak check, with the world stopped: calls `f` with the address
/// and size of each block a stopped thread's `realloc` has in flight (see
/// [`InFlight`]); a block may also be listed by [`for_each_held`]. The old
/// block may already be free (the owner was stopped inside the inner
/// allocator): the check reads only what is mapped, and trims what
/// overlaps a listed block.
pub(crate) fn for_each_in_flight(mut f: impl FnMut(usize, usize)) {
    for young in crate::alloc::thread::young_tables() {
        let i = &young.in_flight;
        for (a, size) in [(&i.old, &i.old_size), (&i.new, &i.new_size)] {
            let a = a.load(Ordering::Acquire);
            if a != 0 {
                f(hide(a), size.load(Ordering::Relaxed));
            }
        }
    }
}

/// Live blocks in the tables now, and those [`for_each_in_flight`] may
/// add (an upper bound while threads run).
pub(crate) fn count_held() -> usize {
    let mut n = 0;
    for s in &TABLE {
        // SAFETY: as in `for_each_held`.
        n += unsafe { s.0.held() }.len();
    }
    n + crate::alloc::thread::young_tables().count() * (YOUNG + 2)
}

// ---------------------------------------------------------------- owner hints
//
// A block freed by another thread than its maker's is looked for in the
// young tables. Visiting each would cost what the number of threads is,
// and async services keep hundreds (a blocking pool's idle threads). So
// each young table has a number, and a new young block notes its table's
// number in a hint entry picked by its address: the free looks in that
// table first. A hint can be wrong (another block, made by another thread
// at an address with the same entry, wrote it since): then the free looks
// everywhere, as without hints. Counts never depend on a hint.

/// Hint entries, 2 bytes each: one per 128 bytes of a 64 MiB span of
/// addresses, each 64 MiB region of the address space placed at its own
/// offset. 1 MiB at most, a page per 256 KiB of heap the program uses.
/// (Blocks that share an entry share a hint: right when one thread made
/// them, as a thread's blocks mostly lie together.)
const HINTS: usize = 1 << 19;
/// Young tables that get a number; the rest are found by the visit of all.
const NUMBERED: usize = 1 << 16;

struct Owners {
    hints: [AtomicU16; HINTS],
    tables: [AtomicPtr<Young>; NUMBERED],
    /// Numbers given so far.
    given: AtomicUsize,
}

/// The hints, mapped when the first young table gets its number.
static OWNERS: AtomicPtr<Owners> = AtomicPtr::new(std::ptr::null_mut());
/// Some young table has no number (past [`NUMBERED`], or no memory for
/// the hints): a hint of 0 says nothing.
static UNNUMBERED: AtomicBool = AtomicBool::new(false);

#[inline(always)]
fn hint_index(addr: usize) -> usize {
    (addr >> 7).wrapping_add((addr >> 26).wrapping_mul(0x9E37_79B9)) % HINTS
}

/// Notes `own` as the maker of the young block at `addr` (a table without
/// a number leaves the hint as it is).
#[inline(always)]
fn note_owner(own: &Young, addr: usize) {
    // SAFETY: published `Owners` are valid (all atomics) and never unmapped.
    if let Some(o) = unsafe { OWNERS.load(Ordering::Relaxed).as_ref() } {
        let n = own.number.load(Ordering::Relaxed);
        if let (Some(h), true) = (o.hints.get(hint_index(addr)), n != 0) {
            h.store(n, Ordering::Relaxed);
        }
    }
}

/// What the hints say of the block at `addr`.
enum Hint {
    /// The young table that noted a block there last.
    Table(&'static Young),
    /// No young table ever noted a block there, and every young table has
    /// a number: the block was never young (it is in the shared table, or
    /// the tracker never saw it).
    Never,
    /// Not known: look everywhere.
    Unknown,
}

/// The hint of the block at `addr`. A block's maker notes the hint before
/// it returns the block, so a thread that was handed the block sees it
/// (or a later one).
#[inline]
fn owner_hint(addr: usize) -> Hint {
    // SAFETY: as in `note_owner`.
    let Some(o) = (unsafe { OWNERS.load(Ordering::Acquire).as_ref() }) else {
        return Hint::Unknown;
    };
    let Some(n) = o
        .hints
        .get(hint_index(addr))
        .map(|h| h.load(Ordering::Relaxed))
    else {
        return Hint::Unknown;
    };
    if n == 0 {
        return if UNNUMBERED.load(Ordering::Acquire) {
            Hint::Unknown
        } else {
            Hint::Never
        };
    }
    let table = o.tables.get(n as usize).map(|t| t.load(Ordering::Acquire));
    // SAFETY: numbered young tables live in slots, which are never freed.
    match table.and_then(|t| unsafe { t.as_ref() }) {
        Some(young) => Hint::Table(young),
        None => Hint::Unknown,
    }
}

/// Gives a new young table its number, before its thread uses it.
pub(crate) fn enlist(young: &'static Young) {
    let mut o = OWNERS.load(Ordering::Acquire);
    if o.is_null() {
        let fresh = map_zeroed(std::mem::size_of::<Owners>()).cast::<Owners>();
        o = match OWNERS.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(theirs) => {
                if !fresh.is_null() {
                    // SAFETY: ours, just mapped with this length, never shared.
                    unsafe { libc::munmap(fresh.cast(), std::mem::size_of::<Owners>()) };
                }
                theirs
            }
        };
    }
    // SAFETY: as in `note_owner`.
    let numbered = unsafe { o.as_ref() }.is_some_and(|o| {
        // Number 0 is "no hint".
        let n = o.given.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(cell) = o.tables.get(n) else {
            return false;
        };
        cell.store(young as *const Young as *mut Young, Ordering::Release);
        young.number.store(n as u16, Ordering::Relaxed);
        true
    });
    if !numbered {
        UNNUMBERED.store(true, Ordering::Release);
    }
}

// ---------------------------------------------------------------- shared table
//
// Most long-lived blocks take a 12-byte entry in their shard's dense table
// (see `crate::alloc::dense`): call-site, scope and size. Beside it, small
// tables keep what does not fit there: sizes of 1 MiB or more, the run
// slot of a block moved here while its run was open (by the block's dense
// key, 8 bytes an entry; the run lists it by address, see
// `runs::note_moved`, so no generation is needed), and whole entries of
// blocks the dense table cannot key.

const SHARDS: usize = 256;

struct Tables {
    dense: Dense,
    /// Sizes of dense entries flagged big, by address (hidden: [`hide`]).
    big: HashTable<(usize, usize), MetaAlloc>,
    /// Run slots of dense entries flagged tagged, by their dense key.
    runs: HashTable<(u32, u32), MetaAlloc>,
    /// Blocks the dense table cannot key or hold, whole, by address (hidden).
    other: HashTable<(usize, Meta), MetaAlloc>,
}

/// What the dense table keeps of `m` (ids fit in 16 bits: call-sites and
/// scope names are capped at 65,536, open runs at 65,535).
fn fields(m: &Meta) -> Fields {
    let small = m.size < SIZE_LIMIT;
    Fields {
        site: m.site as u16,
        scope: m.scope as u16,
        size: if small { m.size as u32 } else { 0 },
        big: !small,
        tagged: m.run_slot != 0,
    }
}

/// The [`Meta`] of a dense entry whose size is `size` and run slot `run_slot`
/// (from the small tables when it is flagged so).
fn entry_meta(f: Fields, size: usize, run_slot: u32) -> Meta {
    Meta {
        size,
        site: f.site as u32,
        scope: f.scope as u32,
        run_slot,
        run_gen: crate::alloc::runs::MOVED,
    }
}

impl Tables {
    /// The [`Meta`] of a dense entry, with what the small tables keep of it.
    fn meta(&self, addr: usize, f: Fields) -> Meta {
        let size = if f.big {
            let hidden = hide(addr);
            let big = self.big.find(hash(addr), |e| e.0 == hidden);
            big.map_or(SIZE_LIMIT, |e| e.1)
        } else {
            f.size as usize
        };
        let run_slot = match self.tagged_key(addr, f) {
            Some(k) => self.runs.find(key_hash(k), |e| e.0 == k).map_or(0, |e| e.1),
            None => 0,
        };
        entry_meta(f, size, run_slot)
    }

    /// [`Tables::meta`] of a dense entry just taken out, its small tables'
    /// parts taken out with it.
    fn meta_taken(&mut self, addr: usize, f: Fields) -> Meta {
        let size = if f.big {
            let hidden = hide(addr);
            let big = self.big.find_entry(hash(addr), |e| e.0 == hidden).ok();
            big.map_or(SIZE_LIMIT, |e| e.remove().0 .1)
        } else {
            f.size as usize
        };
        let run_slot = match self.tagged_key(addr, f) {
            Some(k) => {
                let e = self.runs.find_entry(key_hash(k), |e| e.0 == k).ok();
                e.map_or(0, |e| e.remove().0 .1)
            }
            None => 0,
        };
        entry_meta(f, size, run_slot)
    }

    /// The dense key of a tagged entry (which its run slot is kept by);
    /// `None`, with no look at the regions, for an untagged one.
    fn tagged_key(&self, addr: usize, f: Fields) -> Option<u32> {
        f.tagged.then(|| self.dense.key_of(addr)).flatten()
    }

    /// Takes out the entry of `addr`.
    fn take(&mut self, addr: usize) -> Option<Meta> {
        if let Some(f) = self.dense.take(addr) {
            return Some(self.meta_taken(addr, f));
        }
        if self.other.is_empty() {
            return None;
        }
        let hidden = hide(addr);
        let e = self.other.find_entry(hash(addr), |e| e.0 == hidden).ok()?;
        Some(e.remove().0 .1)
    }

    fn holds(&self, addr: usize) -> bool {
        let hidden = hide(addr);
        self.dense.get(addr).is_some() || self.other.find(hash(addr), |e| e.0 == hidden).is_some()
    }

    fn len(&self) -> usize {
        self.dense.len() + self.other.len()
    }

    /// Calls `f` for every block here.
    fn each(&self, f: &mut impl FnMut(usize, &Meta)) {
        for (addr, fl) in self.dense.iter() {
            f(addr, &self.meta(addr, fl));
        }
        for (hidden, m) in self.other.iter() {
            f(hide(*hidden), m);
        }
    }

    /// Enters `meta` at `addr`; `None` when libc has no memory for it.
    fn put(&mut self, addr: usize, meta: Meta) -> Option<Option<Meta>> {
        let f = fields(&meta);
        let h = hash(addr);
        let hidden = hide(addr);
        // Room first, so that inserting below never has to grow a table (its
        // own growth would abort on failure instead of reporting it).
        if f.big && self.big.try_reserve(1, |e| hash(hide(e.0))).is_err() {
            return None;
        }
        if f.tagged && self.runs.try_reserve(1, |e| key_hash(e.0)).is_err() {
            return None;
        }
        let stale = match self.dense.put(addr, f) {
            Put::New => {
                // An address the dense table could not take once (it was
                // out of memory) may still have a stale entry there.
                if self.other.is_empty() {
                    None
                } else {
                    self.other
                        .find_entry(h, |e| e.0 == hidden)
                        .ok()
                        .map(|e| e.remove().0 .1)
                }
            }
            Put::Replaced(old) => Some(self.meta_taken(addr, old)),
            Put::Elsewhere => {
                if self.other.try_reserve(1, |e| hash(hide(e.0))).is_err() {
                    return None;
                }
                return Some(match self.other.find_mut(h, |e| e.0 == hidden) {
                    Some(e) => Some(std::mem::replace(&mut e.1, meta)),
                    None => {
                        self.other
                            .insert_unique(h, (hidden, meta), |e| hash(hide(e.0)));
                        None
                    }
                });
            }
        };
        if f.big {
            self.big
                .insert_unique(h, (hidden, meta.size), |e| hash(hide(e.0)));
        }
        if let Some(k) = self.tagged_key(addr, f) {
            self.runs
                .insert_unique(key_hash(k), (k, meta.run_slot), |e| key_hash(e.0));
        }
        Some(stale)
    }
}

#[repr(align(64))]
struct Shard(SpinLock<Tables>);

static TABLE: [Shard; SHARDS] = [const {
    Shard(SpinLock::new(Tables {
        dense: Dense::new(),
        big: HashTable::new_in(MetaAlloc {}),
        runs: HashTable::new_in(MetaAlloc {}),
        other: HashTable::new_in(MetaAlloc {}),
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

fn key_hash(key: u32) -> u64 {
    mix(key as u64)
}

enum Shared {
    New,
    Replaced(Meta),
    /// The table could not take it (libc out of memory).
    Dropped,
}

/// Enters the block at `addr`. A block of a run still open is listed in
/// its run first (a tag from a run that closed is dropped).
fn insert_shared(addr: usize, mut meta: Meta) -> Shared {
    if meta.run_slot != 0
        && meta.run_gen != crate::alloc::runs::MOVED
        && !crate::alloc::runs::note_moved(meta.run_slot, meta.run_gen, addr)
    {
        meta.run_slot = 0;
    }
    match shard(addr).0.lock().put(addr, meta) {
        Some(None) => Shared::New,
        Some(Some(stale)) => Shared::Replaced(stale),
        None => Shared::Dropped,
    }
}

fn remove_shared(addr: usize) -> Option<Meta> {
    shard(addr).0.lock().take(addr)
}

fn in_shared(addr: usize) -> bool {
    shard(addr).0.lock().holds(addr)
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
/// ever. Finish its move (the block is in the shared table) or undo it;
/// forget the `realloc`s such threads had in flight.
pub(crate) fn settle_after_fork() {
    for young in crate::alloc::thread::young_tables() {
        // Only the forking thread lives on, and it is not in a `realloc`.
        young.realloc_ends();
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
    fn shared_entries_keep_scopes_slots_and_huge_sizes() {
        // Addresses no allocator hands out here, so nothing else meets them;
        // run slot 0, or a tag already listed (MOVED), so no run is asked.
        let base = 0x7F00_0000_0000usize;
        let blocks: Vec<(usize, Meta)> = (0..1000)
            .map(|i| {
                let m = match i % 4 {
                    0 => meta(i, 0),
                    1 => meta(i, i as u32),
                    2 => meta((1 << 31) + i, 0),
                    // 1 MiB and more: kept beside the dense entry.
                    _ => meta((5 << 32) + i, i as u32),
                };
                // Every fifth address is not 8-byte aligned: kept whole.
                (base + i * 64 + usize::from(i % 5 == 0), m)
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
        for s in &TABLE {
            assert_eq!(s.0.lock().len(), 0);
        }
    }
}
