//! The text rendering of a [`Report`]: `Display`.
//!
//! Follows valgrind's leak summary (`==PID==` prefix, loss records largest
//! first, "at"/"by" stack lines), with a per-scope table at the top and,
//! in a live report, what grew since the previous one.

use crate::alloc::thread;
use crate::report::leak::{BlockTotal, LeakCheck, LeakKind, Retention, RootKind};
use crate::report::model::{
    Changes, Frame, Report, ScopeStats, Unwinder, FRAME_POINTERS_FIX, LINE_TABLES_FIX,
    PRELOADED_LINE_TABLES_FIX, PRELOADED_NO_SCOPES,
};
use crate::report::symbolize::is_runtime_boundary;
use std::fmt::{self, Display, Formatter};

/// `1234567` as `1,234,567`, as valgrind prints counts.
pub(crate) struct Thousands(pub(crate) u64);

impl Display for Thousands {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        f.pad(&out)
    }
}

/// Frames of a stack shown in the text (the JSON has them all).
const MAX_TEXT_FRAMES: usize = 16;

/// Growth per run: `+3` when whole, `+2.50` otherwise, `+1,024` for large values.
pub(crate) struct PerRun(pub(crate) f64);

impl Display for PerRun {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if (v - v.round()).abs() < 0.005 || v >= 1000.0 {
            write!(f, "+{}", Thousands(v.round() as u64))
        } else {
            write!(f, "+{v:.2}")
        }
    }
}

/// A change: `+1,234`, `-56`, `+0`.
pub(crate) struct Signed(pub(crate) i64);

impl Display for Signed {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { '-' } else { '+' };
        write!(f, "{sign}{}", Thousands(self.0.unsigned_abs()))
    }
}

/// A change per run, signed: `+0.41`, `-2`.
pub(crate) struct SignedPerRun(pub(crate) f64);

impl Display for SignedPerRun {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // What rounds to zero shows as +0, never -0.
        if self.0 <= -0.005 {
            let magnitude = PerRun(-self.0).to_string();
            write!(f, "-{}", magnitude.trim_start_matches('+'))
        } else {
            PerRun(self.0.max(0.0)).fmt(f)
        }
    }
}

pub(crate) fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// The scopes that ran or changed since the previous report.
fn write_growth(f: &mut Formatter<'_>, p: &str, g: &Changes) -> fmt::Result {
    writeln!(f, "{p}")?;
    match g.seconds {
        Some(s) if s < 10.0 => writeln!(f, "{p} Since the previous report, {s:.2} s ago:")?,
        Some(s) => writeln!(f, "{p} Since the previous report, {s:.0} s ago:")?,
        None => writeln!(f, "{p} Since the program started (no earlier report):")?,
    }
    if g.scopes.is_empty() {
        return writeln!(f, "{p}   no scope ran or changed");
    }
    let width = g.scopes.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &g.scopes {
        let blocks = s.outstanding_blocks;
        write_scope_row(
            f,
            (p, width),
            (&s.name, s.runs),
            (
                format_args!(
                    "{} {}",
                    Signed(blocks),
                    plural(blocks.unsigned_abs(), "block", "blocks")
                ),
                Signed(s.outstanding_bytes),
            ),
            (
                SignedPerRun(s.blocks_per_run()),
                SignedPerRun(s.bytes_per_run().round()),
            ),
            "",
        )?;
    }
    Ok(())
}

/// One row of a scope table, names padded to `width`: its runs, its
/// outstanding blocks and bytes, their growth per run, and `note`.
fn write_scope_row(
    f: &mut Formatter<'_>,
    (p, width): (&str, usize),
    (name, runs): (&str, u64),
    (blocks, bytes): (impl Display, impl Display),
    (blocks_per_run, bytes_per_run): (impl Display, impl Display),
    note: impl Display,
) -> fmt::Result {
    writeln!(
        f,
        "{p}   {:<width$}  {} {}, {blocks} / {bytes} bytes outstanding, {blocks_per_run} blocks ({bytes_per_run} bytes) per run{note}",
        format!("{name}:"),
        Thousands(runs),
        plural(runs, "run", "runs"),
        width = width + 1,
    )
}

/// What a scope table says of a growing scope: `; growing: +64 bytes per
/// run lately` (nothing for one that is not).
pub(crate) struct GrowingNote<'a>(pub(crate) &'a ScopeStats);

impl Display for GrowingNote<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.0.growing {
            write!(
                f,
                "; growing: {} bytes per run lately",
                SignedPerRun(self.0.recent_bytes_per_run)
            )?;
        }
        Ok(())
    }
}

/// "N bytes in M blocks are `<what>` in loss record X of Y", after a blank line.
fn write_record_head(
    f: &mut Formatter<'_>,
    p: &str,
    (bytes, blocks): (u64, u64),
    what: &str,
    (i, n): (usize, usize),
) -> fmt::Result {
    writeln!(f, "{p}")?;
    writeln!(
        f,
        "{p} {} bytes in {} {} are {what} in loss record {} of {}",
        Thousands(bytes),
        Thousands(blocks),
        plural(blocks, "block", "blocks"),
        Thousands(i as u64 + 1),
        Thousands(n as u64),
    )
}

/// A call-site's stack as valgrind shows one (its --num-callers): the first
/// frames, down to `main`.
pub(crate) fn write_stack(f: &mut Formatter<'_>, p: &str, frames: &[Frame]) -> fmt::Result {
    if frames.is_empty() {
        writeln!(
            f,
            "{p}    (no stack: built without frame pointers, or past the call-site cap)"
        )?;
    }
    let shown = frames.iter().take_while(|fr| !is_runtime_boundary(fr));
    for (j, fr) in shown.take(MAX_TEXT_FRAMES).enumerate() {
        write_frame(f, p, j == 0, fr)?;
    }
    Ok(())
}

fn write_frame(f: &mut Formatter<'_>, p: &str, first: bool, fr: &Frame) -> fmt::Result {
    let word = if first { "at" } else { "by" };
    write!(
        f,
        "{p}    {word} {:#x}: {}",
        fr.ip,
        fr.function.as_deref().unwrap_or("???")
    )?;
    writeln!(f, "{}", where_of(fr))
}

/// Where a frame is, as reports show it: ` (file:line)`, ` (file)` or
/// nothing; the standard library's sources as `library/std/...`, not
/// `/rustc/<hash>/library/...`.
pub(crate) fn where_of(fr: &Frame) -> String {
    let file = fr.file.as_deref().map(|p| {
        match p.strip_prefix("/rustc/").and_then(|r| r.split_once('/')) {
            Some((_, rest)) => rest,
            None => p,
        }
    });
    match (file, fr.line) {
        (Some(file), Some(line)) => format!(" ({file}:{line})"),
        (Some(file), None) => format!(" ({file})"),
        _ => String::new(),
    }
}

impl Display for Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // The tracker's own formatting stays out of the counts.
        thread::untracked(|| self.write_text(f))
    }
}

impl Report {
    fn write_text(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let p = format!("=={}==", self.pid);
        writeln!(f, "{p} leakscope: outstanding allocations")?;
        if self.preloaded {
            writeln!(f, "{p} {PRELOADED_NO_SCOPES}")?;
        }
        if self.unwinder == Unwinder::DwarfFallback {
            writeln!(
                f,
                "{p} stacks: DWARF unwinding, since this program is built without frame pointers ({FRAME_POINTERS_FIX})"
            )?;
        }
        // The call-sites this report shows.
        let live: Vec<_> = self
            .callsites
            .iter()
            .filter(|c| c.live_blocks > 0)
            .collect();
        let mut frames = live.iter().flat_map(|c| c.frames.iter()).peekable();
        if frames.peek().is_some() && frames.all(|fr| fr.file.is_none() && fr.line.is_none()) {
            let fix = match self.preloaded {
                true => PRELOADED_LINE_TABLES_FIX,
                false => LINE_TABLES_FIX,
            };
            writeln!(f, "{p} {fix}")?;
        }
        if self.sample_bytes != 0 {
            writeln!(
                f,
                "{p} sampling: a stack per {} bytes allocated on average; call-site and scope figures are estimates, totals and runs are exact",
                Thousands(self.sample_bytes)
            )?;
        }
        if !self.scopes.is_empty() {
            writeln!(f, "{p}")?;
            writeln!(
                f,
                "{p} Scopes (blocks opened in a run of the scope and never freed):"
            )?;
            let width = self.scopes.iter().map(|s| s.name.len()).max().unwrap_or(0);
            for s in &self.scopes {
                let blocks = s.outstanding_blocks;
                write_scope_row(
                    f,
                    (&p, width),
                    (&s.name, s.runs),
                    (
                        format_args!(
                            "{} {}",
                            Thousands(blocks),
                            plural(blocks, "block", "blocks")
                        ),
                        Thousands(s.outstanding_bytes),
                    ),
                    (
                        PerRun(s.blocks_per_run()),
                        PerRun(s.bytes_per_run().round()),
                    ),
                    GrowingNote(s),
                )?;
            }
        }
        if let Some(g) = &self.changes {
            write_growth(f, &p, g)?;
        }

        for (i, c) in live.iter().enumerate() {
            let (bytes, blocks) = (c.live_bytes, c.live_blocks);
            write_record_head(f, &p, (bytes, blocks), "outstanding", (i, live.len()))?;
            write_stack(f, &p, &c.frames)?;
            for s in &self.scopes {
                for sc in s.by_callsite.iter().filter(|sc| sc.callsite == c.id) {
                    writeln!(
                        f,
                        "{p}    in scope \"{}\": {} {} / {} bytes",
                        s.name,
                        Thousands(sc.blocks),
                        plural(sc.blocks, "block", "blocks"),
                        Thousands(sc.bytes)
                    )?;
                }
            }
            writeln!(
                f,
                "{p}    call-site {}: {} {} / {} bytes allocated in total, peak {} bytes live",
                c.id,
                Thousands(c.total_blocks),
                plural(c.total_blocks, "block", "blocks"),
                Thousands(c.total_bytes),
                Thousands(c.peak_live_bytes)
            )?;
        }

        let t = &self.totals;
        writeln!(f, "{p}")?;
        writeln!(f, "{p} SUMMARY:")?;
        writeln!(
            f,
            "{p}    outstanding: {} bytes in {} blocks at {} call-sites",
            Thousands(t.live_bytes),
            Thousands(t.live_blocks),
            Thousands(live.len() as u64)
        )?;
        writeln!(
            f,
            "{p}    allocated:   {} bytes in {} blocks in total",
            Thousands(t.total_bytes),
            Thousands(t.total_blocks)
        )?;
        writeln!(
            f,
            "{p}    peak live:   {} bytes",
            Thousands(t.peak_live_bytes)
        )?;
        if self.untracked_blocks > 0 {
            writeln!(
                f,
                "{p}    untracked:   {} blocks (no memory left for the tracker's tables)",
                Thousands(self.untracked_blocks)
            )?;
        }
        if let Some(lc) = &self.leak_check {
            self.write_leak_check(f, &p, lc)?;
        }
        Ok(())
    }

    /// The full leak check, after the outstanding-allocation report: the
    /// lost kinds' loss records (still reachable ones are in the JSON), then
    /// valgrind's LEAK SUMMARY.
    fn write_leak_check(&self, f: &mut Formatter<'_>, p: &str, lc: &LeakCheck) -> fmt::Result {
        writeln!(f, "{p}")?;
        writeln!(
            f,
            "{p} leakscope: full leak check (reachability, as valgrind --leak-check=full)"
        )?;
        if let Some(why) = &lc.error {
            writeln!(f, "{p}    not done: {why}")?;
            return Ok(());
        }
        let n = lc.loss_records.len();
        for (i, r) in lc.loss_records.iter().enumerate() {
            if r.kind == LeakKind::StillReachable {
                continue;
            }
            let words = r.kind.words();
            write_record_head(f, p, (r.bytes, r.blocks), words, (i, n))?;
            if let Some(c) = self.callsite(r.callsite) {
                write_stack(f, p, &c.frames)?;
            }
            match &r.scope {
                Some(s) => writeln!(
                    f,
                    "{p}    opened in scope \"{s}\" (call-site {})",
                    r.callsite
                )?,
                None => writeln!(f, "{p}    outside any scope (call-site {})", r.callsite)?,
            }
            if let Some(by) = &r.retained_by {
                for line in self.retention_lines(by) {
                    writeln!(f, "{p}    {line}")?;
                }
            }
        }
        let line = |f: &mut Formatter<'_>, label: &str, a: BlockTotal| {
            writeln!(
                f,
                "{p}    {label:>15}: {} bytes in {} blocks",
                Thousands(a.bytes),
                Thousands(a.blocks)
            )
        };
        writeln!(f, "{p}")?;
        writeln!(f, "{p} LEAK SUMMARY:")?;
        line(f, "definitely lost", lc.definitely_lost)?;
        line(f, "indirectly lost", lc.indirectly_lost)?;
        line(f, "possibly lost", lc.possibly_lost)?;
        line(f, "still reachable", lc.still_reachable)?;
        if lc.reachable_via_heuristic.blocks > 0 {
            line(f, "via heuristic", lc.reachable_via_heuristic)?;
        }
        line(f, "suppressed", lc.suppressed)?;
        for u in &lc.suppressions_used {
            writeln!(
                f,
                "{p}    suppression leak:{} hid {} bytes in {} blocks",
                u.pattern,
                Thousands(u.bytes),
                Thousands(u.blocks)
            )?;
        }
        self.write_holders(f, p)
    }

    /// Who holds each scope's outstanding blocks that are still reachable:
    /// its largest retention paths.
    fn write_holders(&self, f: &mut Formatter<'_>, p: &str) -> fmt::Result {
        let held = self.held_scopes();
        if held.is_empty() {
            return Ok(());
        }
        writeln!(f, "{p}")?;
        writeln!(
            f,
            "{p} Who holds the scopes' outstanding blocks (the shortest way from a root):"
        )?;
        for s in held {
            writeln!(f, "{p}   {}:", s.name)?;
            let holders = self.holders(s);
            for (lines, blocks, bytes) in holders.iter().take(MAX_PATHS) {
                writeln!(
                    f,
                    "{p}     {} bytes in {} {}",
                    Thousands(*bytes),
                    Thousands(*blocks),
                    plural(*blocks, "block", "blocks")
                )?;
                for line in lines {
                    writeln!(f, "{p}       {line}")?;
                }
            }
            if holders.len() > MAX_PATHS {
                writeln!(
                    f,
                    "{p}     and {} more paths (the JSON has them all)",
                    holders.len() - MAX_PATHS
                )?;
            }
        }
        Ok(())
    }

    /// The scopes whose outstanding blocks a retention path holds.
    pub(crate) fn held_scopes(&self) -> Vec<&ScopeStats> {
        (self.scopes.iter())
            .filter(|s| s.outstanding_bytes > 0 && !s.retained_by.is_empty())
            .collect()
    }

    /// A scope's retention paths as the text and the page show them: their
    /// lines, blocks and bytes, most bytes first. Paths whose hops read the
    /// same (call-sites that differ only below their first frame) are one.
    pub(crate) fn holders(&self, s: &ScopeStats) -> Vec<(Vec<String>, u64, u64)> {
        let mut out: Vec<(Vec<String>, u64, u64)> = Vec::new();
        for r in &s.retained_by {
            let lines = self.retention_lines(&r.retained_by);
            match out.iter_mut().find(|h| h.0 == lines) {
                Some(h) => {
                    h.1 += r.blocks;
                    h.2 += r.bytes;
                }
                None => out.push((lines, r.blocks, r.bytes)),
            }
        }
        out.sort_by_key(|h| std::cmp::Reverse((h.2, h.1)));
        out
    }

    /// A retention path as lines: `held by static `app::CACHE``, then each
    /// hop, `-> a block from app::cache_user (src/cache.rs:12)`, the last
    /// being the blocks themselves.
    pub(crate) fn retention_lines(&self, r: &Retention) -> Vec<String> {
        let thread = r.root.thread.as_deref().unwrap_or("?");
        let mut lines = vec![match r.root.kind {
            RootKind::Static => match &r.root.name {
                Some(name) => format!("held by static `{name}`"),
                None => "held by a static (no symbol)".to_owned(),
            },
            RootKind::Stack => match &r.root.function {
                Some(function) => {
                    format!("held by the stack of thread `{thread}`, in `{function}`")
                }
                None => format!("held by the stack of thread `{thread}`"),
            },
            RootKind::Tls => format!("held by thread-local storage of thread `{thread}`"),
            RootKind::Register => format!("held by a register of thread `{thread}`"),
        }];
        for (i, &site) in r.path.iter().enumerate() {
            let at = match self.callsite(site).and_then(|c| c.frames.first()) {
                Some(fr) => format!(
                    "{}{}",
                    fr.function.as_deref().unwrap_or("???"),
                    where_of(fr)
                ),
                None => format!("call-site {site}"),
            };
            let what = if i + 1 == r.path.len() {
                "these blocks"
            } else {
                "a block"
            };
            lines.push(format!("-> {what}, from {at}"));
        }
        if r.via_heuristic {
            lines.push(
                "(a hop is a pointer inside a block, explained by a heuristic: a HashMap's table, or a length before the data)"
                    .to_owned(),
            );
        }
        lines
    }
}

/// Retention paths of a scope the text shows (the JSON has them all).
const MAX_PATHS: usize = 3;

#[cfg(test)]
mod tests {
    use super::{PerRun, Signed, SignedPerRun, Thousands};

    #[test]
    fn thousands() {
        assert_eq!(Thousands(0).to_string(), "0");
        assert_eq!(Thousands(999).to_string(), "999");
        assert_eq!(Thousands(1000).to_string(), "1,000");
        assert_eq!(Thousands(150_000).to_string(), "150,000");
        assert_eq!(Thousands(1_234_567).to_string(), "1,234,567");
    }

    #[test]
    fn growth_per_run() {
        assert_eq!(PerRun(3.0).to_string(), "+3");
        assert_eq!(PerRun(0.0).to_string(), "+0");
        assert_eq!(PerRun(2.5).to_string(), "+2.50");
        assert_eq!(PerRun(0.333_333).to_string(), "+0.33");
        assert_eq!(PerRun(96_000.4).to_string(), "+96,000");
    }

    #[test]
    fn signed_changes() {
        assert_eq!(Signed(0).to_string(), "+0");
        assert_eq!(Signed(1234).to_string(), "+1,234");
        assert_eq!(Signed(-56_789).to_string(), "-56,789");
        assert_eq!(SignedPerRun(0.41).to_string(), "+0.41");
        assert_eq!(SignedPerRun(-2.0).to_string(), "-2");
        assert_eq!(SignedPerRun(-1500.2).to_string(), "-1,500");
        assert_eq!(SignedPerRun(-0.001).to_string(), "+0");
    }
}
