//! C code for leakscope's tests (`leaky.c`): what a C library allocates,
//! frees and leaks, called from Rust. Not part of leakscope.

use std::ffi::{c_int, c_void};

extern "C" {
    /// `n` strings of 25 bytes, each `strdup`'d and lost.
    pub fn c_lost_strings(n: c_int);
    /// A node of 48 bytes (`malloc`) owning a child of 48 (`calloc`), lost.
    pub fn c_lost_tree();
    /// A block grown by `realloc` to 256 bytes, lost.
    pub fn c_lost_realloc();
    /// 100 bytes from `posix_memalign` and 64 from `aligned_alloc`, lost; a
    /// `memalign` block freed.
    pub fn c_lost_aligned();
    /// A block of `n` bytes, for the caller to `free`.
    pub fn c_give(n: usize) -> *mut c_void;
    /// 77 bytes a C static keeps (still reachable).
    pub fn c_keep();
    /// A C thread that allocates `n` blocks of 32 bytes (at most 64),
    /// frees every other one and loses the rest.
    pub fn c_thread(n: c_int);
    /// `n` blocks of 48 bytes, written to `out`.
    pub fn c_alloc_for(out: *mut *mut c_void, n: c_int);
    /// Frees `n` blocks.
    pub fn c_free_all(blocks: *mut *mut c_void, n: c_int);
    /// `malloc(n)`, from a C frame.
    pub fn c_m_malloc(n: usize) -> *mut c_void;
    /// `calloc(1, n)`, from a C frame.
    pub fn c_m_calloc(n: usize) -> *mut c_void;
    /// `realloc(p, n)`, from a C frame.
    pub fn c_m_realloc(p: *mut c_void, n: usize) -> *mut c_void;
    /// `free(p)`, from a C frame.
    pub fn c_m_free(p: *mut c_void);
    /// Runs `f(arg)` on a thread of C's own (`pthread_create`) and waits for
    /// it; 0 if it ran.
    pub fn c_run_on_thread(f: extern "C" fn(*mut c_void), arg: *mut c_void) -> c_int;
}
