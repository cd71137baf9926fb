//! What `leakscope::growth`'s runs left behind, as plain data: the
//! [`GrowthSummary`] and its call-sites, and how it is shown. The runs
//! themselves are the check layer's (`check::growth`).

use crate::alloc::thread;
use crate::report::model::Frame;
use crate::report::text::{plural, write_stack, PerRun, Thousands};
use std::fmt::{self, Display, Formatter};

/// What `leakscope::growth`'s runs left behind: the blocks they allocated and did not
/// free, in all and per run, and by call-site with their stacks. `Display`
/// shows it as the exit report shows its loss records.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct GrowthSummary {
    /// Runs counted (the warm-up run is not).
    pub runs: u64,
    /// `outstanding_blocks / runs` and `outstanding_bytes / runs`.
    pub blocks_per_run: f64,
    /// Outstanding bytes per run.
    pub bytes_per_run: f64,
    /// Blocks the runs allocated and nobody has freed since.
    pub outstanding_blocks: u64,
    /// Their bytes.
    pub outstanding_bytes: u64,
    /// By call-site, most bytes first.
    pub by_callsite: Vec<GrowthCallsite>,
    /// The scope the runs ran in: `leakscope::growth #N`, one per call.
    pub scope: String,
    /// Sampling mode's mean interval in bytes, 0 in full mode. When not 0,
    /// the figures are estimates from the sampled blocks.
    pub sample_bytes: u64,
    /// Whether leakscope counted anything in this process: `false` when
    /// [`LeakTracker`](crate::alloc::tracker::LeakTracker) is not the global allocator, so
    /// that nothing could be seen to grow.
    pub tracked: bool,
}

/// One call-site's blocks left behind by `leakscope::growth`'s runs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct GrowthCallsite {
    /// The call-site id, as in the report (`Report::callsites`).
    pub callsite: u32,
    /// Blocks its runs left behind.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// `blocks / runs`.
    pub blocks_per_run: f64,
    /// `bytes / runs`.
    pub bytes_per_run: f64,
    /// Innermost first, as in the report.
    pub frames: Vec<Frame>,
}

impl GrowthCallsite {
    /// The innermost frame's function, if symbolized.
    pub fn function(&self) -> Option<&str> {
        self.frames.first().and_then(|f| f.function.as_deref())
    }
}

impl GrowthSummary {
    /// Whether the runs left more than `max_bytes_per_run` bytes per run
    /// (with 0: anything at all), or nothing could be counted.
    pub fn exceeds(&self, max_bytes_per_run: f64) -> bool {
        !self.tracked || self.bytes_per_run > max_bytes_per_run
    }

    /// The call-site whose stack names `function` (a substring of a frame's
    /// function), with the most bytes.
    pub fn callsite_in(&self, function: &str) -> Option<&GrowthCallsite> {
        self.by_callsite.iter().find(|c| {
            c.frames
                .iter()
                .any(|f| f.function.as_deref().is_some_and(|n| n.contains(function)))
        })
    }
}

/// "block" for exactly one per run, else "blocks".
fn blocks_word(per_run: f64) -> &'static str {
    if per_run == 1.0 {
        "block"
    } else {
        "blocks"
    }
}

/// A per-run figure without its sign: `6`, `0.20`, `1,024`.
fn shown_per_run(v: f64) -> String {
    PerRun(v).to_string().trim_start_matches('+').to_owned()
}

impl Display for GrowthSummary {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        thread::untracked(|| self.write(f))
    }
}

impl GrowthSummary {
    fn write(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if !self.tracked {
            return writeln!(
                f,
                "leakscope growth: nothing was counted: leakscope::LeakTracker is not this program's #[global_allocator]"
            );
        }
        writeln!(
            f,
            "leakscope growth: {} runs (after a warm-up run) left {} bytes in {} {} outstanding: {} bytes in {} {} per run",
            Thousands(self.runs),
            Thousands(self.outstanding_bytes),
            Thousands(self.outstanding_blocks),
            plural(self.outstanding_blocks, "block", "blocks"),
            shown_per_run(self.bytes_per_run),
            shown_per_run(self.blocks_per_run),
            blocks_word(self.blocks_per_run),
        )?;
        if self.sample_bytes > 0 {
            writeln!(
                f,
                "(sampling mode, one sample every {} bytes on average: the figures are estimates)",
                Thousands(self.sample_bytes)
            )?;
        }
        for c in &self.by_callsite {
            writeln!(f)?;
            writeln!(
                f,
                "{} bytes in {} {} ({} bytes in {} {} per run) left by",
                Thousands(c.bytes),
                Thousands(c.blocks),
                plural(c.blocks, "block", "blocks"),
                shown_per_run(c.bytes_per_run),
                shown_per_run(c.blocks_per_run),
                blocks_word(c.blocks_per_run),
            )?;
            write_stack(f, "", &c.frames)?;
        }
        Ok(())
    }
}
