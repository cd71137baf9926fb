//! A program that links leakscope for its scope API alone, with no
//! allocator line: run as it is, nothing is tracked; under
//! `leakscope run` (`cargo run -p leakscope-cli -- run --report stderr --
//! target/debug/examples/scopes_only`), its own copy of the tracker is the
//! process's `malloc` and starts as the program loads, so every block,
//! Rust's too (through `System`, which calls `malloc`), is counted in the
//! scopes that opened it: `GET /push` keeps 96 bytes a run, `GET /clean`
//! nothing. `cli/tests/run.rs` checks its report.

use std::sync::Mutex;

static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[inline(never)]
fn push() {
    KEPT.lock().unwrap().push(vec![1u8; 96]);
}

#[inline(never)]
fn clean() {
    std::hint::black_box(vec![0u8; 50]);
}

fn main() {
    for _ in 0..100 {
        leakscope::track_scope("GET /push", push);
        leakscope::track_scope("GET /clean", clean);
    }
    println!("done");
}
