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
