//! Layouts: realloc growth and shrink (each counted as valgrind counts it, a
//! free and a new block), a failed realloc, zero-sized values (no allocation),
//! large alignments, zeroed blocks.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

#[inline(never)]
fn grow_by_realloc() -> (*mut u8, Layout) {
    // SAFETY: a non-zero layout; every realloc gets the block's current layout.
    unsafe {
        let mut layout = Layout::from_size_align(16, 8).unwrap();
        let p = std::alloc::alloc(layout);
        assert!(!p.is_null());
        p.write(42);
        let mut p = p;
        for size in [32, 64, 128, 256, 512, 1024, 2048, 4096] {
            p = std::alloc::realloc(p, layout, size);
            assert!(!p.is_null());
            layout = Layout::from_size_align(size, 8).unwrap();
        }
        assert_eq!(p.read(), 42, "realloc kept the contents");
        (p, layout)
    }
}

#[inline(never)]
fn shrink_by_realloc(p: *mut u8, layout: Layout) -> (*mut u8, Layout) {
    // SAFETY: `p` is live with `layout`.
    let q = unsafe { std::alloc::realloc(p, layout, 100) };
    assert!(!q.is_null());
    (q, Layout::from_size_align(100, 8).unwrap())
}

#[inline(never)]
fn push_words() -> Vec<u32> {
    let mut v = Vec::new();
    for i in 0..1000u32 {
        v.push(black_box(i));
    }
    v
}

#[inline(never)]
fn zero_sized() -> usize {
    let a: Vec<u8> = Vec::new();
    let b = Box::new(());
    #[allow(clippy::useless_vec)] // a Vec of a million zero-sized values: no allocation
    let c = vec![(); 1_000_000];
    let d = String::new();
    let e: Vec<u64> = Vec::with_capacity(0);
    let f: Box<[u32]> = Vec::new().into_boxed_slice();
    black_box((a.len(), &b, c.len(), d.len(), e.capacity(), f.len()));
    c.len()
}

#[repr(C, align(4096))]
struct Page([u8; 8192]);

#[inline(never)]
fn big_aligned() -> Box<Page> {
    black_box(Box::new(Page([5; 8192])))
}

#[inline(never)]
fn aligned_zeroed(align: usize) -> (*mut u8, Layout) {
    let layout = Layout::from_size_align(100, align).unwrap();
    // SAFETY: a non-zero layout.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null());
    (p, layout)
}

fn main() {
    common::run(&[
        ("realloc_growth_and_shrink", realloc_growth_and_shrink),
        ("vec_growth", vec_growth),
        (
            "failed_realloc_keeps_the_block",
            failed_realloc_keeps_the_block,
        ),
        (
            "zero_sized_values_allocate_nothing",
            zero_sized_values_allocate_nothing,
        ),
        ("large_alignment", large_alignment),
    ]);
}

fn realloc_growth_and_shrink() {
    let (p, layout) = grow_by_realloc();
    let s = common::site_now("grow_by_realloc");
    // One alloc and eight reallocs: nine blocks, of which the last is live.
    assert_eq!((s.total_blocks, s.total_bytes), (9, 8176));
    assert_eq!((s.live_blocks, s.live_bytes), (1, 4096));
    let (q, layout) = shrink_by_realloc(p, layout);
    let s = common::site_now("grow_by_realloc");
    assert_eq!(
        (s.live_blocks, s.live_bytes, s.total_blocks),
        (0, 0, 9),
        "the grown block was freed by the shrink"
    );
    let s = common::site_now("shrink_by_realloc");
    assert_eq!((s.live_blocks, s.live_bytes, s.total_blocks), (1, 100, 1));
    // SAFETY: `q` is live with `layout`.
    unsafe { std::alloc::dealloc(q, layout) };
    assert_eq!(common::site_now("shrink_by_realloc").live_blocks, 0);
}

fn vec_growth() {
    let v = push_words();
    let s = common::site_now("push_words");
    // Capacity 4, 8, ..., 1024 of u32: nine blocks, 16 + 32 + ... + 4096 bytes.
    assert_eq!((s.total_blocks, s.total_bytes), (9, 8176));
    assert_eq!((s.live_blocks, s.live_bytes), (1, 4096));
    drop(v);
    assert_eq!(common::site_now("push_words").live_blocks, 0);
}

/// System, except that it refuses to grow a block past 1 MiB in place or not.
struct NoBigRealloc;

// SAFETY: forwards to System, or returns null from realloc, which the
// GlobalAlloc contract allows.
unsafe impl GlobalAlloc for NoBigRealloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > 1 << 20 {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A second tracker instance, not the global one: it shares the process's
/// tables, so its blocks show in the same report.
static REFUSING: leakscope::LeakTracker<NoBigRealloc> = leakscope::LeakTracker::new(NoBigRealloc);

#[inline(never)]
fn refused_realloc_site() -> (*mut u8, Layout) {
    let layout = Layout::from_size_align(4000, 16).unwrap();
    // SAFETY: a non-zero layout.
    let p = unsafe { REFUSING.alloc(layout) };
    assert!(!p.is_null());
    (p, layout)
}

fn failed_realloc_keeps_the_block() {
    let (p, layout) = refused_realloc_site();
    let before = common::site_now("refused_realloc_site");
    assert_eq!(
        (before.live_blocks, before.live_bytes, before.total_blocks),
        (1, 4000, 1)
    );
    let totals = leakscope::snapshot().totals;
    // SAFETY: `p` is live with `layout`; the realloc fails and leaves it so.
    let q = unsafe { REFUSING.realloc(p, layout, 2 << 20) };
    assert!(q.is_null());
    let after = common::site_now("refused_realloc_site");
    assert_eq!(after, before, "a failed realloc changed the block's counts");
    let totals_after = leakscope::snapshot().totals;
    assert_eq!(
        (totals_after.live_bytes, totals_after.total_blocks),
        (totals.live_bytes, totals.total_blocks)
    );
    // The block is still tracked: freeing it is counted.
    // SAFETY: `p` is still live with `layout`.
    unsafe { REFUSING.dealloc(p, layout) };
    let s = common::site_now("refused_realloc_site");
    assert_eq!((s.live_blocks, s.live_bytes), (0, 0));
}

fn zero_sized_values_allocate_nothing() {
    let before = leakscope::snapshot().totals;
    assert_eq!(zero_sized(), 1_000_000);
    let r = leakscope::snapshot();
    assert_eq!(common::site(&r, "zero_sized"), common::Site::default());
    assert_eq!(
        r.totals.total_blocks, before.total_blocks,
        "zero-sized values allocated"
    );
}

fn large_alignment() {
    let page = big_aligned();
    assert_eq!(&*page as *const Page as usize % 4096, 0);
    let s = common::site_now("big_aligned");
    assert_eq!((s.live_blocks, s.live_bytes), (1, 8192));
    assert!(page.0.iter().all(|&b| b == 5));
    drop(page);
    assert_eq!(common::site_now("big_aligned").live_blocks, 0);

    let mut held = Vec::with_capacity(4);
    for align in [4096, 1 << 16] {
        held.push(aligned_zeroed(align));
    }
    for &(p, layout) in &held {
        assert_eq!(p as usize % layout.align(), 0);
        // SAFETY: `p` is a live zeroed block of `layout.size()` bytes.
        assert!(unsafe { std::slice::from_raw_parts(p, layout.size()) }
            .iter()
            .all(|&b| b == 0));
    }
    let s = common::site_now("aligned_zeroed");
    assert_eq!((s.live_blocks, s.live_bytes), (2, 200));
    for (p, layout) in held {
        // SAFETY: `p` is live with `layout`.
        unsafe { std::alloc::dealloc(p, layout) };
    }
    assert_eq!(common::site_now("aligned_zeroed").live_blocks, 0);
}
