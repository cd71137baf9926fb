//! Symbolization: from return addresses to the frames a report shows.
//!
//! Owns [`Symbolizer`] (each address resolved once per report: this
//! program's debug info through [`crate::report::dwarf`], the backtrace
//! crate where that reader cannot go) and which frames are the allocator's own, the standard library's
//! allocation plumbing or the user's code, so that a stack starts at the
//! code that allocated. Never runs on the allocation path.

use crate::report::dwarf::{demangle, DataSymbols, Kept, Program};
use crate::report::model::Frame;
use std::collections::HashMap;

/// What a frame is to the allocating stack: the allocator, the standard
/// library's allocation plumbing, or the code that allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `__rust_alloc` and friends: everything inside them is the allocator.
    Shim,
    /// leakscope itself.
    Tracker,
    /// `alloc::`/`core::` code between the user's call and the allocator.
    Plumbing,
    User,
}

/// leakscope's own sources, as the debug info names them.
const OWN_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

impl Role {
    /// By name where the name is qualified; by source file too, because the
    /// names of inlined frames in line-tables-only debug info are bare
    /// (`alloc`, `with_capacity<u8>`).
    fn of(name: &str, path: Option<&str>) -> Role {
        let path = path.unwrap_or("");
        if is_alloc_shim(name) {
            Role::Shim
        } else if is_tracker_frame(name) || path.starts_with(OWN_SRC) {
            Role::Tracker
        } else if is_std_alloc_frame(name) || is_std_alloc_file(path) {
            Role::Plumbing
        } else {
            Role::User
        }
    }
}

/// Symbolizes return addresses, each once per report.
///
/// The object this crate is linked into (the program, for a Rust binary:
/// its code and the standard library's) has its debug info read, for
/// function, file and line, inlined frames included, one unit at a time
/// ([`Program`]); so has the executable when that is another object. A
/// frame in another loaded object (a C library, a
/// plugin) gets function, file and line from that object's own debug info
/// when its file carries it; otherwise (libc, the dynamic loader, a
/// stripped library) it is named from the object's dynamic symbols,
/// `symbol+0xoffset` as glibc's backtraces write it, without file or line:
/// debug info installed apart (`/usr/lib/debug`) is often a compressed file
/// of its own that would cost tens of megabytes to read for the frames
/// below `main`, and is not looked for.
#[derive(Default)]
pub(crate) struct Symbolizer {
    cache: HashMap<usize, Vec<(Frame, Role)>>,
    cwd: Option<String>,
    /// Load address of the object holding this code (0: not looked up yet).
    own_base: usize,
    /// That object's debug info, read on the first lookup (`None` inside:
    /// none this reader can use, so the backtrace crate resolves).
    program: Option<Option<Program>>,
    /// The program's own executable when it is another object than this
    /// crate's (leakscope preloaded, or linked as a shared library): its
    /// load address (0: not looked up yet) and its debug info, read on the
    /// first frame in it (or kept from an earlier report), so that its
    /// frames get files and lines too.
    exe: (usize, Option<Option<Program>>),
    /// The debug info of each other shared object a frame lies in, by load
    /// address (`None` inside: its file has none this reader can use).
    libraries: HashMap<usize, Option<Program>>,
    /// The statics of each loaded object a static root lies in, by file
    /// (`None` inside: the file could not be read).
    statics: HashMap<String, Option<DataSymbols>>,
}

impl Drop for Symbolizer {
    /// The debug info read so far goes back for the next report.
    fn drop(&mut self) {
        if let Some(Some(program)) = self.program.take() {
            program.keep(Kept::Own);
        }
        if let Some(Some(program)) = self.exe.1.take() {
            program.keep(Kept::Executable);
        }
    }
}

impl Symbolizer {
    /// The frames of a stack, innermost first, allocator frames left out.
    pub(crate) fn stack(&mut self, ips: &[usize]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for &ip in ips {
            if !self.cache.contains_key(&ip) {
                let resolved = self.resolve(ip);
                self.cache.insert(ip, resolved);
            }
            if let Some(f) = self.cache.get(&ip) {
                frames.extend(f.iter().cloned());
            }
        }
        strip_allocator_frames(frames)
    }

    /// The symbol of the static that holds data address `addr`
    /// (`my_app::USER_CACHE`), from the symbol table of the object it is in;
    /// where that file cannot be read, the loader's dynamic symbol.
    pub(crate) fn data_symbol(&mut self, addr: usize) -> Option<String> {
        let o = loaded_object(addr)?;
        let symbols = (self.statics.entry(o.file.clone()))
            .or_insert_with(|| DataSymbols::load(&o.file, o.base));
        match symbols {
            Some(s) => s.name(addr),
            None => o.symbol.map(|(name, _)| demangle(&name)),
        }
    }

    fn resolve(&mut self, ip: usize) -> Vec<(Frame, Role)> {
        if self.cwd.is_none() {
            let mut cwd = std::env::current_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if !cwd.is_empty() && !cwd.ends_with('/') {
                cwd.push('/');
            }
            self.cwd = Some(cwd);
        }
        if self.own_base == 0 {
            let here = Symbolizer::resolve as fn(&mut Symbolizer, usize) -> _ as usize;
            let own = loaded_object(here);
            self.own_base = own.as_ref().map_or(usize::MAX, |o| o.base);
            self.program = Some(own.and_then(|o| {
                Program::take_kept(Kept::Own).or_else(|| Program::load(&o.file, o.base))
            }));
        }
        match loaded_object(ip) {
            Some(o) if o.base != self.own_base => {
                if self.exe.0 == 0 {
                    self.exe.0 = executable_base().unwrap_or(usize::MAX);
                }
                if o.base != self.exe.0 {
                    // Another shared object (a C library, a plugin): its
                    // own debug info when the file carries it, read once.
                    let lib = (self.libraries.entry(o.base))
                        .or_insert_with(|| Program::load(&o.file, o.base));
                    return lib
                        .as_mut()
                        .and_then(|p| frames_from(p, ip))
                        .unwrap_or_else(|| vec![foreign_frame(ip, &o)]);
                }
                let exe = self.exe.1.get_or_insert_with(|| {
                    Program::take_kept(Kept::Executable).or_else(|| Program::load(&o.file, o.base))
                });
                return exe
                    .as_mut()
                    .and_then(|p| frames_from(p, ip))
                    .unwrap_or_else(|| vec![foreign_frame(ip, &o)]);
            }
            _ => {}
        }
        let own = self.program.as_mut().and_then(Option::as_mut);
        if let Some(found) = own.and_then(|p| frames_from(p, ip)) {
            return found;
        }
        let cwd = self.cwd.as_deref().unwrap_or("");
        let mut out = Vec::new();
        // A return address points after the call; the call itself is one byte before.
        backtrace::resolve(ip.saturating_sub(1) as *mut std::ffi::c_void, |sym| {
            let path = sym.filename().map(|p| p.display().to_string());
            let function = sym.name().map(|n| format!("{n:#}"));
            let role = Role::of(function.as_deref().unwrap_or(""), path.as_deref());
            let file = path.map(|p| match p.strip_prefix(cwd) {
                Some(rel) if !cwd.is_empty() => rel.to_owned(),
                _ => p,
            });
            let frame = Frame {
                ip,
                function,
                file,
                line: sym.lineno(),
            };
            out.push((frame, role));
        });
        if out.is_empty() {
            let frame = Frame {
                ip,
                function: None,
                file: None,
                line: None,
            };
            out.push((frame, Role::User));
        }
        out
    }
}

/// What the dynamic loader knows of the object holding an address.
pub(crate) struct LoadedObject {
    /// Where the object is loaded.
    pub(crate) base: usize,
    /// Its file name, as the loader has it.
    pub(crate) file: String,
    /// The nearest dynamic symbol at or below the address, with its address.
    symbol: Option<(String, usize)>,
}

/// The loaded object holding `ip` (`dladdr`).
pub(crate) fn loaded_object(ip: usize) -> Option<LoadedObject> {
    // SAFETY: dladdr fills the struct; the names it points to belong to the
    // loader and are copied at once.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(ip as *const libc::c_void, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let text = |p: *const libc::c_char| std::ffi::CStr::from_ptr(p).to_string_lossy();
        let symbol = (!info.dli_sname.is_null() && !info.dli_saddr.is_null())
            .then(|| (text(info.dli_sname).into_owned(), info.dli_saddr as usize));
        Some(LoadedObject {
            base: info.dli_fbase as usize,
            file: text(info.dli_fname).into_owned(),
            symbol,
        })
    }
}

/// The frames `program` reads at `ip`, each with its role.
fn frames_from(program: &mut Program, ip: usize) -> Option<Vec<(Frame, Role)>> {
    let found = program.frames(ip)?;
    let frames = (found.into_iter())
        .map(|l| {
            let role = Role::of(l.function.as_deref().unwrap_or(""), l.file.as_deref());
            let file = l.file.as_deref().map(|p| program.shown_path(p).to_owned());
            let frame = Frame {
                ip,
                function: l.function,
                file,
                line: l.line,
            };
            (frame, role)
        })
        .collect();
    Some(frames)
}

/// Whether this copy of leakscope was preloaded (`LD_PRELOAD`, as
/// `leakscope run` does) into a program that does not link it: its code is
/// in a shared object, not in the executable, and that object is one
/// `LD_PRELOAD` names.
pub(crate) fn preloaded() -> bool {
    static PRELOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRELOADED.get_or_init(|| {
        let Some(own) = loaded_object(preloaded as *const () as usize) else {
            return false;
        };
        let name = own.file.rsplit('/').next().unwrap_or("");
        !name.is_empty() && ld_preload_lists(|n| n == name) && executable_base() != Some(own.base)
    })
}

/// Whether `LD_PRELOAD` lists a file whose name (without its directory)
/// `wanted` accepts.
pub(crate) fn ld_preload_lists(wanted: impl Fn(&str) -> bool) -> bool {
    std::env::var("LD_PRELOAD").is_ok_and(|list| {
        (list.split([':', ' '])).any(|entry| entry.rsplit('/').next().is_some_and(&wanted))
    })
}

/// The load address of the program's executable: the object holding its
/// program headers, which the loader passes in the auxiliary vector.
fn executable_base() -> Option<usize> {
    // SAFETY: getauxval reads the auxiliary vector; 0 when absent.
    let phdr = unsafe { libc::getauxval(libc::AT_PHDR) } as usize;
    (phdr != 0)
        .then(|| loaded_object(phdr))
        .flatten()
        .map(|o| o.base)
}

/// A frame in another object than this crate's: its dynamic symbol (demangled)
/// and the offset into it, no file or line.
fn foreign_frame(ip: usize, o: &LoadedObject) -> (Frame, Role) {
    let function = o
        .symbol
        .as_ref()
        .map(|(name, at)| format!("{}+{:#x}", demangle(name), ip.saturating_sub(*at)));
    let role = Role::of(function.as_deref().unwrap_or(""), None);
    let frame = Frame {
        ip,
        function,
        file: None,
        line: None,
    };
    (frame, role)
}

/// Leaves out the frames of the tracker, the allocator shims and the standard
/// library's allocation plumbing (`alloc::`, `core::`), so that the first frame
/// is the user's code that allocated. Keeps everything if that would leave nothing.
fn strip_allocator_frames(frames: Vec<(Frame, Role)>) -> Vec<Frame> {
    // Everything up to the global allocator's entry (`__rust_alloc` and
    // friends) is the allocator itself; without a shim in the stack (a direct
    // `GlobalAlloc` call, or a shim inlined away), the leading frames of the
    // tracker are.
    let own = match frames.iter().position(|(_, r)| *r == Role::Shim) {
        Some(i) => i + 1,
        None => frames
            .iter()
            .position(|(_, r)| *r != Role::Tracker)
            .unwrap_or(frames.len()),
    };
    let user = frames
        .iter()
        .skip(own)
        .position(|(_, r)| !matches!(r, Role::Plumbing | Role::Tracker))
        .map(|i| i + own);
    let start = match user {
        Some(i) => i,
        None if own < frames.len() => own,
        None => 0,
    };
    frames.into_iter().skip(start).map(|(f, _)| f).collect()
}

fn is_alloc_shim(f: &str) -> bool {
    [
        "__rust_alloc",
        "__rust_realloc",
        "__rust_dealloc",
        "__rg_alloc",
        "__rg_realloc",
        "__rdl_alloc",
        "__rdl_realloc",
    ]
    .iter()
    .any(|shim| f.contains(shim))
}

fn is_tracker_frame(f: &str) -> bool {
    f.starts_with("leakscope::")
        || f.starts_with("<leakscope::")
        || f.starts_with("std::thread::local::")
        || f.starts_with("<std::thread::local::")
        || f.contains(" as core::alloc::global::GlobalAlloc>::")
}

fn is_std_alloc_frame(f: &str) -> bool {
    let f = f.strip_prefix('<').unwrap_or(f);
    let crate_of = |s: &str| s.starts_with("alloc::") || s.starts_with("core::");
    // `<T as alloc::string::ToString>::to_string` belongs to the trait's crate.
    let path = match f.split_once(" as ") {
        Some((ty, tr)) if !crate_of(ty) => tr,
        _ => f,
    };
    crate_of(path)
}

/// The sources of the standard library's `alloc` and `core` crates, wherever
/// the toolchain put them (`/rustc/<hash>/library/alloc/src/...`).
/// The standard library's allocation plumbing by source file: `alloc`,
/// `core`, std's collections, and the crates std vendors (`hashbrown`, as
/// the debug info names it: `/rust/deps/hashbrown-*/`).
fn is_std_alloc_file(path: &str) -> bool {
    path.contains("/library/alloc/src/")
        || path.contains("/library/core/src/")
        || path.contains("/library/std/src/collections/")
        || path.starts_with("/rust/deps/")
}

/// Whether `f` is the Rust standard library's (`std`, `core`, `alloc`, or a
/// crate std vendors), by its source file, or by its name where it has none.
pub(crate) fn is_standard_library(f: &Frame) -> bool {
    match (&f.file, &f.function) {
        (Some(file), _) => is_std_alloc_file(file) || file.contains("/library/std/src/"),
        (None, Some(name)) => {
            let name = name.strip_prefix('<').unwrap_or(name);
            ["std::", "core::", "alloc::"]
                .iter()
                .any(|c| name.starts_with(c))
        }
        (None, None) => false,
    }
}

/// Whether `f` is the runtime's frame just below `main`, where a stack shown to
/// a person can stop.
pub(crate) fn is_runtime_boundary(f: &Frame) -> bool {
    f.function
        .as_deref()
        .is_some_and(|n| n.contains("__rust_begin_short_backtrace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_in_other_objects_are_named_by_their_dynamic_symbols() {
        // `getpid` is in libc, not in this test program: named from libc's
        // dynamic symbols, its offset after the name, no file or line.
        let ip = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize + 5;
        let frames = Symbolizer::default().resolve(ip);
        assert_eq!(frames.len(), 1);
        let (f, role) = &frames[0];
        let name = f.function.as_deref().unwrap();
        assert!(name.contains("getpid") && name.ends_with("+0x5"), "{name}");
        assert_eq!(
            (f.ip, f.file.as_deref(), f.line, *role),
            (ip, None, None, Role::User)
        );
        // This program's own code keeps its file and line (a return address
        // in this test, from a real stack).
        let mut here = 0;
        backtrace::trace(|f| {
            here = f.ip() as usize;
            false
        });
        let own = Symbolizer::default().resolve(here);
        let f = &own[0].0;
        assert!(f.file.is_some() && f.line.is_some(), "{f:?}");
    }

    fn frame(name: &str) -> (Frame, Role) {
        frame_in(name, None)
    }

    fn frame_in(name: &str, file: Option<&str>) -> (Frame, Role) {
        let f = Frame {
            ip: 1,
            function: Some(name.to_owned()),
            file: file.map(str::to_owned),
            line: None,
        };
        (f, Role::of(name, file))
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .collect()
    }

    #[test]
    fn strips_tracker_shims_and_std_plumbing() {
        let frames = vec![
            frame("std::thread::local::LocalKey<T>::try_with"),
            frame("leakscope::thread::with_tracking"),
            frame("<leakscope::LeakTracker<A> as core::alloc::global::GlobalAlloc>::alloc"),
            frame("<bench::Switch as core::alloc::global::GlobalAlloc>::alloc"),
            frame("__rustc::__rust_alloc"),
            frame("alloc::raw_vec::RawVecInner<A>::finish_grow"),
            frame("<alloc::string::String as core::fmt::Write>::write_str"),
            frame("<str as alloc::string::ToString>::to_string"),
            frame("app::handler"),
            frame("alloc::vec::Vec<T>::push"),
            frame("main"),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            ["app::handler", "alloc::vec::Vec<T>::push", "main"]
        );
    }

    #[test]
    fn std_collections_and_vendored_hashbrown_are_plumbing() {
        let frames = vec![
            frame("__rustc::__rust_alloc"),
            frame_in(
                "hashbrown::raw::alloc::inner::do_alloc",
                Some("/rust/deps/hashbrown-0.16.1/src/raw/alloc.rs"),
            ),
            frame_in(
                "std::collections::hash::map::HashMap<K,V,S,A>::insert",
                Some("/rustc/59807616/library/std/src/collections/hash/map.rs"),
            ),
            frame_in("app::user::{{closure}}", Some("src/main.rs")),
            frame("main"),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            ["app::user::{{closure}}", "main"]
        );
    }

    #[test]
    fn keeps_std_frames_when_nothing_else_is_left() {
        let frames = vec![
            frame("__rust_alloc"),
            frame("alloc::alloc::alloc"),
            frame("core::ops::function::FnOnce::call_once"),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            [
                "alloc::alloc::alloc",
                "core::ops::function::FnOnce::call_once"
            ]
        );
    }

    #[test]
    fn without_a_shim_strips_leading_tracker_frames() {
        let frames = vec![
            frame("leakscope::tracker::on_alloc"),
            frame("<leakscope::LeakTracker<A> as core::alloc::global::GlobalAlloc>::alloc"),
            frame("app::direct_call"),
            frame("std::sys::backtrace::__rust_begin_short_backtrace"),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            [
                "app::direct_call",
                "std::sys::backtrace::__rust_begin_short_backtrace"
            ]
        );
    }

    #[test]
    fn bare_inlined_names_are_told_apart_by_file() {
        // Release builds with line-tables-only debug info: inlined frames
        // carry bare names, and no shim frame is left.
        let own = format!("{OWN_SRC}alloc/tracker.rs");
        let frames = vec![
            frame_in("on_alloc", Some(&own)),
            frame_in("alloc", Some("/rustc/59807616e/library/alloc/src/alloc.rs")),
            frame_in(
                "with_capacity<u8>",
                Some("/rustc/59807616e/library/alloc/src/vec/mod.rs"),
            ),
            frame_in("repeat", Some("/rustc/59807616e/library/alloc/src/str.rs")),
            frame_in("json_site", Some("/home/u/app/src/main.rs")),
            frame_in("main", Some("/home/u/app/src/main.rs")),
        ];
        assert_eq!(
            names(&strip_allocator_frames(frames)),
            ["json_site", "main"]
        );
    }
}
