//! `leakscope diff`: what grew between two saved reports, and the number
//! formatting the command's text shares.
//!
//! Scopes are matched by name (the library's `scope_changes_since`).
//! Call-sites are matched by their symbolized stack (function, file and
//! line of each frame), not by id or address: two runs of one program
//! compare as well as two reports of one process.

use leakscope::report::{Frame, Report, ScopeChange};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// Frames of a stack the text shows (the JSON has them all).
const SHOWN_FRAMES: usize = 8;

pub(crate) struct Diff {
    seconds: f64,
    pids: (u32, u32),
    scopes: Vec<ScopeChange>,
    /// Call-sites whose live blocks or bytes changed: their frames (from
    /// the later report when it has them) and the change; largest first.
    callsites: Vec<(Vec<Frame>, i64, i64)>,
}

/// A stack as the two reports can share it: each frame's function, file
/// and line. Addresses differ from run to run (the loader places objects
/// anew), so a frame without a symbol is only `???`.
fn key(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match &f.function {
            Some(name) => format!(
                "{name} {}:{}",
                f.file.as_deref().unwrap_or(""),
                f.line.unwrap_or(0)
            ),
            None => "???".to_owned(),
        })
        .collect()
}

impl Diff {
    pub(crate) fn between(before: &Report, after: &Report) -> Diff {
        let mut sites: HashMap<Vec<String>, (Vec<Frame>, i64, i64)> = HashMap::new();
        for (report, sign) in [(before, -1i64), (after, 1)] {
            for c in &report.callsites {
                let e = sites
                    .entry(key(&c.frames))
                    .or_insert_with(|| (Vec::new(), 0, 0));
                if sign > 0 || e.0.is_empty() {
                    e.0.clone_from(&c.frames);
                }
                e.1 += sign * c.live_blocks as i64;
                e.2 += sign * c.live_bytes as i64;
            }
        }
        let mut callsites: Vec<_> = sites
            .into_values()
            .filter(|(_, blocks, bytes)| (*blocks, *bytes) != (0, 0))
            .collect();
        callsites.sort_by(|a, b| (b.2, b.1, key(&a.0)).cmp(&(a.2, a.1, key(&b.0))));
        Diff {
            seconds: after.seconds - before.seconds,
            pids: (before.pid, after.pid),
            scopes: after.scope_changes_since(before),
            callsites,
        }
    }

    pub(crate) fn to_text(&self, before: &Path, after: &Path) -> String {
        let mut out = format!(
            "leakscope diff: {} (pid {}) -> {} (pid {})",
            before.display(),
            self.pids.0,
            after.display(),
            self.pids.1
        );
        if self.pids.0 == self.pids.1 {
            out += &format!(", {:.2} s apart", self.seconds);
        }
        out += "\n\nScopes that ran or changed in between, largest growth first:\n";
        if self.scopes.is_empty() {
            out += "  none\n";
        }
        let width = self.scopes.iter().map(|s| s.name.len()).max().unwrap_or(0) + 1;
        for s in &self.scopes {
            out += &format!(
                "  {:<width$}  +{} runs, {} blocks / {} bytes outstanding, {} blocks ({} bytes) per run\n",
                format!("{}:", s.name),
                thousands(s.runs),
                signed(s.outstanding_blocks),
                signed(s.outstanding_bytes),
                signed_number(s.blocks_per_run()),
                signed_number(s.bytes_per_run()),
            );
        }
        out += "\nCall-sites whose live blocks changed, largest growth first:\n";
        if self.callsites.is_empty() {
            out += "  none\n";
        }
        for (frames, blocks, bytes) in &self.callsites {
            out += &format!(
                "\n  {} bytes in {} blocks\n",
                signed(*bytes),
                signed(*blocks)
            );
            for (i, f) in frames.iter().take(SHOWN_FRAMES).enumerate() {
                let word = if i == 0 { "at" } else { "by" };
                out += &format!("     {word} {}\n", frame_text(f));
                if f.function.as_deref().is_some_and(|n| n.ends_with("::main")) {
                    break;
                }
            }
        }
        out
    }

    pub(crate) fn to_json(&self, before: &Path, after: &Path) -> String {
        let frame = |f: &Frame| {
            json!({
                "ip": format!("{:#x}", f.ip),
                "function": f.function,
                "file": f.file,
                "line": f.line,
            })
        };
        let doc = json!({
            "before": {"path": before.display().to_string(), "pid": self.pids.0},
            "after": {"path": after.display().to_string(), "pid": self.pids.1},
            "seconds": self.seconds,
            "scopes": self.scopes.iter().map(|s| json!({
                "name": s.name,
                "runs": s.runs,
                "outstanding_blocks": s.outstanding_blocks,
                "outstanding_bytes": s.outstanding_bytes,
                "blocks_per_run": s.blocks_per_run(),
                "bytes_per_run": s.bytes_per_run(),
            })).collect::<Vec<Value>>(),
            "callsites": self.callsites.iter().map(|(frames, blocks, bytes)| json!({
                "live_blocks": blocks,
                "live_bytes": bytes,
                "frames": frames.iter().map(frame).collect::<Vec<Value>>(),
            })).collect::<Vec<Value>>(),
        });
        doc.to_string() + "\n"
    }
}

/// `function (file:line)`, as the reports show a frame.
fn frame_text(f: &Frame) -> String {
    let name = f.function.clone().unwrap_or_else(|| format!("{:#x}", f.ip));
    match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("{name} ({file}:{line})"),
        (Some(file), None) => format!("{name} ({file})"),
        _ => name,
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `+1,234`, `-56`, `+0`.
fn signed(n: i64) -> String {
    let sign = if n < 0 { '-' } else { '+' };
    format!("{sign}{}", thousands(n.unsigned_abs()))
}

/// `7`, `1.34`, `1,024`: whole when it is.
pub(crate) fn number(v: f64) -> String {
    if (v - v.round()).abs() < 0.005 || v.abs() >= 1000.0 {
        let n = v.round();
        if n < 0.0 {
            format!("-{}", thousands(n.abs() as u64))
        } else {
            thousands(n as u64)
        }
    } else {
        format!("{v:.2}")
    }
}

/// [`number`] with its sign: `+7`, `-0.50`, `+0`.
fn signed_number(v: f64) -> String {
    if v <= -0.005 {
        number(v)
    } else {
        format!("+{}", number(v.max(0.0)))
    }
}
