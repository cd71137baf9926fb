//! Call-site capture: the return addresses of the stack that is allocating.
//!
//! Owns the frame-pointer walk (the default), the DWARF unwinder, and the
//! choice between them: at the start, a program built without frame pointers
//! (its code, this crate's included, has no frame-pointer prologues, so
//! the chain breaks in the first frame) gets the DWARF unwinder, unless
//! `LEAKSCOPE_UNWIND` says otherwise. Must never allocate, lock or fault:
//! every step of the walk is checked against the current thread's stack
//! bounds and alignment, so code built without frame pointers yields a
//! shorter stack, never a crash.

use crate::alloc::cfi;
use std::sync::atomic::{AtomicBool, Ordering};

/// Deepest stack kept per call-site.
pub(crate) const MAX_FRAMES: usize = 32;

/// Return addresses, innermost first.
pub(crate) type Frames = [usize; MAX_FRAMES];

/// Unwind by DWARF call frame information ([`cfi::walk`]) instead of frame
/// pointers: `LEAKSCOPE_UNWIND=dwarf`, or the fallback for a build without
/// them.
static DWARF: AtomicBool = AtomicBool::new(false);
/// The DWARF unwinder was chosen because the build lacks frame pointers.
static FALLBACK: AtomicBool = AtomicBool::new(false);

/// `LEAKSCOPE_UNWIND`: the unwinder the user asked for.
pub(crate) fn set_dwarf(on: bool) {
    DWARF.store(on, Ordering::Relaxed);
    FALLBACK.store(false, Ordering::Relaxed);
}

/// At the start: the DWARF unwinder when this build has no frame pointers.
pub(crate) fn choose() {
    if !built_with_frame_pointers() {
        DWARF.store(true, Ordering::Relaxed);
        FALLBACK.store(true, Ordering::Relaxed);
    }
}

/// The unwinder in use: (DWARF, chosen as the fallback for a build without
/// frame pointers).
pub(crate) fn unwinder() -> (bool, bool) {
    (
        DWARF.load(Ordering::Relaxed),
        FALLBACK.load(Ordering::Relaxed),
    )
}

/// A function of this crate, compiled with the build's flags like every
/// crate of the program: its prologue says whether frames keep the chain.
#[inline(never)]
fn probe(x: usize) -> usize {
    std::hint::black_box(x).wrapping_mul(3)
}

/// Whether this crate's code (so, the program's: `-C force-frame-pointers`
/// applies to a whole build) sets up frame pointers: its functions open
/// with `push rbp; mov rbp, rsp` (x86_64, after an `endbr64`) or
/// `stp x29, x30, [sp, #-N]!` (aarch64). Elsewhere: assumed so.
pub(crate) fn built_with_frame_pointers() -> bool {
    let code = probe as fn(usize) -> usize as *const u8;
    // SAFETY: the first 12 bytes at a function of ours: code in a mapped,
    // readable text segment (a function shorter than that is followed by
    // more of the segment).
    let bytes = unsafe { std::slice::from_raw_parts(code, 12) };
    let bytes = match bytes {
        [0xf3, 0x0f, 0x1e, 0xfa, rest @ ..] => rest,
        b => b,
    };
    if cfg!(target_arch = "x86_64") {
        bytes.starts_with(&[0x55, 0x48, 0x89, 0xe5])
    } else if cfg!(target_arch = "aarch64") {
        // stp x29, x30, [sp, #imm]! : 0b1010_1001_10.. with Rt2=30, Rn=sp, Rt=29.
        let first = bytes
            .first_chunk::<4>()
            .map_or(0, |b| u32::from_le_bytes(*b));
        first & 0xffc0_7fff == 0xa980_7bfd
    } else {
        true
    }
}

/// The bounds `[lo, hi)` of the calling thread's stack, or `(0, 0)` when the
/// system does not say. Calls into libc, which may use libc's own `malloc`
/// (never ours), so callers compute it once per thread.
pub(crate) fn current_stack_bounds() -> (usize, usize) {
    // SAFETY: `attr` is initialised by pthread_getattr_np before it is read and
    // destroyed once; the out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (0, 0);
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 || addr.is_null() {
            return (0, 0);
        }
        (addr as usize, addr as usize + size)
    }
}

/// Fills `out` with the return addresses of the calling stack, innermost first,
/// and returns how many it found with their [`hash_frames`]. `bounds` are the
/// thread's stack bounds.
#[inline(never)]
pub(crate) fn capture(
    out: &mut Frames,
    bounds: (usize, usize),
    rules: &cfi::Rules,
) -> (usize, u64) {
    if DWARF.load(Ordering::Relaxed) {
        // The cached CFI walk; the backtrace crate's unwinder where it
        // cannot start (another architecture, no `.eh_frame_hdr`).
        let mut n = cfi::walk(out, bounds, rules);
        if n == 0 {
            n = capture_dwarf(out);
        }
        return (n, hash_frames(out.get(..n).unwrap_or(&[])));
    }
    walk_frame_pointers(out, bounds)
}

#[inline(always)]
fn frame_pointer() -> usize {
    let fp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads a register, touches no memory.
    unsafe {
        std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads a register, touches no memory.
    unsafe {
        std::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        fp = 0;
    }
    fp
}

/// Follows the chain of saved frame pointers. On x86_64 and aarch64 a frame
/// record is `[saved fp, return address]` at the frame pointer.
///
/// Soundness of every read: a frame record is read only when it lies wholly
/// between the current stack pointer and the top of this thread's stack (memory
/// that is mapped for as long as this function runs), is 8-byte aligned, and
/// lies strictly above the one before, so the walk also ends.
///
/// The hash is computed as the walk goes: its steps hide in the latency of
/// the walk's chain of loads.
#[inline(always)]
fn walk_frame_pointers(out: &mut Frames, (stack_lo, stack_hi): (usize, usize)) -> (usize, u64) {
    let marker = 0u8;
    let sp = &marker as *const u8 as usize;
    // Not on this thread's own stack (a signal stack, a coroutine): no walk.
    if stack_hi == 0 || sp < stack_lo || sp >= stack_hi {
        return (0, hash_frames(&[]));
    }
    let mut lo = sp;
    let mut fp = frame_pointer();
    let mut n = 0;
    let mut h = 0u64;
    while n < MAX_FRAMES {
        if fp < lo || fp % 8 != 0 || fp > stack_hi - 16 {
            break;
        }
        // SAFETY: `fp..fp + 16` is inside `[sp, stack_hi)` and aligned (checked
        // above); that range is this thread's live, mapped stack.
        let (next, ret) = unsafe {
            (
                std::ptr::read_volatile(fp as *const usize),
                std::ptr::read_volatile((fp + 8) as *const usize),
            )
        };
        if ret == 0 {
            break;
        }
        if let Some(slot) = out.get_mut(n) {
            *slot = ret;
        }
        h = hash_step(h, ret);
        n += 1;
        lo = fp + 16;
        fp = next;
    }
    (n, hash_finish(h, n))
}

fn capture_dwarf(out: &mut Frames) -> usize {
    let mut n = 0;
    // SAFETY: the tracker's re-entrancy flag is up on this thread, so nothing
    // the unwinder does re-enters tracking; the unwinder takes no lock of ours.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            if let Some(slot) = out.get_mut(n) {
                *slot = frame.ip() as usize;
                n += 1;
            }
            n < MAX_FRAMES
        });
    }
    n
}

/// Hash of a stack, used to intern it (every frame and its position count).
#[inline]
pub(crate) fn hash_frames(frames: &[usize]) -> u64 {
    let h = frames.iter().fold(0, |h, &ip| hash_step(h, ip));
    hash_finish(h, frames.len())
}

#[inline(always)]
fn hash_step(h: u64, ip: usize) -> u64 {
    (h.rotate_left(23) ^ ip as u64).wrapping_mul(0x517C_C1B7_2722_0A95)
}

#[inline(always)]
fn hash_finish(h: u64, len: usize) -> u64 {
    crate::alloc::meta::mix(h ^ len as u64)
}
