#!/usr/bin/env bash
# What `leakscope run` costs a binary nobody rebuilt, beside heaptrack (the
# tool it replaces): ripgrep 14.1.1 as anyone installs it (`cargo install
# ripgrep`: release, no debug info, no frame pointers, no leakscope),
# searching a few hundred MB of Rust sources (the cargo registry's sources,
# copied COPIES times, 3 by default; hard links where they can be, so the
# page cache holds them once) from the page cache. Plain, under `leakscope run` with
# the JSON report and its full leak check at exit (also with no report,
# and in sampling mode), and under heaptrack (Debian's), interleaved; medians of wall time, each as a ratio to the
# plain run. Every run's output (sorted: the search is parallel) must
# be the plain run's, and its exit status 0. Not run in CI (it builds
# ripgrep and copies the sources).
#
#   bash benches/run_ripgrep.sh             # 7 rounds
#   ROUNDS=11 RG=/path/to/rg bash benches/run_ripgrep.sh
#   COPIES=9 LEAKSCOPE_BENCH_DIR=/tmp/big bash benches/run_ripgrep.sh   # ~1 GB
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${LEAKSCOPE_BENCH_DIR:-${TMPDIR:-/tmp}/leakscope-run-ripgrep}"
rounds="${ROUNDS:-7}"
mkdir -p "$work"
command -v heaptrack >/dev/null || { echo "needs heaptrack (Debian: heaptrack)" >&2; exit 2; }

rg="${RG:-$work/install/bin/rg}"
if [ ! -x "$rg" ]; then
    cargo install -q ripgrep --version 14.1.1 --locked --root "$work/install"
fi
(cd "$root" && cargo build -q --release -p leakscope-cli)
leakscope="$root/target/release/leakscope"

corpus="$work/corpus"
if [ ! -d "$corpus" ]; then
    src="${CARGO_HOME:-$HOME/.cargo}/registry/src"
    for i in $(seq "${COPIES:-3}"); do
        mkdir -p "$corpus"
        cp -al "$src" "$corpus/$i" 2>/dev/null || cp -r "$src" "$corpus/$i"
    done
fi

python3 - "$rg" "$leakscope" "$corpus" "$rounds" "$work" <<'PY'
import os, sys, time, statistics, subprocess, json
rg, leakscope, corpus, rounds, work = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
env = {k: v for k, v in os.environ.items() if not k.startswith("LEAKSCOPE_")}
search = [rg, "-c", "--no-messages", "fn main", corpus]
run = [leakscope, "run"]
cases = [
    ("plain", search, {}),
    ("leakscope run (JSON report, leak check)", [*run, "--report", f"{work}/report.json", "--", *search], {}),
    ("leakscope run, no report (counting only)", [*run, "--", *search], {}),
    ("leakscope run, sampling 512k (JSON report)", [*run, "--report", f"{work}/sampled.json", "--", *search], {"LEAKSCOPE_SAMPLE_BYTES": "512k"}),
    ("heaptrack", ["heaptrack", "-o", f"{work}/heaptrack", *search], {}),
]
res = {name: [] for name, _, _ in cases}
expected = None
for _ in range(rounds):
    for name, args, extra in cases:
        start = time.perf_counter()
        p = subprocess.Popen(args, env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate()
        wall = time.perf_counter() - start
        assert p.returncode == 0, (name, p.returncode, err.decode())
        # (heaptrack prints its own lines on stdout too.)
        lines = sorted(l for l in out.decode().splitlines() if l.startswith(corpus))
        if expected is None:
            expected = lines
        assert lines == expected, f"{name}: output differs from the plain run's"
        res[name].append(wall)
t0 = statistics.median(res["plain"])
size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(corpus) for f in fs)
print(f"ripgrep 14.1.1 over {size / 1e6:.0f} MB ({len(expected)} files match), {rounds} interleaved rounds, medians:")
for name, _, _ in cases:
    t = statistics.median(res[name])
    lo, hi = min(res[name]), max(res[name])
    print(f"  {name:<42} {t*1e3:8.1f} ms  {t/t0:5.2f}x   (runs {lo*1e3:.0f}-{hi*1e3:.0f} ms)")
doc = json.load(open(f"{work}/report.json"))
lc = doc["leak_check"]
print("  leakscope's last report: live at exit {} blocks / {} bytes; definitely lost {}, indirectly lost {}".format(
    doc["totals"]["live_blocks"], doc["totals"]["live_bytes"],
    lc["definitely_lost"]["blocks"], lc["indirectly_lost"]["blocks"]))
PY
