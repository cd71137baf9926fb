//! The DWARF fallback's stack walk: unwinding by the call frame information
//! (`.eh_frame`) of the loaded objects, with a per-thread cache of the rule
//! at each return address (x86_64).
//!
//! Owns [`walk`] and the rules it caches, and [`step`], a full step (every
//! callee-saved register restored) for the leak check at exit, off the
//! allocation path. A frame's rule says where its
//! canonical frame address is (the stack pointer or `rbp`, plus an offset),
//! that the return address is the word below it, and where the caller's
//! `rbp` was saved. Finding a rule (the FDE search through
//! `.eh_frame_hdr` and the CFI program, by gimli) is the expensive part of
//! DWARF unwinding; a thread does it once per return address, then a step
//! is a cache probe and two loads.
//!
//! Runs inside the allocation path, with the thread's re-entrancy flag up:
//! no allocation (gimli's unwind context lives on the stack), no lock but a
//! spin lock around the table of loaded objects (filled by
//! `dl_iterate_phdr`, which takes the loader's lock, on a miss only), no
//! panic, and every load checked against the thread's stack bounds.

use crate::alloc::meta::{mix, SpinLock};
use crate::alloc::unwind::{Frames, MAX_FRAMES};
use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EhFrameOffset, EndianSlice, LittleEndian, Pointer,
    Register, RegisterRule, UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow,
};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Rules the process keeps, by return address: [`SETS`] sets of [`WAYS`]
/// entries, shared by every thread (a rule belongs to the code, not to a
/// thread: a new thread finds the rules of the stacks others walked, and
/// keeps no table of its own). Four ways: a stack's few dozen return
/// addresses must not evict one another (a miss costs a CFI search).
const WAYS: usize = 4;
const SETS: usize = 1024;

/// One cached rule: `ip` (0: empty) and its packed rule. Written by any
/// thread: `ip` cleared, `rule` written, then `ip`; read as `ip`, `rule`,
/// `ip` again, so that a rule read while another thread replaced it is
/// not taken for its `ip`'s (a rule is a function of its `ip` alone, so
/// an entry rewritten with the same `ip` holds the same rule).
#[repr(C, align(16))]
struct Entry {
    ip: AtomicUsize,
    rule: AtomicU64,
}

#[repr(align(64))]
struct Set([Entry; WAYS]);

static RULES: [Set; SETS] = [const {
    Set([const {
        Entry {
            ip: AtomicUsize::new(0),
            rule: AtomicU64::new(0),
        }
    }; WAYS])
}; SETS];

/// The rule cached for `ip`, if any.
#[inline(always)]
fn cached(set: &Set, ip: usize) -> Option<u64> {
    for e in &set.0 {
        if e.ip.load(Ordering::Acquire) == ip {
            let rule = e.rule.load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if e.ip.load(Ordering::Relaxed) == ip {
                return Some(rule);
            }
        }
    }
    None
}

/// Caches `rule` for `ip` in one of the set's ways (picked by `ip`'s
/// bits, so that threads that miss on different addresses at once seldom
/// write the same entry; when they do, each entry still holds one `ip`'s
/// rule or none).
#[cold]
fn keep(set: &Set, ip: usize, rule: u64) {
    let Some(e) = set.0.get((ip >> 4) % WAYS) else {
        return;
    };
    e.ip.store(0, Ordering::Relaxed);
    std::sync::atomic::fence(Ordering::Release);
    e.rule.store(rule, Ordering::Relaxed);
    e.ip.store(ip, Ordering::Release);
}

/// A packed rule: bit 63 valid; bit 62 CFA from `rbp` (else the stack
/// pointer); bits 61-60 the caller's `rbp` (0 same value, 1 saved at an
/// offset from the CFA); bits 16-47 the CFA offset (i32); bits 0-15 the
/// saved `rbp`'s offset (i16).
const VALID: u64 = 1 << 63;
const CFA_RBP: u64 = 1 << 62;
const RBP_SAVED: u64 = 1 << 60;
/// No rule here (no CFI, or one this walk does not follow): the walk stops.
const NONE: u64 = VALID | 1 << 61;

fn pack(cfa_rbp: bool, cfa_offset: i64, rbp_saved: Option<i64>) -> u64 {
    let (Ok(cfa), Ok(saved)) = (
        i32::try_from(cfa_offset),
        i16::try_from(rbp_saved.unwrap_or(0)),
    ) else {
        return NONE;
    };
    let mut rule = VALID | (cfa as u32 as u64) << 16 | saved as u16 as u64;
    if cfa_rbp {
        rule |= CFA_RBP;
    }
    if rbp_saved.is_some() {
        rule |= RBP_SAVED;
    }
    rule
}

/// Fills `out` with the return addresses of the calling stack, innermost
/// first, starting at the given register state; returns how many it found.
/// `bounds` are the thread's stack bounds.
#[inline(never)]
pub(crate) fn walk(out: &mut Frames, (lo, hi): (usize, usize)) -> usize {
    let Some((mut ip, mut sp, mut bp)) = registers() else {
        return 0;
    };
    if hi == 0 || sp < lo || sp >= hi {
        return 0;
    }
    let mut n = 0;
    let mut first = true;
    while n < MAX_FRAMES {
        let Some(set) = RULES.get(mix(ip as u64) as usize % SETS) else {
            break;
        };
        let rule = match cached(set, ip) {
            Some(rule) => rule,
            None => {
                // A return address belongs to the call before it.
                let at = if first { ip } else { ip.wrapping_sub(1) };
                let rule = find_rule(at);
                keep(set, ip, rule);
                rule
            }
        };
        if rule & VALID == 0 || rule == NONE {
            break;
        }
        let base = if rule & CFA_RBP != 0 { bp } else { sp };
        let cfa = base.wrapping_add_signed((rule >> 16) as u32 as i32 as isize);
        // The return address is the word below the CFA, on this stack.
        if cfa % 8 != 0 || cfa <= sp || cfa > hi || cfa < lo + 8 {
            break;
        }
        // SAFETY: `cfa - 8` is 8-byte aligned and inside `[sp, hi)`, this
        // thread's live stack (checked above).
        let ra = unsafe { crate::alloc::unwind::raw_word(cfa - 8) };
        if rule & RBP_SAVED != 0 {
            let at = cfa.wrapping_add_signed(rule as u16 as i16 as isize);
            if at % 8 != 0 || at < sp || at > hi.saturating_sub(8) {
                break;
            }
            // SAFETY: as above, for the word where the caller's rbp was saved.
            bp = unsafe { crate::alloc::unwind::raw_word(at) };
        }
        if ra == 0 {
            break;
        }
        if let Some(slot) = out.get_mut(n) {
            *slot = ra;
        }
        n += 1;
        sp = cfa;
        ip = ra;
        first = false;
    }
    n
}

/// The instruction pointer, stack pointer and `rbp` here.
#[inline(always)]
fn registers() -> Option<(usize, usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    {
        let (ip, sp, bp): (usize, usize, usize);
        // SAFETY: reads three registers (rip by lea); touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nomem, nostack, preserves_flags),
            );
        }
        Some((ip, sp, bp))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

// ---------------------------------------------------------------- finding a rule

/// What the walk needs of a loaded object: where its code is and where its
/// call frame information is.
#[derive(Clone, Copy, Default)]
struct Object {
    /// Executable segment(s): `[start, end)` spanning them.
    text: (usize, usize),
    /// `.eh_frame_hdr` and its length.
    hdr: (usize, usize),
    /// The loaded segment holding `.eh_frame_hdr` (and, as linkers lay them
    /// out, `.eh_frame`).
    segment: (usize, usize),
}

const OBJECTS: usize = 128;

struct Objects {
    list: [Object; OBJECTS],
    len: usize,
}

static LOADED: SpinLock<Objects> = SpinLock::new(Objects {
    list: [Object {
        text: (0, 0),
        hdr: (0, 0),
        segment: (0, 0),
    }; OBJECTS],
    len: 0,
});

/// Holds the objects' lock across `fork` so the child never inherits it held.
pub(crate) fn lock_for_fork() {
    LOADED.lock_for_fork();
}

/// # Safety
/// Pairs with [`lock_for_fork`] in the fork handlers.
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: forwarded contract; `lock_for_fork` took this lock.
    unsafe { LOADED.force_unlock() };
}

/// gimli's unwind context without the heap.
struct OnStack;

impl<T: gimli::ReaderOffset> UnwindContextStorage<T> for OnStack {
    type Rules = [(Register, RegisterRule<T>); 24];
    type Stack = [UnwindTableRow<T, Self>; 2];
}

const RBP: Register = Register(6);
const RSP: Register = Register(7);
const RA: Register = Register(16);

/// The rule at `at` (an address inside a function), or [`NONE`].
#[cold]
fn find_rule(at: usize) -> u64 {
    loaded_object(at)
        .and_then(|o| rule_in(&o, at))
        .unwrap_or(NONE)
}

/// The loaded object whose code holds `at` (listing them again on a miss).
fn loaded_object(at: usize) -> Option<Object> {
    object_of(at).or_else(|| {
        reload_objects();
        object_of(at)
    })
}

fn object_of(at: usize) -> Option<Object> {
    let loaded = LOADED.lock();
    loaded
        .list
        .get(..loaded.len)?
        .iter()
        .find(|o| o.text.0 <= at && at < o.text.1)
        .copied()
}

fn rule_in(o: &Object, at: usize) -> Option<u64> {
    with_row(o, at, |row, _| {
        let (cfa_rbp, cfa_offset) = match *row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } if register == RSP => (false, offset),
            CfaRule::RegisterAndOffset { register, offset } if register == RBP => (true, offset),
            _ => return None,
        };
        if !matches!(row.register(RA), None | Some(RegisterRule::Offset(-8))) {
            return None;
        }
        let rbp_saved = match row.register(RBP) {
            None | Some(RegisterRule::SameValue) => None,
            Some(RegisterRule::Offset(o)) => Some(o),
            Some(_) => return None,
        };
        Some(pack(cfa_rbp, cfa_offset, rbp_saved))
    })
}

/// The CFI row in effect at `at` in `o`, handed to `f` with the address
/// where the function holding `at` begins.
fn with_row<R>(
    o: &Object,
    at: usize,
    f: impl FnOnce(&UnwindTableRow<usize, OnStack>, usize) -> Option<R>,
) -> Option<R> {
    // SAFETY: the header lies in a loaded, readable segment of the object
    // (PT_GNU_EH_FRAME), `hdr.1` bytes long.
    let hdr_bytes = unsafe { std::slice::from_raw_parts(o.hdr.0 as *const u8, o.hdr.1) };
    let bases = BaseAddresses::default().set_eh_frame_hdr(o.hdr.0 as u64);
    let hdr = EhFrameHdr::new(hdr_bytes, LittleEndian)
        .parse(&bases, 8)
        .ok()?;
    let eh_frame_at = match hdr.eh_frame_ptr() {
        Pointer::Direct(a) => a as usize,
        Pointer::Indirect(_) => return None,
    };
    if eh_frame_at < o.segment.0 || eh_frame_at >= o.segment.1 {
        return None;
    }
    // SAFETY: `.eh_frame` lies in that loaded segment, mapped and readable
    // to its end.
    let frame_bytes =
        unsafe { std::slice::from_raw_parts(eh_frame_at as *const u8, o.segment.1 - eh_frame_at) };
    let eh_frame = EhFrame::new(frame_bytes, LittleEndian);
    let bases = bases
        .set_eh_frame(eh_frame_at as u64)
        .set_text(o.text.0 as u64);
    // gimli's `fde_for_address` would do these three steps, but it subtracts
    // the section's address from the entry's unchecked: a table entry below
    // `.eh_frame` (a corrupt header, found by fuzz/cfi_rules) would panic
    // on overflow in a build with overflow checks, inside an allocation.
    let fde_at = hdr.table()?.lookup(at as u64, &bases).ok()?.direct().ok()?;
    let offset = fde_at.checked_sub(eh_frame_at as u64)?;
    let fde = eh_frame
        .fde_from_offset(
            &bases,
            EhFrameOffset(usize::try_from(offset).ok()?),
            EhFrame::<EndianSlice<'_, LittleEndian>>::cie_from_offset,
        )
        .ok()
        .filter(|fde| fde.contains(at as u64))?;
    let mut ctx: UnwindContext<usize, OnStack> = UnwindContext::new_in();
    let row = fde
        .unwind_info_for_address(&eh_frame, &bases, &mut ctx, at as u64)
        .ok()?;
    f(row, fde.initial_address() as usize)
}

/// For the fuzz target `cfi` (feature `fuzzing`): the rule lookup the walk
/// makes, in an object laid out in `image` as the loader would map it
/// (`.eh_frame_hdr` at `hdr`, code at `text`, both offsets and lengths in
/// `image`), at each offset of `at`; how many rules it found. Whatever the
/// bytes say, the lookup reads only `image`.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_rules(
    image: &[u8],
    hdr: (usize, usize),
    text: (usize, usize),
    at: impl Iterator<Item = usize>,
) -> usize {
    let base = image.as_ptr() as usize;
    let inside =
        |(off, len): (usize, usize)| off.checked_add(len).is_some_and(|e| e <= image.len());
    if !inside(hdr) || !inside(text) {
        return 0;
    }
    let o = Object {
        text: (base + text.0, base + text.0 + text.1),
        hdr: (base + hdr.0, hdr.1),
        segment: (base, base + image.len()),
    };
    at.filter(|&a| a < image.len())
        .filter_map(|a| rule_in(&o, base + a))
        .count()
}

// ---------------------------------------------------------------- a full step

/// The callee-saved registers a full step restores, by DWARF number
/// (x86_64: rbx, rbp, r12-r15), in the order of [`Frame::saved`].
pub(crate) const SAVED: [u16; 6] = [3, 6, 12, 13, 14, 15];

/// A frame's registers, as a full step sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The code: the current instruction (the first frame), or a return address.
    pub(crate) pc: usize,
    pub(crate) sp: usize,
    /// The callee-saved registers, as [`SAVED`] numbers them.
    pub(crate) saved: [usize; 6],
}

/// One step up by CFI, off the allocation path: the caller's frame (its
/// stack pointer, the return address, and its callee-saved registers,
/// read back from where this frame saved them), and where the function
/// of `f.pc` begins. `first`: `f.pc` is the current instruction, not a
/// return address. Reads only words of `stack` (`[lo, hi)`). Walking the
/// same stack as [`walk`], it keeps every register a caller may rely on,
/// not only `rbp`.
pub(crate) fn step(f: &Frame, first: bool, (lo, hi): (usize, usize)) -> Option<(Frame, usize)> {
    let at = if first { f.pc } else { f.pc.wrapping_sub(1) };
    let object = loaded_object(at)?;
    with_row(&object, at, |row, start| {
        let value_of = |r: Register| {
            if r == RSP {
                Some(f.sp)
            } else {
                let i = SAVED.iter().position(|&n| n == r.0)?;
                f.saved.get(i).copied()
            }
        };
        let cfa = match *row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                value_of(register)?.wrapping_add_signed(offset as isize)
            }
            CfaRule::Expression(_) => return None,
        };
        let read = |at: usize| {
            let inside =
                at.is_multiple_of(8) && at >= lo && at.checked_add(8).is_some_and(|e| e <= hi);
            // SAFETY: an aligned word inside the thread's stack.
            inside.then(|| unsafe { crate::alloc::unwind::raw_word(at) })
        };
        let restored = |r: Register, now: usize| match row.register(r) {
            None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => Some(now),
            Some(RegisterRule::Offset(o)) => read(cfa.wrapping_add_signed(o as isize)),
            Some(RegisterRule::ValOffset(o)) => Some(cfa.wrapping_add_signed(o as isize)),
            Some(RegisterRule::Register(from)) => value_of(from),
            Some(_) => None,
        };
        let pc = match row.register(RA) {
            None => read(cfa.wrapping_sub(8))?,
            Some(RegisterRule::Offset(o)) => read(cfa.wrapping_add_signed(o as isize))?,
            Some(_) => return None,
        };
        if cfa <= f.sp {
            return None;
        }
        let mut saved = f.saved;
        for (slot, &n) in saved.iter_mut().zip(&SAVED) {
            *slot = restored(Register(n), *slot)?;
        }
        Some((Frame { pc, sp: cfa, saved }, start))
    })
}

/// Lists the loaded objects again (the first miss, or code of an object
/// loaded since).
fn reload_objects() {
    let mut fresh = Objects {
        list: [Object::default(); OBJECTS],
        len: 0,
    };
    // SAFETY: the callback only reads the headers the loader passes and
    // writes into `fresh`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), (&mut fresh as *mut Objects).cast());
    }
    let mut loaded = LOADED.lock();
    loaded.list = fresh.list;
    loaded.len = fresh.len;
}

unsafe extern "C" fn each_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid info struct; `data` is the
    // `Objects` given to dl_iterate_phdr.
    let (info, objects) = unsafe { (&*info, &mut *data.cast::<Objects>()) };
    let base = info.dlpi_addr as usize;
    let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
        &[]
    } else {
        // SAFETY: `dlpi_phnum` program headers at `dlpi_phdr`.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
    };
    let mut o = Object::default();
    let mut text = (usize::MAX, 0);
    for p in phdrs {
        let start = base.wrapping_add(p.p_vaddr as usize);
        let end = start.wrapping_add(p.p_memsz as usize);
        if p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0 {
            text = (text.0.min(start), text.1.max(end));
        }
        if p.p_type == libc::PT_GNU_EH_FRAME {
            o.hdr = (start, p.p_memsz as usize);
        }
    }
    if o.hdr.0 == 0 || text.1 == 0 {
        return 0;
    }
    // `.eh_frame` follows its header in the same read-only segment (a
    // layout where it does not is left to the backtrace crate's unwinder).
    o.segment = phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD)
        .map(|p| {
            let start = base.wrapping_add(p.p_vaddr as usize);
            (start, start.wrapping_add(p.p_memsz as usize))
        })
        .find(|&(s, e)| s <= o.hdr.0 && o.hdr.0 < e)
        .unwrap_or((0, 0));
    o.text = text;
    if let Some(slot) = objects.list.get_mut(objects.len) {
        *slot = o;
        objects.len += 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack_bounds() -> (usize, usize) {
        crate::alloc::unwind::current_stack_bounds()
    }

    /// This walk and the backtrace crate's unwinder agree, return address
    /// for return address, from the first frame both see to the end.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_walk_agrees_with_the_system_unwinder() {
        for round in 0..2 {
            // The second round runs on cached rules.
            let mut ours: Frames = [0; MAX_FRAMES];
            let n = std::hint::black_box(walk(&mut ours, stack_bounds()));
            let mut theirs = Vec::new();
            backtrace::trace(|f| {
                theirs.push(f.ip() as usize);
                theirs.len() < 64
            });
            let ours = &ours[..n];
            // Skip the frames inside each unwinder: from the first address
            // both have, the lists are the same.
            let start = ours
                .iter()
                .position(|ip| theirs.contains(ip))
                .expect("a common frame");
            let from = theirs.iter().position(|ip| *ip == ours[start]).unwrap();
            let common = (ours.len() - start).min(theirs.len() - from);
            assert!(common >= 5, "round {round}: {ours:x?} vs {theirs:x?}");
            assert_eq!(
                &ours[start..start + common],
                &theirs[from..from + common],
                "round {round}"
            );
        }
    }

    /// Full steps find the same return addresses as the walk, and keep
    /// the stack pointer rising.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn full_steps_agree_with_the_walk() {
        let mut walked: Frames = [0; MAX_FRAMES];
        let n = std::hint::black_box(walk(&mut walked, stack_bounds()));
        let (ip, sp, bp) = registers().unwrap();
        let saved: [usize; 6];
        // SAFETY: reads five registers; touches no memory.
        unsafe {
            let (bx, r12, r13, r14, r15): (usize, usize, usize, usize, usize);
            std::arch::asm!(
                "mov {0}, rbx", "mov {1}, r12", "mov {2}, r13", "mov {3}, r14", "mov {4}, r15",
                out(reg) bx, out(reg) r12, out(reg) r13, out(reg) r14, out(reg) r15,
                options(nomem, nostack, preserves_flags),
            );
            saved = [bx, bp, r12, r13, r14, r15];
        }
        let mut frame = Frame { pc: ip, sp, saved };
        let mut stepped = Vec::new();
        while let Some((up, start)) = step(&frame, stepped.is_empty(), stack_bounds()) {
            assert!(up.sp > frame.sp && start != 0 && start <= frame.pc);
            stepped.push(up.pc);
            frame = up;
        }
        // The walk starts inside `walk` (its first return address is into
        // this function), the steps here: from this function's caller on,
        // the same return addresses, to the walk's end.
        let walked = &walked[1..n];
        assert!(walked.len() >= 5, "{walked:x?}");
        assert_eq!(&stepped[..walked.len()], walked);
    }

    #[test]
    fn rules_pack_and_unpack() {
        let r = pack(true, 16, Some(-16));
        assert_eq!(
            r & (VALID | CFA_RBP | RBP_SAVED),
            VALID | CFA_RBP | RBP_SAVED
        );
        assert_eq!((r >> 16) as u32 as i32, 16);
        assert_eq!(r as u16 as i16, -16);
        let r = pack(false, -8, None);
        assert_eq!((r & CFA_RBP, r & RBP_SAVED), (0, 0));
        assert_eq!((r >> 16) as u32 as i32, -8);
        assert_eq!(pack(false, 1 << 40, None), NONE);
    }
}
