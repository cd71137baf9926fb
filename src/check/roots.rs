//! The memory a leak check scans: the roots and the readable mappings.
//!
//! Owns what is known of the loaded objects (their writable segments and
//! static TLS, read before the stop because it takes the dynamic loader's
//! lock), the process's readable mappings (from `/proc/self/maps`, read into
//! [`Buf`] memory while the world is stopped), and the caller's callee-saved
//! registers. Between the stop and the resume: system calls and plain memory
//! only.

use crate::alloc::unwind;
use crate::check::stop::{anchor, Buf, Range};

/// What is known before the stop about the loaded objects.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    /// Writable segments (data, bss, relro) of every loaded object but
    /// libc's and the dynamic loader's.
    pub(crate) segments: Vec<Range>,
    /// libc's and the dynamic loader's writable segments: roots whose words
    /// count only as pointers to a block's start (their malloc state points
    /// at free chunks' headers, next to live blocks' last bytes). They hold
    /// libc's own blocks (stdio buffers, locale data, the loader's), still
    /// reachable, as valgrind says.
    pub(crate) starts_only: Vec<Range>,
    /// Static TLS, relative to a thread's anchor ([`anchor`]): (low, high) offsets.
    pub(crate) tls: Option<(isize, isize)>,
    /// Where a stopped thread's record keeps its wide vector registers.
    pub(crate) vectors: VectorParts,
}

/// Reads the loaded objects (takes the dynamic loader's lock: before the stop).
pub(crate) fn objects() -> Objects {
    struct Acc {
        objects: Objects,
        anchor: usize,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `Acc` passed below; `info` is valid for the call.
        let (acc, info) = unsafe { (&mut *data.cast::<Acc>(), &*info) };
        let name = if info.dlpi_name.is_null() {
            ""
        } else {
            // SAFETY: a NUL-terminated name owned by the loader.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }
                .to_str()
                .unwrap_or("")
        };
        let base = name.rsplit('/').next().unwrap_or("");
        let allocator = base.starts_with("libc.so") || base.starts_with("ld-linux");
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: the loader's program headers, `dlpi_phnum` of them.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        for ph in phdrs {
            let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
            let end = start.wrapping_add(ph.p_memsz as usize);
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_W != 0 {
                let to = if allocator {
                    &mut acc.objects.starts_only
                } else {
                    &mut acc.objects.segments
                };
                to.push(Range { start, end });
            }
            if ph.p_type == libc::PT_TLS && !info.dlpi_tls_data.is_null() && acc.anchor != 0 {
                let lo = (info.dlpi_tls_data as isize).wrapping_sub(acc.anchor as isize);
                let hi = lo.wrapping_add(ph.p_memsz as isize);
                // Static TLS lies next to the thread pointer; a block far
                // from it is dynamic TLS (not at the same offset in every thread).
                if lo.unsigned_abs() < 1 << 24 {
                    let (l, h) = acc.objects.tls.unwrap_or((lo, hi));
                    acc.objects.tls = Some((l.min(lo), h.max(hi)));
                }
            }
        }
        0
    }
    let mut acc = Acc {
        objects: Objects::default(),
        anchor: anchor(),
    };
    // SAFETY: the callback only reads what the loader passes and writes `acc`.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut acc as *mut Acc).cast()) };
    acc.objects.vectors = VectorParts::of_this_cpu();
    acc.objects
}

/// The readable mappings of the process, in address order. Allocation-free.
pub(crate) fn readable_maps() -> Option<Buf<Range>> {
    let mut text: Buf<u8> = Buf::new(64 << 20)?;
    // SAFETY: open/read/close into our own mapping.
    unsafe {
        let fd = libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return None;
        }
        text.read_from(fd);
        libc::close(fd);
    }
    let lines = text.as_slice().iter().filter(|&&c| c == b'\n').count();
    let mut maps: Buf<Range> = Buf::new(lines + 1)?;
    for line in text.as_slice().split(|&c| c == b'\n') {
        if let Some((start, end, true)) = unwind::maps_line(line) {
            maps.push(Range { start, end });
        }
    }
    Some(maps)
}

/// The end of the one mapping holding `addr` (a stack ends there: the
/// mapping above it may be anything).
pub(crate) fn mapping_end(maps: &[Range], addr: usize) -> Option<usize> {
    let m = maps.get(maps.partition_point(|m| m.end <= addr))?;
    (m.start <= addr).then_some(m.end)
}

/// The end of the readable mapping (or run of adjacent ones) holding `addr`.
pub(crate) fn readable_end(maps: &[Range], addr: usize) -> Option<usize> {
    let i = maps.partition_point(|m| m.end <= addr);
    let m = maps.get(i)?;
    if m.start > addr {
        return None;
    }
    let mut end = m.end;
    for next in maps.get(i + 1..).unwrap_or(&[]) {
        if next.start != end {
            break;
        }
        end = next.end;
    }
    Some(end)
}

/// Calls `f` for each readable part of `r`.
pub(crate) fn each_readable(maps: &[Range], r: Range, mut f: impl FnMut(Range)) {
    let mut at = r.start;
    let mut i = maps.partition_point(|m| m.end <= at);
    while at < r.end {
        let Some(m) = maps.get(i) else { break };
        if m.start >= r.end {
            break;
        }
        let start = at.max(m.start);
        let end = r.end.min(m.end);
        if start < end {
            f(Range { start, end });
        }
        at = end.max(m.end.min(r.end));
        i += 1;
    }
}

/// The thread that runs a check, as the check sees it: where the
/// program's frames begin on its stack, and its registers there. Those
/// frames and everything above them are roots; nothing below is. The
/// frames below are leakscope's own (the check, the report, the exit hook)
/// and libc's exit machinery: laid over the program's dead stack, they
/// leave unwritten slots that still hold whatever ran there before, stale
/// copies of pointers to blocks the program has lost. (valgrind runs its
/// check on a stack of its own, and has no such frames to leave out.)
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Caller {
    /// The lowest address of the program's frames; 0: the thread is one
    /// of leakscope's own, and nothing on its stack is the program's.
    pub(crate) sp: usize,
    /// The callee-saved registers there (the others do not live across a
    /// call), as [`callee_saved`] lays them out.
    pub(crate) regs: [usize; 12],
    /// The code there, to name the frame by: the current instruction, or
    /// (`returns`) the return address of the call the frame made.
    pub(crate) pc: usize,
    pub(crate) returns: bool,
}

impl Caller {
    /// One of leakscope's own threads: none of its stack is a root.
    pub(crate) const OWN_THREAD: Caller = Caller {
        sp: 0,
        regs: [0; 12],
        pc: 0,
        returns: false,
    };

    /// The frame of the function this is inlined into.
    #[inline(always)]
    pub(crate) fn here() -> Caller {
        let regs = callee_saved();
        let (sp, pc) = stack_pointer_and_pc();
        Caller {
            sp,
            regs,
            pc,
            returns: false,
        }
    }

    /// The frame that called `exit` (libc's start code, after `main`
    /// returned; the program's, after `std::process::exit`), from an exit
    /// handler, and its callee-saved registers as they were at the call.
    /// Found by unwinding by CFI up to `exit`'s frame, through the
    /// handler's and libc's, which saved those registers on the way.
    /// Where that walk fails (no CFI, another architecture): `handler`,
    /// the exit handler's own frame, and libc's exit frames stay roots.
    pub(crate) fn of_exit(handler: Caller) -> Caller {
        #[cfg(target_arch = "x86_64")]
        if let Some(c) = exit_caller() {
            return c;
        }
        handler
    }

    /// The frame pointer there (the start of the frame chain that names
    /// the frames a root word is in).
    pub(crate) fn frame_pointer(&self) -> usize {
        frame_pointer_in(&self.regs)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn exit_caller() -> Option<Caller> {
    use crate::alloc::cfi;
    // SAFETY: dlsym with NUL-terminated names; a null result is handled.
    let exits = unsafe {
        [
            libc::dlsym(libc::RTLD_DEFAULT, c"exit".as_ptr()) as usize,
            libc::dlsym(libc::RTLD_NEXT, c"exit".as_ptr()) as usize,
        ]
    };
    let bounds = crate::alloc::unwind::current_stack_bounds();
    let here = Caller::here();
    let r = here.regs;
    // `callee_saved`'s order is `cfi::SAVED`'s: rbx, rbp, r12-r15.
    let mut frame = cfi::Frame {
        pc: here.pc,
        sp: here.sp,
        saved: [r[0], r[1], r[2], r[3], r[4], r[5]],
    };
    for depth in 0..32 {
        let (up, function) = cfi::step(&frame, depth == 0, bounds)?;
        if function != 0 && exits.contains(&function) {
            let mut regs = [0; 12];
            regs[..6].copy_from_slice(&up.saved);
            return Some(Caller {
                sp: up.sp,
                regs,
                pc: up.pc,
                returns: true,
            });
        }
        frame = up;
    }
    None
}

/// The stack pointer and the current instruction's address here.
#[inline(always)]
fn stack_pointer_and_pc() -> (usize, usize) {
    let (sp, pc): (usize, usize);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads rsp and rip (by lea); touches no memory.
    unsafe {
        std::arch::asm!(
            "mov {sp}, rsp",
            "lea {pc}, [rip]",
            sp = out(reg) sp,
            pc = out(reg) pc,
            options(nomem, nostack, preserves_flags)
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads sp and the pc (by adr); touches no memory.
    unsafe {
        std::arch::asm!(
            "mov {sp}, sp",
            "adr {pc}, .",
            sp = out(reg) sp,
            pc = out(reg) pc,
            options(nomem, nostack, preserves_flags)
        );
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let marker = 0usize;
        sp = std::hint::black_box(&marker) as *const usize as usize;
        pc = 0;
    }
    (sp, pc)
}

/// What a stopped thread's roots are, from the kernel's record of its
/// interrupted registers (`ucontext_t`, on its stack): its general
/// registers, and its stack from the interrupted stack pointer up, with
/// the red zone below it where a leaf function keeps locals (x86_64's 128
/// bytes, as valgrind scans them). Below lie the stop handler's frame and
/// the kernel's signal frame, over dead stack: not the program's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Interrupted {
    /// The general registers' words in the record.
    pub(crate) regs: Range,
    /// The vector registers' words in it (`memcpy` carries pointers in
    /// them): the SSE registers, then the wider parts the record holds.
    pub(crate) vectors: [Range; 4],
    /// Where its stack roots begin.
    pub(crate) sp: usize,
    /// Its frame pointer and pc, to name its frames by.
    pub(crate) fp: usize,
    pub(crate) pc: usize,
}

/// The roots of a thread stopped with the record `ctx` (see
/// [`Interrupted`]); `None` where unknown.
pub(crate) fn interrupted(ctx: usize, parts: &VectorParts) -> Option<Interrupted> {
    if ctx == 0 {
        return None;
    }
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        /// The System V ABI's red zone.
        const RED_ZONE: usize = 128;
        // SAFETY: `ctx` is the kernel's ucontext_t on the stopped thread's
        // stack, which stays there while it is stopped.
        let g = unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs };
        let (sp, pc) = (
            g[libc::REG_RSP as usize] as usize,
            g[libc::REG_RIP as usize] as usize,
        );
        // SAFETY: as above.
        let fpregs = unsafe { (*(ctx as *const libc::ucontext_t)).uc_mcontext.fpregs } as usize;
        Some(Interrupted {
            regs: Range {
                start: g.as_ptr() as usize,
                end: g.as_ptr() as usize + std::mem::size_of_val(g),
            },
            vectors: parts.in_record(fpregs),
            sp: sp.saturating_sub(RED_ZONE),
            fp: g[libc::REG_RBP as usize] as usize,
            pc,
        })
    }
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    {
        // SAFETY: as above.
        let m = unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext };
        let regs = m.regs.as_ptr() as usize;
        Some(Interrupted {
            // x0-x30, then sp and pc.
            regs: Range {
                start: regs,
                end: regs + std::mem::size_of_val(&m.regs) + 16,
            },
            vectors: parts.in_record(0),
            sp: m.sp as usize,
            fp: m.regs[29] as usize,
            pc: m.pc as usize,
        })
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        None
    }
}

/// The XSAVE state components that hold vector registers' bits past
/// SSE's (AVX's upper halves, AVX-512's), as (component, offset, size) in
/// the standard layout the kernel's signal frames use. CPUID says where;
/// it is read before the stop (under a hypervisor each CPUID is a trap).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VectorParts([(u32, usize, usize); 3]);

impl VectorParts {
    fn of_this_cpu() -> VectorParts {
        let mut parts = [(0, 0, 0); 3];
        #[cfg(target_arch = "x86_64")]
        for (part, component) in parts.iter_mut().zip([2u32, 6, 7]) {
            // SAFETY: CPUID has no preconditions on x86_64 (a safe
            // function on newer Rust). Leaf 0xD means something only where
            // the CPU has XSAVE; its figures are used only for a record
            // XSAVE wrote (it carries XSAVE's magic), within its size.
            #[allow(unused_unsafe)]
            let r = unsafe { std::arch::x86_64::__cpuid_count(0xD, component) };
            *part = (component, r.ebx as usize, r.eax as usize);
        }
        VectorParts(parts)
    }

    /// The vector registers' words in a signal frame's floating-point
    /// record at `fpregs` (x86_64's FXSAVE area, followed by XSAVE's):
    /// the SSE registers, and each wider part the record holds. A
    /// component the record marks as in its initial state (zeros) was not
    /// written, and what lies there is stale: left out.
    fn in_record(&self, fpregs: usize) -> [Range; 4] {
        let mut out = [Range::default(); 4];
        if fpregs == 0 || !cfg!(target_arch = "x86_64") {
            return out;
        }
        // SAFETY: the record is the kernel's, on the stopped thread's stack
        // (512 bytes of FXSAVE area, then, when its software-reserved
        // bytes carry XSAVE's magic, the XSAVE header and components, as
        // many bytes as they say); these are aligned reads inside it.
        let (in_use, size) = unsafe {
            let read32 = |at: usize| ((fpregs + at) as *const u32).read_volatile();
            const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
            if read32(464) == FP_XSTATE_MAGIC1 {
                let in_use = ((fpregs + 512) as *const u64).read_volatile();
                (in_use, read32(480) as usize)
            } else {
                // FXSAVE alone: the SSE registers, always written.
                (1 << 1, 512)
            }
        };
        if in_use & 1 << 1 != 0 {
            // xmm0-15, at 160 in the FXSAVE area.
            out[0] = Range {
                start: fpregs + 160,
                end: fpregs + 160 + 256,
            };
        }
        for (slot, &(component, offset, len)) in out[1..].iter_mut().zip(&self.0) {
            if component != 0 && in_use & 1 << component != 0 && offset + len <= size {
                *slot = Range {
                    start: fpregs + offset,
                    end: fpregs + offset + len,
                };
            }
        }
        out
    }
}

/// The frame pointer among [`callee_saved`]'s registers.
fn frame_pointer_in(regs: &[usize; 12]) -> usize {
    if cfg!(target_arch = "aarch64") {
        regs[10]
    } else if cfg!(target_arch = "x86_64") {
        regs[1]
    } else {
        0
    }
}

/// The callee-saved registers of the calling thread, for its own roots.
#[inline(always)]
fn callee_saved() -> [usize; 12] {
    let mut regs = [0usize; 12];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: stores six registers into the array, which has room for twelve.
    unsafe {
        std::arch::asm!(
            "mov [{0}], rbx",
            "mov [{0} + 8], rbp",
            "mov [{0} + 16], r12",
            "mov [{0} + 24], r13",
            "mov [{0} + 32], r14",
            "mov [{0} + 40], r15",
            in(reg) regs.as_mut_ptr(),
            options(nostack, preserves_flags)
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: stores eleven registers into the array, which has room for twelve.
    unsafe {
        std::arch::asm!(
            "stp x19, x20, [{0}]",
            "stp x21, x22, [{0}, #16]",
            "stp x23, x24, [{0}, #32]",
            "stp x25, x26, [{0}, #48]",
            "stp x27, x28, [{0}, #64]",
            "str x29, [{0}, #80]",
            in(reg) regs.as_mut_ptr(),
            options(nostack, preserves_flags)
        );
    }
    regs
}

pub(crate) fn my_anchor() -> usize {
    anchor()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: [Range; 3] = [
        Range {
            start: 0x1000,
            end: 0x3000,
        },
        Range {
            start: 0x3000,
            end: 0x4000,
        },
        Range {
            start: 0x8000,
            end: 0x9000,
        },
    ];

    #[test]
    fn ranges_are_clipped_to_readable_memory() {
        let mut parts = Vec::new();
        each_readable(
            &MAPS,
            Range {
                start: 0x2000,
                end: 0x8800,
            },
            |r| parts.push(r),
        );
        assert_eq!(
            parts,
            vec![
                Range {
                    start: 0x2000,
                    end: 0x3000
                },
                Range {
                    start: 0x3000,
                    end: 0x4000
                },
                Range {
                    start: 0x8000,
                    end: 0x8800
                },
            ]
        );
        parts.clear();
        each_readable(
            &MAPS,
            Range {
                start: 0x4000,
                end: 0x8000,
            },
            |r| parts.push(r),
        );
        assert_eq!(parts, vec![]);
        assert_eq!(readable_end(&MAPS, 0x1800), Some(0x4000));
        assert_eq!(mapping_end(&MAPS, 0x1800), Some(0x3000));
        assert_eq!(readable_end(&MAPS, 0x5000), None);
        assert_eq!(mapping_end(&MAPS, 0x9000), None);
    }

    #[test]
    fn this_process_maps_are_read() {
        let maps = readable_maps().unwrap();
        let marker = 0u64;
        let here = &marker as *const u64 as usize;
        assert!(mapping_end(maps.as_slice(), here).is_some_and(|end| end > here));
        assert_eq!(
            unwind::maps_line(b"7ffd88dbf000-7ffd88de0000 rw-p 00000000 00:00 0  [stack]"),
            Some((0x7ffd_88db_f000, 0x7ffd_88de_0000, true))
        );
        assert_eq!(unwind::maps_line(b"xyz-1 r--p"), None);
    }
}
