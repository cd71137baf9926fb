//! Retention paths: who holds a block the leak check found reachable.
//!
//! Owns the roots' descriptions (which range is a static segment, whose
//! stack, TLS or registers), each stopped thread's frames (read while the
//! world is stopped, allocation-free), and, once it runs again, naming the
//! roots (a static's symbol, a thread and the function whose frame holds
//! the reference) and interning paths: a root, then the call-sites of the
//! chain of blocks, a run of one call-site (a linked list) as one hop. The
//! marking that records each block's first reference is
//! [`crate::check::classify`]'s: one word per block, `ROOT | address` of a
//! root word, or the index + 1 of the block whose word reached it.

use crate::check::classify::Blk;
use crate::check::stop::{Buf, Range};
use crate::report::leak::{Retention, RetentionRoot, RootKind};
use crate::report::symbolize::Symbolizer;
use std::collections::HashMap;

/// A block's first reference was a root word at the address in the low bits.
pub(crate) const ROOT: usize = 1 << 63;

/// Frames of a stopped thread kept for naming, at most.
const MAX_FRAMES: usize = 256;

/// What a root range is: its kind and, but for statics, its thread (an
/// index into [`Threads::tids`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RootInfo {
    pub(crate) range: Range,
    pub(crate) kind: RootKind,
    pub(crate) thread: u32,
}

/// One frame of a stopped thread: the words in `lo..hi` of its stack are
/// the function's at `pc` (a return address, or the interrupted pc).
#[derive(Clone, Copy, Debug)]
struct FrameSpan {
    thread: u32,
    lo: usize,
    hi: usize,
    pc: usize,
    /// `pc` is a return address (look up `pc - 1`).
    returns: bool,
}

/// The stopped threads' ids and their frames.
pub(crate) struct Threads {
    pub(crate) tids: Buf<i32>,
    frames: Buf<FrameSpan>,
}

impl Threads {
    pub(crate) fn new(threads: usize) -> Option<Threads> {
        Some(Threads {
            tids: Buf::new(threads)?,
            frames: Buf::new(threads * MAX_FRAMES)?,
        })
    }

    /// Adds a thread: its id, and the frames of its stack `sp..end` from
    /// the frame-pointer chain starting at `fp`, the innermost one's code
    /// at `pc` (a return address if `returns`). Allocation-free; returns
    /// its index.
    pub(crate) fn add(
        &mut self,
        tid: i32,
        stack: Range,
        fp: usize,
        pc: usize,
        returns: bool,
    ) -> u32 {
        let t = self.tids.as_slice().len() as u32;
        self.tids.push(tid);
        let (mut lo, mut fp, mut pc, mut returns) = (stack.start, fp, pc, returns);
        for _ in 0..MAX_FRAMES {
            let ok = fp % 8 == 0 && fp >= lo && fp.checked_add(16).is_some_and(|e| e <= stack.end);
            if !ok {
                break;
            }
            self.frames.push(FrameSpan {
                thread: t,
                lo,
                hi: fp + 16,
                pc,
                returns,
            });
            // SAFETY: `fp..fp + 16` is inside the stopped thread's stack,
            // which stays mapped while it is stopped.
            let (next, ret) = unsafe {
                (
                    (fp as *const usize).read_volatile(),
                    ((fp + 8) as *const usize).read_volatile(),
                )
            };
            if next <= fp {
                break;
            }
            (lo, fp, pc, returns) = (fp + 16, next, ret, true);
        }
        t
    }
}

/// Names roots and interns paths, after the world runs again.
pub(crate) struct Paths<'a> {
    roots: &'a [RootInfo],
    threads: &'a Threads,
    names: HashMap<i32, String>,
    symbols: Symbolizer,
    statics: HashMap<usize, Option<String>>,
    functions: HashMap<usize, Option<String>>,
    root_ids: HashMap<RetentionRoot, u32>,
    root_list: Vec<RetentionRoot>,
    /// Path nodes: (the path it extends or `u32::MAX` from a root, the
    /// root's id, the call-site, a heuristic on the way).
    nodes: Vec<(u32, u32, u32, bool)>,
    node_ids: HashMap<(u32, u32, u32, bool), u32>,
}

/// "No path": lost, kept out of the check, or not reached from a root.
pub(crate) const NO_PATH: u32 = u32::MAX;
const UNSET: u32 = u32::MAX - 1;

impl<'a> Paths<'a> {
    pub(crate) fn new(roots: &'a [RootInfo], threads: &'a Threads) -> Paths<'a> {
        Paths {
            roots,
            threads,
            names: HashMap::new(),
            symbols: Symbolizer::default(),
            statics: HashMap::new(),
            functions: HashMap::new(),
            root_ids: HashMap::new(),
            root_list: Vec::new(),
            nodes: Vec::new(),
            node_ids: HashMap::new(),
        }
    }

    /// The path id of every block (`NO_PATH` where it has none), from each
    /// block's first reference, its call-site and whether it was reached
    /// through a heuristic. Only blocks for which `reached` holds have one.
    pub(crate) fn of_blocks(&mut self, blocks: &[Blk], reached: impl Fn(&Blk) -> bool) -> Vec<u32> {
        let n = blocks.len();
        let mut ids = vec![UNSET; n];
        let mut chain: Vec<usize> = Vec::new();
        for start in 0..n {
            if ids[start] != UNSET {
                continue;
            }
            // Up the first references to a block with a path (or none), or
            // to a root; then down again, each block's path from its parent's.
            chain.clear();
            let mut j = start;
            let mut base = NO_PATH;
            let mut from_root = None;
            loop {
                if ids[j] != UNSET {
                    base = ids[j];
                    break;
                }
                if !reached(&blocks[j]) || chain.len() > n {
                    break;
                }
                chain.push(j);
                let p = blocks[j].parent;
                if p == 0 {
                    break;
                }
                if p & ROOT != 0 {
                    from_root = Some(self.root_of(p & !ROOT));
                    break;
                }
                j = p - 1;
                if j >= n {
                    break;
                }
            }
            let mut at = base;
            for (k, &b) in chain.iter().rev().enumerate() {
                let Blk {
                    site, heuristic, ..
                } = blocks[b];
                at = match (k, from_root, at) {
                    (0, Some(root), _) => self.node(u32::MAX, root, site, heuristic),
                    (_, _, NO_PATH) => NO_PATH,
                    (_, _, parent) => self.extend(parent, site, heuristic),
                };
                ids[b] = at;
            }
            // A block whose chain ended without a root has no path.
            if ids[start] == UNSET {
                ids[start] = NO_PATH;
            }
        }
        ids
    }

    fn node(&mut self, parent: u32, root: u32, site: u32, heuristic: bool) -> u32 {
        let key = (parent, root, site, heuristic);
        let next = self.nodes.len() as u32;
        *self.node_ids.entry(key).or_insert_with(|| {
            self.nodes.push(key);
            next
        })
    }

    /// The path `parent` then a block of `site`: a block of the same
    /// call-site as the last hop is the same hop.
    fn extend(&mut self, parent: u32, site: u32, heuristic: bool) -> u32 {
        let (_, root, last, h) = self.nodes[parent as usize];
        if last == site && (h || !heuristic) {
            return parent;
        }
        self.node(parent, root, site, heuristic || h)
    }

    /// The retention path `id`.
    pub(crate) fn retention(&self, id: u32) -> Option<Retention> {
        let mut path = Vec::new();
        let mut at = id;
        let (mut root, mut via_heuristic) = (0, false);
        while let Some(&(parent, r, site, h)) = self.nodes.get(at as usize) {
            path.push(site);
            root = r;
            via_heuristic |= h;
            at = parent;
        }
        path.reverse();
        let root = self.root_list.get(root as usize)?.clone();
        Some(Retention {
            root,
            path,
            via_heuristic,
        })
    }

    /// The id of the root a word at `addr` is.
    fn root_of(&mut self, addr: usize) -> u32 {
        let info = self
            .roots
            .iter()
            .find(|r| r.range.start <= addr && addr < r.range.end)
            .copied();
        let root = match info {
            None => RetentionRoot {
                kind: RootKind::Static,
                name: None,
                thread: None,
                function: None,
            },
            Some(info) => self.describe(addr, info),
        };
        let next = self.root_list.len() as u32;
        *self.root_ids.entry(root).or_insert_with_key(|root| {
            self.root_list.push(root.clone());
            next
        })
    }

    fn describe(&mut self, addr: usize, info: RootInfo) -> RetentionRoot {
        let thread = (info.kind != RootKind::Static).then(|| self.thread_name(info.thread));
        match info.kind {
            RootKind::Static => {
                let symbols = &mut self.symbols;
                let name = self
                    .statics
                    .entry(addr)
                    .or_insert_with(|| symbols.data_symbol(addr))
                    .clone();
                RetentionRoot {
                    kind: RootKind::Static,
                    name,
                    thread: None,
                    function: None,
                }
            }
            RootKind::Stack => {
                let frame = (self.threads.frames.as_slice().iter())
                    .find(|f| f.thread == info.thread && f.lo <= addr && addr < f.hi)
                    .copied();
                let function = frame.and_then(|f| {
                    // The symbolizer takes return addresses; an interrupted
                    // pc one byte on is still in its instruction's function.
                    let pc = if f.returns {
                        f.pc
                    } else {
                        f.pc.wrapping_add(1)
                    };
                    let symbols = &mut self.symbols;
                    self.functions
                        .entry(pc)
                        .or_insert_with(|| {
                            symbols
                                .stack(&[pc])
                                .last()
                                .and_then(|fr| fr.function.clone())
                        })
                        .clone()
                });
                RetentionRoot {
                    kind: RootKind::Stack,
                    name: None,
                    thread,
                    function,
                }
            }
            kind => RetentionRoot {
                kind,
                name: None,
                thread,
                function: None,
            },
        }
    }

    /// A thread's name (`/proc/self/task/<tid>/comm`), or its id.
    fn thread_name(&mut self, thread: u32) -> String {
        let tid = self
            .threads
            .tids
            .as_slice()
            .get(thread as usize)
            .copied()
            .unwrap_or(0);
        self.names
            .entry(tid)
            .or_insert_with(|| {
                std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                    .map(|s| s.trim_end().to_owned())
                    .ok()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| format!("thread {tid}"))
            })
            .clone()
    }
}
