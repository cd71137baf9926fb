//! The tracker as a shared library, for `LD_PRELOAD`: `leakscope run --
//! PROGRAM` puts it into a program that does not link leakscope.
//!
//! Nothing here but the allocator line and a start as the library loads
//! (below). The library's `malloc` family
//! (feature `c-heap`) is exported from this shared object, so the loader
//! binds every object's `malloc` and `free` to it, as it binds a program
//! that links leakscope; its start hook (in `.init_array`) reads the
//! `LEAKSCOPE_*` variables and arms the exit report as in such a program.
//! The program's own Rust code, if any, keeps its own global allocator: its
//! blocks reach this tracker through `malloc`, as a C library's do.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

/// Starts the tracker as the library loads. The tracker starts at its
/// first allocation, and a C program makes none through Rust's global
/// allocator: without this, its `malloc` calls would pass through uncounted
/// and only a report's own thread (`LEAKSCOPE_REPORT`) would start it.
#[used]
#[link_section = ".init_array"]
static START: extern "C" fn() = start;

extern "C" fn start() {
    drop(std::hint::black_box(Box::new(0u8)));
}
