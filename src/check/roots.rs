//! The memory a leak check scans: the roots and the readable mappings.
//!
//! Owns what is known of the loaded objects (their writable segments and
//! static TLS, read before the stop because it takes the dynamic loader's
//! lock), the process's readable mappings (from `/proc/self/maps`, read into
//! [`Buf`] memory while the world is stopped), and the caller's callee-saved
//! registers. Between the stop and the resume: system calls and plain memory
//! only.

use crate::check::stop::{anchor, Buf, Range};

/// What is known before the stop about the loaded objects.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    /// Writable segments (data, bss, relro) of every loaded object but
    /// libc's and the dynamic loader's (whose malloc bins would look like
    /// pointers into the blocks next to free chunks).
    pub(crate) segments: Vec<Range>,
    /// Static TLS, relative to a thread's anchor ([`anchor`]): (low, high) offsets.
    pub(crate) tls: Option<(isize, isize)>,
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
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_W != 0 && !allocator {
                acc.objects.segments.push(Range { start, end });
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
        let mut fields = line.split(|&c| c == b' ');
        let (Some(span), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if perms.first() != Some(&b'r') {
            continue;
        }
        let mut ends = span.split(|&c| c == b'-');
        if let (Some(a), Some(b)) = (ends.next().and_then(hex), ends.next().and_then(hex)) {
            maps.push(Range { start: a, end: b });
        }
    }
    Some(maps)
}

fn hex(s: &[u8]) -> Option<usize> {
    let mut v = 0usize;
    if s.is_empty() {
        return None;
    }
    for &c in s {
        let d = (c as char).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(d as usize)?;
    }
    Some(v)
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

/// The bytes [`callee_saved`] fills: a check's own thread's registers.
pub(crate) const SAVED_REGISTERS: usize = 12 * 8;

/// The frame pointer among [`callee_saved`]'s registers.
pub(crate) fn frame_pointer_in(regs: &[usize; 12]) -> usize {
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
pub(crate) fn callee_saved() -> [usize; 12] {
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
        assert_eq!(hex(b"7ffd88dbf000"), Some(0x7ffd_88db_f000));
        assert_eq!(hex(b"xyz"), None);
    }
}
