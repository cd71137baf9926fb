#!/usr/bin/env bash
# Fuzzes each target for a bounded time (issue 29): libFuzzer through
# cargo-fuzz, on nightly, under AddressSanitizer (cargo fuzz's default).
#   SECS=60 bash fuzz/run.sh            # every target, 60 s each
#   SECS=600 bash fuzz/run.sh cfi_rules # one target
# Seeds are made here from real inputs, not committed: reports the leaky
# service writes, objects gcc builds from this repository's C source (DWARF 5,
# DWARF 4, split, compressed, none, stripped), the values the guide
# documents. Inputs that once crashed a target are kept in
# fuzz/regressions/<target>/ and replayed every run. Prints each target's
# executions; a crash fails the run, with the input saved under
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
SECS="${SECS:-60}"
TARGETS=("${@:-report_json suppressions env_values debug_info cfi_rules}")
# shellcheck disable=SC2206
TARGETS=(${TARGETS[*]})
seeds="$(mktemp -d)"
trap 'rm -rf "$seeds"' EXIT
mkdir -p "$seeds"/{report_json,suppressions,env_values,debug_info,cfi_rules}

# Reports: the leaky service's, with and without the leak check, leaking
# and fixed (a short run: the seeds stay small).
cargo build -q --manifest-path ../Cargo.toml -p leaky-service
service="$(cargo metadata -q --manifest-path ../Cargo.toml --format-version 1 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/leaky_service"
for args in "100 0 yes" "100 1 yes" "50 0 no"; do
  set -- $args
  LEAKY_SERVICE_REQUESTS=$1 LEAKY_SERVICE_FIXED=$2 LEAKSCOPE_LEAK_CHECK=$3 \
    LEAKSCOPE_REPORT="$seeds/report_json/r-$1-$2-$3.json" "$service" >/dev/null 2>&1
done
printf '{"schema": "leakscope/1"}' >"$seeds/report_json/gutted.json"

# A suppressions file as the guide writes one, with a malformed line.
cat >"$seeds/suppressions/supp.txt" <<'SUPP'
# comments and blank lines are skipped

leak:libfoo.so
leak:*::cache::*
leak:src/legacy/*.rs
growth:GET /users/*
growth:POST /orders
not a suppression
SUPP

# Each variable's documented values, and lines of /proc/self/maps.
i=0
for v in stderr "stderr,r.json,r.pb.gz,r.folded,r.svg,r.html,r.dhat.json,r.txt" \
  USR2 SIGUSR1 none 34 64k 1m 512 full no yes 23 250 1000; do
  printf '%s' "$v" >"$seeds/env_values/v$i"
  i=$((i + 1))
done
head -n 8 /proc/self/maps | while IFS= read -r line; do
  printf '%s' "$line" >"$seeds/env_values/v$i"
  i=$((i + 1))
done

# Objects: a C library as gcc 12 builds it, in each debug-info variant the
# report must read or pass over.
src=../allocator-tests/c-lib/leaky.c
cc -shared -fPIC -O2 -g -o "$seeds/debug_info/dwarf5.so" "$src"
cc -shared -fPIC -O2 -gdwarf-4 -o "$seeds/debug_info/dwarf4.so" "$src"
cc -shared -fPIC -O2 -g -gz -o "$seeds/debug_info/gz.so" "$src"
cc -shared -fPIC -O2 -g -gsplit-dwarf -o "$seeds/debug_info/split.so" "$src" -save-temps=obj 2>/dev/null ||
  cc -shared -fPIC -O2 -g -gsplit-dwarf -o "$seeds/debug_info/split.so" "$src"
cc -shared -fPIC -O2 -o "$seeds/debug_info/none.so" "$src"
cp "$seeds/debug_info/dwarf5.so" "$seeds/debug_info/stripped.so"
strip "$seeds/debug_info/stripped.so"
cc -c -O2 -g -o "$seeds/debug_info/object.o" "$src"
rm -f "$seeds"/debug_info/*.dwo "$seeds"/debug_info/*.i "$seeds"/debug_info/*.s
cp "$seeds"/debug_info/{dwarf5,none,stripped}.so "$seeds/cfi_rules/"

# The fuzzers' own build (nightly, sanitizer flags) apart from the
# workspace's: fuzz/target, or a fuzz/ folder of the caller's target dir.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz"
fi
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "regressions/$t"
  log="$(mktemp)"
  # regressions/<target>: inputs that once crashed it, replayed every run.
  if cargo +nightly fuzz run "$t" "corpus/$t" "$seeds/$t" "regressions/$t" -- \
    -max_total_time="$SECS" -print_final_stats=1 -max_len=1048576 >"$log" 2>&1; then
    runs="$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')"
    echo "fuzz $t: ${SECS} s, ${runs:-?} executions, no crash"
  else
    echo "fuzz $t: FAILED"
    # The panic, the stack's frames in this repository, and where the input
    # was saved (not its bytes, which cargo fuzz prints too).
    if grep -q 'Test unit written' "$log"; then
      grep -A1 'panicked at' "$log" | head -n 4 || true
      grep -E '^ +#[0-9]+ .* in .*(/work|leakscope|src/)' "$log" | grep -v '/rustc/' | head -n 12 || true
      grep -E 'ERROR:|SUMMARY:|Test unit written' "$log" | head -n 4 || true
    else
      tail -n 30 "$log" # not a crash: the build, or the fuzzer's own error
    fi
    status=1
  fi
  rm -f "$log"
done
exit "$status"
