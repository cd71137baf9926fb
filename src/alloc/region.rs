//! Sampling mode's region: the address range where sampled blocks (and, in
//! sampling mode, the tracker's own) live, so that a free knows one by its
//! address alone and every other block goes to the inner allocator as it
//! came, with no header and no table probe.
//!
//! Owns one reservation of address space, made at the first sampled block
//! (`PROT_NONE`, then committed a megabyte at a time as it fills: GWP-ASan's
//! guarded pool is the model, without the guards), split into one span per
//! size class (powers of two from 16 bytes to [`MAX_SLOT`]; a slot is
//! aligned to its size), each with a bump pointer and a free list under a
//! spin lock; and the set of sampled blocks that live outside it (larger
//! than a slot, or made when their class was full), found by their layout.
//! Never allocates through the global allocator; takes only its spin locks
//! (sampled blocks are rare: one per sampling interval).

use crate::alloc::meta::{hide, mix, MetaAlloc, SpinLock};
use hashbrown::HashTable;
use std::alloc::Layout;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest slot: bigger blocks live outside the region.
pub(crate) const MAX_SLOT: usize = 64 << 10;
const MIN_SHIFT: u32 = 4;
const CLASSES: usize = (MAX_SLOT.trailing_zeros() - MIN_SHIFT + 1) as usize;
/// Address space per class.
const SPAN: usize = 1 << 30;
/// The reservation: a power of two, aligned to itself, that holds every
/// class's span, so that `addr >> SHIFT` alone says whether it holds `addr`.
const SHIFT: u32 = 34;
const SIZE: usize = 1 << SHIFT;
const _: () = assert!(CLASSES * SPAN <= SIZE);
/// Committed at a time, per class.
const COMMIT: usize = 1 << 20;
/// Where the region is before it is reserved: the kernel's half of the
/// address space, which holds no block.
const NOWHERE: usize = 0xFFFF_8000_0000_0000;

/// What every free reads, together (one address to find): where the
/// region is, and up to which layouts a block outside it is plain.
struct View {
    base: AtomicUsize,
    /// `base >> SHIFT`: what [`holds`] compares.
    high: AtomicUsize,
    /// A block outside the region whose layout's size and alignment (or'ed)
    /// are at most this is plain (unsampled): in sampling mode, `usize::MAX`
    /// while no sampled block lives outside, [`MAX_SLOT`] while those that do
    /// are all larger than a slot, else 0. Always 0 in full mode (and before
    /// the mode is decided), so that every free there goes the slow way.
    /// Written under [`OUTSIDE`]'s lock ([`Outside::publish`]).
    plain_upto: AtomicUsize,
}

static VIEW: View = View {
    base: AtomicUsize::new(NOWHERE),
    high: AtomicUsize::new(NOWHERE >> SHIFT),
    plain_upto: AtomicUsize::new(0),
};
/// The reservation was tried (and failed, if the base is still nowhere).
static RESERVED: SpinLock<bool> = SpinLock::new(false);

struct Class {
    /// Bytes of the span handed out (fresh slots start here).
    bump: usize,
    /// Bytes of the span readable and writable.
    committed: usize,
    /// The first free slot (its first word links the next), 0 for none.
    free: usize,
}

static CLASS: [SpinLock<Class>; CLASSES] = [const {
    SpinLock::new(Class {
        bump: 0,
        committed: 0,
        free: 0,
    })
}; CLASSES];

/// Sampled blocks outside the region.
struct Outside {
    /// By address (hidden).
    set: HashTable<usize, MetaAlloc>,
    /// The process samples (decided).
    sampling: bool,
    /// A block that fits a slot was put outside (its class was full, or
    /// the region could not be reserved) since the set was last empty.
    spilled: bool,
}

static OUTSIDE: SpinLock<Outside> = SpinLock::new(Outside {
    set: HashTable::new_in(MetaAlloc {}),
    sampling: false,
    spilled: false,
});

impl Outside {
    /// Tells frees which blocks are plain ([`View::plain_upto`]). Called
    /// with the lock held, after every change: a block in the set is
    /// there before its address is handed out, and while it is there no
    /// store lets its layout pass for plain.
    fn publish(&self) {
        let upto = if !self.sampling {
            0
        } else if self.set.is_empty() {
            usize::MAX
        } else if self.spilled {
            0
        } else {
            MAX_SLOT
        };
        VIEW.plain_upto.store(upto, Ordering::Relaxed);
    }
}

/// The process samples: frees of blocks outside the region may now be
/// plain. Called when the mode is decided.
pub(crate) fn start_sampling() {
    let mut o = OUTSIDE.lock();
    o.sampling = true;
    o.publish();
}

/// Whether `addr` is in the region.
#[inline(always)]
pub(crate) fn holds(addr: usize) -> bool {
    addr >> SHIFT == VIEW.high.load(Ordering::Relaxed)
}

/// Whether the block at `addr` of `layout` is surely plain: sampling mode,
/// not in the region, and not a layout a sampled block outside it has.
/// `false` for every block in full mode. Two relaxed loads of one line.
#[inline(always)]
pub(crate) fn plain(addr: usize, layout: Layout) -> bool {
    // Above MAX_SLOT whenever the size or the alignment is. The layout
    // first: in full mode that alone says no.
    layout.size() | layout.align() <= VIEW.plain_upto.load(Ordering::Relaxed) && !holds(addr)
}

/// The class of a block of `layout`, if a slot holds it.
fn class_of(layout: Layout) -> Option<usize> {
    let need = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    if need > MAX_SLOT {
        return None;
    }
    Some((need.next_power_of_two().trailing_zeros() - MIN_SHIFT) as usize)
}

/// Whether a block of `layout` gets a slot in the region (when its class
/// has room).
pub(crate) fn fits(layout: Layout) -> bool {
    class_of(layout).is_some() && base().is_some()
}

/// The region's base, reserved on first use; `None` if it cannot be.
fn base() -> Option<usize> {
    let b = VIEW.base.load(Ordering::Acquire);
    if b != NOWHERE {
        return Some(b);
    }
    let mut tried = RESERVED.lock();
    if !*tried {
        *tried = true;
        if let Some(b) = reserve() {
            VIEW.high.store(b >> SHIFT, Ordering::Relaxed);
            VIEW.base.store(b, Ordering::Release);
        }
    }
    let b = VIEW.base.load(Ordering::Acquire);
    (b != NOWHERE).then_some(b)
}

/// Reserves the region's address space, [`SIZE`] bytes aligned to
/// [`SIZE`]: twice that, less what lies outside the aligned part.
fn reserve() -> Option<usize> {
    let len = 2 * SIZE;
    // SAFETY: an anonymous private mapping with no access, at an address
    // the kernel picks: it touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let start = p as usize;
    let base = start.next_multiple_of(SIZE);
    for (at, n) in [
        (start, base - start),
        (base + SIZE, start + len - base - SIZE),
    ] {
        if n > 0 {
            // SAFETY: both pieces are ours, from the mapping above, outside
            // the part kept. A failure leaves them reserved, which is harmless.
            unsafe { libc::munmap(at as *mut libc::c_void, n) };
        }
    }
    Some(base)
}

/// A slot for a block of `layout` (zeroed if `zeroed`), or null when the
/// region has none (the caller puts the block outside, [`note_outside`]).
pub(crate) fn alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    let (Some(class), Some(base)) = (class_of(layout), base()) else {
        return std::ptr::null_mut();
    };
    let slot = 1usize << (class as u32 + MIN_SHIFT);
    let span = base + class * SPAN;
    let Some(lock) = CLASS.get(class) else {
        return std::ptr::null_mut();
    };
    let mut c = lock.lock();
    if c.free != 0 {
        let p = c.free;
        // SAFETY: a free slot of this class, in committed memory; its first
        // word links the next free one.
        c.free = unsafe { (p as *const usize).read() };
        drop(c);
        if zeroed {
            // SAFETY: the slot is ours now and holds at least `layout.size()` bytes.
            unsafe { std::ptr::write_bytes(p as *mut u8, 0, layout.size()) };
        }
        return p as *mut u8;
    }
    if c.bump + slot > SPAN {
        return std::ptr::null_mut();
    }
    if c.bump + slot > c.committed {
        // SAFETY: `span + committed .. + COMMIT` lies inside the reservation
        // (`committed < SPAN`, a multiple of COMMIT, which divides SPAN).
        let rc = unsafe {
            libc::mprotect(
                (span + c.committed) as *mut libc::c_void,
                COMMIT,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return std::ptr::null_mut();
        }
        c.committed += COMMIT;
    }
    let p = span + c.bump;
    c.bump += slot;
    // Fresh pages are zero.
    p as *mut u8
}

/// Gives back the slot at `addr` (in the region, no longer used).
pub(crate) fn free(addr: usize) {
    let class = addr.wrapping_sub(VIEW.base.load(Ordering::Relaxed)) / SPAN;
    let Some(lock) = CLASS.get(class) else { return };
    let mut c = lock.lock();
    // SAFETY: `addr` is a slot of this class that nobody uses any more.
    unsafe { (addr as *mut usize).write(c.free) };
    c.free = addr;
}

/// A sampled block of `layout` lives at `addr` outside the region. `false`
/// when the set cannot grow (libc is out of memory): the caller does not
/// sample it.
pub(crate) fn note_outside(addr: usize, layout: Layout) -> bool {
    let mut o = OUTSIDE.lock();
    let hidden = hide(addr);
    if o.set.try_reserve(1, |&a| mix(hide(a) as u64)).is_err() {
        return false;
    }
    o.set
        .insert_unique(mix(addr as u64), hidden, |&a| mix(hide(a) as u64));
    if class_of(layout).is_some() {
        o.spilled = true;
    }
    o.publish();
    true
}

/// Takes `addr` out of the set of sampled blocks outside the region, if
/// it is there (with `take`; else only says).
pub(crate) fn outside(addr: usize, take: bool) -> bool {
    let mut o = OUTSIDE.lock();
    let hidden = hide(addr);
    let Ok(e) = o.set.find_entry(mix(addr as u64), |&a| a == hidden) else {
        return false;
    };
    if take {
        e.remove();
        if o.set.is_empty() {
            o.spilled = false;
        }
        o.publish();
    }
    true
}

pub(crate) fn lock_for_fork() {
    RESERVED.lock_for_fork();
    for c in &CLASS {
        c.lock_for_fork();
    }
    OUTSIDE.lock_for_fork();
}

/// # Safety
/// Pairs with [`lock_for_fork`] in the fork handlers.
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: forwarded contract.
    unsafe {
        OUTSIDE.force_unlock();
        for c in &CLASS {
            c.force_unlock();
        }
        RESERVED.force_unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fit_and_align() {
        let l = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(class_of(l(1, 1)), Some(0));
        assert_eq!(class_of(l(16, 8)), Some(0));
        assert_eq!(class_of(l(17, 8)), Some(1));
        assert_eq!(class_of(l(8, 4096)), Some(8));
        assert_eq!(class_of(l(MAX_SLOT, 8)), Some(CLASSES - 1));
        assert_eq!(class_of(l(MAX_SLOT + 1, 8)), None);
        let a = alloc(l(100, 64), false) as usize;
        let b = alloc(l(100, 64), true) as usize;
        assert!(holds(a) && holds(b) && a.is_multiple_of(128) && b.is_multiple_of(128) && a != b);
        // SAFETY: `a` is a fresh slot of 128 bytes.
        unsafe { std::ptr::write_bytes(a as *mut u8, 0xAB, 100) };
        free(a);
        let c = alloc(l(100, 64), true) as usize;
        assert_eq!(c, a, "a freed slot is reused");
        // SAFETY: `c` is a slot of 128 bytes, zeroed.
        assert!(unsafe { std::slice::from_raw_parts(c as *const u8, 100) }
            .iter()
            .all(|&x| x == 0));
        free(b);
        free(c);
        assert!(!holds(&a as *const usize as usize));
        assert!(alloc(l(MAX_SLOT * 2, 8), false).is_null());
    }
}
