//! The process's `malloc` family (feature `c-heap`, default on Linux with
//! glibc, x86_64): what C code allocates, counted like Rust's blocks.
//!
//! Owns the interposed entry points. Defined in the program itself (as
//! mimalloc's and jemalloc's override builds do), they come before glibc's
//! in the process's symbol lookup, so every library's `malloc` and `free`
//! (SQLite's, OpenSSL's, glibc's own `strdup`) reach them. Each hands the
//! block to glibc's allocator (its `__libc_*` entry points, or glibc's own
//! function where it exports none), with glibc's results and errors, then
//! counts it as the Rust path does ([`crate::alloc::tracker`]), its stack
//! walked by CFI. A call is passed through uncounted before the tracker
//! starts (the loader, libc's initialisation), in sampling mode, inside the
//! tracker or a `fork` handler, and when it is the Rust global allocator's
//! own inner call ([`crate::alloc::thread::RustAlloc`], for an inner
//! allocator other than `System`, whose blocks the tracker takes from glibc
//! directly): a Rust block is counted once. A free of a block never counted
//! (glibc's from before the start) finds no entry and goes to glibc.
//!
//! Called by code that is not ours, at any time, on threads Rust never
//! made: the allocation path's rules hold here, and nothing may touch
//! memory that a thread-local destructor or the loader could have taken
//! away (the thread state is `const` and has no destructor).

use crate::alloc::meta::glibc::{
    __libc_calloc, __libc_free, __libc_malloc, __libc_memalign, __libc_pvalloc, __libc_realloc,
    __libc_valloc,
};
use crate::alloc::tracker::{on_free, realloc_tracked, track_c};
use crate::alloc::{blocks, thread};
use crate::alloc::{process, sample};
use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Whether this call is counted (see the module).
#[inline(always)]
fn counted() -> bool {
    process::started() && counted_once_started()
}

/// `counted`, past its first test (which the entry points make inline).
#[inline(always)]
fn counted_once_started() -> bool {
    sample::current() == 0 && thread::c_call_counted()
}

/// Counts a block `p` of `size` bytes made here, if `p` is one. Inlined:
/// each frame between the program's and the walk's start is a step more
/// of the walk by CFI.
#[inline(always)]
fn made(p: *mut c_void, size: usize) -> *mut c_void {
    if !p.is_null() {
        thread::with_tracking(|t| track_c(t, p as usize, size));
    }
    p
}

/// A block made by `alloc`, counted as `size()` bytes if this call is
/// counted: an entry point's path once the tracker has started, out of
/// line, so that a program that links leakscope without the allocator line
/// pays a test and a jump to glibc (7 instructions a call; 11 when the
/// whole test was inline, behind the register saves of its thread-local
/// look-up).
#[inline(never)]
fn made_by(alloc: impl FnOnce() -> *mut c_void, size: impl FnOnce() -> usize) -> *mut c_void {
    if !counted_once_started() {
        return alloc();
    }
    made(alloc(), size())
}

/// One of glibc's functions that it exports under its own name only,
/// looked up past this program (`RTLD_NEXT`) at its first use and kept in
/// `cell`. The look-up may allocate: with the tracker's flag up, that goes
/// straight to glibc.
fn glibc(cell: &AtomicUsize, name: &CStr) -> usize {
    let f = cell.load(Ordering::Acquire);
    if f != 0 {
        return f;
    }
    // SAFETY: dlsym with a NUL-terminated name; 0 when absent.
    let f = thread::untracked(|| unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize);
    cell.store(f, Ordering::Release);
    f
}

/// # Safety
/// C's `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // SAFETY: glibc's malloc, same contract.
    let inner = move || unsafe { __libc_malloc(size) };
    if !process::started() {
        return inner();
    }
    made_by(inner, move || size)
}

/// # Safety
/// C's `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    // SAFETY: glibc's calloc, same contract (it checks `n * size`).
    let inner = move || unsafe { __libc_calloc(n, size) };
    if !process::started() {
        return inner();
    }
    made_by(inner, move || n.wrapping_mul(size))
}

/// # Safety
/// C's `free`.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if p.is_null() || !process::started() {
        // SAFETY: glibc's free, same contract.
        return unsafe { __libc_free(p) };
    }
    freed(p)
}

/// `free` once the tracker has started, out of line (as `made_by`).
#[inline(never)]
fn freed(p: *mut c_void) {
    // Forget the block before glibc may hand its address to another thread.
    if counted_once_started() {
        on_free(p.cast());
    }
    // SAFETY: glibc's free of a block `free` was given.
    unsafe { __libc_free(p) }
}

/// # Safety
/// C's `realloc`.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // glibc's realloc, whose contract is this function's.
    // SAFETY: forwarded contract.
    let inner = move || unsafe { __libc_realloc(p, size) };
    if !process::started() {
        return inner();
    }
    reallocated(p, size, inner)
}

/// `realloc` once the tracker has started, out of line (as `made_by`).
#[inline(never)]
fn reallocated(p: *mut c_void, size: usize, inner: impl FnOnce() -> *mut c_void) -> *mut c_void {
    if !counted_once_started() {
        return inner();
    }
    if p.is_null() {
        return made(inner(), size);
    }
    // Its size as glibc has it (what the tracker knows of it comes out of
    // the table at the same step, and it may have been made before the
    // start): the bytes the leak check scans while it is in flight.
    // SAFETY: `p` is a block from glibc, as `realloc`'s contract says.
    let old_size = unsafe { glibc_usable_size(p) };
    realloc_tracked(p.cast(), old_size, size, |_| inner().cast(), track_c).cast()
}

/// # Safety
/// C's `reallocarray`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(bytes) => unsafe { realloc(p, bytes) },
        None => {
            // As glibc: the product overflows.
            // SAFETY: errno is this thread's.
            unsafe { *libc::__errno_location() = libc::ENOMEM };
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// C's `memalign`.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: glibc's memalign, same contract.
    let inner = move || unsafe { __libc_memalign(align, size) };
    if !process::started() {
        return inner();
    }
    made_by(inner, move || size)
}

/// # Safety
/// C's `aligned_alloc` (glibc's own, for its checks of `align`).
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    static GLIBC: AtomicUsize = AtomicUsize::new(0);
    let p = match glibc(&GLIBC, c"aligned_alloc") {
        // SAFETY: glibc's memalign, of which aligned_alloc is an alias
        // where it has no function of its own.
        0 => unsafe { __libc_memalign(align, size) },
        f => {
            // SAFETY: glibc's aligned_alloc, of this signature.
            let f: unsafe extern "C" fn(usize, usize) -> *mut c_void =
                unsafe { std::mem::transmute(f) };
            // SAFETY: same contract.
            unsafe { f(align, size) }
        }
    };
    if counted() {
        made(p, size);
    }
    p
}

/// # Safety
/// C's `posix_memalign` (glibc's own, for its checks of `align`).
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    static GLIBC: AtomicUsize = AtomicUsize::new(0);
    let f = glibc(&GLIBC, c"posix_memalign");
    if f == 0 {
        return libc::ENOMEM;
    }
    // SAFETY: glibc's posix_memalign, of this signature.
    let f: unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> c_int =
        unsafe { std::mem::transmute(f) };
    // SAFETY: same contract.
    let rc = unsafe { f(out, align, size) };
    if rc == 0 && counted() {
        // SAFETY: on success glibc wrote the block's address to `out`.
        made(unsafe { *out }, size);
    }
    rc
}

/// # Safety
/// C's `valloc`.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: glibc's valloc, same contract.
    let inner = move || unsafe { __libc_valloc(size) };
    if !process::started() {
        return inner();
    }
    made_by(inner, move || size)
}

/// # Safety
/// C's `pvalloc`.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: glibc's pvalloc, same contract.
    let inner = move || unsafe { __libc_pvalloc(size) };
    if !counted() {
        return inner();
    }
    // pvalloc rounds the size up to whole pages; the block is that big.
    made_by(inner, move || {
        size.next_multiple_of(page_size()).max(page_size())
    })
}

/// The entry points, so that the object file that defines them is always
/// linked in with the tracker (a linker takes an archive's object only for
/// a symbol something needs): `process::start` refers to this.
pub(crate) fn keep() {
    let entries = [
        malloc as *const (),
        calloc as *const (),
        realloc as *const (),
        free as *const (),
        reallocarray as *const (),
        memalign as *const (),
        aligned_alloc as *const (),
        posix_memalign as *const (),
        valloc as *const (),
        pvalloc as *const (),
        malloc_usable_size as *const (),
    ];
    std::hint::black_box(entries);
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(1) as usize
}

/// # Safety
/// C's `malloc_usable_size`. For a block the tracker counts, its size as
/// asked (as valgrind and AddressSanitizer answer): a program that would
/// use glibc's slack past it (SQLite built with `HAVE_MALLOC_USABLE_SIZE`
/// does) keeps its data, and its pointers, in the bytes the leak check
/// scans. Otherwise glibc's answer.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if !p.is_null() && counted() {
        let size = thread::with_tracking(|t| blocks::size_of(t.young(), p as usize));
        if let Some(Some(size)) = size {
            return size;
        }
    }
    // SAFETY: forwarded contract.
    unsafe { glibc_usable_size(p) }
}

/// glibc's `malloc_usable_size`: the bytes of a block from glibc.
///
/// # Safety
/// C's `malloc_usable_size`.
unsafe fn glibc_usable_size(p: *mut c_void) -> usize {
    static GLIBC: AtomicUsize = AtomicUsize::new(0);
    match glibc(&GLIBC, c"malloc_usable_size") {
        0 => 0,
        f => {
            // SAFETY: glibc's malloc_usable_size, of this signature.
            let f: unsafe extern "C" fn(*mut c_void) -> usize = unsafe { std::mem::transmute(f) };
            // SAFETY: same contract.
            unsafe { f(p) }
        }
    }
}
