//! The report as a pprof profile: `profile.proto`, gzipped, as Go's heap
//! profiles are, so that `go tool pprof`, Parca and Grafana Pyroscope read
//! it as they read Go's `/debug/pprof/heap`.
//!
//! Sample types `alloc_objects`, `alloc_space`, `inuse_objects` and
//! `inuse_space` (the default), in counts and bytes. One sample per
//! call-site with its totals and the live blocks outside any scope, and one
//! per call-site and scope with the live blocks that scope opened, labelled
//! `scope` (so `-tagfocus=scope=...` keeps one endpoint); the in-use values
//! of a call-site's samples add up to its live blocks. Locations carry the
//! report's symbols (function, file, line; inlined frames as lines of one
//! location) and the mapping of the object they are in, from
//! `/proc/self/maps`. In sampling mode the values are the estimates.
//!
//! The encoder writes the dozen message types it needs by hand: protobuf's
//! wire format is varints and length-prefixed fields.

use crate::alloc::thread;
use crate::report::folded::function_of;
use crate::report::model::{Frame, Report};
use std::collections::HashMap;
use std::io::Write;

impl Report {
    /// The pprof profile (`profile.proto`, gzipped) of this report: what
    /// `go tool pprof` opens and `/debug/pprof/heap` serves.
    pub fn to_pprof(&self) -> Vec<u8> {
        self.pprof_with_default("inuse_space")
    }

    /// [`Report::to_pprof`] with `default` (one of the four sample types)
    /// as the type tools show first: `alloc_space` for `/debug/pprof/allocs`,
    /// as Go serves it.
    pub(crate) fn pprof_with_default(&self, default: &str) -> Vec<u8> {
        thread::untracked(|| {
            // A report read back names no object mapped here.
            let maps = if self.in_process {
                mappings()
            } else {
                Vec::new()
            };
            let raw = self.profile(&maps, default);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            // Writing to a Vec cannot fail.
            let _ = gz.write_all(&raw);
            gz.finish().unwrap_or_default()
        })
    }

    /// [`Report::to_pprof`], written to `w`.
    pub fn write_pprof(&self, mut w: impl Write) -> std::io::Result<()> {
        w.write_all(&self.to_pprof())
    }

    /// The profile, not compressed.
    fn profile(&self, maps: &[Mapping], default: &str) -> Vec<u8> {
        let mut p = Profile::default();
        let types = [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ];
        let mut out = Pb::default();
        for (kind, unit) in types {
            let (k, u) = (p.string(kind), p.string(unit));
            out.message(1, |m| {
                m.int(1, k);
                m.int(2, u);
            });
        }
        let scope_key = p.string("scope");
        for part in self.parts() {
            let locations: Vec<u64> = p.locations(&part.site.frames, maps);
            let values: [i64; 4] = match part.scope {
                None => [
                    part.site.total_blocks as i64,
                    part.site.total_bytes as i64,
                    part.blocks as i64,
                    part.bytes as i64,
                ],
                Some(_) => [0, 0, part.blocks as i64, part.bytes as i64],
            };
            if values.iter().all(|&v| v == 0) {
                continue;
            }
            let label = part.scope.map(|s| p.string(s));
            out.message(2, |m| {
                m.packed(1, locations.iter().copied());
                m.packed(2, values.iter().map(|&v| v as u64));
                if let Some(name) = label {
                    m.message(3, |l| {
                        l.int(1, scope_key);
                        l.int(2, name);
                    });
                }
            });
        }
        for (i, map) in maps.iter().enumerate() {
            let file = p.string(&map.file);
            out.message(3, |m| {
                m.uint(1, i as u64 + 1);
                m.uint(2, map.start as u64);
                m.uint(3, map.end as u64);
                m.uint(4, map.offset as u64);
                m.int(5, file);
                for field in 7..=10 {
                    m.uint(field, 1);
                }
            });
        }
        for loc in &p.location_list {
            out.message(4, |m| {
                m.uint(1, loc.id);
                m.uint(2, loc.mapping);
                m.uint(3, loc.address as u64);
                for &(function, line) in &loc.lines {
                    m.message(4, |l| {
                        l.uint(1, function);
                        l.int(2, line);
                    });
                }
            });
        }
        for f in &p.function_list {
            out.message(5, |m| {
                m.uint(1, f.id);
                m.int(2, f.name);
                m.int(3, f.name);
                m.int(4, f.file);
            });
        }
        let (space, bytes) = (p.string("space"), p.string("bytes"));
        let comment = p.string(&format!(
            "leakscope report of process {}{}",
            self.pid,
            if self.sample_bytes > 0 {
                format!(
                    ", sampling mode (one stack per {} bytes): values are estimates",
                    self.sample_bytes
                )
            } else {
                String::new()
            }
        ));
        let default_type = p.string(default);
        for s in &p.strings {
            out.bytes(6, s.as_bytes());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        out.int(9, now);
        out.message(11, |m| {
            m.int(1, space);
            m.int(2, bytes);
        });
        out.int(12, self.sample_bytes.max(1) as i64);
        out.packed(13, std::iter::once(comment as u64));
        out.int(14, default_type);
        out.buf
    }
}

/// The string table, locations and functions, each entry once.
#[derive(Default)]
struct Profile {
    /// Index 0 is the empty string, as the format requires.
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    location_list: Vec<Location>,
    location_ids: HashMap<Vec<(usize, u64, i64)>, u64>,
    function_list: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
}

struct Location {
    id: u64,
    mapping: u64,
    address: usize,
    /// (function id, line), innermost first: each inlined into the next.
    lines: Vec<(u64, i64)>,
}

struct Function {
    id: u64,
    name: i64,
    file: i64,
}

impl Profile {
    fn string(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), i);
        i
    }

    fn function(&mut self, f: &Frame) -> u64 {
        let name = self.string(&function_of(f));
        let file = self.string(f.file.as_deref().unwrap_or(""));
        let next = self.function_list.len() as u64 + 1;
        let id = *self.function_ids.entry((name, file)).or_insert(next);
        if id == next {
            self.function_list.push(Function { id, name, file });
        }
        id
    }

    /// The location ids of a stack (innermost first): one per address,
    /// frames inlined at that address being its lines.
    fn locations(&mut self, frames: &[Frame], maps: &[Mapping]) -> Vec<u64> {
        let mut out = Vec::new();
        let mut rest = frames;
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|f| f.ip == first.ip).count();
            let (here, later) = rest.split_at(n);
            rest = later;
            let lines: Vec<(u64, i64)> = here
                .iter()
                .map(|f| (self.function(f), f.line.map_or(0, i64::from)))
                .collect();
            let key: Vec<(usize, u64, i64)> =
                lines.iter().map(|&(f, l)| (first.ip, f, l)).collect();
            let next = self.location_list.len() as u64 + 1;
            let id = *self.location_ids.entry(key).or_insert(next);
            if id == next {
                let mapping = maps
                    .iter()
                    .position(|m| (m.start..m.end).contains(&first.ip))
                    .map_or(0, |i| i as u64 + 1);
                self.location_list.push(Location {
                    id,
                    mapping,
                    address: first.ip,
                    lines,
                });
            }
            out.push(id);
        }
        out
    }
}

/// An object's code mapped into this process.
pub(crate) struct Mapping {
    start: usize,
    end: usize,
    offset: usize,
    file: String,
}

/// The executable mappings of this process, from `/proc/self/maps`.
fn mappings() -> Vec<Mapping> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines().filter_map(parse_mapping).collect()
}

/// One line of `/proc/self/maps`, if it maps a file's code.
pub(crate) fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut f = line.split_whitespace();
    let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
    let file = f.nth(2)?;
    if !perms.contains('x') || !file.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        offset: usize::from_str_radix(offset, 16).ok()?,
        file: file.to_owned(),
    })
}

/// A protobuf message being written.
#[derive(Default)]
struct Pb {
    buf: Vec<u8>,
}

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    /// A varint field (left out when 0, as proto3 does).
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v);
        }
    }

    fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn message(&mut self, field: u32, fill: impl FnOnce(&mut Pb)) {
        let mut inner = Pb::default();
        fill(&mut inner);
        self.bytes(field, &inner.buf);
    }

    /// A packed repeated varint field.
    fn packed(&mut self, field: u32, values: impl Iterator<Item = u64>) {
        let mut inner = Pb::default();
        for v in values {
            inner.varint(v);
        }
        if !inner.buf.is_empty() {
            self.bytes(field, &inner.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_varints_and_fields() {
        let mut p = Pb::default();
        p.uint(1, 300);
        p.uint(2, 0);
        p.bytes(6, b"ab");
        p.packed(1, [1u64, 150].into_iter());
        assert_eq!(
            p.buf,
            [0x08, 0xAC, 0x02, 0x32, 2, b'a', b'b', 0x0A, 3, 1, 0x96, 0x01]
        );
    }

    #[test]
    fn reads_code_mappings() {
        let m = parse_mapping("55d0a0000000-55d0a0100000 r-xp 00002000 08:01 1234   /usr/bin/prog")
            .unwrap();
        assert_eq!(
            (m.start, m.end, m.offset),
            (0x55d0a0000000, 0x55d0a0100000, 0x2000)
        );
        assert_eq!(m.file, "/usr/bin/prog");
        assert!(parse_mapping("7ff0-8000 rw-p 00000000 00:00 0   [heap]").is_none());
        assert!(parse_mapping("7ff0-8000 r-xp 00000000 00:00 0").is_none());
    }
}
