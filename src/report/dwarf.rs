//! Reading this program's debug info, one compilation unit at a time.
//!
//! Owns [`Program`]: the DWARF sections of the object this crate is linked
//! into, mapped from its file, and what a report's lookups have parsed of
//! them. A lookup finds its unit through `.debug_aranges` and parses that
//! unit alone (its abbreviations, line table and functions), so a report
//! pays for the units its call-sites are in, not for every unit of the
//! program (as a context built over all of them does: tens of megabytes for
//! a real program). Functions inlined into the one that holds an address are
//! found by walking only that function's entries.
//!
//! Paths follow one convention: relative to the workspace root (the
//! compilation directory of the unit that holds `main`) when the file is
//! under it, absolute otherwise (dependencies from a registry, the standard
//! library's `/rustc/<hash>/library/...`).
//!
//! Runs outside the allocation path, untracked. Anything it cannot read
//! (no `.debug_aranges`, compressed sections, a malformed unit) makes
//! [`Program::frames`] return `None`, and the caller asks the backtrace
//! crate instead.

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, Section, UnitOffset};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};

type R = EndianSlice<'static, RunTimeEndian>;

/// One frame as the debug info gives it: `file` absolute (or as recorded;
/// [`Program::shown_path`] gives it as a report shows it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) function: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
}

/// A read-only mapping of a file, unmapped when dropped.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn open(path: &str) -> Option<Mapped> {
        let path = std::ffi::CString::new(path).ok()?;
        // SAFETY: open/fstat/mmap/close on a descriptor of ours; the mapping
        // is private and read-only, and outlives every slice made from it
        // (see `Program`).
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let mut st: libc::stat = std::mem::zeroed();
            let len = if libc::fstat(fd, &mut st) == 0 {
                st.st_size as usize
            } else {
                0
            };
            let ptr = if len > 0 {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    fd,
                    0,
                )
            } else {
                libc::MAP_FAILED
            };
            libc::close(fd);
            (ptr != libc::MAP_FAILED).then_some(Mapped { ptr, len })
        }
    }

    /// The file's bytes, for as long as the mapping lives.
    ///
    /// # Safety
    /// The caller must not use the slice after `self` is dropped.
    unsafe fn bytes(&self) -> &'static [u8] {
        // SAFETY: the mapping is `len` readable bytes (caller: while it lives).
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The loaded object `file`, mapped. The loader may know the program by a
/// relative name (its argv[0] before a chdir): then it is the executable.
fn open_object(file: &str) -> Option<Mapped> {
    Mapped::open(file).or_else(|| {
        (!file.starts_with('/'))
            .then(|| Mapped::open("/proc/self/exe"))
            .flatten()
    })
}

/// The statics of one loaded object, from its symbol tables (data symbols
/// with a size), by runtime address: which static a root word lies in.
/// Read from the file, whether or not it has debug info (a release build
/// without any keeps its symbol table), and only a symbol that contains the
/// address names it.
pub(crate) struct DataSymbols {
    /// (start, end, mangled name), sorted by start.
    symbols: Vec<(usize, usize, String)>,
}

impl DataSymbols {
    /// The data symbols of the object loaded at `base` from `file`.
    pub(crate) fn load(file: &str, base: usize) -> Option<DataSymbols> {
        let map = open_object(file)?;
        // SAFETY: the slice and everything parsed from it are dropped at the
        // end of this function, before `map`; the names are copied out.
        let data = unsafe { map.bytes() };
        let obj = object::File::parse(data).ok()?;
        let first_load = obj.segments().map(|s| s.address()).min().unwrap_or(0);
        let bias = (base as u64).wrapping_sub(first_load);
        let mut symbols: Vec<(usize, usize, String)> = (obj.symbols())
            .chain(obj.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Data && s.size() > 0 && s.address() != 0)
            .filter_map(|s| {
                let start = s.address().wrapping_add(bias) as usize;
                let name = s.name().ok().filter(|n| !n.is_empty())?;
                Some((
                    start,
                    start.saturating_add(s.size() as usize),
                    name.to_owned(),
                ))
            })
            .collect();
        symbols.sort_unstable();
        // The dynamic table repeats the exported ones.
        symbols.dedup();
        Some(DataSymbols { symbols })
    }

    /// The (demangled) name of the static that holds `addr`: the
    /// innermost of the symbols that contain it.
    pub(crate) fn name(&self, addr: usize) -> Option<String> {
        let before = self.symbols.partition_point(|s| s.0 <= addr);
        // Symbols rarely nest; a few back is enough to find an enclosing one.
        (self.symbols[..before].iter().rev().take(8))
            .find(|s| addr < s.1)
            .map(|s| demangle(&s.2))
    }
}

/// A section's bytes, inflated if compressed; an error for a size no
/// compressor makes from these bytes (zlib's ratio is at most 1032:1), which
/// would otherwise be allocated whole, from a corrupt header, before a byte
/// is inflated (found by fuzz/debug_info).
fn inflate<'d>(s: &object::Section<'d, '_>) -> Result<std::borrow::Cow<'d, [u8]>, ()> {
    let c = s.compressed_data().map_err(drop)?;
    let most = (c.data.len() as u64).saturating_mul(1032).min(1 << 32);
    if c.format != object::CompressionFormat::None && c.uncompressed_size > most {
        return Err(());
    }
    c.decompress().map_err(drop)
}

/// A line-table row: from `addr` on, `file` and `line` (an end of sequence
/// has `file == NO_FILE`).
#[derive(Clone, Copy)]
struct Row {
    addr: u64,
    file: u64,
    line: u32,
}

const NO_FILE: u64 = u64::MAX;

/// An inlined call: its entry, and the file (line-table index) and line it
/// was called from.
type Inlined = (UnitOffset, u64, Option<u32>);

/// What lookups have parsed of one unit.
struct UnitData {
    unit: gimli::Unit<R>,
    /// Sorted by address; built on the first location lookup.
    rows: Option<Vec<Row>>,
    /// Ranges of the unit's functions (`DW_TAG_subprogram`), sorted by start.
    functions: Option<Vec<(u64, u64, UnitOffset)>>,
    /// File paths by line-table index.
    files: HashMap<u64, Option<String>>,
}

/// The debug info of the object this crate is linked into.
///
/// Field order matters: `dwarf`, `units` and `symbols` hold slices of the
/// mapping and are dropped before it.
pub(crate) struct Program {
    dwarf: gimli::Dwarf<R>,
    units: HashMap<usize, Option<UnitData>>,
    /// (start, end, unit offset in `.debug_info`), sorted by start.
    aranges: Vec<(u64, u64, usize)>,
    /// Every unit's offset, sorted: read on the first reference into
    /// another unit.
    unit_starts: Option<Vec<usize>>,
    /// Runtime address minus file address.
    bias: u64,
    /// The workspace root, with a trailing `/` (see the module docs).
    root: Option<String>,
    /// Function symbols (file address, name), sorted: for code the debug
    /// info does not cover (`_start`, the `main` shim).
    symbols: Vec<(u64, &'static str)>,
    /// Compressed sections, inflated: `dwarf` reads them.
    _inflated: Vec<Box<[u8]>>,
    _map: Mapped,
}

/// Which object a kept [`Program`] reads: the one this crate is linked
/// into, or the executable when that is another (leakscope preloaded).
#[derive(Clone, Copy)]
pub(crate) enum Kept {
    Own = 0,
    Executable = 1,
}

/// The [`Program`]s kept between reports, one per [`Kept`] (null: none, or
/// a report has it). Taken and put back by swaps, never locked: a report
/// on another thread (or a `fork` while one had it) only means the next
/// report reads its own, and a child of `fork` finds what its parent had
/// read.
static KEPT: [AtomicPtr<Program>; 2] = [
    AtomicPtr::new(std::ptr::null_mut()),
    AtomicPtr::new(std::ptr::null_mut()),
];

impl Program {
    /// The program read by an earlier report, with the units it parsed, if
    /// no other report has it now.
    pub(crate) fn take_kept(which: Kept) -> Option<Program> {
        let p = KEPT[which as usize].swap(std::ptr::null_mut(), Ordering::Acquire);
        // SAFETY: a non-null pointer in `KEPT` is a `Box<Program>` that
        // `keep` gave up, and the swap made it ours alone.
        (!p.is_null()).then(|| *unsafe { Box::from_raw(p) })
    }

    /// Keeps this for the next report (what it has parsed stays parsed:
    /// reports of a running service, and children of `fork`, skip reading
    /// it again); dropped if another is kept already.
    pub(crate) fn keep(self, which: Kept) {
        let p = Box::into_raw(Box::new(self));
        let kept = KEPT[which as usize].compare_exchange(
            std::ptr::null_mut(),
            p,
            Ordering::Release,
            Ordering::Relaxed,
        );
        if kept.is_err() {
            // SAFETY: `p` was not published: still ours.
            drop(unsafe { Box::from_raw(p) });
        }
    }

    /// The debug info of the object loaded at `base` from `file`; `None` if
    /// it has none this reader can use.
    pub(crate) fn load(file: &str, base: usize) -> Option<Program> {
        let map = open_object(file)?;
        // SAFETY: every slice made from the mapping is kept in `dwarf`,
        // `units` and `symbols`, which `Program` drops before `map` (fields
        // drop in declaration order), and none leaves `Program`: lookups
        // return owned strings.
        let data = unsafe { map.bytes() };
        let obj = object::File::parse(data).ok()?;
        let endian = if obj.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let first_load = obj.segments().map(|s| s.address()).min().unwrap_or(0);
        // The program's own `main` function, `<crate>::main`, named after the
        // executable (`leaky_service`, `rg`; a test binary's `-<hash>` left
        // out): its unit was compiled in the workspace root.
        let krate = program_crate(file);
        let mut main = None;
        let mut symbols = Vec::new();
        for sym in obj.symbols() {
            let (Ok(name), object::SymbolKind::Text) = (sym.name(), sym.kind()) else {
                continue;
            };
            if sym.address() == 0 || name.is_empty() {
                continue;
            }
            if name.contains("main")
                && krate
                    .as_deref()
                    .is_some_and(|k| demangle(name).strip_suffix("::main") == Some(k))
            {
                main = Some(sym.address());
            }
            symbols.push((sym.address(), name));
        }
        symbols.sort_unstable_by_key(|s| s.0);
        let mut missing = false;
        let mut inflated = Vec::new();
        let dwarf = gimli::Dwarf::load(|id| -> Result<R, ()> {
            let bytes = match obj.section_by_name(id.name()).map(|s| inflate(&s)) {
                Some(Ok(std::borrow::Cow::Borrowed(b))) => b,
                // Compressed (`cc -gz`, zlib or zstd): inflated, and kept
                // beside the mapping for as long as the program.
                Some(Ok(std::borrow::Cow::Owned(v))) => {
                    let v = v.into_boxed_slice();
                    // SAFETY: the box's bytes do not move when it does; it
                    // is kept in `inflated`, dropped after `dwarf` (fields
                    // drop in declaration order).
                    let b: &'static [u8] =
                        unsafe { std::slice::from_raw_parts(v.as_ptr(), v.len()) };
                    inflated.push(v);
                    b
                }
                Some(Err(_)) => {
                    missing = true;
                    &[][..]
                }
                None => &[][..],
            };
            Ok(EndianSlice::new(bytes, endian))
        })
        .ok()?;
        if missing || dwarf.debug_info.reader().is_empty() {
            return None;
        }
        let mut aranges = Vec::new();
        let mut headers = dwarf.debug_aranges.headers();
        while let Ok(Some(h)) = headers.next() {
            let unit = h.debug_info_offset().0;
            let mut entries = h.entries();
            while let Ok(Some(e)) = entries.next() {
                let r = e.range();
                if r.begin < r.end && r.begin != 0 {
                    aranges.push((r.begin, r.end, unit));
                }
            }
        }
        // Units `.debug_aranges` leaves out (clang's, as in the sanitizer
        // runtimes; rustc lists all of its own): their ranges from their
        // root entries.
        let listed: std::collections::HashSet<usize> = aranges.iter().map(|a| a.2).collect();
        let mut headers = dwarf.units();
        while let Ok(Some(h)) = headers.next() {
            let Some(offset) = h.debug_info_offset().map(|o| o.0) else {
                continue;
            };
            if listed.contains(&offset) {
                continue;
            }
            let Ok(unit) = dwarf.unit(h) else { continue };
            let mut root = unit.entries();
            let Ok(Some(root)) = root.next_dfs() else {
                continue;
            };
            let Ok(mut ranges) = die_ranges(&dwarf, &unit, root) else {
                continue;
            };
            while let Ok(Some(r)) = ranges.next() {
                if r.begin < r.end && r.begin != 0 {
                    aranges.push((r.begin, r.end, offset));
                }
            }
        }
        if aranges.is_empty() {
            return None;
        }
        aranges.sort_unstable();
        let mut program = Program {
            dwarf,
            units: HashMap::new(),
            aranges,
            unit_starts: None,
            bias: (base as u64).wrapping_sub(first_load),
            root: None,
            symbols,
            _inflated: inflated,
            _map: map,
        };
        program.root = main.and_then(|m| program.workspace_root(m));
        Some(program)
    }

    /// The frames at return address `ip`, innermost (inlined) first: `None`
    /// when this reader cannot say (the caller asks another).
    pub(crate) fn frames(&mut self, ip: usize) -> Option<Vec<Located>> {
        // A return address points after the call; the call is one byte before.
        let addr = (ip as u64).wrapping_sub(1).wrapping_sub(self.bias);
        let unit = self.unit_of(addr);
        let Some((unit, (function, inlined))) =
            unit.and_then(|unit| Some((unit, self.chain(unit, addr)?)))
        else {
            // Code without debug info: the function symbol before it. A
            // unit without its functions (`-gsplit-dwarf` leaves them in a
            // `.dwo` beside the object) still has its line table here.
            let i = self
                .symbols
                .partition_point(|s| s.0 <= addr)
                .checked_sub(1)?;
            let (file, line) = unit.map_or((None, None), |u| self.location(u, addr));
            return Some(vec![Located {
                function: self.symbols.get(i).map(|s| demangle(s.1)),
                file,
                line,
            }]);
        };
        let mut out = Vec::with_capacity(inlined.len() + 1);
        // The innermost frame is where the line table says; each one outside
        // it is where the inner one was inlined from (its call file and line).
        let mut at = self.location(unit, addr);
        for &(die, call_file, call_line) in inlined.iter().rev() {
            out.push(Located {
                function: self.name(unit, die, 0),
                file: at.0,
                line: at.1,
            });
            at = (self.file(unit, call_file), call_line);
        }
        out.push(Located {
            function: self.name(unit, function, 0),
            file: at.0,
            line: at.1,
        });
        Some(out)
    }

    /// For the fuzz target `debug_info` (feature `fuzzing`): reads `file`
    /// as a report would, as if loaded at 64 KiB, and asks for the frames
    /// at each function symbol and at each end of each address range (256
    /// of each at most); the number of frames it named.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn fuzz(file: &str) -> usize {
        const BASE: usize = 0x10000;
        let mut named = DataSymbols::load(file, BASE)
            .and_then(|d| d.name(BASE))
            .map_or(0, |_| 1);
        let Some(mut p) = Program::load(file, BASE) else {
            return named;
        };
        let at: Vec<u64> = (p.symbols.iter().take(256).map(|s| s.0))
            .chain(p.aranges.iter().take(256).flat_map(|a| [a.0, a.1]))
            .collect();
        for addr in at {
            let ip = addr.wrapping_add(p.bias).wrapping_add(1) as usize;
            for f in p.frames(ip).unwrap_or_default() {
                named += usize::from(f.function.is_some());
                if let Some(file) = &f.file {
                    named += usize::from(!p.shown_path(file).is_empty());
                }
            }
        }
        named
    }

    /// `path` as a report shows it: relative to the workspace root when it
    /// is under it, as it is otherwise.
    pub(crate) fn shown_path<'p>(&self, path: &'p str) -> &'p str {
        match &self.root {
            Some(root) => path.strip_prefix(root.as_str()).unwrap_or(path),
            None => path,
        }
    }

    /// The compilation directory of the unit that holds `main` (at file
    /// address `main`).
    fn workspace_root(&mut self, main: u64) -> Option<String> {
        let unit = self.unit_of(main)?;
        let data = self.units.get(&unit)?.as_ref()?;
        let dir = data.unit.comp_dir?.to_string_lossy().into_owned();
        Some(if dir.ends_with('/') { dir } else { dir + "/" })
    }

    /// The unit that holds `addr` (a file address), parsed.
    fn unit_of(&mut self, addr: u64) -> Option<usize> {
        let i = self
            .aranges
            .partition_point(|r| r.0 <= addr)
            .checked_sub(1)?;
        let &(_, end, unit) = self.aranges.get(i)?;
        if addr >= end {
            return None;
        }
        self.parse_unit(unit).then_some(unit)
    }

    /// Parses the unit at `offset` once; whether it could.
    fn parse_unit(&mut self, offset: usize) -> bool {
        let dwarf = &self.dwarf;
        self.units
            .entry(offset)
            .or_insert_with(|| {
                let header = dwarf
                    .debug_info
                    .header_from_offset(gimli::DebugInfoOffset(offset))
                    .ok()?;
                let unit = dwarf.unit(header).ok()?;
                Some(UnitData {
                    unit,
                    rows: None,
                    functions: None,
                    files: HashMap::new(),
                })
            })
            .is_some()
    }

    fn data(&mut self, unit: usize) -> Option<&mut UnitData> {
        self.units.get_mut(&unit)?.as_mut()
    }

    /// The function holding `addr` and the inlined calls inside it that
    /// hold it, outermost first.
    fn chain(&mut self, unit: usize, addr: u64) -> Option<(UnitOffset, Vec<Inlined>)> {
        let dwarf = &self.dwarf;
        let data = self.units.get_mut(&unit)?.as_mut()?;
        if data.functions.is_none() {
            data.functions = Some(functions(dwarf, &data.unit));
        }
        let functions = data.functions.as_deref().unwrap_or(&[]);
        let i = functions.partition_point(|f| f.0 <= addr);
        // The innermost (smallest) function range holding `addr`.
        let function = functions[..i]
            .iter()
            .rev()
            .take(64)
            .filter(|f| addr < f.1)
            .min_by_key(|f| f.1 - f.0)?
            .2;
        let mut inlined = Vec::new();
        let mut tree = data.unit.entries_tree(Some(function)).ok()?;
        let root = tree.root().ok()?;
        inlined_at(dwarf, &data.unit, root, addr, &mut inlined, 0);
        Some((function, inlined))
    }

    /// File and line of `addr` from the unit's line table.
    fn location(&mut self, unit: usize, addr: u64) -> (Option<String>, Option<u32>) {
        let Some(data) = self.data(unit) else {
            return (None, None);
        };
        if data.rows.is_none() {
            data.rows = Some(rows(&data.unit));
        }
        let rows = data.rows.as_deref().unwrap_or(&[]);
        let Some(row) = rows
            .partition_point(|r| r.addr <= addr)
            .checked_sub(1)
            .and_then(|i| rows.get(i))
            .copied()
        else {
            return (None, None);
        };
        if row.file == NO_FILE {
            return (None, None);
        }
        let line = (row.line != 0).then_some(row.line);
        (self.file(unit, row.file), line)
    }

    /// The path of file `index` of the unit's line table (absolute when the
    /// debug info says where it was compiled).
    fn file(&mut self, unit: usize, index: u64) -> Option<String> {
        let dwarf = &self.dwarf;
        let data = self.units.get_mut(&unit)?.as_mut()?;
        if let Some(known) = data.files.get(&index) {
            return known.clone();
        }
        let path = file_path(dwarf, &data.unit, index);
        data.files.insert(index, path.clone());
        path
    }

    /// The name of the function of entry `die` in `unit`: its linkage name
    /// (demangled), else its name, else its abstract origin's or
    /// specification's, in whichever unit they are.
    fn name(&mut self, unit: usize, die: UnitOffset, depth: u32) -> Option<String> {
        if depth > 8 {
            return None;
        }
        let dwarf = &self.dwarf;
        let data = self.units.get(&unit)?.as_ref()?;
        let entry = data.unit.entry(die).ok()?;
        let text = |v: AttributeValue<R>| {
            let s = dwarf.attr_string(&data.unit, v).ok()?;
            Some(s.to_string_lossy().into_owned())
        };
        for at in [gimli::DW_AT_linkage_name, gimli::DW_AT_MIPS_linkage_name] {
            if let Some(name) = entry.attr_value(at).and_then(text) {
                return Some(demangle(&name));
            }
        }
        if let Some(name) = entry.attr_value(gimli::DW_AT_name).and_then(text) {
            return Some(name);
        }
        let target = [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification]
            .into_iter()
            .find_map(|at| entry.attr_value(at))?;
        match target {
            AttributeValue::UnitRef(o) => self.name(unit, o, depth + 1),
            AttributeValue::DebugInfoRef(o) => {
                let other = self.unit_holding(o.0)?;
                let header = &self.units.get(&other)?.as_ref()?.unit.header;
                let local = o.to_unit_offset(header)?;
                self.name(other, local, depth + 1)
            }
            _ => None,
        }
    }

    /// The unit whose entries hold `.debug_info` offset `offset`, parsed.
    fn unit_holding(&mut self, offset: usize) -> Option<usize> {
        if self.unit_starts.is_none() {
            let mut starts = Vec::new();
            let mut headers = self.dwarf.units();
            while let Ok(Some(h)) = headers.next() {
                if let Some(o) = h.debug_info_offset() {
                    starts.push(o.0);
                }
            }
            self.unit_starts = Some(starts);
        }
        let starts = self.unit_starts.as_deref()?;
        let start = *starts.get(starts.partition_point(|&s| s <= offset).checked_sub(1)?)?;
        self.parse_unit(start).then_some(start)
    }
}

/// A symbol's name as a person reads it (Rust's, without the hash).
pub(crate) fn demangle(name: &str) -> String {
    format!("{:#}", backtrace::SymbolName::new(name.as_bytes()))
}

/// The crate name of the program at `path`: its file name, without the
/// `-<hash>` cargo gives test binaries, `-` as `_`.
fn program_crate(path: &str) -> Option<String> {
    let name = std::path::Path::new(path).file_name()?.to_str()?;
    let name = match name.rsplit_once('-') {
        Some((krate, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            krate
        }
        _ => name,
    };
    Some(name.replace('-', "_"))
}

/// gimli's `die_ranges`, except for an entry whose `DW_AT_high_pc`, a size,
/// takes it past the end of the address space: gimli adds it to
/// `DW_AT_low_pc` unchecked, which panics in a build with overflow checks
/// (a corrupt object, found by fuzz/debug_info); such an entry has no
/// ranges.
fn die_ranges(
    dwarf: &gimli::Dwarf<R>,
    unit: &gimli::Unit<R>,
    entry: &gimli::DebuggingInformationEntry<R>,
) -> gimli::Result<gimli::RangeIter<R>> {
    let mut low = None;
    let mut size = None;
    for attr in entry.attrs() {
        match (attr.name(), attr.value()) {
            (gimli::DW_AT_low_pc, v) => low = dwarf.attr_address(unit, v).ok().flatten(),
            (gimli::DW_AT_high_pc, gimli::AttributeValue::Udata(n)) => size = Some(n),
            _ => {}
        }
    }
    if let (Some(low), Some(size)) = (low, size) {
        if low.checked_add(size).is_none() {
            return Err(gimli::Error::AddressOverflow);
        }
    }
    dwarf.die_ranges(unit, entry)
}

/// The ranges of a unit's functions, sorted by start.
fn functions(dwarf: &gimli::Dwarf<R>, unit: &gimli::Unit<R>) -> Vec<(u64, u64, UnitOffset)> {
    let mut out = Vec::new();
    let mut cursor = unit.entries();
    while let Ok(Some(entry)) = cursor.next_dfs() {
        if entry.tag() != gimli::DW_TAG_subprogram {
            continue;
        }
        if let Ok(mut ranges) = die_ranges(dwarf, unit, entry) {
            while let Ok(Some(r)) = ranges.next() {
                if r.begin < r.end && r.begin != 0 {
                    out.push((r.begin, r.end, entry.offset()));
                }
            }
        }
    }
    out.sort_unstable_by_key(|f| f.0);
    out
}

/// Follows the inlined calls (and lexical blocks) below `node` that hold
/// `addr`, appending (entry, call file, call line) for each call.
fn inlined_at(
    dwarf: &gimli::Dwarf<R>,
    unit: &gimli::Unit<R>,
    node: gimli::EntriesTreeNode<'_, '_, R>,
    addr: u64,
    out: &mut Vec<Inlined>,
    depth: u32,
) {
    if depth > 64 {
        return;
    }
    let mut children = node.children();
    while let Ok(Some(child)) = children.next() {
        let entry = child.entry();
        let tag = entry.tag();
        if tag != gimli::DW_TAG_inlined_subroutine && tag != gimli::DW_TAG_lexical_block {
            continue;
        }
        let holds = die_ranges(dwarf, unit, entry).is_ok_and(|mut ranges| {
            while let Ok(Some(r)) = ranges.next() {
                if r.begin <= addr && addr < r.end {
                    return true;
                }
            }
            false
        });
        if !holds {
            continue;
        }
        if tag == gimli::DW_TAG_inlined_subroutine {
            let file = entry
                .attr_value(gimli::DW_AT_call_file)
                .and_then(|v| match v {
                    AttributeValue::FileIndex(i) => Some(i),
                    v => v.udata_value(),
                })
                .unwrap_or(NO_FILE);
            let line = entry
                .attr_value(gimli::DW_AT_call_line)
                .and_then(|v| v.udata_value())
                .and_then(|l| u32::try_from(l).ok())
                .filter(|&l| l != 0);
            out.push((entry.offset(), file, line));
        }
        inlined_at(dwarf, unit, child, addr, out, depth + 1);
        return;
    }
}

/// A unit's line table as rows sorted by address (an end of sequence before
/// a row that starts at the same address).
fn rows(unit: &gimli::Unit<R>) -> Vec<Row> {
    let mut out = Vec::new();
    let Some(program) = unit.line_program.clone() else {
        return out;
    };
    let mut rows = program.rows();
    while let Ok(Some((_, row))) = rows.next_row() {
        out.push(if row.end_sequence() {
            Row {
                addr: row.address(),
                file: NO_FILE,
                line: 0,
            }
        } else {
            Row {
                addr: row.address(),
                file: row.file_index(),
                line: row
                    .line()
                    .map_or(0, |l| u32::try_from(l.get()).unwrap_or(0)),
            }
        });
    }
    out.sort_by_key(|r| (r.addr, r.file != NO_FILE));
    out
}

/// The path of file `index` in the unit's line table: its directory and name,
/// under the unit's compilation directory when relative.
fn file_path(dwarf: &gimli::Dwarf<R>, unit: &gimli::Unit<R>, index: u64) -> Option<String> {
    let header = unit.line_program.as_ref()?.header();
    let file = header.file(index)?;
    let text = |v: AttributeValue<R>| -> Option<String> {
        Some(
            dwarf
                .attr_string(unit, v)
                .ok()?
                .to_string_lossy()
                .into_owned(),
        )
    };
    let name = text(file.path_name())?;
    let mut path = std::path::PathBuf::new();
    if let Some(dir) = unit.comp_dir.map(|d| d.to_string_lossy().into_owned()) {
        path.push(dir);
    }
    if let Some(dir) = file.directory(header).and_then(text) {
        path.push(dir);
    }
    path.push(name);
    Some(path.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::symbolize::loaded_object;

    #[test]
    fn crate_names_from_program_files() {
        assert_eq!(program_crate("/x/target/release/rg").as_deref(), Some("rg"));
        assert_eq!(
            program_crate("/x/deps/leak_check-0123456789abcdef").as_deref(),
            Some("leak_check")
        );
        assert_eq!(
            program_crate("/x/examples/axum-service").as_deref(),
            Some("axum_service")
        );
    }

    /// The return addresses of the stack here, innermost first.
    #[inline(never)]
    fn stack_here() -> Vec<usize> {
        let mut ips = Vec::new();
        backtrace::trace(|f| {
            ips.push(f.ip() as usize);
            true
        });
        ips
    }

    #[test]
    fn frames_are_read_from_their_own_units() {
        let ips = stack_here();
        let here = loaded_object(ips[0]).unwrap();
        let mut program = Program::load(&here.file, here.base).unwrap();
        let stacks: Vec<Vec<Located>> = ips.iter().filter_map(|&ip| program.frames(ip)).collect();
        let find = |name: &str| {
            stacks
                .iter()
                .flatten()
                // (Some toolchains name a generic function with its
                // parameters: `backtrace::trace::<F>`.)
                .find(|f| {
                    (f.function.as_deref())
                        .is_some_and(|n| n.split("::<").next().unwrap_or(n).ends_with(name))
                })
                .unwrap_or_else(|| panic!("no {name} in {stacks:?}"))
                .clone()
        };
        // The test harness's `leakscope::main` was compiled in this crate's
        // root: a report shows this crate's files relative to it.
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/");
        assert_eq!(program.root.as_deref(), Some(root));
        let own = find("report::dwarf::tests::stack_here");
        let file = own.file.unwrap();
        assert_eq!(file, format!("{root}src/report/dwarf.rs"));
        assert_eq!(program.shown_path(&file), "src/report/dwarf.rs");
        assert!(own.line.is_some());
        // A dependency's files are not under it: they stay absolute.
        let dep = find("backtrace::trace").file.unwrap();
        assert!(dep.starts_with('/') && dep.contains("backtrace"), "{dep}");
        assert_eq!(program.shown_path(&dep), dep);
    }

    /// A frame chain: function, file and line of each frame, innermost first.
    type Chain = Vec<(Option<String>, Option<String>, Option<u32>)>;

    /// Return addresses in every `step`th function of the object `data`
    /// (one past its middle byte), and the object's first load address.
    fn sample_ips(data: &[u8], step: usize) -> (Vec<usize>, u64) {
        let obj = object::File::parse(data).unwrap();
        let first_load = obj.segments().map(|s| s.address()).min().unwrap_or(0);
        let mut funcs: Vec<(u64, u64)> = (obj.symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() >= 16)
            .map(|s| (s.address(), s.size()))
            .collect();
        funcs.sort_unstable();
        funcs.dedup();
        let ips = (funcs.iter().step_by(step))
            .map(|(a, n)| (a + n / 2 + 1) as usize)
            .collect();
        (ips, first_load)
    }

    /// Our reader's frames at each of `ips` in the object at `file`.
    fn ours(file: &str, first_load: u64, ips: &[usize]) -> Vec<Chain> {
        let mut p = Program::load(file, first_load as usize).unwrap();
        (ips.iter())
            .map(|&ip| {
                (p.frames(ip).unwrap_or_default().into_iter())
                    .map(|f| (f.function, f.file, f.line))
                    .collect()
            })
            .collect()
    }

    /// The `addr2line` crate's frames, from a `Context` over the same
    /// sections of the object at `file` (mapped as `Program` maps it);
    /// `done` runs while the context lives.
    fn addr2lines(file: &str, ips: &[usize], done: impl FnOnce()) -> Vec<Chain> {
        let map = Mapped::open(file).unwrap();
        // SAFETY: `map` outlives `context`, dropped at the end of this function.
        let obj = object::File::parse(unsafe { map.bytes() }).unwrap();
        let endian = if obj.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let dwarf = gimli::Dwarf::load(|id| -> Result<R, ()> {
            let b = (obj.section_by_name(id.name()))
                .and_then(|s| s.data().ok())
                .unwrap_or(&[]);
            Ok(EndianSlice::new(b, endian))
        })
        .unwrap();
        let context = addr2line::Context::from_dwarf(dwarf).unwrap();
        let chains = (ips.iter())
            .map(|&ip| {
                let mut chain = Vec::new();
                if let Ok(mut frames) = context.find_frames(ip as u64 - 1).skip_all_loads() {
                    while let Ok(Some(f)) = frames.next() {
                        let function = (f.function.as_ref())
                            .and_then(|n| n.raw_name().ok())
                            .map(|n| demangle(n.as_ref()));
                        let location = f.location.as_ref();
                        let file = location.and_then(|l| l.file).map(str::to_owned);
                        chain.push((function, file, location.and_then(|l| l.line)));
                    }
                }
                chain
            })
            .collect();
        done();
        chains
    }

    /// Our reader against the `addr2line` crate, on this test program's
    /// own debug info (this crate, its dependencies, the standard
    /// library): the same functions, inlined frames, files and lines
    /// wherever the debug info covers the address. Ours also names code it
    /// does not cover, from the symbol table.
    #[test]
    fn agrees_with_the_addr2line_crate() {
        let here = loaded_object(stack_here as *const () as usize).unwrap();
        let map = Mapped::open(&here.file).unwrap();
        // SAFETY: `map` lives to the end of the test.
        let (ips, first_load) = sample_ips(unsafe { map.bytes() }, 250);
        let (a, b) = (
            ours(&here.file, first_load, &ips),
            addr2lines(&here.file, &ips, || ()),
        );
        let mut compared = 0;
        for ((ip, x), y) in ips.iter().zip(&a).zip(&b) {
            if y.iter().any(|f| f.0.is_some()) {
                assert_eq!(x, y, "at {ip:#x}");
                compared += 1;
            } else {
                // No function there for addr2line: ours names it from the
                // symbol table, with the line table's file and line where
                // addr2line finds that too (a unit whose functions are not
                // described, as in a `.dwo`), else none.
                let location = y.first().map_or((None, None), |f| (f.1.clone(), f.2));
                assert!(
                    x.len() <= 1 && x.iter().all(|f| (f.1.clone(), f.2) == location),
                    "{x:?} against {y:?}"
                );
            }
        }
        assert!(compared > 150, "{compared} of {}", ips.len());
    }

    /// What each reader costs on the program at `LEAKSCOPE_DWARF_BIN` (a
    /// release build with line tables: ripgrep's, the leaky service's), one
    /// reader per process (`LEAKSCOPE_DWARF_READER=ours|addr2line`): every
    /// 7th function's address resolved, the time, and while the reader
    /// lives its heap (`RssAnon`) and the file pages it touched (`RssFile`).
    /// Issue 27's note has the figures:
    /// `cargo test --release --lib dwarf_readers -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, printed: needs LEAKSCOPE_DWARF_BIN"]
    fn dwarf_readers_measured() {
        let (Some(bin), Ok(reader)) = (
            std::env::var_os("LEAKSCOPE_DWARF_BIN"),
            std::env::var("LEAKSCOPE_DWARF_READER"),
        ) else {
            return;
        };
        let bin = bin.to_string_lossy().into_owned();
        let map = Mapped::open(&bin).unwrap();
        // SAFETY: `map` lives to the end of the test.
        let (ips, first_load) = sample_ips(unsafe { map.bytes() }, 7);
        let status = || {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            let kib = |key: &str| {
                let line = s.lines().find(|l| l.starts_with(key)).unwrap();
                line.split_whitespace().nth(1).unwrap().to_owned()
            };
            format!(
                "heap {} KiB, file pages {} KiB",
                kib("RssAnon"),
                kib("RssFile")
            )
        };
        let t = std::time::Instant::now();
        let (frames, held) = match reader.as_str() {
            "ours" => {
                let mut p = Program::load(&bin, first_load as usize).unwrap();
                let n: usize = ips
                    .iter()
                    .map(|&ip| p.frames(ip).map_or(0, |f| f.len()))
                    .sum();
                (n, status())
            }
            _ => {
                let mut held = String::new();
                let chains = addr2lines(&bin, &ips, || held = status());
                (chains.iter().map(Vec::len).sum(), held)
            }
        };
        println!(
            "{reader}: {} addresses, {frames} frames in {:.1} ms; {held}",
            ips.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}
