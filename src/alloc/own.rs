//! The tracker's own blocks that the inner allocator refused.
//!
//! Reports, leak checks and scope bookkeeping allocate with the thread's
//! re-entrancy flag up: their blocks come from the inner allocator,
//! untracked. When it refuses one (an allocator with a limit, or one that
//! fails now and then), Rust would abort the program for leakscope's sake:
//! instead the block comes from [`Raw`], the allocator the tracker's tables
//! live in, as valgrind's and LeakSanitizer's own memory never comes from
//! the program's allocator. A refused allocation of the program's own is
//! still refused: that is the program's to handle, as without leakscope.
//!
//! A free or realloc of a block the block table does not hold looks here
//! (a relaxed load unless such a block lives), to send it back where it
//! came from: such a block is never tracked, even when the program, handed
//! one in a report, frees it or grows it (it grows into the inner
//! allocator). Full mode only: in sampling mode the tracker's own blocks of
//! up to 64 KiB live in the sampler's region (`region`), larger ones in the
//! inner allocator, refused as before.
//!
//! The set is a fixed open-addressed table of addresses, changed by
//! compare-and-swap, so that it takes no lock (nothing to hold across
//! `fork`, nothing a leak check's stopped thread can hold) and needs no
//! memory. Its addresses are not hidden from the check's scan: no block
//! here is in the block table, so none of them can make a block reachable.

use crate::alloc::meta::{mix, Raw};
use crate::alloc::thread;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Blocks at a time; past that, a refused block stays refused.
const CAP: usize = 4096;
/// A slot never used: a lookup stops there.
const EMPTY: usize = 0;
/// A slot whose block was freed: a lookup goes past it, an insert reuses it
/// (no block is at address 1).
const GONE: usize = 1;

static SLOTS: [AtomicUsize; CAP] = [const { AtomicUsize::new(EMPTY) }; CAP];
/// Blocks in [`SLOTS`].
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Whether any block of `Raw`'s is in the set: every untracked free asks.
#[inline(always)]
pub(crate) fn any() -> bool {
    LIVE.load(Ordering::Relaxed) != 0
}

fn probe(addr: usize) -> impl Iterator<Item = &'static AtomicUsize> {
    let start = mix(addr as u64) as usize % CAP;
    (0..CAP).map(move |i| &SLOTS[(start + i) % CAP])
}

/// Puts `addr` in the set; `false` when it is full.
fn insert(addr: usize) -> bool {
    for slot in probe(addr) {
        let mut now = slot.load(Ordering::Relaxed);
        while now == EMPTY || now == GONE {
            match slot.compare_exchange(now, addr, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    LIVE.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(seen) => now = seen,
            }
        }
    }
    false
}

/// The slot that holds `addr`, if the set has it.
fn find(addr: usize) -> Option<&'static AtomicUsize> {
    for slot in probe(addr) {
        match slot.load(Ordering::Acquire) {
            EMPTY => return None,
            a if a == addr => return Some(slot),
            _ => {}
        }
    }
    None
}

fn holds(addr: usize) -> bool {
    find(addr).is_some()
}

/// Whether the block at `addr` is `Raw`'s, taking it out of the set if so
/// (before its memory goes back, so that an address handed out again is
/// never found here).
pub(crate) fn take(addr: usize) -> bool {
    let Some(slot) = find(addr) else {
        return false;
    };
    slot.store(GONE, Ordering::Release);
    LIVE.fetch_sub(1, Ordering::Relaxed);
    true
}

/// A block of `layout` (zeroed if `zeroed`) from `Raw`, for a thread
/// inside the tracker whose allocation the inner allocator refused; null
/// for any other thread, or if `Raw` refuses too, or the set is full.
#[cold]
#[inline(never)]
pub(crate) fn alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    if !thread::busy() {
        return std::ptr::null_mut();
    }
    raw_alloc(layout, zeroed)
}

/// A block of `layout` from `Raw`, in the set; null if `Raw` refuses or
/// the set is full.
fn raw_alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: `layout` is non-zero-sized (the caller's `GlobalAlloc` contract).
    let p = unsafe {
        if zeroed {
            Raw.alloc_zeroed(layout)
        } else {
            Raw.alloc(layout)
        }
    };
    if p.is_null() || insert(p as usize) {
        return p;
    }
    // SAFETY: the block `Raw` just made, never handed out.
    unsafe { Raw.dealloc(p, layout) };
    std::ptr::null_mut()
}

/// Frees the block at `ptr` if it is `Raw`'s (in the set); `false` if it
/// is not. On any thread: a block made here may be handed to the program
/// (in a report) and freed by it.
///
/// # Safety
/// `GlobalAlloc::dealloc`'s contract, for a block of the set or not.
#[cold]
#[inline(never)]
pub(crate) unsafe fn free(ptr: *mut u8, layout: Layout) -> bool {
    if !take(ptr as usize) {
        return false;
    }
    // SAFETY: forwarded contract: `Raw`'s block, out of the set.
    unsafe { Raw.dealloc(ptr, layout) };
    true
}

/// `GlobalAlloc::realloc` of a block by `below` (the inner allocator), or,
/// for a block of `Raw`'s (from [`alloc`], never `tracked`), by `Raw` on a
/// thread inside the tracker and back into `below` on any other (whose new
/// block the tracker then tracks, as every tracked block, in `below`); a
/// refusal of `below`'s, on a thread inside the tracker, is made good from
/// `Raw`.
///
/// # Safety
/// `GlobalAlloc::realloc`'s contract, for a block of `below` or of the set.
#[inline(always)]
pub(crate) unsafe fn realloc<A: GlobalAlloc>(
    below: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    tracked: bool,
) -> *mut u8 {
    if !tracked && any() && holds(ptr as usize) {
        // SAFETY: forwarded contract; `Raw`'s block.
        return unsafe {
            moved(
                ptr,
                layout,
                new_size,
                |p, l| Raw.dealloc(p, l),
                |l| {
                    if thread::busy() {
                        raw_alloc(l, false)
                    } else {
                        below.alloc(l)
                    }
                },
            )
        };
    }
    // SAFETY: forwarded contract.
    let p = unsafe { below.realloc(ptr, layout, new_size) };
    if p.is_null() && new_size != 0 {
        // SAFETY: forwarded contract; `below`'s block.
        return unsafe {
            moved(
                ptr,
                layout,
                new_size,
                |p, l| below.dealloc(p, l),
                |l| alloc(l, false),
            )
        };
    }
    p
}

/// Realloc as an allocation by `make`, a copy and a free by `free`; null,
/// the old block kept, when `make` gives none.
///
/// # Safety
/// `GlobalAlloc::realloc`'s contract; `free` frees the block at `ptr`;
/// `make` makes a block of the layout it is given, or null.
#[cold]
#[inline(never)]
unsafe fn moved(
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    free: impl FnOnce(*mut u8, Layout),
    make: impl FnOnce(Layout) -> *mut u8,
) -> *mut u8 {
    // SAFETY: `realloc`'s contract: `new_size`, rounded up to the
    // alignment, does not overflow isize; the alignment is a layout's.
    let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
    let p = make(new_layout);
    if p.is_null() {
        return p;
    }
    // SAFETY: both blocks are live, distinct, and hold this many bytes.
    unsafe { std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size)) };
    // Out of the set first, if it is there (a block of `below`'s is not).
    take(ptr as usize);
    free(ptr, layout);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    /// An inner allocator that refuses every block.
    struct Refuses;

    // SAFETY: makes no block, so it never frees one of its own.
    unsafe impl GlobalAlloc for Refuses {
        unsafe fn alloc(&self, _: Layout) -> *mut u8 {
            std::ptr::null_mut()
        }
        unsafe fn dealloc(&self, _: *mut u8, _: Layout) {
            unreachable!("Refuses made no block");
        }
    }

    fn filled(p: *mut u8, n: usize) {
        // SAFETY: `p` is a live block of at least `n` bytes.
        unsafe { std::ptr::write_bytes(p, 0x5a, n) };
    }

    fn all_5a(p: *mut u8, n: usize) -> bool {
        // SAFETY: as in `filled`.
        unsafe { std::slice::from_raw_parts(p, n) }
            .iter()
            .all(|&b| b == 0x5a)
    }

    #[test]
    fn only_the_tracker_gets_a_refused_block() {
        let l = Layout::from_size_align(48, 8).unwrap();
        assert!(alloc(l, false).is_null(), "not inside the tracker");
        let p = thread::untracked(|| alloc(l, true));
        assert!(!p.is_null() && holds(p as usize) && any());
        // SAFETY: zeroed, 48 bytes.
        assert!(unsafe { std::slice::from_raw_parts(p, 48) }
            .iter()
            .all(|&b| b == 0));
        // Freed by anyone (the program, handed it in a report), back to Raw.
        // SAFETY: the block just made, with its layout.
        assert!(unsafe { free(p, l) });
        assert!(!holds(p as usize));
        let q = system_block(l);
        // SAFETY: `System`'s block, not in the set: `free` leaves it.
        assert!(!unsafe { free(q, l) });
        // SAFETY: `System`'s block.
        unsafe { System.dealloc(q, l) };
    }

    #[test]
    fn a_refused_realloc_moves_to_raw_inside_the_tracker_only() {
        let l = Layout::from_size_align(32, 8).unwrap();
        let p = system_block(l);
        filled(p, 32);
        // SAFETY: `p` is `System`'s block of `l`; `Refuses` refuses it.
        let outside = unsafe { realloc(&Refuses, p, l, 64, true) };
        assert!(outside.is_null(), "the program's own realloc stays refused");
        // SAFETY: as above; inside the tracker.
        let q = thread::untracked(|| unsafe { realloc(&FreesSystem, p, l, 64, false) });
        assert!(!q.is_null() && q != p && holds(q as usize));
        assert!(all_5a(q, 32));
        // Grown by the program: back into the inner allocator, out of the set.
        let l64 = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: `q` is the set's block of 64 bytes.
        let r = unsafe { realloc(&System, q, l64, 128, false) };
        assert!(!r.is_null() && !holds(q as usize) && !holds(r as usize));
        assert!(all_5a(r, 32));
        // SAFETY: now `System`'s block of 128 bytes.
        unsafe { System.dealloc(r, Layout::from_size_align(128, 8).unwrap()) };
    }

    /// Refuses every block, frees `System`'s.
    struct FreesSystem;

    // SAFETY: frees only blocks `System` made (the tests' own).
    unsafe impl GlobalAlloc for FreesSystem {
        unsafe fn alloc(&self, _: Layout) -> *mut u8 {
            std::ptr::null_mut()
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: forwarded contract.
            unsafe { System.dealloc(p, l) }
        }
    }

    fn system_block(l: Layout) -> *mut u8 {
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { System.alloc_zeroed(l) };
        assert!(!p.is_null());
        p
    }
}
