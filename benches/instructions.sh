#!/usr/bin/env bash
# The allocation path's cost in instructions, which, unlike time, does not
# swing with the machine: extra instructions per allocation and its free,
# under `valgrind --tool=callgrind`, on the whole-program workload
# (benches/workload.rs) at one worker.
#
#   benches/instructions.sh [WORKLOAD ...]   (default: service dense)
#   WORKLOAD: service, dense, siblings, stacks, reallocs (see workload.rs), or
#   handoff:N, the handoff shape with N idle threads (handoff: 2)
#   LEAKSCOPE_BENCH_REQUESTS=20000 (a multiple of 100), MODES="leakscope leakscope-sampled",
#   RUNS=3 (each figure is the median of this many plain/tracked pairs: the
#   writer thread's timing moves a run by a few instructions per pair),
#   CARGO_FLAGS="--no-default-features --features formats" (the build
#   measured; this one without feature c-heap)
#   MODES may name jemalloc-prof: jemalloc's own heap profiler at the same
#   interval, measured against jemalloc alone (Debian's libjemalloc2, see
#   workload.rs)
#
# Per workload: the plain run (System) and each tracked run, same requests.
# Extra per pair = (tracked run's instructions - the snapshot the workload
# takes at its end, which checks the planted leaks - plain run's) / the plain
# run's pairs: calls of __rust_alloc, __rust_alloc_zeroed and __rust_realloc
# (every block is freed or reallocated, and a realloc is a pair, a free and
# an allocation, as valgrind and the tracker count it). Scope entry and
# exit are in the tracked run, so they count in the figure. Plain/pair is
# the plain run's instructions per allocation (the whole program), which
# holds what linking leakscope costs a program that does not use it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }

workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(service dense)
requests="${LEAKSCOPE_BENCH_REQUESTS:-20000}"
modes="${MODES:-leakscope leakscope-sampled}"
runs="${RUNS:-3}"
out="${CARGO_TARGET_DIR:-target}/instructions"
mkdir -p "$out"

exe="$(cargo bench ${CARGO_FLAGS:-} --bench workload --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "workload" and m.get("executable"):
        print(m["executable"])')"

run() { # workload[:idle threads] mode -> callgrind file
    local f="$out/$1.$2"
    local sample=()
    [ "$2" = leakscope-sampled ] && sample=(LEAKSCOPE_SAMPLE_BYTES=512k LEAKSCOPE_SAMPLE_SEED=1)
    case "$2" in jemalloc*) sample=(GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536) ;; esac
    [ "$2" = jemalloc-prof ] && sample+=(MALLOC_CONF=prof:true,lg_prof_sample:19,prof_final:false)
    local idle="${1#*:}"
    [ "$idle" = "$1" ] && idle=2
    env -u LEAKSCOPE_REPORT "${sample[@]}" LEAKSCOPE_BENCH_WORKLOAD="${1%%:*}" LEAKSCOPE_BENCH_MODE="$2" \
        LEAKSCOPE_BENCH_THREADS=1 LEAKSCOPE_BENCH_REQUESTS="$requests" LEAKSCOPE_BENCH_IDLE="$idle" \
        valgrind --tool=callgrind --max-threads=1000 --callgrind-out-file="$f" "$exe" >/dev/null 2>"$f.log" ||
        { echo "$1 $2 failed:" >&2; cat "$f.log" >&2; return 1; }
    echo "$f"
}

figures() { # plain-file tracked-file -> "extra per pair, allocations, plain run per pair"
    python3 - "$1" "$2" <<'EOF'
import re, subprocess, sys

def calls(path):
    names, n, cfn = {}, 0, None
    for line in open(path, errors="replace"):
        m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
        if m:
            kind, i, name = m.groups()
            if name:
                names[i] = name.strip()
            if kind == "cfn":
                cfn = i
            continue
        m = re.match(r"calls=(\d+)", line)
        if m and cfn and re.search(r"__rust_(alloc|alloc_zeroed|realloc)$", names.get(cfn, "")):
            n += int(m.group(1))
    return n

def total(path):
    for line in open(path, errors="replace"):
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])

def snapshot(path):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    best = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) .*leakscope::report::collect::snapshot[^_]", line + " ")
        if m:
            best = max(best, int(m.group(1).replace(",", "")))
    return best

plain, tracked = sys.argv[1], sys.argv[2]
pairs = calls(plain)
extra = total(tracked) - snapshot(tracked) - total(plain)
print(f"{extra / pairs:.0f} {pairs} {total(plain) / pairs:.0f}")
EOF
}

printf "%-12s %-19s %12s %14s %12s %11s\n" workload allocator "extra/pair" "(runs)" pairs "plain/pair"
for w in "${workloads[@]}"; do
    for m in $modes; do
        all=()
        for _ in $(seq "$runs"); do
            base=system
            [ "$m" = jemalloc-prof ] && base=jemalloc
            plain="$(run "$w" "$base")"
            tracked="$(run "$w" "$m")"
            read -r extra pairs base < <(figures "$plain" "$tracked")
            all+=("$extra")
        done
        sorted="$(printf "%s\n" "${all[@]}" | sort -n | tr '\n' ' ')"
        median="$(printf "%s\n" "${all[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p")"
        printf "%-12s %-19s %12s %14s %12s %11s\n" "$w" "$m" "$median" "($sorted)" "$pairs" "$base"
    done
done
