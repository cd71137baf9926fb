//! The leak check's result, as a report carries it.
//!
//! Owns [`LeakCheck`] (valgrind memcheck's kinds and totals, loss records,
//! suppressions used) and comparing two checks. The check itself is the
//! check layer's; this is plain data.

use std::collections::HashMap;

/// How a live block stands at a leak check (valgrind memcheck's kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum LeakKind {
    /// No pointer to it (or into it) anywhere.
    DefinitelyLost,
    /// Reached only from lost blocks.
    IndirectlyLost,
    /// Reached only through pointers into its interior.
    PossiblyLost,
    /// A pointer to its start is reachable from the roots.
    StillReachable,
}

impl LeakKind {
    /// The JSON name: `definitely_lost` and so on.
    pub fn as_str(self) -> &'static str {
        match self {
            LeakKind::DefinitelyLost => "definitely_lost",
            LeakKind::IndirectlyLost => "indirectly_lost",
            LeakKind::PossiblyLost => "possibly_lost",
            LeakKind::StillReachable => "still_reachable",
        }
    }

    /// As valgrind writes it: `definitely lost` and so on (its `Display`).
    pub(crate) fn words(self) -> &'static str {
        match self {
            LeakKind::DefinitelyLost => "definitely lost",
            LeakKind::IndirectlyLost => "indirectly lost",
            LeakKind::PossiblyLost => "possibly lost",
            LeakKind::StillReachable => "still reachable",
        }
    }
}

impl std::fmt::Display for LeakKind {
    /// As valgrind writes it: `definitely lost` and so on.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.words())
    }
}

/// A number of blocks and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockTotal {
    /// How many blocks.
    pub blocks: u64,
    /// Their bytes, summed.
    pub bytes: u64,
}

impl BlockTotal {
    pub(crate) fn add(&mut self, bytes: u64) {
        self.blocks += 1;
        self.bytes += bytes;
    }
}

impl std::ops::AddAssign for BlockTotal {
    fn add_assign(&mut self, other: BlockTotal) {
        self.blocks += other.blocks;
        self.bytes += other.bytes;
    }
}

/// The blocks of one kind made at one call-site in one scope.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LossRecord {
    /// What the check found them to be.
    pub kind: LeakKind,
    /// How many blocks.
    pub blocks: u64,
    /// Their bytes, summed.
    pub bytes: u64,
    /// The call-site's id in the report's `callsites`.
    pub callsite: u32,
    /// The scope that was open when the blocks were made.
    pub scope: Option<String>,
    /// Still-reachable and possibly-lost records: who holds the blocks, the
    /// shortest way from a root (records are grouped by it too). `None` for
    /// lost blocks, and for blocks kept out of the check.
    pub retained_by: Option<Retention>,
}

/// Who holds a block: the root that reaches it first (breadth-first from
/// every root), then the chain of blocks on the way, by call-site.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Retention {
    /// What kind of memory the first reference lies in, and whose.
    pub root: RetentionRoot,
    /// Call-site ids, from the block the root points to to the block itself
    /// (its own call-site last). A run of blocks from one call-site (a
    /// linked list) is one hop.
    pub path: Vec<u32>,
    /// Some hop is an interior pointer that a heuristic explains (a
    /// `HashMap`'s table, held by a pointer to its control bytes; a length
    /// word before the data), not a pointer to a block's start.
    pub via_heuristic: bool,
}

/// Where a retention path starts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RetentionRoot {
    /// Static data, a stack, registers or thread-local storage.
    pub kind: RootKind,
    /// A static's symbol (`my_app::USER_CACHE`), when it has one.
    pub name: Option<String>,
    /// The thread whose stack, registers or thread-local storage it is.
    pub thread: Option<String>,
    /// On a stack: the function whose frame holds the reference.
    pub function: Option<String>,
}

/// The kinds of roots the leak check scans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RootKind {
    /// The data of a loaded object: a static.
    Static,
    /// A thread's stack.
    Stack,
    /// A thread's thread-local storage.
    Tls,
    /// A thread's registers, as saved when it was stopped.
    Register,
}

impl RootKind {
    /// The JSON name: `static`, `stack`, `tls`, `register`.
    pub fn as_str(self) -> &'static str {
        match self {
            RootKind::Static => "static",
            RootKind::Stack => "stack",
            RootKind::Tls => "tls",
            RootKind::Register => "register",
        }
    }
}

/// Blocks of a scope that one retention path holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeRetention {
    /// The path that holds them.
    pub retained_by: Retention,
    /// How many blocks it holds.
    pub blocks: u64,
    /// Their bytes, summed.
    pub bytes: u64,
}

/// A suppression that matched, with what it hid.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SuppressionUse {
    /// The suppression as written in its file (`leak:`, `growth:` lines) or built in.
    pub pattern: String,
    /// Lost blocks it hid.
    pub blocks: u64,
    /// Their bytes, summed.
    pub bytes: u64,
}

/// The result of a full leak check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeakCheck {
    /// Nothing points to them, nor into them.
    pub definitely_lost: BlockTotal,
    /// Reached only from lost blocks.
    pub indirectly_lost: BlockTotal,
    /// Reached only through pointers into their interior.
    pub possibly_lost: BlockTotal,
    /// A pointer to their start is reachable from a root.
    pub still_reachable: BlockTotal,
    /// Of `still_reachable`: blocks reached only through an interior pointer
    /// that a heuristic explains: valgrind's stdstring, length64 and
    /// newarray, and leakscope's hashbrown (the table of a `HashMap`, held
    /// by a pointer to its control bytes).
    pub reachable_via_heuristic: BlockTotal,
    /// Lost blocks (of any of the three lost kinds) that a suppression matched.
    pub suppressed: BlockTotal,
    /// Unsuppressed blocks, grouped by kind, call-site, scope and (for the
    /// reachable kinds) retention path, largest bytes first.
    pub loss_records: Vec<LossRecord>,
    /// The suppressions that matched, with what each hid, most bytes first.
    pub suppressions_used: Vec<SuppressionUse>,
    /// Why the check did not run, when it did not (all counts are then 0).
    pub error: Option<String>,
}

impl LeakCheck {
    /// Something definitely or indirectly lost is left unsuppressed (what
    /// `LEAKSCOPE_ERROR_EXITCODE` tests), or the check did not run
    /// ([`LeakCheck::error`]): a check that could not look never reads as
    /// clean, so a gate on this fails closed, as the exit status does.
    pub fn has_leaks(&self) -> bool {
        self.error.is_some() || self.definitely_lost.blocks + self.indirectly_lost.blocks > 0
    }

    /// The blocks and bytes of one kind.
    pub fn total(&self, kind: LeakKind) -> BlockTotal {
        match kind {
            LeakKind::DefinitelyLost => self.definitely_lost,
            LeakKind::IndirectlyLost => self.indirectly_lost,
            LeakKind::PossiblyLost => self.possibly_lost,
            LeakKind::StillReachable => self.still_reachable,
        }
    }

    /// The loss records that grew since `earlier` (valgrind's
    /// `leak_check added`), each with what it gained; largest first.
    pub fn added_since(&self, earlier: &LeakCheck) -> Vec<LossRecord> {
        let before: HashMap<(LeakKind, u32, Option<&str>), (u64, u64)> = earlier
            .loss_records
            .iter()
            .map(|r| {
                (
                    (r.kind, r.callsite, r.scope.as_deref()),
                    (r.blocks, r.bytes),
                )
            })
            .collect();
        self.loss_records
            .iter()
            .filter_map(|r| {
                let (b, y) = before
                    .get(&(r.kind, r.callsite, r.scope.as_deref()))
                    .copied()
                    .unwrap_or((0, 0));
                (r.blocks > b || r.bytes > y).then(|| LossRecord {
                    blocks: r.blocks.saturating_sub(b),
                    bytes: r.bytes.saturating_sub(y),
                    ..r.clone()
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_that_did_not_run_has_leaks() {
        assert!(!LeakCheck::default().has_leaks());
        let not_run = LeakCheck {
            error: Some("a thread did not stop".to_owned()),
            ..LeakCheck::default()
        };
        assert!(not_run.has_leaks());
        let lost = LeakCheck {
            indirectly_lost: BlockTotal {
                blocks: 1,
                bytes: 8,
            },
            ..LeakCheck::default()
        };
        assert!(lost.has_leaks());
    }

    #[test]
    fn added_since_lists_growth_only() {
        let rec = |blocks, bytes| LossRecord {
            kind: LeakKind::DefinitelyLost,
            blocks,
            bytes,
            callsite: 3,
            scope: None,
            retained_by: None,
        };
        let before = LeakCheck {
            loss_records: vec![rec(2, 64)],
            ..LeakCheck::default()
        };
        let after = LeakCheck {
            loss_records: vec![rec(5, 160)],
            ..LeakCheck::default()
        };
        assert_eq!(after.added_since(&before), vec![rec(3, 96)]);
        assert_eq!(before.added_since(&after), vec![]);
    }
}
