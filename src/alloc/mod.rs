//! The allocation layer: everything that runs inside `alloc`, `dealloc` and
//! `realloc`, and the state they touch.
//!
//! The hot path is [`tracker`] (the `GlobalAlloc` wrapper, both modes) and
//! [`thread`] (per-thread state and counters), with the block table in
//! [`blocks`]; with feature `c-heap`, `c_heap` makes the tracker the
//! process's `malloc` family too. Around them: call-site interning ([`callsite`]), stack
//! capture ([`unwind`], with the DWARF fallback's walk in [`cfi`]), sampling
//! ([`sample`], with the sampled blocks' address range in [`region`]), the per-run counts a block
//! updates ([`runs`]), blocks kept out of leak reports ([`ignored`]), spin
//! locks and metadata memory ([`meta`]), the tracker's own blocks the inner
//! allocator refused ([`own`]), and the process-wide start, `fork`
//! handlers and counters ([`process`]).
//!
//! Must never panic, allocate through the global allocator, or take a lock
//! that can allocate. Imports nothing from the layers above: what they must
//! hear of (the start) they register for with [`process::on_start`].

pub(crate) mod blocks;
#[cfg(all(
    feature = "c-heap",
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64"
))]
pub(crate) mod c_heap;
pub(crate) mod callsite;
pub(crate) mod cfi;
pub(crate) mod dense;
pub(crate) mod ignored;
pub(crate) mod meta;
pub(crate) mod own;
pub(crate) mod process;
pub(crate) mod region;
pub(crate) mod runs;
pub(crate) mod sample;
pub(crate) mod thread;
pub(crate) mod tracker;
pub(crate) mod unwind;
