//! Call-site capture: the return addresses of the stack that is allocating.
//!
//! Owns the frame-pointer walk (the default), the DWARF unwinder, and the
//! choice between them: at the start, a program built without frame pointers
//! (its code, this crate's included, has no frame-pointer prologues, so
//! the chain breaks in the first frame) gets the DWARF unwinder, unless
//! `LEAKSCOPE_UNWIND` says otherwise. Also owns each thread's [`Seen`]
//! stacks, which know a stack walked before by re-reading its words without
//! walking it. Must never allocate, lock or fault:
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

/// The bounds of the mapping that holds this thread's stack pointer, from
/// `/proc/self/maps`, read with system calls alone into a buffer on the
/// stack: no lock, no allocation. For a thread whose first tracked block
/// comes from the process's `malloc` family, which libc may call with its
/// own locks held (`pthread_getattr_np` holds the thread's while it
/// reallocs: calling it again there would wait for ever). `(0, 0)` when
/// the file cannot be read.
pub(crate) fn stack_mapping() -> (usize, usize) {
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    // SAFETY: open/read/close of a file into a buffer of ours.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return (0, 0);
    }
    if let Some(found) = query_mapping(fd, sp) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        return found;
    }
    let mut buf = [0u8; 4096];
    let mut have = 0;
    let mut found = (0, 0);
    'read: loop {
        let room = buf.get_mut(have..).unwrap_or(&mut []);
        // SAFETY: reads into the unused part of `buf`.
        let n = unsafe { libc::read(fd, room.as_mut_ptr().cast(), room.len()) };
        if n <= 0 {
            break;
        }
        have += n as usize;
        let mut from = 0;
        while let Some(nl) = buf
            .get(from..have)
            .and_then(|b| b.iter().position(|&c| c == b'\n'))
        {
            if let Some((start, end, _)) = maps_line(buf.get(from..from + nl).unwrap_or(&[])) {
                if start <= sp && sp < end {
                    found = (start, end);
                    break 'read;
                }
            }
            from += nl + 1;
        }
        buf.copy_within(from..have, 0);
        have -= from;
        if have == buf.len() {
            // A line longer than the buffer: not one of ours.
            have = 0;
        }
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    found
}

/// The mapping that holds `addr`, asked of the kernel by the
/// `PROCMAP_QUERY` ioctl on `/proc/self/maps` (Linux 6.11 and later): one
/// lookup, where reading the file costs a line per mapping, and a process
/// with many threads has thousands (each thread's stack and guard page,
/// and a new thread reads them all). `None` where the kernel has no such
/// ioctl.
fn query_mapping(maps: libc::c_int, addr: usize) -> Option<(usize, usize)> {
    /// `struct procmap_query` of `<linux/fs.h>`.
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        size: u64,
        query_flags: u64,
        query_addr: u64,
        vma_start: u64,
        vma_end: u64,
        vma_flags: u64,
        vma_page_size: u64,
        vma_offset: u64,
        inode: u64,
        dev_major: u32,
        dev_minor: u32,
        vma_name_size: u32,
        build_id_size: u32,
        vma_name_addr: u64,
        build_id_addr: u64,
    }
    /// `_IOWR('f', 17, struct procmap_query)`.
    const PROCMAP_QUERY: u64 =
        3 << 30 | (std::mem::size_of::<Query>() as u64) << 16 | 0x66 << 8 | 17;
    let mut q = Query {
        size: std::mem::size_of::<Query>() as u64,
        query_addr: addr as u64,
        ..Query::default()
    };
    // SAFETY: the ioctl reads and writes `q` alone (no name or build-id
    // buffer is asked for); an older kernel fails it with ENOTTY.
    let rc = unsafe { libc::ioctl(maps, PROCMAP_QUERY as _, &mut q as *mut Query) };
    (rc == 0 && q.vma_start as usize <= addr && addr < q.vma_end as usize)
        .then_some((q.vma_start as usize, q.vma_end as usize))
}

/// A line of `/proc/self/maps`: the mapping's start and end, and whether
/// it is readable.
pub(crate) fn maps_line(line: &[u8]) -> Option<(usize, usize, bool)> {
    let mut fields = line.split(|&c| c == b' ');
    let (span, perms) = (fields.next()?, fields.next()?);
    let mut ends = span.split(|&c| c == b'-');
    let hex = |s: &[u8]| usize::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
    let (start, end) = (hex(ends.next()?)?, hex(ends.next()?)?);
    Some((start, end, perms.first() == Some(&b'r')))
}

/// What [`capture`] found.
pub(crate) enum Capture<'a, V> {
    /// The stack is one this thread's [`Seen`] holds, word for word: what
    /// the caller kept for it.
    Seen(V),
    /// The stack was walked by frame pointers.
    Walked(Walked<'a, V>),
    /// The DWARF unwinder filled the first `n` entries of `out` (see
    /// [`capture`]); `hash` is their [`hash_frames`].
    Dwarf { n: usize, hash: u64 },
}

/// A stack just walked: its frames, and the [`Seen`] way that remembers it
/// once the caller says what it is ([`Walked::keep`]).
pub(crate) struct Walked<'a, V> {
    /// Frames found.
    pub(crate) n: usize,
    /// Their [`hash_frames`].
    pub(crate) hash: u64,
    stack: &'a mut SeenStack<V>,
    /// Where the walk started.
    start: usize,
    /// Another stack kept from the same start, and the start's forks, to
    /// learn where the two part ([`Fork`]).
    rival: Option<(&'a SeenStack<V>, &'a mut Fork)>,
}

impl<V: Copy> Walked<'_, V> {
    /// The return addresses found, innermost first, copied to `out`.
    pub(crate) fn frames<'o>(&self, out: &'o mut Frames) -> &'o [usize] {
        for (o, r) in out.iter_mut().zip(&self.stack.records).take(self.n) {
            *o = r.0[1];
        }
        out.get(..self.n).unwrap_or(&[])
    }

    /// Remembers the stack with `value` (its call-site), to be known again
    /// by [`capture`].
    #[inline]
    pub(crate) fn keep(self, value: V) {
        self.stack.value = value;
        self.stack.start = self.start;
        if let Some((rival, fork)) = self.rival {
            let new = self.stack.records.get(..self.stack.read as usize);
            let old = rival.records.get(..rival.read as usize);
            let (Some(new), Some(old)) = (new, old) else {
                return;
            };
            // The first record they differ in: its address is the same in
            // both (the records before it, which hold it, are alike).
            if let Some(d) = new.iter().zip(old).position(|(a, b)| a.0 != b.0) {
                let at = match d.checked_sub(1).and_then(|p| new.get(p)) {
                    Some(before) => before.0[0],
                    None => self.start,
                };
                fork.learn(self.start, at);
            }
        }
    }
}

/// The return addresses of the calling stack, innermost first, unless `seen`
/// holds the stack (frame-pointer walk only). `bounds` are the thread's
/// stack bounds; the DWARF unwinder writes to `out`.
#[inline(never)]
pub(crate) fn capture<'a, V: Copy>(
    bounds: (usize, usize),
    seen: &'a Seen<V>,
    out: &mut Frames,
) -> Capture<'a, V> {
    if DWARF.load(Ordering::Relaxed) {
        // The cached CFI walk; the backtrace crate's unwinder where it
        // cannot start (another architecture, no `.eh_frame_hdr`).
        let mut n = cfi::walk(out, bounds);
        if n == 0 {
            n = capture_dwarf(out);
        }
        let hash = hash_frames(out.get(..n).unwrap_or(&[]));
        return Capture::Dwarf { n, hash };
    }
    let marker = 0u8;
    let sp = &marker as *const u8 as usize;
    let fp = frame_pointer();
    // SAFETY: `seen` belongs to this thread's slot (see `Seen`), and `fp`
    // is this frame's record, above `sp`.
    let (known, stack, rival) = unsafe { seen.find(fp, bounds.1) };
    if let Some(v) = known {
        return Capture::Seen(v);
    }
    // Not on this thread's own stack (a signal stack, a coroutine): no walk.
    let (n, hash, read) = if bounds.1 == 0 || sp < bounds.0 || sp >= bounds.1 {
        (0, hash_frames(&[]), 0)
    } else {
        walk_frame_pointers(sp, fp, bounds.1, &mut stack.records)
    };
    stack.read = read as u32;
    Capture::Walked(Walked {
        n,
        hash,
        stack,
        start: fp,
        rival,
    })
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

/// Follows the chain of saved frame pointers from `fp` (the record of the
/// frame whose locals include `sp`). On x86_64 and aarch64 a frame record is
/// `[saved fp, return address]` at the frame pointer. Every record read is
/// copied to `read`, in order (the frames', then the one whose zero return
/// address ended the walk, if one did). Returns the frames found, their
/// hash, and the records read.
///
/// Soundness of every read: a frame record is read only when it lies wholly
/// between the current stack pointer and the top of this thread's stack (memory
/// that is mapped for as long as this function runs), is 8-byte aligned, and
/// lies strictly above the one before, so the walk also ends.
///
/// The hash is computed as the walk goes: its steps hide in the latency of
/// the walk's chain of loads.
#[inline(always)]
fn walk_frame_pointers(
    sp: usize,
    mut fp: usize,
    stack_hi: usize,
    read: &mut [Record; MAX_FRAMES + 1],
) -> (usize, u64, usize) {
    let mut lo = sp;
    let mut n = 0;
    let mut h = 0u64;
    while n < MAX_FRAMES {
        if fp < lo || !fp.is_multiple_of(8) || fp > stack_hi - 16 {
            break;
        }
        // SAFETY: `fp..fp + 16` is inside `[sp, stack_hi)` and aligned (checked
        // above); that range is this thread's live, mapped stack.
        let [next, ret] = unsafe { raw_pair(fp) };
        if let Some(r) = read.get_mut(n) {
            *r = Record([next, ret]);
        }
        if ret == 0 {
            return (n, hash_finish(h, n), n + 1);
        }
        h = hash_step(h, ret);
        n += 1;
        lo = fp + 16;
        fp = next;
    }
    (n, hash_finish(h, n), n)
}

// ---------------------------------------------------------------- seen stacks

/// Sets of a thread's [`Seen`] stacks, two ways each.
const SEEN_SETS: usize = 32;

/// One frame record as the walk read it: (saved frame pointer, return address).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Record([usize; 2]);

/// A stack the frame-pointer walk read, with every word it read.
#[derive(Clone, Copy)]
struct SeenStack<V> {
    /// The record the walk started from (0: empty).
    start: usize,
    /// Records the walk read.
    read: u32,
    /// What the caller made of the stack (its call-site).
    value: V,
    /// Records read: each frame's, then the one that ended the walk by a
    /// zero return address, if one did. The first saved frame pointer that
    /// was zero (or out of bounds, or not above the one before) ends them.
    records: [Record; MAX_FRAMES + 1],
}

/// Where the stacks kept from one start part: sibling call paths (one
/// caller calling several allocating functions at one depth) start their
/// walks at the same frame record, and differ only in a record further
/// up, at the same address in each. Those records' words pick the set a
/// stack from that start is kept in, so that siblings do not evict one
/// another. Two places: siblings of siblings part in two records.
#[derive(Clone, Copy)]
pub(crate) struct Fork {
    /// The start these are for (0: none).
    start: usize,
    /// Addresses of the records where its stacks part (0: none).
    at: [usize; 2],
}

impl Fork {
    /// The stacks from `start` part (also) at the record at `at`.
    fn learn(&mut self, start: usize, at: usize) {
        if self.start != start {
            *self = Fork { start, at: [at, 0] };
        } else if self.at[0] != at && self.at[1] != at {
            self.at[1] = at;
        }
    }

    /// The words where the stacks from `start` part, folded; 0 when none
    /// is known. Reads only records within `[start, hi - 16]`.
    ///
    /// # Safety
    /// `start` is a frame record of the calling thread's stack, above its
    /// stack pointer, and `hi` the top of that stack.
    #[inline(always)]
    unsafe fn key(&self, start: usize, hi: usize) -> usize {
        if self.start != start {
            return 0;
        }
        let mut key = 0usize;
        for &at in &self.at {
            if at != 0 && at % 8 == 0 && at >= start && at <= hi.wrapping_sub(16) {
                // SAFETY: 16 aligned bytes between our stack pointer and
                // the top of this thread's stack (checked above): mapped.
                let r = unsafe { raw_pair(at) };
                key = key.rotate_left(17) ^ r[0] ^ r[1].rotate_left(32);
            }
        }
        key
    }
}

/// Starts whose forks a thread keeps (by start, one each).
const FORKS: usize = 64;

#[derive(Clone, Copy)]
struct SeenSet<V> {
    /// The way hit or filled last.
    last: usize,
    ways: [SeenStack<V>; 2],
}

/// The stacks a thread captured lately, by the frame record where the walk
/// started, with every word the walk read, so that the same stack is known
/// again by reading those words and no more: all at once (their addresses
/// come from the cache, not from one another, so the loads overlap), with
/// no hash and no table probe. Exact: the plain walk would read the same
/// words, find them the same, and stop at the same place (its stops depend
/// only on those words and the thread's stack bounds, which a slot's new
/// owner clears with [`Seen::clear`]).
///
/// Owned by one thread at a time (its slot's), like the call-site cache;
/// all-zero bytes are an empty cache when all-zero is a valid `V`.
pub(crate) struct Seen<V> {
    sets: std::cell::UnsafeCell<[SeenSet<V>; SEEN_SETS]>,
    forks: std::cell::UnsafeCell<[Fork; FORKS]>,
}

impl<V: Copy> Seen<V> {
    #[inline(always)]
    fn set_of(start: usize, key: usize) -> usize {
        (start >> 4 ^ start >> 9 ^ crate::alloc::meta::mix(key as u64) as usize) % SEEN_SETS
    }

    /// The value kept for the stack whose walk starts at `start`, if it is
    /// word for word one of its set's; else the way to fill, emptied, and
    /// the set's other stack if it is from the same start (with the
    /// start's forks, to learn from the two).
    ///
    /// # Safety
    /// The calling thread owns the slot of `self`; `start` is a frame
    /// record of the calling thread's stack, above its stack pointer, and
    /// `hi` the top of that stack.
    #[inline(always)]
    #[allow(clippy::mut_from_ref, clippy::type_complexity)] // the cells are the owning thread's alone (see above)
    unsafe fn find(
        &self,
        start: usize,
        hi: usize,
    ) -> (
        Option<V>,
        &mut SeenStack<V>,
        Option<(&SeenStack<V>, &mut Fork)>,
    ) {
        // SAFETY: only the owning thread touches the cache (caller's contract),
        // and it is not re-entered (the tracker's re-entrancy flag is up).
        let (sets, forks) = unsafe { (&mut *self.sets.get(), &mut *self.forks.get()) };
        let fork = &mut forks[(start >> 4) % FORKS];
        // SAFETY: forwarded contract.
        let key = unsafe { fork.key(start, hi) };
        // In range: `set_of` is below SEEN_SETS, and `w` and `victim` below 2.
        let set = &mut sets[Self::set_of(start, key)];
        for (w, way) in set.ways.iter().enumerate() {
            if way.start != start {
                continue;
            }
            // SAFETY: the records were read from `start` upwards by a walk of
            // this thread's stack, within its bounds; `start` is at or above
            // our stack pointer, so all of them still are (caller's contract).
            if unsafe { same_words(start, way.records.get(..way.read as usize).unwrap_or(&[])) } {
                set.last = w;
                return (Some(way.value), &mut set.ways[1 - w], None);
            }
        }
        let victim = 1 - set.last.min(1);
        set.last = victim;
        let [a, b] = &mut set.ways;
        let (way, other) = if victim == 0 { (a, b) } else { (b, a) };
        way.start = 0;
        let rival = (other.start == start).then_some((&*other, fork));
        (None, way, rival)
    }

    /// Forgets every stack: for a slot's new owner, whose stack differs.
    pub(crate) fn clear(&self) {
        // SAFETY: called by the slot's new owner before it tracks anything.
        let (sets, forks) = unsafe { (&mut *self.sets.get(), &mut *self.forks.get()) };
        for set in sets.iter_mut() {
            for way in &mut set.ways {
                way.start = 0;
            }
        }
        for fork in forks.iter_mut() {
            fork.start = 0;
        }
    }
}

/// Whether the stack from `start` up still holds `records`: each record is
/// read at the address the one before saved, taken from `records`, so no
/// load waits for another.
///
/// # Safety
/// Every record's address (`start`, then each record's saved frame pointer
/// but the last's) lies on the calling thread's stack above its stack pointer.
#[inline(always)]
unsafe fn same_words(start: usize, records: &[Record]) -> bool {
    let mut at = start;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_load_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_setzero_si128, _mm_xor_si128,
        };
        // SAFETY: SSE2 is part of x86_64; `at` points to 16 readable bytes
        // (caller's contract) and each record is 16-byte aligned.
        unsafe {
            let mut diff = _mm_setzero_si128();
            for r in records {
                let now = raw_16(at);
                let then = _mm_load_si128(r as *const Record as *const __m128i);
                diff = _mm_or_si128(diff, _mm_xor_si128(now, then));
                at = r.0[0];
            }
            _mm_movemask_epi8(_mm_cmpeq_epi8(diff, _mm_setzero_si128())) == 0xffff
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut diff = 0;
        for r in records {
            // SAFETY: `at..at + 16` is readable (caller's contract).
            let now = unsafe { raw_pair(at) };
            diff |= (now[0] ^ r.0[0]) | (now[1] ^ r.0[1]);
            at = r.0[0];
        }
        diff == 0
    }
}

/// The word at `at`, read in assembly, past AddressSanitizer's checks:
/// for the reads that look at memory as memory, not through any object of
/// the program's. The stack walk re-reads the frame records it saw last
/// time, wherever the stack now has them (a dead frame's locals, a
/// redzone); the leak check scans data and bss wholesale (with the
/// redzones between globals) and stacks, the way valgrind and
/// LeakSanitizer do. A plain load would be instrumented under
/// `-Zsanitizer=address` and report each of those as an overflow or a use
/// after scope. (The leak check reads a block only within its bounds, and
/// every read is inside a readable mapping.)
///
/// # Safety
/// `at` is 8-aligned and its 8 bytes are inside a readable mapping.
#[inline(always)]
pub(crate) unsafe fn raw_word(at: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let v: usize;
        // SAFETY: the caller's: an aligned, readable word.
        unsafe {
            std::arch::asm!(
                "mov {v}, qword ptr [{at}]",
                at = in(reg) at,
                v = out(reg) v,
                options(nostack, preserves_flags, readonly)
            );
        }
        v
    }
    #[cfg(target_arch = "aarch64")]
    {
        let v: usize;
        // SAFETY: the caller's: an aligned, readable word.
        unsafe {
            std::arch::asm!(
                "ldr {v}, [{at}]",
                at = in(reg) at,
                v = out(reg) v,
                options(nostack, preserves_flags, readonly)
            );
        }
        v
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    // SAFETY: the caller's.
    unsafe {
        (at as *const usize).read_volatile()
    }
}

/// The 16 bytes at `at` (a frame record). Built for AddressSanitizer
/// (`--cfg leakscope_asan`, which `.ci/run`'s ASan step passes), read as
/// [`raw_word`] reads; otherwise a plain unaligned load, which the
/// compiler schedules with the comparison around it: the assembly load
/// cost the hot path 43 instructions per allocation and free on the dense
/// workload (callgrind, `benches/instructions.sh dense`), the plain one none.
///
/// # Safety
/// `at..at + 16` is inside a readable mapping.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn raw_16(at: usize) -> std::arch::x86_64::__m128i {
    #[cfg(leakscope_asan)]
    {
        let v: std::arch::x86_64::__m128i;
        // SAFETY: the caller's: 16 readable bytes.
        unsafe {
            std::arch::asm!(
                "movdqu {v}, xmmword ptr [{at}]",
                at = in(reg) at,
                v = out(xmm_reg) v,
                options(nostack, preserves_flags, readonly)
            );
        }
        v
    }
    #[cfg(not(leakscope_asan))]
    // SAFETY: the caller's: 16 readable bytes; SSE2 is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_loadu_si128(at as *const std::arch::x86_64::__m128i)
    }
}

/// The two words at `at` (a frame record), read as [`raw_word`] reads.
///
/// # Safety
/// `at..at + 16` is 8-aligned and inside a readable mapping.
#[inline(always)]
unsafe fn raw_pair(at: usize) -> [usize; 2] {
    // SAFETY: the caller's.
    unsafe { [raw_word(at), raw_word(at + 8)] }
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
