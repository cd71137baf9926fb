//! The full leak check: which live blocks can still be reached.
//!
//! Owns [`leak_check`], the classification of live blocks (valgrind
//! memcheck's rules and names) and loss records. Stopping threads is
//! [`crate::check::stop`]'s, finding the roots [`crate::check::roots`]'s;
//! suppressions are [`crate::check::suppress`]'s.
//!
//! As memcheck does it: every word of the roots (writable segments of the
//! loaded objects, each thread's stack from its stack pointer up and its
//! registers, static TLS) that points into a live block marks it; a pointer
//! to its start from a root or from a reachable block makes it reachable, a
//! pointer inside it (that no heuristic explains) only possibly reached, and
//! marked blocks are scanned in turn. Blocks no chain reaches are lost: each
//! lost block not reached from another lost block leads a group ("clique")
//! and is definitely lost; the blocks reached from it are indirectly lost.

use crate::alloc::callsite::OTHER;
use crate::alloc::meta::{ForkSafeLock, FORK_RANK_CHECK};
use crate::alloc::{blocks, ignored, sample, thread};
use crate::check::controls::NOT_CHECKED;
use crate::check::retain::{Paths, RootInfo, Threads, NO_PATH, ROOT};
use crate::check::roots::{self, Caller, Objects};
use crate::check::stop::{self, Buf, Range};
use crate::check::suppress::{self, Matcher, Suppressions};
use crate::report::collect::snapshot;
use crate::report::leak::{
    BlockTotal, LeakCheck, LeakKind, LossRecord, Retention, RootKind, SuppressionUse,
};
use crate::report::model::Report;
use crate::scope::names;
use std::collections::HashMap;

const UNREACHED: u8 = 0;
const POSSIBLE: u8 = 1;
const REACHABLE: u8 = 2;
const INDIRECT: u8 = 3;

/// One live block during a check.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blk {
    pub(crate) start: usize,
    pub(crate) size: usize,
    pub(crate) site: u32,
    pub(crate) scope: u32,
    pub(crate) state: u8,
    pending: bool,
    pub(crate) heuristic: bool,
    ignored: bool,
    /// Not a listed block: one a stopped thread's `realloc` had in flight
    /// (see `blocks::for_each_in_flight`), scanned and never reported.
    in_flight: bool,
    /// Lost, and another lost block points into it.
    pointed: bool,
    /// The reference that first reached it (the last that made it
    /// reachable): `ROOT | address` of a root word, the index + 1 of a
    /// block, or 0. Its retention path is made of these.
    pub(crate) parent: usize,
}

impl Blk {
    pub(crate) fn new(start: usize, size: usize, site: u32, scope: u32) -> Blk {
        Blk {
            start,
            size,
            site,
            scope,
            state: UNREACHED,
            pending: false,
            heuristic: false,
            ignored: false,
            in_flight: false,
            pointed: false,
            parent: 0,
        }
    }

    /// A block a stopped thread's `realloc` had in flight: scanned when
    /// reached, never reported.
    fn in_flight(start: usize, size: usize) -> Blk {
        Blk {
            ignored: true,
            in_flight: true,
            ..Blk::new(start, size, OTHER, 0)
        }
    }
}

fn kind_of(state: u8) -> LeakKind {
    match state {
        REACHABLE => LeakKind::StillReachable,
        POSSIBLE => LeakKind::PossiblyLost,
        INDIRECT => LeakKind::IndirectlyLost,
        _ => LeakKind::DefinitelyLost,
    }
}

/// The marking state: blocks sorted by address, the queue of blocks to
/// scan (first in, first out: breadth-first from the roots, so the first
/// reference to reach a block is on a shortest path), and the readable
/// memory. Allocation-free.
pub(crate) struct Marker<'a> {
    blocks: &'a mut [Blk],
    queue: Buf<u32>,
    /// Where the queue's first item is, and how many it holds (a ring over
    /// `queue`, which has a slot per block: a block is in it at most once).
    head: usize,
    queued: usize,
    maps: &'a [Range],
    lo: usize,
    hi: usize,
}

impl<'a> Marker<'a> {
    /// `blocks` sorted by start address, without repeats.
    pub(crate) fn new(blocks: &'a mut [Blk], maps: &'a [Range]) -> Option<Marker<'a>> {
        let lo = blocks.first().map_or(0, |b| b.start);
        let hi = blocks
            .iter()
            .map(|b| b.start + b.size.max(1))
            .max()
            .unwrap_or(0);
        let mut queue = Buf::new(blocks.len())?;
        for _ in 0..blocks.len() {
            queue.push(0);
        }
        Some(Marker {
            queue,
            head: 0,
            queued: 0,
            blocks,
            maps,
            lo,
            hi,
        })
    }

    fn pop(&mut self) -> Option<usize> {
        if self.queued == 0 {
            return None;
        }
        let slots = self.queue.as_mut_slice();
        let i = *slots.get(self.head)? as usize;
        self.head = (self.head + 1) % slots.len();
        self.queued -= 1;
        Some(i)
    }

    /// The block `ptr` points into.
    #[inline]
    fn find(&self, ptr: usize) -> Option<usize> {
        if ptr < self.lo || ptr >= self.hi {
            return None;
        }
        let i = self
            .blocks
            .partition_point(|b| b.start <= ptr)
            .checked_sub(1)?;
        let b = self.blocks.get(i)?;
        (ptr < b.start + b.size || ptr == b.start).then_some(i)
    }

    fn push(&mut self, i: usize) {
        if let Some(b) = self.blocks.get_mut(i) {
            if !b.pending {
                b.pending = true;
                let slots = self.queue.as_mut_slice();
                if let Some(slot) = slots.get_mut((self.head + self.queued) % slots.len().max(1)) {
                    *slot = i as u32;
                    self.queued += 1;
                }
            }
        }
    }

    /// A word found by scanning, at `from` (`ROOT | address` of a root
    /// word, or a block's index + 1): a root or reachable block's
    /// (`definite`) or a possibly reached one's.
    fn reached(&mut self, ptr: usize, definite: bool, from: usize) {
        let Some(i) = self.find(ptr) else { return };
        let b = self.blocks[i];
        if b.state == REACHABLE {
            if b.heuristic && ptr == b.start {
                self.blocks[i].heuristic = false;
            }
            return;
        }
        let via_start = if ptr == b.start {
            true
        } else {
            let h = self.heuristic(ptr, &b);
            self.blocks[i].heuristic = h;
            h
        };
        if via_start && definite {
            self.blocks[i].state = REACHABLE;
            self.blocks[i].parent = from;
            self.push(i);
        } else if b.state == UNREACHED {
            self.blocks[i].state = POSSIBLE;
            self.blocks[i].parent = from;
            self.push(i);
        }
    }

    /// In the clique of leader `leader`: a lost block reached from it.
    fn reached_in_clique(&mut self, ptr: usize, leader: usize) {
        let Some(i) = self.find(ptr) else { return };
        if self.blocks[i].state == UNREACHED && i != leader {
            self.push(i);
            self.blocks[i].state = INDIRECT;
        }
    }

    /// The word at `addr` inside block `b`, if readable.
    fn word(&self, b: &Blk, addr: usize) -> Option<usize> {
        let end = addr.checked_add(8)?;
        if addr < b.start || end > b.start + b.size || !addr.is_multiple_of(8) {
            return None;
        }
        if roots::readable_end(self.maps, addr)? < end {
            return None;
        }
        // SAFETY: an aligned word inside a readable mapping.
        Some(unsafe { crate::alloc::unwind::raw_word(addr) })
    }

    /// valgrind's interior-pointer heuristics that can apply to Rust data:
    /// `stdstring` (length, capacity, refcount, then the characters),
    /// `length64` (a length word, then the data) and `newarray` (a count,
    /// then that many equal elements). Its `multipleinheritance` needs C++
    /// vtables and is left out. One of ours, for Rust: `hashbrown`, the
    /// standard `HashMap`'s table, which is held by a pointer to its control
    /// bytes, after the buckets.
    fn heuristic(&self, ptr: usize, b: &Blk) -> bool {
        self.valgrind_heuristic(ptr, b) || self.hashbrown(ptr, b)
    }

    /// A hashbrown table: `ptr` is followed by exactly `buckets + W` control
    /// bytes to the block's end (`buckets` a power of two, `W` the group
    /// width, 16 with SSE2 and 8 without), every one a valid control byte
    /// (empty 0xFF, deleted 0x80, or full 0x00-0x7F), at least an eighth of
    /// them not full, and the last `W` mirroring the first ones as hashbrown
    /// keeps them.
    fn hashbrown(&self, ptr: usize, b: &Blk) -> bool {
        let offset = ptr - b.start;
        let tail = b.size - offset;
        let Some(end) = roots::readable_end(self.maps, ptr) else {
            return false;
        };
        if end < b.start + b.size {
            return false;
        }
        // SAFETY: `tail` bytes from `ptr` are inside the block and readable.
        let ctrl = unsafe { std::slice::from_raw_parts(ptr as *const u8, tail) };
        let valid = |c: u8| c == 0xFF || c == 0x80 || c < 0x80;
        [16usize, 8].iter().any(|&w| {
            let Some(buckets) = tail.checked_sub(w) else {
                return false;
            };
            if !buckets.is_power_of_two() || !offset.is_multiple_of(w) {
                return false;
            }
            // At most 7/8 of the buckets are full (fewer than that in a
            // table of less than 8): zeroed or text memory is not a table.
            let (mut bad, mut open) = (false, 0usize);
            for &c in &ctrl[..buckets] {
                bad |= !valid(c);
                open += usize::from(c >= 0x80);
            }
            if bad || open == 0 || open < buckets / 8 {
                return false;
            }
            if buckets >= w {
                ctrl[buckets..] == ctrl[..w]
            } else {
                ctrl[buckets..w].iter().all(|&c| c == 0xFF) && ctrl[w..] == ctrl[..buckets]
            }
        })
    }

    fn valgrind_heuristic(&self, ptr: usize, b: &Blk) -> bool {
        let w = |i: usize| self.word(b, b.start + 8 * i);
        if ptr == b.start + 24 {
            if let (Some(length), Some(capacity)) = (w(0), w(1)) {
                if capacity.checked_add(25) == Some(b.size) && length <= capacity {
                    return true;
                }
            }
        }
        if ptr == b.start + 8 {
            if let Some(n) = w(0) {
                let rest = b.size.saturating_sub(8);
                if n > 0 && (rest == n || rest.is_multiple_of(n)) {
                    return true;
                }
            }
        }
        false
    }

    /// Scans `r` word by word; `block`: the index of the block `r` is, or
    /// `None` for a root; `clique`: the leader whose group is being
    /// collected, or `None` while marking from the roots.
    fn scan(&mut self, r: Range, definite: bool, block: Option<usize>, clique: Option<usize>) {
        self.scan_words(r, false, |m, at, v| match clique {
            None => m.reached(v, definite, block.map_or(ROOT | at, |i| i + 1)),
            Some(leader) => m.reached_in_clique(v, leader),
        });
    }

    /// Calls `f` with each aligned word of `r` that may point into a
    /// block, and its address: upwards, or (`down`) from the top.
    fn scan_words(&mut self, r: Range, down: bool, mut f: impl FnMut(&mut Self, usize, usize)) {
        let maps = self.maps;
        roots::each_readable(maps, r, |part| {
            let first = part.start.next_multiple_of(8);
            let words = part.end.saturating_sub(first) / 8;
            for k in 0..words {
                let at = first + 8 * if down { words - 1 - k } else { k };
                // SAFETY: an aligned word inside a readable mapping.
                let v = unsafe { crate::alloc::unwind::raw_word(at) };
                if v >= self.lo && v < self.hi {
                    f(self, at, v);
                }
            }
        });
    }

    /// Scans the queued blocks until none is left.
    fn drain(&mut self, clique: Option<usize>) {
        while let Some(i) = self.pop() {
            let Some(b) = self.blocks.get_mut(i) else {
                continue;
            };
            b.pending = false;
            let (r, definite) = (
                Range {
                    start: b.start,
                    end: b.start + b.size,
                },
                b.state == REACHABLE,
            );
            self.scan(r, definite, Some(i), clique);
        }
    }

    /// Marks from `roots` and the ignored blocks, then groups the lost
    /// blocks. Roots before `stacks_from` (statics, thread-local storage)
    /// are scanned, and what they reach marked, before the stacks: a block
    /// a static holds is the static's, though a stack keeps a stale copy of
    /// its pointer. Within each tier every root is scanned before any
    /// block, so the blocks they point to are the first hops of shortest
    /// paths. Stacks are scanned from the top: of two frames holding a
    /// pointer, the outer one (a caller's local, not a callee's spilled
    /// copy of it) is where the path starts.
    ///
    /// The roots in `starts_only` (libc's and the dynamic loader's data) are
    /// statics whose words count only where they point at a block's start:
    /// glibc's malloc state there points at free chunks' headers, which can
    /// lie inside a live block's last bytes, and must not make it possibly
    /// reached.
    pub(crate) fn run(&mut self, roots: &[Range], stacks_from: usize, starts_only: &[Range]) {
        for &r in starts_only {
            self.scan_words(r, false, |m, at, v| {
                if m.find(v).is_some_and(|i| m.blocks[i].start == v) {
                    m.reached(v, true, ROOT | at);
                }
            });
        }
        let split = stacks_from.min(roots.len());
        for (tier, stacks) in [(&roots[..split], false), (&roots[split..], true)] {
            for &r in tier {
                self.scan_words(r, stacks, |m, at, v| m.reached(v, true, ROOT | at));
            }
            self.drain(None);
        }
        for i in 0..self.blocks.len() {
            if self.blocks[i].ignored && self.blocks[i].state != REACHABLE {
                // Kept out of the check: reachable, held by no path.
                self.blocks[i].state = REACHABLE;
                self.blocks[i].parent = 0;
                self.push(i);
                self.drain(None);
            }
        }
        self.group_lost();
    }

    /// Groups the lost blocks into cliques, as valgrind does: each leader
    /// definitely lost, what it reaches indirectly lost. Leaders come first
    /// from the blocks no other lost block points into (the tops of lost
    /// structures), then in address order from what is left (cycles nothing
    /// else reaches). valgrind takes them in address order alone, and its
    /// heap's addresses only grow; on a heap that reuses addresses, as
    /// glibc's does, a structure's top can lie above a block it reaches
    /// that points back into a cycle, which would then lead a clique of its
    /// own (SQLite's connections did) where valgrind finds one.
    fn group_lost(&mut self) {
        for i in 0..self.blocks.len() {
            let b = self.blocks[i];
            if b.state != UNREACHED {
                continue;
            }
            let r = Range {
                start: b.start,
                end: b.start + b.size,
            };
            self.scan_words(r, false, |m, _, v| {
                if let Some(j) = m.find(v) {
                    if j != i && m.blocks[j].state == UNREACHED {
                        m.blocks[j].pointed = true;
                    }
                }
            });
        }
        for tops in [true, false] {
            for i in 0..self.blocks.len() {
                let b = self.blocks[i];
                if b.state == UNREACHED && (!tops || !b.pointed) {
                    self.push(i);
                    self.drain(Some(i));
                }
            }
        }
    }
}

/// Sorts `blocks` by address and drops repeats (a block seen mid-move).
pub(crate) fn sort_blocks(blocks: &mut Buf<Blk>) -> usize {
    let s = blocks.as_mut_slice();
    s.sort_unstable_by_key(|b| (b.start, b.in_flight));
    // A block in flight may be free already and its bytes another's: it
    // keeps only what no other block holds (the blocks before it are
    // whole: it is left out where it starts inside one, and cut short where
    // the next begins).
    let mut n: usize = 0;
    for i in 0..s.len() {
        let start = s[i].start;
        let below = n.checked_sub(1).map(|j| s[j]);
        if below.is_some_and(|b| b.start == start || s[i].in_flight && b.start + b.size > start) {
            continue;
        }
        if s[i].in_flight {
            let rest = s.get(i + 1..).unwrap_or(&[]);
            let next = rest
                .iter()
                .find(|b| b.start > start)
                .map_or(usize::MAX, |b| b.start);
            s[i].size = s[i].size.min(next - start);
        }
        s[n] = s[i];
        n += 1;
    }
    n
}

/// Stops the world, scans the roots and the heap, and classifies every live
/// block the way valgrind memcheck does; the report of the live state comes
/// with it, in [`Report::leak_check`].
#[inline(always)]
pub fn leak_check() -> Report {
    // The caller's frame and registers: inlined, `here` is the caller's.
    leak_check_then(Caller::here(), |check| {
        thread::untracked(|| {
            let mut r = snapshot();
            r.attach_leak_check(check);
            r
        })
    })
}

/// The leak check, handed to `then` (which makes what the caller shows of
/// it: a report, or nothing but an exit status). On this thread, roots are
/// `caller`'s frames and registers: the check's own frames, below, are not
/// (they hold stale words of whatever ran there before).
#[inline(never)]
pub(crate) fn leak_check_then<R>(caller: Caller, then: impl FnOnce(LeakCheck) -> R) -> R {
    let check = thread::untracked(|| check(&caller));
    then(check)
}

/// One check at a time; a lock the fork handlers hold across `fork`, so a
/// child forked during a check can check too.
static CHECKING: ForkSafeLock<()> = ForkSafeLock::new(FORK_RANK_CHECK, ());

/// What [`classify`] found, per block, before names and suppressions:
/// amounts by state, call-site, scope, heuristic and retention path (an id
/// in `paths`, or `NO_PATH`).
struct Found {
    groups: HashMap<(u8, u32, u32, bool, u32), BlockTotal>,
    paths: HashMap<u32, Retention>,
}

fn check(caller: &Caller) -> LeakCheck {
    if sample::current() != 0 {
        return failed(
            "the leak check needs full mode: sampling mode (LEAKSCOPE_SAMPLE_BYTES) tracks only sampled blocks",
        );
    }
    let _one = CHECKING.lock();
    let suppressions = suppress::current();
    let objects = roots::objects();
    let not_checked = names::scope_entries()
        .into_iter()
        .find(|(_, e)| e.name == NOT_CHECKED)
        .map_or(u32::MAX, |(id, _)| id);
    let found = match classify(&objects, not_checked, caller) {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    summarize(found, &suppressions)
}

fn failed(why: &str) -> LeakCheck {
    LeakCheck {
        error: Some(why.to_owned()),
        ..LeakCheck::default()
    }
}

/// The marking itself, with the world stopped. Allocation-free between
/// the stop and the resume. `caller`: this thread's roots.
#[inline(never)]
fn classify(objects: &Objects, not_checked: u32, caller: &Caller) -> Result<Found, &'static str> {
    let my_anchor = roots::my_anchor();

    let ignored = ignored::lock();
    blocks::lock_for_fork();
    struct Unlock;
    impl Drop for Unlock {
        fn drop(&mut self) {
            // SAFETY: taken just above by this thread, with `lock_for_fork`.
            unsafe { blocks::unlock_after_fork() };
        }
    }
    let unlock = Unlock;
    let world = stop::stop()?;
    let maps = roots::readable_maps().ok_or("cannot read /proc/self/maps")?;
    let mut all: Buf<Blk> = Buf::new(blocks::count_held()).ok_or("no memory for the check")?;
    blocks::for_each_held(|addr, m| {
        let mut b = Blk::new(addr, m.size, m.site, m.scope);
        b.ignored = m.scope == not_checked && not_checked != 0;
        all.push(b);
    });
    blocks::for_each_in_flight(|addr, size| {
        all.push(Blk::in_flight(addr, size));
    });
    let n = sort_blocks(&mut all);
    let blocks = all.as_mut_slice().get_mut(..n).unwrap_or(&mut []);
    if !ignored.is_empty() {
        for b in blocks.iter_mut() {
            if ignored::contains(&ignored, b.start) {
                b.ignored = true;
            }
        }
    }

    let nthreads = world.threads.as_slice().len() + 1;
    let mut infos: Buf<RootInfo> =
        Buf::new(objects.segments.len() + objects.starts_only.len() + 7 * nthreads + 4)
            .ok_or("no memory for the check")?;
    let mut threads = Threads::new(nthreads).ok_or("no memory for the check")?;
    for &s in objects.segments.iter().chain(&objects.starts_only) {
        infos.push(RootInfo {
            range: s,
            kind: RootKind::Static,
            thread: u32::MAX,
        });
    }
    let stack = |sp: usize| Range {
        start: sp,
        end: roots::mapping_end(maps.as_slice(), sp).unwrap_or(sp),
    };
    let tls = |anchor: usize| match objects.tls {
        Some((lo, hi)) if anchor != 0 => Range {
            start: anchor.wrapping_add_signed(lo),
            end: anchor.wrapping_add_signed(hi),
        },
        _ => Range::default(),
    };
    let mut push = |range: Range, kind: RootKind, thread: u32| {
        infos.push(RootInfo {
            range,
            kind,
            thread,
        });
    };
    // This thread: its TLS; its stack and registers where the caller's
    // frames begin (none for one of leakscope's own threads).
    let regs = &caller.regs;
    let (stack_of_me, regs_of_me) = match caller.sp {
        0 => (Range::default(), Range::default()),
        sp => (
            stack(sp),
            Range {
                start: regs.as_ptr() as usize,
                end: regs.as_ptr() as usize + std::mem::size_of_val(regs),
            },
        ),
    };
    let me = threads.add(
        stop::gettid(),
        stack_of_me,
        caller.frame_pointer(),
        caller.pc,
        caller.returns,
    );
    push(stack_of_me, RootKind::Stack, me);
    push(regs_of_me, RootKind::Register, me);
    push(tls(my_anchor), RootKind::Tls, me);
    // The others: from their interrupted registers up (none of
    // leakscope's own threads'; from the stop handler's frame where the
    // kernel's record is unknown).
    for t in world.threads.as_slice() {
        let at = roots::interrupted(t.ctx, &objects.vectors);
        let none = Range::default();
        let (stack_of, regs_of, vectors, fp, pc) = match at {
            _ if t.own => (none, none, [none; 4], 0, 0),
            Some(i) => (stack(i.sp), i.regs, i.vectors, i.fp, i.pc),
            None => (stack(t.sp), none, [none; 4], 0, 0),
        };
        let i = threads.add(t.tid, stack_of, fp, pc, false);
        push(stack_of, RootKind::Stack, i);
        push(regs_of, RootKind::Register, i);
        for v in vectors {
            push(v, RootKind::Register, i);
        }
        push(tls(t.anchor), RootKind::Tls, i);
    }
    // Statics first, then thread-local storage, then stacks and
    // registers: a block that several roots reach is held by the first (a
    // stack often keeps a stale copy of a pointer a static holds).
    let mut roots: Buf<Range> =
        Buf::new(infos.as_slice().len()).ok_or("no memory for the check")?;
    let mut stacks_from = 0;
    for kind in [
        RootKind::Static,
        RootKind::Tls,
        RootKind::Stack,
        RootKind::Register,
    ] {
        if kind == RootKind::Stack {
            stacks_from = roots.as_slice().len();
        }
        // libc's and the loader's data are named as statics, but scanned
        // apart (`Marker::run`), for pointers to a block's start only.
        let whole = |i: &&RootInfo| i.kind == kind && !objects.starts_only.contains(&i.range);
        for info in infos.as_slice().iter().filter(whole) {
            roots.push(info.range);
        }
    }

    let mut marker = Marker::new(blocks, maps.as_slice()).ok_or("no memory for the check")?;
    marker.run(roots.as_slice(), stacks_from, &objects.starts_only);
    drop(marker);
    world.resume();
    drop(unlock);
    drop(ignored);

    // Paths, by the first reference of each still-reachable or possibly
    // lost block.
    let blocks = all.as_slice().get(..n).unwrap_or(&[]);
    let has_path = |b: &Blk| b.state == REACHABLE || b.state == POSSIBLE;
    let mut paths = Paths::new(infos.as_slice(), &threads);
    let ids = paths.of_blocks(blocks, has_path);
    let mut groups = HashMap::new();
    let mut retentions = HashMap::new();
    for (b, &path) in blocks.iter().zip(&ids) {
        if b.in_flight {
            continue;
        }
        if path != NO_PATH && !retentions.contains_key(&path) {
            if let Some(r) = paths.retention(path) {
                retentions.insert(path, r);
            }
        }
        let key = (
            b.state,
            b.site,
            b.scope,
            b.heuristic && b.state == REACHABLE,
            path,
        );
        groups
            .entry(key)
            .or_insert_with(BlockTotal::default)
            .add(b.size as u64);
    }
    Ok(Found {
        groups,
        paths: retentions,
    })
}

/// Names, suppressions and totals, after the world runs again.
fn summarize(found: Found, suppressions: &Suppressions) -> LeakCheck {
    let mut out = LeakCheck::default();
    let mut used: HashMap<usize, BlockTotal> = HashMap::new();
    let mut records: HashMap<(LeakKind, u32, u32, u32), BlockTotal> = HashMap::new();
    let mut matcher = Matcher::default();
    for ((state, site, scope, heuristic, path), amount) in found.groups {
        let kind = kind_of(state);
        if kind != LeakKind::StillReachable {
            if let Some(i) = matcher.suppressed(suppressions, site) {
                *used.entry(i).or_default() += amount;
                out.suppressed += amount;
                continue;
            }
        }
        *match kind {
            LeakKind::DefinitelyLost => &mut out.definitely_lost,
            LeakKind::IndirectlyLost => &mut out.indirectly_lost,
            LeakKind::PossiblyLost => &mut out.possibly_lost,
            LeakKind::StillReachable => &mut out.still_reachable,
        } += amount;
        if heuristic {
            out.reachable_via_heuristic += amount;
        }
        *records.entry((kind, site, scope, path)).or_default() += amount;
    }
    let names: HashMap<u32, String> = names::scope_entries()
        .into_iter()
        .map(|(id, e)| (id, e.name.clone()))
        .collect();
    out.loss_records = records
        .into_iter()
        .map(|((kind, site, scope, path), a)| LossRecord {
            kind,
            blocks: a.blocks,
            bytes: a.bytes,
            callsite: site,
            scope: names.get(&scope).cloned(),
            retained_by: found.paths.get(&path).cloned(),
        })
        .collect();
    out.loss_records.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.blocks.cmp(&a.blocks))
            .then(a.kind.cmp(&b.kind))
            .then(a.callsite.cmp(&b.callsite))
            .then(a.scope.cmp(&b.scope))
    });
    out.suppressions_used = used
        .into_iter()
        .map(|(i, a)| SuppressionUse {
            pattern: suppressions.pattern(i).to_owned(),
            blocks: a.blocks,
            bytes: a.bytes,
        })
        .collect();
    out.suppressions_used
        .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.pattern.cmp(&b.pattern)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks that are real memory of this test: `Vec<usize>` buffers.
    fn classify_words(heap: &mut [Vec<usize>], roots: &[usize]) -> Vec<LeakKind> {
        let mut bufs: Buf<Blk> = Buf::new(heap.len()).unwrap();
        for (i, v) in heap.iter().enumerate() {
            bufs.push(Blk::new(v.as_ptr() as usize, v.len() * 8, i as u32, 0));
        }
        let n = sort_blocks(&mut bufs);
        let everything = [Range {
            start: 0,
            end: usize::MAX,
        }];
        let root = Range {
            start: roots.as_ptr() as usize,
            end: roots.as_ptr() as usize + roots.len() * 8,
        };
        let mut m = Marker::new(&mut bufs.as_mut_slice()[..n], &everything).unwrap();
        m.run(&[root], 1, &[]);
        drop(m);
        let mut kinds = vec![LeakKind::DefinitelyLost; heap.len()];
        for b in bufs.as_slice() {
            kinds[b.site as usize] = kind_of(b.state);
        }
        kinds
    }

    #[test]
    fn blocks_in_flight_keep_only_what_no_listed_block_holds() {
        let listed = |start, size| Blk::new(start, size, 1, 0);
        let moving = Blk::in_flight;
        let mut bufs: Buf<Blk> = Buf::new(9).unwrap();
        for b in [
            moving(1000, 64), // two records of one block: one is kept
            listed(250, 50),
            moving(100, 32),  // the same block as a listed one: the listed
            moving(200, 100), // runs into the next block: cut at 250
            listed(100, 50),
            moving(120, 8), // inside a listed block (freed, reused): out
            moving(1000, 64),
            moving(600, 16), // on its own: whole
        ] {
            bufs.push(b);
        }
        let n = sort_blocks(&mut bufs);
        let kept: Vec<_> = bufs.as_slice()[..n]
            .iter()
            .map(|b| (b.start, b.size, b.in_flight))
            .collect();
        assert_eq!(
            kept,
            [
                (100, 50, false),
                (200, 50, true),
                (250, 50, false),
                (600, 16, true),
                (1000, 64, true)
            ]
        );
    }

    #[test]
    fn classifies_as_memcheck_does() {
        // 0: reachable from the root; 1: reached from 0 (reachable);
        // 2: only an interior pointer from the root (possibly lost);
        // 3: nothing points to it (definitely lost) but it points to 4;
        // 4: indirectly lost; 5 and 6: a cycle nothing else reaches.
        let mut heap: Vec<Vec<usize>> = (0..7).map(|_| vec![0usize; 4]).collect();
        let addr = |h: &Vec<Vec<usize>>, i: usize| h[i].as_ptr() as usize;
        let (a1, a4, a5, a6) = (
            addr(&heap, 1),
            addr(&heap, 4),
            addr(&heap, 5),
            addr(&heap, 6),
        );
        heap[0][0] = a1;
        heap[3][2] = a4;
        heap[5][1] = a6;
        heap[6][3] = a5;
        let roots = [addr(&heap, 0), addr(&heap, 2) + 16, 12345];
        let k = classify_words(&mut heap, &roots);
        use LeakKind::*;
        assert_eq!(
            &k[..5],
            &[
                StillReachable,
                StillReachable,
                PossiblyLost,
                DefinitelyLost,
                IndirectlyLost
            ]
        );
        // The cycle: the block at the lower address leads it.
        let (lead, other) = if a5 < a6 { (5, 6) } else { (6, 5) };
        assert_eq!((k[lead], k[other]), (DefinitelyLost, IndirectlyLost));
    }

    #[test]
    fn the_top_of_a_lost_structure_leads_it_wherever_it_lies() {
        // A top nothing points to, at the highest address of three, points
        // to a block in a cycle with the lowest: one structure, definitely
        // lost at its top (valgrind's answer on its heap, where the top,
        // made first, has the lowest address). Taken in address order, the
        // cycle would lead a clique of its own, the top only itself.
        let mut heap: Vec<Vec<usize>> = (0..3).map(|_| vec![0usize; 4]).collect();
        let mut by_addr: Vec<usize> = (0..3).collect();
        by_addr.sort_by_key(|&i| heap[i].as_ptr() as usize);
        let [low, mid, top] = [by_addr[0], by_addr[1], by_addr[2]];
        let addr = |h: &Vec<Vec<usize>>, i: usize| h[i].as_ptr() as usize;
        let (a_low, a_mid) = (addr(&heap, low), addr(&heap, mid));
        heap[top][1] = a_mid;
        heap[mid][2] = a_low + 8;
        heap[low][0] = a_mid;
        let k = classify_words(&mut heap, &[]);
        use LeakKind::*;
        assert_eq!(
            (k[top], k[mid], k[low]),
            (DefinitelyLost, IndirectlyLost, IndirectlyLost)
        );
    }

    #[test]
    fn a_possibly_reached_block_makes_what_it_points_to_possible() {
        let mut heap: Vec<Vec<usize>> = (0..2).map(|_| vec![0usize; 4]).collect();
        let a1 = heap[1].as_ptr() as usize;
        heap[0][3] = a1;
        let roots = [heap[0].as_ptr() as usize + 8 * 3];
        let k = classify_words(&mut heap, &roots);
        assert_eq!(k, vec![LeakKind::PossiblyLost, LeakKind::PossiblyLost]);
    }

    #[test]
    fn length64_heuristic_makes_an_interior_pointer_reachable() {
        // First word: the size of the rest (3 words = 24 bytes).
        let mut heap = vec![vec![24usize, 0, 0, 0], vec![0usize; 4]];
        let roots = [
            heap[0].as_ptr() as usize + 8,
            heap[1].as_ptr() as usize + 16,
        ];
        let k = classify_words(&mut heap, &roots);
        assert_eq!(k, vec![LeakKind::StillReachable, LeakKind::PossiblyLost]);
    }

    #[test]
    fn stdstring_and_newarray_heuristics() {
        // stdstring: length 3, capacity 7, refcount, then 8 bytes of
        // characters: 3 * 8 + 7 + 1 = 32 bytes; pointed to at +24.
        // newarray: a count of 2, then 32 bytes; pointed to at +8.
        let mut heap = vec![
            vec![3usize, 7, 0, 0],
            vec![2usize, 0, 0, 0, 0],
            vec![0usize; 4],
        ];
        let roots = [
            heap[0].as_ptr() as usize + 24,
            heap[1].as_ptr() as usize + 8,
            heap[2].as_ptr() as usize + 24,
        ];
        let k = classify_words(&mut heap, &roots);
        use LeakKind::*;
        assert_eq!(k, vec![StillReachable, StillReachable, PossiblyLost]);
    }

    #[test]
    fn hashbrown_heuristic_knows_a_table_by_its_control_bytes() {
        // 4 buckets of 8 bytes, then 4 + 16 control bytes: two full (h2
        // 0x12 and 0x34), two empty, the 12 bytes past the buckets empty,
        // and the last 4 mirroring the first 4.
        let mut table = vec![0usize; 4 + 3]; // 32 bytes of buckets, 24 of control
        let ctrl: [u8; 20] = [
            0x12, 0xFF, 0x34, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0xFF, 0xFF, 0x12, 0xFF, 0x34, 0xFF,
        ];
        // SAFETY: 20 bytes inside `table`'s 24 bytes after the buckets.
        unsafe {
            std::ptr::copy_nonoverlapping(
                ctrl.as_ptr(),
                (table.as_mut_ptr() as *mut u8).add(32),
                20,
            )
        };
        let ctrl_at = table.as_ptr() as usize + 32;
        // The block is 52 bytes: buckets and control bytes, nothing after.
        let mut bufs: Buf<Blk> = Buf::new(2).unwrap();
        bufs.push(Blk::new(table.as_ptr() as usize, 52, 0, 0));
        let broken = [0x41usize; 7]; // text, not control bytes
        bufs.push(Blk::new(broken.as_ptr() as usize, 52, 1, 0));
        let n = sort_blocks(&mut bufs);
        let everything = [Range {
            start: 0,
            end: usize::MAX,
        }];
        let roots = [ctrl_at, broken.as_ptr() as usize + 32];
        let root = Range {
            start: roots.as_ptr() as usize,
            end: roots.as_ptr() as usize + 16,
        };
        let mut m = Marker::new(&mut bufs.as_mut_slice()[..n], &everything).unwrap();
        m.run(&[root], 1, &[]);
        drop(m);
        let kind = |site: u32| {
            bufs.as_slice()
                .iter()
                .find(|b| b.site == site)
                .map(|b| kind_of(b.state))
                .unwrap()
        };
        assert_eq!(kind(0), LeakKind::StillReachable);
        assert_eq!(kind(1), LeakKind::PossiblyLost);
    }
}
