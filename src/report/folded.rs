//! The report as folded stacks (the input of flamegraph.pl and inferno):
//! one line per call-site and scope that holds live bytes, its frames
//! outermost first, the scope as the root frame, then the bytes.
//!
//! ```text
//! GET /users;main;serve;handle;users 4096
//! [no scope];main;init;load_config 512
//! ```

use crate::alloc::thread;
use crate::report::model::{Frame, Report};
use std::fmt::Write;

/// The root frame of blocks opened outside any scope.
pub(crate) const NO_SCOPE: &str = "[no scope]";

impl Report {
    /// Live bytes as folded stacks, one line per call-site and scope (the
    /// scope, or `[no scope]`, as the root frame): what flamegraph.pl and
    /// inferno draw. Lines without live bytes are left out.
    pub fn to_folded(&self) -> String {
        thread::untracked(|| {
            let mut out = String::new();
            for p in self.parts().iter().filter(|p| p.bytes > 0) {
                out.push_str(&frame_name(p.scope.unwrap_or(NO_SCOPE)));
                for f in p.site.frames.iter().rev() {
                    out.push(';');
                    out.push_str(&frame_name(&function_of(f)));
                }
                let _ = writeln!(out, " {}", p.bytes);
            }
            out
        })
    }
}

/// A frame's function, or its address when it has no symbol.
pub(crate) fn function_of(f: &Frame) -> String {
    match &f.function {
        Some(name) => name.clone(),
        None => format!("{:#x}", f.ip),
    }
}

/// A name as one folded frame: `;` separates frames and a line ends the
/// stack, so neither may appear inside one.
fn frame_name(name: &str) -> String {
    name.replace([';', '\n', '\r'], "_")
}

#[cfg(feature = "formats")]
impl Report {
    /// A flamegraph (SVG, drawn by inferno) of the live bytes: the folded
    /// stacks of [`Report::to_folded`], each scope a tower of its own.
    pub fn write_flamegraph(&self, mut w: impl std::io::Write) -> std::io::Result<()> {
        thread::untracked(|| {
            let folded = self.to_folded();
            if folded.is_empty() {
                return w.write_all(EMPTY_SVG.as_bytes());
            }
            let mut opt = inferno::flamegraph::Options::default();
            opt.title = format!("leakscope: live bytes by scope, process {}", self.pid);
            if self.sample_bytes > 0 {
                opt.subtitle = Some(format!(
                    "sampling mode, one stack per {} bytes: estimates",
                    self.sample_bytes
                ));
            }
            opt.count_name = "bytes".to_owned();
            inferno::flamegraph::from_lines(&mut opt, folded.lines(), w)
        })
    }
}

/// The flamegraph of a report with no live bytes.
#[cfg(feature = "formats")]
const EMPTY_SVG: &str = concat!(
    r#"<?xml version="1.0" standalone="no"?>"#,
    "\n",
    r#"<svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg">"#,
    r#"<text x="600" y="34" text-anchor="middle" font-family="Verdana" font-size="17">leakscope: no live bytes</text></svg>"#,
    "\n"
);

#[cfg(test)]
mod tests {
    use crate::report::model::{
        Callsite, Frame, Origin, Report, ScopeCallsite, ScopeStats, Totals, Unwinder,
    };

    fn frame(ip: usize, name: Option<&str>) -> Frame {
        Frame {
            ip,
            function: name.map(str::to_owned),
            file: None,
            line: None,
        }
    }

    fn site(id: u32, live_blocks: u64, live_bytes: u64, frames: Vec<Frame>) -> Callsite {
        Callsite {
            id,
            live_blocks,
            live_bytes,
            total_blocks: live_blocks + 1,
            total_bytes: live_bytes + 10,
            peak_live_bytes: live_bytes,
            frames,
            origin: Origin::Rust,
        }
    }

    fn planted() -> Report {
        Report {
            pid: 7,
            totals: Totals::default(),
            callsites: vec![
                // Innermost first, as reports hold them.
                site(
                    1,
                    5,
                    500,
                    vec![frame(0x10, Some("leaf;x")), frame(0x20, Some("main"))],
                ),
                site(2, 1, 64, vec![frame(0x30, None), frame(0x20, Some("main"))]),
                site(3, 0, 0, vec![frame(0x40, Some("freed"))]),
            ],
            scopes: vec![ScopeStats {
                name: "GET /a".to_owned(),
                runs: 3,
                outstanding_blocks: 3,
                outstanding_bytes: 300,
                by_callsite: vec![ScopeCallsite {
                    callsite: 1,
                    blocks: 3,
                    bytes: 300,
                }],
                retained_by: Vec::new(),
                growing: false,
                recent_bytes_per_run: 0.0,
            }],
            untracked_blocks: 0,
            sample_bytes: 0,
            leak_check: None,
            changes: None,
            seconds: 0.0,
            unwinder: Unwinder::FramePointers,
            timeline: None,
            preloaded: false,
            in_process: true,
        }
    }

    #[test]
    fn folds_by_scope_root_first() {
        assert_eq!(
            planted().to_folded(),
            "[no scope];main;leaf_x 200\nGET /a;main;leaf_x 300\n[no scope];main;0x30 64\n"
        );
    }

    #[cfg(feature = "formats")]
    #[test]
    fn an_empty_flamegraph_is_svg() {
        let mut r = planted();
        r.callsites.clear();
        let mut svg = Vec::new();
        r.write_flamegraph(&mut svg).unwrap();
        let text = String::from_utf8(svg).unwrap();
        let mut reader = quick_xml::Reader::from_str(&text);
        let mut names = Vec::new();
        loop {
            match reader.read_event().unwrap() {
                quick_xml::events::Event::Start(e) => names.push(e.name().as_ref().to_vec()),
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(names, [b"svg".to_vec(), b"text".to_vec()]);
    }
}
