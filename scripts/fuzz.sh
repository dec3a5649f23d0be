#!/usr/bin/env bash
# Builds the libFuzzer targets (Fuzz/) with -sanitize=fuzzer,address in .build-fuzz and runs each for
# FUZZ_SECONDS, one after the other. See README.md "Fuzzing".
#   FUZZ_TARGETS     targets to run (default: all)
#   FUZZ_SECONDS     seconds per target (default 60)
#   FUZZ_DIR         corpora, logs and crash-* inputs (default .build-fuzz/corpus, kept between runs)
#   FUZZ_FLAGS       extra libFuzzer flags
#   FUZZ_BUILD_LOCK  a lock file to hold (flock) while building, for machines shared by several builds
# Prints libFuzzer's final "#N DONE" line and its exec/s per target; exits 1 at the first crash.
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-swift}
export SWIFT_BACKTRACE=enable=no   # libFuzzer and ASan print the stack; Swift's backtracer would stall a crash
targets=${FUZZ_TARGETS:-FuzzImageLoader FuzzCommandScanner FuzzVGPU FuzzCLIParser}
seconds=${FUZZ_SECONDS:-60}
dir=${FUZZ_DIR:-.build-fuzz/corpus}
build=(env MINIVISOR_FUZZ=1 "$SWIFT" build --scratch-path .build-fuzz -c release --sanitize fuzzer
       -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=address)
lock=()
[ -n "${FUZZ_BUILD_LOCK:-}" ] && lock=(flock "$FUZZ_BUILD_LOCK")

mkdir -p "$dir"
for t in $targets; do
    if ! "${lock[@]}" "${build[@]}" --product "$t" >"$dir/build.log" 2>&1; then
        grep -v "Cannot export local symbol" "$dir/build.log" | tail -n 40
        echo "fuzz: building $t failed (log: $dir/build.log)" >&2
        exit 1
    fi
done
bin=$("${build[@]}" --show-bin-path)
for t in $targets; do
    case $t in
        FuzzImageLoader) max_len=65536 ;;   # the test guests are up to ~64 KiB
        FuzzVGPU) max_len=4096 ;;           # a few hundred BAR0 operations
        FuzzCLIParser) max_len=2048 ;;      # command lines
        *) max_len=16384 ;;                 # command streams: ring, batches, data
    esac
    seeds="$dir/seeds/$t"
    mkdir -p "$dir/$t" "$seeds"
    MINIVISOR_FUZZ_SEEDS="$seeds" "$bin/$t" >/dev/null 2>&1
    [ "$t" = FuzzImageLoader ] && cp Guests/build/*.elf "$seeds/"
    log="$dir/$t.log"
    if ! "$bin/$t" "$dir/$t" "$seeds" -max_total_time="$seconds" -max_len="$max_len" -timeout=120 \
            -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$dir/crash-$t-" ${FUZZ_FLAGS:-} >"$log" 2>&1; then
        tail -n 40 "$log"
        crash=$(ls -t "$dir"/crash-"$t"-* 2>/dev/null | head -n 1)
        [ -n "$crash" ] && { echo "input $crash (first 256 bytes):"; od -An -tx1 "$crash" | head -n 16; }
        echo "$t: crash or failure, input saved as ${crash:-$dir/crash-$t-*} (log: $log)" >&2
        exit 1
    fi
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
    rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
    echo "$t: ${done_line:-no DONE line (see $log)} | exec/s: ${rate:-?}"
done
