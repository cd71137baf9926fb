//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not
//! part of the API, hidden as `leakscope::__fuzz`). Each hands input from
//! outside the program to the parser that reads it in a host process: a
//! panic here is a panic of someone's service at start-up or at exit.
//! The report's JSON needs none: `Report::from_json` is public.

use crate::alloc::{cfi, sample, unwind};
use crate::check::suppress::{matches, Suppressions};
use crate::report::dwarf::Program;
use crate::serve::{env, signal, timeline};

/// Every `LEAKSCOPE_*` value's parser, and the `/proc/self/maps` line
/// readers, on `value`; how many accepted it.
pub fn env_value(value: &str) -> usize {
    let (dests, _) = env::Dest::parse(value);
    let mut ok = dests.len();
    ok += usize::from(env::parse_leak_check(value).is_ok());
    ok += usize::from(env::parse_exitcode(value).is_ok());
    ok += usize::from(signal::parse_signal(value).is_ok());
    ok += usize::from(timeline::parse_ms(value).is_ok());
    ok += usize::from(env::parse_metrics_sites(value).is_ok());
    ok += usize::from(sample::parse_bytes(value.as_bytes()).is_some());
    ok += usize::from(unwind::maps_line(value.as_bytes()).is_some());
    #[cfg(feature = "formats")]
    {
        ok += usize::from(crate::report::pprof::parse_mapping(value).is_some());
    }
    ok
}

/// A suppressions file's text, parsed; each pattern then matched against
/// each line of the text (as function names, files and object paths are).
pub fn suppressions(text: &str) -> usize {
    let (s, _bad) = Suppressions::parse(text);
    let mut matched = 0;
    for i in 0..64 {
        let pattern = s.pattern(i);
        if pattern.is_empty() {
            break;
        }
        matched += text
            .lines()
            .take(64)
            .filter(|l| matches(pattern, l))
            .count();
    }
    matched + text.lines().take(64).filter(|l| s.allows_growth(l)).count()
}

/// An object file at `path`, read as the report reads a loaded object's
/// debug info and symbols; how many frames it named.
pub fn debug_info(path: &str) -> usize {
    Program::fuzz(path)
}

/// The call frame rules of an ELF object in `image`, looked up as the
/// stack walk does at every 7th byte of its code (at most 4096 lookups),
/// with `image` standing for the loaded object (file offsets as
/// addresses, as in an object's first segment); how many rules it found.
pub fn cfi_rules(image: &[u8]) -> usize {
    use object::{Object, ObjectSection};
    let Ok(obj) = object::File::parse(image) else {
        return 0;
    };
    let range = |name: &str| {
        let s = obj.section_by_name(name)?;
        let (off, len) = s.file_range()?;
        Some((usize::try_from(off).ok()?, usize::try_from(len).ok()?))
    };
    let (Some(hdr), Some(text)) = (range(".eh_frame_hdr"), range(".text")) else {
        return 0;
    };
    let at = (text.0..text.0.saturating_add(text.1))
        .step_by(7)
        .take(4096);
    cfi::fuzz_rules(image, hdr, text, at)
}
