#!/usr/bin/env bash
# A real tokio/axum service with a blocking pool (benches/service.rs: every
# request lists a directory on the pool, 200 pool threads alive) under
# `wrk -t1 -c16` on loopback, plain (System) and tracked (full mode, then
# sampling at 512 KiB), in interleaved rounds. Prints each round's requests
# per second and the median cost ratio (plain's throughput over the mode's).
#
#   bash benches/service.sh        (ROUNDS=5, SECONDS_PER_RUN=5, PERF=1 adds a
#                                   `perf record` of one tracked run: the share
#                                   of CPU of the largest leakscope functions)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (Debian: apt-get install wrk)" >&2; exit 2; }
rounds="${ROUNDS:-5}"
secs="${SECONDS_PER_RUN:-5}"
port=18099

exe="$(cargo bench --bench service --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "service" and m.get("executable"):
        print(m["executable"])')"

serve() { # mode [sample bytes] -> requests per second
    local mode="$1" sample="${2:-}" out pid
    out="$(mktemp)"
    if [ -n "$sample" ]; then
        LEAKSCOPE_SAMPLE_BYTES="$sample" LEAKSCOPE_BENCH_MODE="$mode" LEAKSCOPE_BENCH_PORT=$port "$exe" >"$out" 2>&1 &
    else
        env -u LEAKSCOPE_SAMPLE_BYTES LEAKSCOPE_BENCH_MODE="$mode" LEAKSCOPE_BENCH_PORT=$port "$exe" >"$out" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 100); do grep -q ready "$out" && break; sleep 0.1; done
    if [ "${PERF:-0}" = 1 ] && [ "$mode" = leakscope ] && [ -z "$sample" ] && [ ! -e /tmp/leakscope-service.perf ]; then
        perf record -e cpu-clock -g -p "$pid" -o /tmp/leakscope-service.perf -- sleep "$secs" >/dev/null 2>&1 &
    fi
    wrk -t1 -c16 -d"${secs}s" "http://127.0.0.1:$port/list" | awk '/Requests\/sec/ {print $2}'
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -f "$out"
}

rm -f /tmp/leakscope-service.perf
declare -a plain full sampled
for r in $(seq "$rounds"); do
    plain+=("$(serve system)")
    full+=("$(serve leakscope)")
    sampled+=("$(serve leakscope 512k)")
    echo "round $r: plain ${plain[-1]} req/s, full ${full[-1]}, sampling ${sampled[-1]}"
done
python3 - "${plain[*]}" "${full[*]}" "${sampled[*]}" <<'EOF'
import statistics, sys
plain, full, sampled = ([float(x) for x in a.split()] for a in sys.argv[1:4])
for name, runs in (("full", full), ("sampling, 512 KiB", sampled)):
    ratios = sorted(p / t for p, t in zip(plain, runs))
    print(f"{name}: cost {statistics.median(ratios):.2f}x (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}), "
          f"throughput {statistics.median(runs):.0f} req/s against plain {statistics.median(plain):.0f}")
EOF
if [ -e /tmp/leakscope-service.perf ]; then
    echo "perf, one full-mode run: the largest leakscope functions' share of all CPU time"
    perf report -i /tmp/leakscope-service.perf --no-children --stdio 2>/dev/null |
        grep -E '^ +[0-9.]+%' | grep leakscope | head -5
fi
