//! Five functions that leak at their own call-sites, in a program built
//! without frame pointers: the tracker's stacks must still name each one.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

use std::hint::black_box;

#[inline(never)]
fn leak_one() {
    std::mem::forget(black_box(vec![1u8; 16]));
}

#[inline(never)]
fn leak_two() {
    std::mem::forget(black_box(vec![2u8; 32]));
}

#[inline(never)]
fn leak_three() {
    std::mem::forget(black_box(vec![3u8; 48]));
}

#[inline(never)]
fn leak_four() {
    std::mem::forget(black_box(vec![4u8; 64]));
}

#[inline(never)]
fn leak_five() {
    std::mem::forget(black_box(vec![5u8; 80]));
}

fn main() {
    let leaks: [fn(); 5] = [leak_one, leak_two, leak_three, leak_four, leak_five];
    for (i, leak) in leaks.iter().enumerate() {
        for _ in 0..=i {
            leakscope::track_scope("planted", leak);
        }
    }
}
