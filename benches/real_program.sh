#!/usr/bin/env bash
# What the exit report and the CI gate cost a real program: ripgrep 14.1.1
# from crates.io, built with leakscope's allocator line (and the README's
# frame pointers and line tables), searching a source tree (the cargo
# registry's sources, as this machine has them). Plain, with the gate
# (LEAKSCOPE_ERROR_EXITCODE=23, nothing lost), with a text and with a JSON
# report, interleaved; medians of wall time and peak RSS, and what each adds
# to the plain run. Not run in CI (it downloads and builds ripgrep).
#
#   bash benches/real_program.sh            # 11 rounds
#   ROUNDS=21 bash benches/real_program.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${LEAKSCOPE_BENCH_DIR:-${TMPDIR:-/tmp}/leakscope-real-program}"
rounds="${ROUNDS:-11}"
mkdir -p "$work"

# The source, as cargo fetches it (a throwaway crate names it).
if [ ! -d "$work/rg" ]; then
    mkdir -p "$work/fetch/src"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nripgrep = "=14.1.1"\n' >"$work/fetch/Cargo.toml"
    echo 'fn main() {}' >"$work/fetch/src/main.rs"
    (cd "$work/fetch" && cargo fetch -q)
    src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ripgrep-14.1.1 | head -1)"
    cp -r "$src" "$work/rg"
    chmod -R u+w "$work/rg"
    # The one line a user adds, and the dependency.
    sed -i '0,/^#\[cfg(all(target_env = "musl"/s//#[cfg(not(all(target_env = "musl", target_pointer_width = "64")))]\n#[global_allocator]\nstatic LEAKSCOPE: leakscope::LeakTracker = leakscope::LeakTracker::system();\n\n&/' "$work/rg/crates/core/main.rs"
    printf '\n[dependencies.leakscope]\npath = "%s"\n' "$root" >>"$work/rg/Cargo.toml"
    printf '\n[workspace]\n' >>"$work/rg/Cargo.toml"
fi
grep -q 'leakscope::LeakTracker::system()' "$work/rg/crates/core/main.rs"
(cd "$work/rg" && CARGO_PROFILE_RELEASE_DEBUG=limited RUSTFLAGS="-C force-frame-pointers=yes" \
    CARGO_TARGET_DIR="$work/target" cargo build -q --release)
rg="$work/target/release/rg"
tree="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -1)"

python3 - "$rg" "$tree" "$rounds" "$work" <<'PY'
import os, sys, time, statistics, subprocess
rg, tree, rounds, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
base = {k: v for k, v in os.environ.items() if not k.startswith("LEAKSCOPE_")}
cases = [
    ("plain", {}),
    ("gate (LEAKSCOPE_ERROR_EXITCODE=23)", {"LEAKSCOPE_ERROR_EXITCODE": "23"}),
    ("text report", {"LEAKSCOPE_REPORT": f"{work}/report.txt"}),
    ("JSON report", {"LEAKSCOPE_REPORT": f"{work}/report.json"}),
]
args = [rg, "-c", "--no-messages", "fn main", tree]
res = {name: ([], []) for name, _ in cases}
for _ in range(rounds):
    for name, env in cases:
        start = time.perf_counter()
        p = subprocess.Popen(args, env={**base, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        err = p.stderr.read().decode()
        assert os.waitstatus_to_exitcode(status) == 0, (name, status, err)
        res[name][0].append(wall)
        res[name][1].append(usage.ru_maxrss / 1024)
t0 = statistics.median(res["plain"][0])
r0 = statistics.median(res["plain"][1])
print(f"ripgrep 14.1.1 over {tree}, {rounds} interleaved rounds, medians:")
for name, _ in cases:
    t, r = statistics.median(res[name][0]), statistics.median(res[name][1])
    print(f"  {name:<36} {t*1e3:8.1f} ms {r:7.1f} MiB   +{(t-t0)*1e3:7.1f} ms  +{r-r0:6.1f} MiB")
sizes = {f: os.path.getsize(f"{work}/{f}") for f in ("report.txt", "report.json") if os.path.exists(f"{work}/{f}")}
print("  report sizes:", ", ".join(f"{k} {v:,} bytes" for k, v in sizes.items()))
PY
