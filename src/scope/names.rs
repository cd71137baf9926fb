//! Scope names: the name a request's scope is opened with, interned to the
//! id its blocks carry.
//!
//! Owns the table from name to id (bounded: past [`MAX_SCOPE_NAMES`], new
//! names share one entry), each name's count of runs opened on threads
//! without counters of their own, and a per-thread cache so that a request's
//! scope takes no shared lock. Runs outside the allocation path, with the
//! thread's allocations untracked.

use crate::alloc::meta::{ForkSafeLock, SpinLock, FORK_RANK_SCOPE};
use crate::alloc::runs;
use crate::scope::history::HistoryCell;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

pub(crate) struct ScopeEntry {
    pub(crate) id: u32,
    /// [`ends`] of the name.
    ends: (u64, u64),
    pub(crate) name: String,
    /// Runs opened on threads without counters of their own (see
    /// [`crate::alloc::thread::count_run`]); reports add every thread's counts.
    pub(crate) runs: AtomicU64,
    /// Its outstanding bytes as its runs went by ([`crate::scope::history`]).
    pub(crate) history: HistoryCell,
}

#[derive(Default)]
struct Names {
    by_name: HashMap<String, &'static ScopeEntry>,
    /// Index `id - 1`; id 0 means "no scope".
    list: Vec<&'static ScopeEntry>,
}

/// A spin lock, not a parking one: a fork may happen while other threads
/// wait for it, and a parking lock's unlock in the child would hand it to
/// those threads' waiting entries (copied into the child, with no thread
/// behind them), so that the child's next new name waited forever. A
/// waiter on a spin lock leaves nothing behind; the fork handlers hold it
/// across `fork`. Made at the first name.
static NAMES: ForkSafeLock<Option<Names>> = ForkSafeLock::new(FORK_RANK_SCOPE, None);

const NAME_CACHE: usize = 32;

/// Distinct scope names kept (ids 1 to this less one); later names are
/// counted under [`OTHER_SCOPES`].
pub(crate) const MAX_SCOPE_NAMES: usize = runs::MAX_SCOPES;
const OTHER_SCOPES: &str = "(other scopes)";

thread_local! {
    /// Names this thread opened lately, so that a request's scope costs no
    /// shared lock: direct-mapped by a hash of the name, checked by content.
    static RECENT_NAMES: [Cell<*const ScopeEntry>; NAME_CACHE] =
        const { [const { Cell::new(std::ptr::null()) }; NAME_CACHE] };
}

/// A name's first and last eight bytes (overlapping, or zero-padded when
/// shorter): with its length, the whole name up to 16 bytes, and the key
/// of this thread's cache of names.
#[inline]
fn ends(name: &str) -> (u64, u64) {
    let b = name.as_bytes();
    match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(first), Some(last)) => (u64::from_le_bytes(*first), u64::from_le_bytes(*last)),
        _ => {
            let w = b.iter().rev().fold(0u64, |w, &x| w << 8 | x as u64);
            (w, w)
        }
    }
}

/// The entry of `name`, made on first sight. A name this thread opened
/// lately costs its length and two words compared (and the rest of it,
/// past 16 bytes), no lock and no allocation.
#[inline]
pub(crate) fn intern(name: &str) -> &'static ScopeEntry {
    let (first, last) = ends(name);
    let h = (first ^ last.rotate_left(29) ^ name.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let i = (h >> 32) as usize % NAME_CACHE;
    let cached = RECENT_NAMES.try_with(|c| c.get(i).map_or(std::ptr::null(), Cell::get));
    // SAFETY: the cache holds only leaked, never-freed entries.
    if let Some(e) = cached.ok().and_then(|p| unsafe { p.as_ref() }) {
        if e.ends == (first, last)
            && e.name.len() == name.len()
            && (name.len() <= 16 || e.name == name)
        {
            return e;
        }
    }
    let e = crate::alloc::thread::untracked(|| intern_slow(name));
    let _ = RECENT_NAMES.try_with(|c| c.get(i).map(|cell| cell.set(e)));
    e
}

fn intern_slow(name: &str) -> &'static ScopeEntry {
    let mut guard = NAMES.lock();
    let names = guard.get_or_insert_with(Names::default);
    if let Some(&e) = names.by_name.get(name) {
        return e;
    }
    // Bounded: past the cap, new names share one entry (ids must fit the
    // per-thread scope counters).
    if names.list.len() + 2 >= MAX_SCOPE_NAMES && name != OTHER_SCOPES {
        drop(guard);
        return intern_slow(OTHER_SCOPES);
    }
    let id = names.list.len() as u32 + 1;
    let entry: &'static ScopeEntry = Box::leak(Box::new(ScopeEntry {
        id,
        ends: ends(name),
        name: name.to_owned(),
        runs: AtomicU64::new(0),
        history: SpinLock::new(None),
    }));
    names.list.push(entry);
    names.by_name.insert(name.to_owned(), entry);
    entry
}

/// The entry of scope id `id` (ids start at 1).
pub(crate) fn scope_entry(id: u32) -> Option<&'static ScopeEntry> {
    NAMES
        .lock()
        .as_ref()?
        .list
        .get((id as usize).checked_sub(1)?)
        .copied()
}

/// Every scope name seen so far, with its id.
pub(crate) fn scope_entries() -> Vec<(u32, &'static ScopeEntry)> {
    NAMES.lock().as_ref().map_or_else(Vec::new, |names| {
        names.list.iter().map(|e| (e.id, *e)).collect()
    })
}
