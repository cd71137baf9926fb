//! The tracker as a shared library, for `LD_PRELOAD`: `leakscope run --
//! PROGRAM` puts it into a program that does not link leakscope.
//!
//! Nothing here but the allocator line. The library's `malloc` family
//! (feature `c-heap`) is exported from this shared object, so the loader
//! binds every object's `malloc` and `free` to it, as it binds a program
//! that links leakscope. As it loads, leakscope's own constructor (in
//! `.init_array`) sees that it was preloaded, starts the tracker (a C
//! program never allocates through Rust's allocator, which would start
//! it), reads the `LEAKSCOPE_*` variables and arms the exit report as in a
//! program that links leakscope. The program's own Rust code, if any,
//! keeps its own global allocator: its blocks reach this tracker through
//! `malloc`, as a C library's do.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();
