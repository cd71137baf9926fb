//! One shard's table of long-lived blocks, at 12 bytes an entry.
//!
//! Owns an open-addressing table (Robin Hood over linear probes, with
//! backward-shift deletion) that, once past a few thousand entries, grows
//! by a sixteenth when it is 94% full, so that it is always between 88% and
//! 94% full: a long-lived block costs 13 to 14 bytes, with no doubling that
//! leaves half a table empty. An entry
//! keys its block by the block's 64 MiB region (an index into the shard's
//! list of regions, at most [`REGIONS`]) and its offset there in 8-byte
//! units, so a key is 32 bits and never looks like a pointer; the call-site,
//! scope and size take the other 64. Blocks it cannot key (an address that
//! is not 8-byte aligned, a region past the list's end) or whose fields do
//! not fit (see [`Fields`]) are the caller's to keep elsewhere.
//!
//! The caller holds the shard's lock. Memory comes from [`MetaAlloc`], never
//! the global allocator; a table that cannot grow says so and keeps what it has.

use crate::alloc::meta::MetaAlloc;
use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::ptr::NonNull;

/// Regions a shard can key (6 bits of the key word).
pub(crate) const REGIONS: usize = 64;
const REGION_SHIFT: u32 = 26;
const OFFSET_BITS: u32 = REGION_SHIFT - 3;

/// Key word: offset / 8 in bits 0-22, region index in 23-28, then flags.
const USED: u32 = 1 << 31;
const BIG: u32 = 1 << 30;
const TAGGED: u32 = 1 << 29;
const KEY: u32 = (1 << 29) - 1;

/// Grown when `len` would pass this share of the capacity, in 1/100ths.
const FULL_PERCENT: usize = 94;
const MIN_CAPACITY: usize = 64;
/// Tables up to this many entries double (at most 48 KiB each).
const SMALL: usize = 4096;

/// Sizes an entry holds: below 1 MiB (larger ones are `big`).
pub(crate) const SIZE_LIMIT: usize = 1 << DIST_SHIFT;
/// The size word: the size in its low 20 bits, the entry's distance from
/// its home above (saturated: [`FAR`] means "look it up").
const DIST_SHIFT: u32 = 20;
const FAR: usize = (1 << (32 - DIST_SHIFT)) - 1;

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Entry {
    /// [`USED`], flags and the block's key; 0 when the entry is empty.
    key: u32,
    /// Call-site id, and scope id << 16.
    ids: u32,
    /// Size, and distance from home.
    size: u32,
}

/// What an entry keeps of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fields {
    pub(crate) site: u16,
    pub(crate) scope: u16,
    /// The size, when it is below [`SIZE_LIMIT`] (else `big`, and the caller keeps it).
    pub(crate) size: u32,
    pub(crate) big: bool,
    /// The caller keeps something else of the block (its run).
    pub(crate) tagged: bool,
}

impl Entry {
    fn fields(self) -> Fields {
        Fields {
            site: self.ids as u16,
            scope: (self.ids >> 16) as u16,
            size: self.size & (SIZE_LIMIT as u32 - 1),
            big: self.key & BIG != 0,
            tagged: self.key & TAGGED != 0,
        }
    }

    fn new(key: u32, f: Fields) -> Entry {
        let mut k = key | USED;
        if f.big {
            k |= BIG;
        }
        if f.tagged {
            k |= TAGGED;
        }
        Entry {
            key: k,
            ids: f.site as u32 | (f.scope as u32) << 16,
            size: f.size & (SIZE_LIMIT as u32 - 1),
        }
    }

    /// The distance from home this entry was stored with.
    #[inline]
    fn stored_dist(self) -> usize {
        (self.size >> DIST_SHIFT) as usize
    }

    #[inline]
    fn at_dist(self, d: usize) -> Entry {
        Entry {
            size: self.size & (SIZE_LIMIT as u32 - 1) | (d.min(FAR) as u32) << DIST_SHIFT,
            ..self
        }
    }
}

pub(crate) enum Put {
    New,
    /// The block had an entry already: replaced, and this is what it held.
    Replaced(Fields),
    /// The block cannot be keyed here, or the table could not grow.
    Elsewhere,
}

/// Where entries live: a large table in pages of its own, so that the old
/// one's memory goes back to the kernel as soon as it is moved (from libc's
/// heap, the old tables of a growing one would stay as holes between the
/// program's blocks, and count in its resident memory); a small one from
/// [`MetaAlloc`].
struct Memory;

/// Tables of this many bytes or more are mapped.
const MAP_BYTES: usize = 64 << 10;

impl Memory {
    /// Room for `cap` empty entries.
    fn take(cap: usize) -> Option<NonNull<Entry>> {
        let layout = Layout::array::<Entry>(cap).ok()?;
        if layout.size() < MAP_BYTES {
            let p = MetaAlloc {}.allocate(layout).ok()?.cast::<Entry>();
            // SAFETY: a fresh block of `cap` entries; all-zero bytes are empty entries.
            unsafe { std::ptr::write_bytes(p.as_ptr(), 0, cap) };
            return Some(p);
        }
        NonNull::new(crate::alloc::meta::map_zeroed(layout.size()).cast())
    }

    /// # Safety
    /// `p` came from `Memory::take(cap)` and is no longer used.
    unsafe fn free(p: NonNull<Entry>, cap: usize) {
        let Ok(layout) = Layout::array::<Entry>(cap) else {
            return;
        };
        if layout.size() < MAP_BYTES {
            // SAFETY: allocated by `take` from MetaAlloc with this layout.
            unsafe { MetaAlloc {}.deallocate(p.cast(), layout) };
        } else {
            // SAFETY: mapped by `take` with this length.
            unsafe { libc::munmap(p.as_ptr().cast(), layout.size()) };
        }
    }
}

pub(crate) struct Dense {
    entries: Option<NonNull<Entry>>,
    cap: usize,
    len: usize,
    /// `addr >> REGION_SHIFT` of each region keyed so far (never removed).
    regions: [u32; REGIONS],
    n_regions: usize,
}

// SAFETY: the entries are owned by the table and only touched under the
// shard's lock (`&mut self`), or read under it.
unsafe impl Send for Dense {}

impl Dense {
    pub(crate) const fn new() -> Dense {
        Dense {
            entries: None,
            cap: 0,
            len: 0,
            regions: [0; REGIONS],
            n_regions: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn slice(&self) -> &[Entry] {
        match self.entries {
            // SAFETY: `entries` holds `cap` initialized entries, ours.
            Some(p) => unsafe { std::slice::from_raw_parts(p.as_ptr(), self.cap) },
            None => &[],
        }
    }

    fn slice_mut(&mut self) -> &mut [Entry] {
        match self.entries {
            // SAFETY: as in `slice`, and `&mut self` makes it exclusive.
            Some(p) => unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), self.cap) },
            None => &mut [],
        }
    }

    /// `addr`'s region and its offset there in 8-byte units, if it can be keyed.
    fn parts(addr: usize) -> Option<(u32, u32)> {
        let region = u32::try_from(addr >> REGION_SHIFT).ok()?;
        let offset = ((addr & ((1 << REGION_SHIFT) - 1)) >> 3) as u32;
        (addr & 7 == 0).then_some((region, offset))
    }

    /// The key of `addr` if its region was ever keyed here: one block's
    /// alone in this table, for the caller's tables beside it.
    pub(crate) fn key_of(&self, addr: usize) -> Option<u32> {
        let (region, offset) = Dense::parts(addr)?;
        let known = self.regions.get(..self.n_regions).unwrap_or(&[]);
        let i = known.iter().position(|&r| r == region)?;
        Some((i as u32) << OFFSET_BITS | offset)
    }

    /// The key of `addr`, its region keyed now if it is new (and there is room).
    fn key(&mut self, addr: usize) -> Option<u32> {
        if let Some(key) = self.key_of(addr) {
            return Some(key);
        }
        let (region, offset) = Dense::parts(addr)?;
        let i = self.n_regions;
        *self.regions.get_mut(i)? = region;
        self.n_regions += 1;
        Some((i as u32) << OFFSET_BITS | offset)
    }

    /// The address an entry's key stands for.
    fn addr(&self, key: u32) -> usize {
        let k = key & KEY;
        let region = self
            .regions
            .get((k >> OFFSET_BITS) as usize)
            .copied()
            .unwrap_or(0);
        (region as usize) << REGION_SHIFT | ((k & ((1 << OFFSET_BITS) - 1)) as usize) << 3
    }

    /// The hash of `key`: a key is one block's in its shard, so it is
    /// hashed itself, and an entry's home is found without its address.
    #[inline]
    fn hash(key: u32) -> u64 {
        ((key & KEY) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
    }

    /// Where the probe for `key` starts, in a table of `cap` entries: the
    /// hash scaled to the table, so that entries in hash order are in home
    /// order in a table of any size.
    #[inline]
    fn home(key: u32, cap: usize) -> usize {
        ((Dense::hash(key) * cap as u64) >> 32) as usize
    }

    /// How far entry `e` at `i` sits from its home: as stored, unless it
    /// is too far to store.
    #[inline]
    fn dist(&self, e: Entry, i: usize) -> usize {
        let d = e.stored_dist();
        if d < FAR {
            return d;
        }
        let h = Dense::home(e.key, self.cap);
        if i >= h {
            i - h
        } else {
            i + self.cap - h
        }
    }

    /// The index of `key`'s entry. Entries are in hash order from each
    /// run's start (see [`Dense::insert`]), so the probe stops at the
    /// first entry that would come after `key`'s.
    fn find(&self, key: u32) -> Option<usize> {
        let t = self.slice();
        if t.is_empty() {
            return None;
        }
        let h = Dense::hash(key);
        let mut i = Dense::home(key, self.cap);
        for d in 0..self.cap {
            let e = *t.get(i)?;
            if e.key == 0 {
                return None;
            }
            if e.key & KEY == key {
                return Some(i);
            }
            let ed = self.dist(e, i);
            if ed < d || ed == d && Dense::hash(e.key) > h {
                return None;
            }
            i = if i + 1 == self.cap { 0 } else { i + 1 };
        }
        None
    }

    /// What is kept of the block at `addr`.
    pub(crate) fn get(&self, addr: usize) -> Option<Fields> {
        let key = self.key_of(addr)?;
        let i = self.find(key)?;
        Some(self.slice().get(i)?.fields())
    }

    /// Takes out the entry of the block at `addr`.
    pub(crate) fn take(&mut self, addr: usize) -> Option<Fields> {
        let key = self.key_of(addr)?;
        let mut i = self.find(key)?;
        let cap = self.cap;
        let taken = *self.slice().get(i)?;
        // Backward shift: each follower that is not at its home moves up one.
        loop {
            let j = if i + 1 == cap { 0 } else { i + 1 };
            let next = *self.slice().get(j)?;
            let d = if next.key == 0 { 0 } else { self.dist(next, j) };
            let stop = d == 0;
            let t = self.slice_mut();
            *t.get_mut(i)? = if stop {
                Entry::default()
            } else {
                next.at_dist(d - 1)
            };
            if stop {
                break;
            }
            i = j;
        }
        self.len -= 1;
        Some(taken.fields())
    }

    /// Enters the block at `addr`.
    pub(crate) fn put(&mut self, addr: usize, f: Fields) -> Put {
        let Some(key) = self.key(addr) else {
            return Put::Elsewhere;
        };
        if let Some(i) = self.find(key) {
            return match self.slice_mut().get_mut(i) {
                Some(slot) => {
                    let e = Entry::new(key, f).at_dist(slot.stored_dist());
                    Put::Replaced(std::mem::replace(slot, e).fields())
                }
                None => Put::Elsewhere,
            };
        }
        if (self.len + 1) * 100 > self.cap * FULL_PERCENT && !self.grow() {
            return Put::Elsewhere;
        }
        self.insert(Entry::new(key, f));
        Put::New
    }

    /// Places `e` (not in the table; there is room). Robin Hood: the entry
    /// nearer its home gives way, and of two as near, the one later in
    /// hash order; so every run of entries is in hash order, which lets a
    /// probe stop early and the table grow by one pass ([`Dense::grow`]).
    fn insert(&mut self, mut e: Entry) {
        let cap = self.cap;
        let mut i = Dense::home(e.key, cap);
        let mut d = 0;
        for _ in 0..cap {
            let Some(&cur) = self.slice().get(i) else {
                return;
            };
            if cur.key == 0 {
                if let Some(slot) = self.slice_mut().get_mut(i) {
                    *slot = e.at_dist(d);
                    self.len += 1;
                }
                return;
            }
            let cd = self.dist(cur, i);
            if cd < d || cd == d && Dense::hash(cur.key) > Dense::hash(e.key) {
                if let Some(slot) = self.slice_mut().get_mut(i) {
                    e = std::mem::replace(slot, e.at_dist(d));
                }
                d = cd;
            }
            i = if i + 1 == cap { 0 } else { i + 1 };
            d += 1;
        }
    }

    /// Moves every entry to a larger table; `false` if there is no memory
    /// for it (nothing changes). A small table doubles (few entries, and
    /// each is moved about twice in all); from [`SMALL`] entries on it grows
    /// by an eighth, so that it is never much emptier than full.
    ///
    /// One pass: read in hash order, the entries come in the order of their
    /// homes in the new table; each goes to its home or right after the one
    /// before. (The last few, whose run would pass the new table's end, are
    /// inserted as usual.)
    fn grow(&mut self) -> bool {
        let more = if self.cap < SMALL {
            self.cap
        } else {
            self.cap / 8
        };
        let cap = (self.cap + more).max(MIN_CAPACITY);
        let Some(p) = Memory::take(cap) else {
            return false;
        };
        let old = self.entries.replace(p);
        let old_cap = std::mem::replace(&mut self.cap, cap);
        self.len = 0;
        if let Some(o) = old {
            // SAFETY: the old block held `old_cap` entries and is ours.
            let entries = unsafe { std::slice::from_raw_parts(o.as_ptr(), old_cap) };
            // Hash order: every entry at or past its home, in table order,
            // then those whose run passed the table's end (at the start,
            // before their homes), which are last in hash order.
            let wrapped = |i: usize, e: &Entry| Dense::home(e.key, old_cap) > i;
            let first = entries.iter().enumerate().filter(|(i, e)| !wrapped(*i, e));
            let last = entries
                .iter()
                .enumerate()
                .take_while(|(i, e)| e.key != 0 && wrapped(*i, e));
            let mut free = 0;
            for (_, &e) in first.chain(last).filter(|(_, e)| e.key != 0) {
                let home = Dense::home(e.key, cap);
                let at = home.max(free);
                match self.slice_mut().get_mut(at) {
                    Some(slot) => {
                        *slot = e.at_dist(at - home);
                        self.len += 1;
                        free = at + 1;
                    }
                    None => {
                        free = cap;
                        self.insert(e);
                    }
                }
            }
            // SAFETY: made by `Memory::take(old_cap)`, no longer used.
            unsafe { Memory::free(o, old_cap) };
        }
        true
    }

    /// Every block in the table, with what it keeps.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, Fields)> + '_ {
        self.slice()
            .iter()
            .filter(|e| e.key != 0)
            .map(|e| (self.addr(e.key), e.fields()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(i: usize) -> Fields {
        Fields {
            site: i as u16,
            scope: (i * 7) as u16,
            size: (i * 13) as u32,
            big: i.is_multiple_of(5),
            tagged: i.is_multiple_of(3),
        }
    }

    #[test]
    fn keeps_takes_and_replaces_across_growth() {
        let mut t = Dense::new();
        // Two regions, blocks 8 bytes apart and spread out.
        let addr = |i: usize| 0x7F00_0000_0000 + (i % 2) * (1 << 26) + ((i * 40) & 0x3FF_FFF8);
        let n = 20_000;
        for i in 0..n {
            assert!(matches!(t.put(addr(i), fields(i)), Put::New), "{i}");
        }
        assert_eq!(t.len(), n);
        assert!(t.len() * 100 <= t.cap * FULL_PERCENT && t.len() * 100 > t.cap * 80);
        for i in 0..n {
            assert_eq!(t.get(addr(i)), Some(fields(i)), "{i}");
        }
        match t.put(addr(7), fields(8)) {
            Put::Replaced(old) => assert_eq!(old, fields(7)),
            _ => panic!("not replaced"),
        }
        for i in (0..n).step_by(2) {
            let want = if i == 7 { fields(8) } else { fields(i) };
            assert_eq!(t.take(addr(i)), Some(want));
            assert_eq!(t.take(addr(i)), None);
        }
        assert_eq!(t.len(), n / 2);
        for i in 0..n {
            let want = (i % 2 == 1).then(|| if i == 7 { fields(8) } else { fields(i) });
            assert_eq!(t.get(addr(i)), want, "{i}");
        }
        let mut seen: Vec<usize> = t.iter().map(|(a, _)| a).collect();
        seen.sort_unstable();
        let mut want: Vec<usize> = (1..n).step_by(2).map(addr).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
    }

    /// Random puts, replacements and takes across many growths, against a
    /// model: every entry is found, and only those (the probe's early stop
    /// and the one-pass growth rely on the table's order).
    #[test]
    fn random_puts_and_takes_match_a_model() {
        let mut t = Dense::new();
        let mut model = std::collections::HashMap::new();
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..200_000 {
            let r = rnd();
            // Blocks in three regions, 16 bytes apart at most 16 MiB in.
            let addr = 0x7F00_0000_0000
                + (r as usize % 3) * (1 << 26)
                + ((r >> 8) as usize % (1 << 20)) * 16;
            if r >> 60 < 11 {
                let f = fields(step % 50_000);
                let had = model.insert(addr, f);
                match (t.put(addr, f), had) {
                    (Put::New, None) => {}
                    (Put::Replaced(old), Some(h)) => assert_eq!(old, h),
                    _ => panic!("put {addr:x} at {step}"),
                }
            } else {
                assert_eq!(t.take(addr), model.remove(&addr), "take {addr:x} at {step}");
            }
        }
        assert_eq!(t.len(), model.len());
        for (a, f) in &model {
            assert_eq!(t.get(*a), Some(*f));
        }
    }

    #[test]
    fn distances_too_far_to_store_are_looked_up() {
        let mut t = Dense::new();
        let addr = |i: usize| 0x7F00_0000_0000 + i * 24;
        let n = 5_000;
        for i in 0..n {
            assert!(matches!(t.put(addr(i), fields(i)), Put::New));
        }
        // As if every entry sat too far from home to say how far.
        for e in t.slice_mut() {
            if e.key != 0 {
                *e = e.at_dist(FAR);
            }
        }
        for i in (0..n).step_by(3) {
            assert_eq!(t.take(addr(i)), Some(fields(i)), "{i}");
        }
        for i in 0..n {
            assert_eq!(t.get(addr(i)), (i % 3 != 0).then(|| fields(i)), "{i}");
        }
    }

    #[test]
    fn leaves_what_it_cannot_key_to_the_caller() {
        let mut t = Dense::new();
        assert!(matches!(t.put(0x7F00_0000_0004, fields(1)), Put::Elsewhere));
        for r in 0..REGIONS {
            assert!(matches!(t.put(r << 26, fields(r)), Put::New));
        }
        assert!(matches!(t.put(REGIONS << 26, fields(1)), Put::Elsewhere));
        assert_eq!(t.get(REGIONS << 26), None);
        assert_eq!(t.get(3 << 26), Some(fields(3)));
    }
}
