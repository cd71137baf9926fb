//! Keeping blocks out of the leak check from code: [`ignore`] and
//! [`disable`], as LeakSanitizer's `__lsan_ignore_object` and
//! `ScopedDisabler`.
//!
//! The ignored addresses live with the allocation path (a free takes its
//! block out, see `crate::alloc::ignored`); the unchecked blocks are those of
//! one scope, which the check leaves out.

use crate::alloc::{ignored, thread};
use crate::scope::guard::{enter_scope, ScopeGuard};

/// The scope [`disable`] opens; blocks made in it are not reported.
pub(crate) const NOT_CHECKED: &str = "(leakscope: not checked)";

/// Keeps the live block at `ptr` (the address an allocation returned) out
/// of leak reports, as LeakSanitizer's `__lsan_ignore_object`: it counts as
/// still reachable, and so does what it points to. Freeing it ends that.
pub fn ignore<T: ?Sized>(ptr: *const T) {
    let addr = ptr as *const u8 as usize;
    thread::untracked(|| ignored::insert(addr));
}

/// Blocks allocated on this thread while the guard lives are not reported
/// as leaks (LeakSanitizer's `ScopedDisabler`). It is a scope named
/// `(leakscope: not checked)`: a scope opened inside it takes its blocks.
#[must_use = "blocks are unchecked only while the guard lives"]
pub struct DisableGuard(#[allow(dead_code)] ScopeGuard);

/// Stops checking what this thread allocates until the guard is dropped.
pub fn disable() -> DisableGuard {
    // Never finished, so its run keeps no per-call-site counts.
    DisableGuard(enter_scope(NOT_CHECKED, false))
}
