//! Leak suppressions, in LeakSanitizer's format.
//!
//! Owns `LEAKSCOPE_SUPPRESSIONS`. A file holds
//! `leak:<pattern>` lines (blank lines and `#` comments are skipped). A
//! pattern matches a lost block when it matches the function, the source
//! file or the module of any frame of the stack that made it (the frames a
//! report shows: the allocator's own are left out). `*` matches any run of
//! characters; a pattern matches anywhere in a name unless it starts with
//! `^` or ends with `$`. leakscope's own `growth:<pattern>` lines allow a
//! growth the program means (an in-memory request log): a growing scope
//! whose name the pattern matches does not fail the gate. A malformed line
//! is reported with its line number and skipped; an unreadable file is
//! reported and the check goes on.
//!
//! The Rust runtime's one-time blocks (stdout's buffer, the main thread's
//! handle and thread-locals) are held from statics and static TLS, which
//! the check scans, so a clean program reports nothing lost without any
//! suppression (`allocator-tests/leak_check.rs` checks this). Two built-in
//! ones, as LeakSanitizer has, cover what glibc allocates for threads'
//! thread-local storage (seen with feature `c-heap`): an exited thread's
//! TLS vector (`_dl_allocate_tls`) is held from the thread's descriptor in
//! glibc's cache of stacks, and the main thread's dynamic TLS blocks
//! (`__tls_get_addr`) from its vector, in memory the check does not scan.

use crate::alloc::callsite::{self, Origin};
use crate::report::model::Frame;
use crate::report::symbolize::{loaded_object, Symbolizer};
use crate::report::warn::warn;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// The patterns in force, from the file.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Suppressions {
    /// `leak:` patterns, matched against stacks: the file's, then the
    /// built-in ones, which only C blocks' stacks can match.
    patterns: Vec<String>,
    /// How many of `patterns` are the file's.
    from_file: usize,
    /// `growth:` patterns, matched against scope names.
    growth: Vec<String>,
}

impl Suppressions {
    pub(crate) fn pattern(&self, i: usize) -> &str {
        self.patterns.get(i).map_or("", String::as_str)
    }

    /// Whether a `growth:` line allows scope `name` to grow.
    pub(crate) fn allows_growth(&self, name: &str) -> bool {
        self.growth.iter().any(|p| matches(p, name))
    }

    /// Parses a file's text; malformed lines come back as (line number, why).
    pub(crate) fn parse(text: &str) -> (Suppressions, Vec<(usize, String)>) {
        let mut s = Suppressions::default();
        let mut bad = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kind, list) = if let Some(p) = line.strip_prefix("leak:") {
                (("leak:", p), &mut s.patterns)
            } else if let Some(p) = line.strip_prefix("growth:") {
                (("growth:", p), &mut s.growth)
            } else {
                let why = format!("{line:?} is not leak:<pattern> or growth:<scope pattern>");
                bad.push((n + 1, why));
                continue;
            };
            match kind.1.trim() {
                "" => bad.push((n + 1, format!("empty pattern after {}", kind.0))),
                p => list.push(p.to_owned()),
            }
        }
        (s, bad)
    }
}

static WARNED: AtomicBool = AtomicBool::new(false);

/// The suppressions now: `LEAKSCOPE_SUPPRESSIONS`'s file. Problems with the
/// file are reported on stderr, once per process.
pub(crate) fn current() -> Suppressions {
    let mut s = read_file();
    s.from_file = s.patterns.len();
    s.patterns.extend(BUILT_IN.iter().map(|p| (*p).to_owned()));
    s
}

/// glibc's thread-local storage (see the module).
const BUILT_IN: [&str; 2] = ["_dl_allocate_tls", "__tls_get_addr"];

fn read_file() -> Suppressions {
    let Some(path) = std::env::var_os("LEAKSCOPE_SUPPRESSIONS") else {
        return Suppressions::default();
    };
    let path = path.to_string_lossy().into_owned();
    // Said once per process, not at every check.
    let first = !WARNED.swap(true, Ordering::Relaxed);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (found, bad) = Suppressions::parse(&text);
            if first {
                for (line, why) in bad {
                    warn(&format!("{path}:{line}: {why}; line skipped"));
                }
            }
            found
        }
        Err(e) => {
            if first {
                warn(&format!(
                    "cannot read LEAKSCOPE_SUPPRESSIONS file {path}: {e}; nothing is suppressed"
                ));
            }
            Suppressions::default()
        }
    }
}

/// Whether `pattern` matches `text` (LeakSanitizer's rules, see the module).
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let (start, p) = match pattern.strip_prefix('^') {
        Some(p) => (true, p),
        None => (false, pattern),
    };
    let (end, p) = match p.strip_suffix('$') {
        Some(p) => (true, p),
        None => (false, p),
    };
    let parts: Vec<&str> = p.split('*').collect();
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        let first = i == 0;
        let last = i == parts.len() - 1;
        let rest = &text[at..];
        if first && start {
            if !rest.starts_with(part) {
                return false;
            }
            at += part.len();
            if last && end {
                return at == text.len();
            }
            continue;
        }
        if last && end {
            return rest.len() >= part.len() && rest.ends_with(part);
        }
        match rest.find(part) {
            Some(j) => at += j + part.len(),
            None => return false,
        }
    }
    true
}

/// Matches call-sites against the suppressions, symbolizing each once.
#[derive(Default)]
pub(crate) struct Matcher {
    verdicts: HashMap<u32, Option<usize>>,
    symbols: Symbolizer,
}

impl Matcher {
    /// The index of the first pattern that matches call-site `site`.
    pub(crate) fn suppressed(&mut self, s: &Suppressions, site: u32) -> Option<usize> {
        let c = callsite::get(site);
        // A Rust block's stack is symbolized only for a file's patterns.
        let patterns = match c.map(|c| c.origin()) {
            Some(Origin::C) => &s.patterns[..],
            _ => s.patterns.get(..s.from_file).unwrap_or(&[]),
        };
        if patterns.is_empty() {
            return None;
        }
        if let Some(&v) = self.verdicts.get(&site) {
            return v;
        }
        let ips = c.map(|c| c.frames()).unwrap_or_default();
        let frames = self.symbols.stack(&ips);
        let v = patterns
            .iter()
            .position(|p| frames.iter().any(|f| frame_matches(p, f)));
        self.verdicts.insert(site, v);
        v
    }
}

fn frame_matches(pattern: &str, f: &Frame) -> bool {
    f.function.as_deref().is_some_and(|n| matches(pattern, n))
        || f.file.as_deref().is_some_and(|n| matches(pattern, n))
        || loaded_object(f.ip).is_some_and(|o| matches(pattern, &o.file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_lsan_does() {
        assert!(matches("cache", "app::cache::insert"));
        assert!(matches("app::*::insert", "app::cache::insert"));
        assert!(matches("^app::", "app::cache::insert"));
        assert!(!matches("^cache", "app::cache::insert"));
        assert!(matches("insert$", "app::cache::insert"));
        assert!(!matches("cache$", "app::cache::insert"));
        assert!(matches("^app::cache::insert$", "app::cache::insert"));
        assert!(!matches("^app::cache$", "app::cache::insert"));
        assert!(matches("libfoo.so", "/usr/lib/libfoo.so.1"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn malformed_lines_are_reported_with_their_numbers() {
        let text = "# comment\nleak:app::cache\n\nleek:oops\nleak:\n  leak: ^std::rt \n\
                    growth:^POST /log$\ngrowth: \n";
        let (found, bad) = Suppressions::parse(text);
        assert_eq!(
            found,
            Suppressions {
                patterns: vec!["app::cache".to_owned(), "^std::rt".to_owned()],
                from_file: 0,
                growth: vec!["^POST /log$".to_owned()],
            }
        );
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![4, 5, 8]);
        assert!(found.allows_growth("POST /log"));
        assert!(!found.allows_growth("POST /login"));
    }
}
