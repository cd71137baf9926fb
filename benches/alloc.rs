//! Micro-benchmarks: one allocation and its free, through System and through
//! a leakscope tracker (call-site capture, block table, counters), outside and
//! inside a scope. The tracker here is a plain instance, not the global
//! allocator, so criterion's own allocations stay out of the picture; it shares
//! the process's tables all the same.
//!
//! `cargo bench --bench alloc`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::alloc::{GlobalAlloc, Layout, System};

static TRACKER: leakscope::LeakTracker = leakscope::LeakTracker::system();

#[inline(never)]
fn alloc_free<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: a non-zero layout; the block is freed with the same layout.
    unsafe {
        let p = a.alloc(layout);
        black_box(p);
        a.dealloc(p, layout);
    }
}

/// 64 blocks live at once, freed in allocation order: the table holds entries
/// and the allocator does not just hand back the same block.
#[inline(never)]
fn batch<A: GlobalAlloc>(a: &A, layout: Layout) {
    let mut ptrs = [std::ptr::null_mut::<u8>(); 64];
    // SAFETY: as above, every block freed once with its layout.
    unsafe {
        for p in ptrs.iter_mut() {
            *p = a.alloc(layout);
        }
        for &p in black_box(&ptrs) {
            a.dealloc(p, layout);
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_free");
    for size in [16usize, 64, 256, 4096] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        g.bench_with_input(BenchmarkId::new("system", size), &layout, |b, &l| {
            b.iter(|| alloc_free(&System, l))
        });
        g.bench_with_input(BenchmarkId::new("leakscope", size), &layout, |b, &l| {
            b.iter(|| alloc_free(&TRACKER, l))
        });
        g.bench_with_input(
            BenchmarkId::new("leakscope_scoped", size),
            &layout,
            |b, &l| {
                let _scope = leakscope::scope("bench");
                b.iter(|| alloc_free(&TRACKER, l))
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("batch64");
    let layout = Layout::from_size_align(48, 8).unwrap();
    g.bench_function("system", |b| b.iter(|| batch(&System, layout)));
    g.bench_function("leakscope", |b| b.iter(|| batch(&TRACKER, layout)));
    g.bench_function("leakscope_scoped", |b| {
        let _scope = leakscope::scope("bench");
        b.iter(|| batch(&TRACKER, layout))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
