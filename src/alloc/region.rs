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
const SIZE: usize = CLASSES * SPAN;
/// Committed at a time, per class.
const COMMIT: usize = 1 << 20;
/// Where the region is before it is reserved: the kernel's half of the
/// address space, which holds no block.
const NOWHERE: usize = 0xFFFF_8000_0000_0000;

/// What every free reads, together (one address to find): where the
/// region is, and above which layouts a block may be outside it.
struct View {
    base: AtomicUsize,
    /// Frees of a layout whose size or alignment (or'ed) is above this look
    /// in [`OUTSIDE`]: [`MAX_SLOT`], or 0 once a block that fits a slot was
    /// put outside (its class was full, or the region could not be reserved).
    outside_above: AtomicUsize,
}

static VIEW: View = View {
    base: AtomicUsize::new(NOWHERE),
    outside_above: AtomicUsize::new(MAX_SLOT),
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

/// Sampled blocks outside the region, by address (hidden).
static OUTSIDE: SpinLock<HashTable<usize, MetaAlloc>> =
    SpinLock::new(HashTable::new_in(MetaAlloc {}));
/// Blocks in [`OUTSIDE`]: frees look there only while it holds any.
static OUTSIDE_LIVE: AtomicUsize = AtomicUsize::new(0);

/// Whether `addr` is in the region.
#[inline(always)]
pub(crate) fn holds(addr: usize) -> bool {
    addr.wrapping_sub(VIEW.base.load(Ordering::Relaxed)) < SIZE
}

/// Whether a block of `layout` that is not in the region may still be a
/// sampled one (outside): a relaxed load or two for most frees.
#[inline(always)]
pub(crate) fn may_be_outside(layout: Layout) -> bool {
    // Above MAX_SLOT whenever the size or the alignment is.
    layout.size() | layout.align() > VIEW.outside_above.load(Ordering::Relaxed)
        && OUTSIDE_LIVE.load(Ordering::Relaxed) != 0
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
            VIEW.base.store(b, Ordering::Release);
        }
    }
    let b = VIEW.base.load(Ordering::Acquire);
    (b != NOWHERE).then_some(b)
}

/// Reserves the region's address space, aligned to [`MAX_SLOT`].
fn reserve() -> Option<usize> {
    let len = SIZE + MAX_SLOT;
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
    Some((p as usize).next_multiple_of(MAX_SLOT))
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
    let mut set = OUTSIDE.lock();
    let hidden = hide(addr);
    if set.try_reserve(1, |&a| mix(hide(a) as u64)).is_err() {
        return false;
    }
    set.insert_unique(mix(addr as u64), hidden, |&a| mix(hide(a) as u64));
    if class_of(layout).is_some() {
        VIEW.outside_above.store(0, Ordering::Relaxed);
    }
    OUTSIDE_LIVE.fetch_add(1, Ordering::Relaxed);
    true
}

/// Takes `addr` out of the set of sampled blocks outside the region, if
/// it is there (with `take`; else only says).
pub(crate) fn outside(addr: usize, take: bool) -> bool {
    let mut set = OUTSIDE.lock();
    let hidden = hide(addr);
    match set.find_entry(mix(addr as u64), |&a| a == hidden) {
        Ok(e) => {
            if take {
                e.remove();
                OUTSIDE_LIVE.fetch_sub(1, Ordering::Relaxed);
            }
            true
        }
        Err(_) => false,
    }
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
        assert!(holds(a) && holds(b) && a % 128 == 0 && b % 128 == 0 && a != b);
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
