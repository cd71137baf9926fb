#!/usr/bin/env bash
# What feature c-heap costs, in instructions per malloc/free pair (callgrind,
# the slope from 100,000 to 200,000 pairs, so that start-up cancels out).
#
#   benches/c_pairs.sh
#
# Builds a small program four ways (in target/c_pairs): plain (no tracker),
# linked (leakscope with c-heap, no allocator line), tracked without c-heap,
# tracked with it; each runs N pairs of C's malloc/free (through
# `libc::malloc`, three frames below main) or of a Rust `Vec` (the global
# allocator). Tracked Rust pairs are measured through frame pointers and
# through the DWARF walk (LEAKSCOPE_UNWIND=dwarf), which C pairs always take.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }
repo="$PWD"
dir="${CARGO_TARGET_DIR:-$repo/target}/c_pairs"
mkdir -p "$dir/src"
cat >"$dir/Cargo.toml" <<TOML
[package]
name = "c_pairs"
version = "0.0.0"
edition = "2021"
publish = false
[workspace]
[dependencies]
leakscope = { path = "$repo", default-features = false }
libc = "0.2"
[features]
tracked = []
c-heap = ["leakscope/c-heap"]
[profile.release]
debug = "limited"
TOML
cat >"$dir/src/main.rs" <<'RS'
#[cfg(feature = "tracked")]
#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

#[inline(never)]
fn c_pairs(n: usize) {
    for i in 0..n {
        // SAFETY: a block of C's malloc, freed at once.
        unsafe {
            let p = libc::malloc(64 + (i & 7));
            std::hint::black_box(p);
            libc::free(p);
        }
    }
}

#[inline(never)]
fn rust_pairs(n: usize) {
    for i in 0..n {
        std::hint::black_box(vec![0u8; 64 + (i & 7)]);
    }
}

#[inline(never)]
fn below(n: usize, c: bool) {
    if c { c_pairs(n) } else { rust_pairs(n) }
}

#[inline(never)]
fn further_below(n: usize, c: bool) {
    below(n, c)
}

fn main() {
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    further_below(n, std::env::args().nth(2).as_deref() == Some("c"));
    // Keeps leakscope linked where no allocator line refers to it.
    std::hint::black_box(leakscope::snapshot as fn() -> leakscope::Report);
}
RS
build() { # name features
    cargo build -q --release --manifest-path "$dir/Cargo.toml" --target-dir "$dir/$1" \
        ${2:+--features "$2"} 2>/dev/null || cargo build --release --manifest-path "$dir/Cargo.toml" --target-dir "$dir/$1" ${2:+--features "$2"}
    echo "$dir/$1/release/c_pairs"
}
ir() { # exe n kind [env...] -> instructions
    local exe="$1" n="$2" kind="$3"
    shift 3
    env "$@" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$exe" "$n" "$kind" 2>&1 >/dev/null |
        sed -n 's/.*Collected : //p'
}
slope() { # exe kind [env...]
    local exe="$1" kind="$2"
    shift 2
    local a b
    a="$(ir "$exe" 100000 "$kind" "$@")"
    b="$(ir "$exe" 200000 "$kind" "$@")"
    echo $(((b - a) / 100000))
}
plain="$(build plain "")"
linked="$(build linked c-heap)"
tracked="$(build tracked tracked)"
cheap="$(build tracked-c-heap tracked,c-heap)"
printf "%-44s %8s %8s\n" build "C pair" "Rust pair"
printf "%-44s %8s %8s\n" "plain (no leakscope)" "$(slope "$plain" c)" "$(slope "$plain" rust)"
printf "%-44s %8s %8s\n" "linked with c-heap, no allocator line" "$(slope "$linked" c)" "$(slope "$linked" rust)"
printf "%-44s %8s %8s\n" "tracked, no c-heap (frame pointers)" "$(slope "$tracked" c)" "$(slope "$tracked" rust LEAKSCOPE_UNWIND=fp)"
printf "%-44s %8s %8s\n" "tracked, no c-heap (DWARF walk)" "-" "$(slope "$tracked" rust LEAKSCOPE_UNWIND=dwarf)"
printf "%-44s %8s %8s\n" "tracked, c-heap (frame pointers)" "$(slope "$cheap" c)" "$(slope "$cheap" rust LEAKSCOPE_UNWIND=fp)"
printf "%-44s %8s %8s\n" "tracked, c-heap (DWARF walk)" "$(slope "$cheap" c LEAKSCOPE_UNWIND=dwarf)" "$(slope "$cheap" rust LEAKSCOPE_UNWIND=dwarf)"
