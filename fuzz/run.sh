#!/usr/bin/env bash
# fuzz/run.sh BUDGET_SECONDS [target...]: build the libFuzzer harnesses, fuzz each C target for
# BUDGET_SECONDS, replay every crasher kept in fuzz/regressions/, then run the hypothesis parser
# tests (tests/test_fuzz_parsers.py) with an example count scaled to the budget.
#
# Targets: fuzz_gemm_pack fuzz_w4a16 fuzz_quant fuzz_fp16 (all C targets when none is named) and
# "parsers" (the hypothesis tests; part of the default set). C targets run FUZZ_JOBS at a time
# (default: the number of cores). Each C target starts from its committed seeds in
# fuzz/corpus/<target>/ plus what earlier runs found (fuzz/build/corpus/<target>/, not committed);
# a crash leaves its input in fuzz/build/crashes/<target>/ (copy it to fuzz/regressions/<target>/
# once fixed, with a test that reproduces it through the Python binding).
# FUZZ_RUNS=N stops each C target after N executions (BUDGET_SECONDS still caps the time).
# Prints one summary line per target (executions, crashes) and exits 1 on any crash or failure.
# Needs clang with libFuzzer (CC_FUZZ overrides the compiler) and, for "parsers", the test extra
# (pip install -e ".[test]"). CI smoke: fuzz/run.sh 20 (under 2 minutes on 2 cores).
set -u
cd "$(dirname "$0")/.."

usage() { echo "usage: fuzz/run.sh BUDGET_SECONDS [fuzz_gemm_pack|fuzz_w4a16|fuzz_quant|fuzz_fp16|parsers ...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUDGET=$1
shift
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ "$BUDGET" -gt 0 ] || usage

C_ALL="fuzz_gemm_pack fuzz_w4a16 fuzz_quant fuzz_fp16"
C_TARGETS=""
PARSERS=0
if [ $# -eq 0 ]; then
    C_TARGETS=$C_ALL
    PARSERS=1
fi
for t in "$@"; do
    case " $C_ALL " in
    *" $t "*) C_TARGETS="$C_TARGETS $t" ;;
    *) if [ "$t" = parsers ]; then PARSERS=1; else echo "fuzz/run.sh: unknown target '$t'" >&2; usage; fi ;;
    esac
done

BUILD=fuzz/build
JOBS=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
PYTHON=${PYTHON:-python}
# No 4 KB 0xbe fill of each allocation: the kernels' panel buffers made it a third of the time.
export ASAN_OPTIONS=${ASAN_OPTIONS:-max_malloc_fill_size=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
FAILED=0
SUMMARY=()

if [ -n "$C_TARGETS" ]; then
    CC_FUZZ=${CC_FUZZ:-clang}
    if ! command -v "$CC_FUZZ" >/dev/null 2>&1; then
        echo "fuzz/run.sh: $CC_FUZZ not found; the C targets need clang with libFuzzer (set CC_FUZZ)" >&2
        exit 2
    fi
    echo "== building harnesses ($CC_FUZZ, ASan + UBSan) into $BUILD/"
    # shellcheck disable=SC2086
    if ! make -s -C fuzz -j"$JOBS" CC_FUZZ="$CC_FUZZ" $(for t in $C_TARGETS; do echo "build/$t"; done); then
        echo "fuzz/run.sh: build failed" >&2
        exit 2
    fi
fi

# One libFuzzer run of target $1: corpus, crash artifacts and the log under $BUILD.
fuzz_one() {
    local t=$1
    mkdir -p "$BUILD/corpus/$t" "$BUILD/crashes/$t" "$BUILD/logs"
    "$BUILD/$t" "$BUILD/corpus/$t" "fuzz/corpus/$t" -max_total_time="$BUDGET" -max_len=4096 \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$BUILD/crashes/$t/" \
        ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} >"$BUILD/logs/$t.log" 2>&1
    echo $? >"$BUILD/logs/$t.rc"
}

if [ -n "$C_TARGETS" ]; then
    echo "== fuzzing ($BUDGET s per target, $JOBS at a time):$C_TARGETS"
    mkdir -p "$BUILD/logs"
    running=0
    for t in $C_TARGETS; do
        rm -f "$BUILD/logs/$t.rc"
        touch "$BUILD/logs/.start-$t" # crash files newer than this belong to this run
        fuzz_one "$t" &
        running=$((running + 1))
        if [ "$running" -ge "$JOBS" ]; then
            wait -n
            running=$((running - 1))
        fi
    done
    wait
    for t in $C_TARGETS; do
        log=$BUILD/logs/$t.log
        rc=$(cat "$BUILD/logs/$t.rc" 2>/dev/null || echo 1)
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        [ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
        crashes=$(find "$BUILD/crashes/$t" -type f -newer "$BUILD/logs/.start-$t" | wc -l)
        if [ "$rc" != 0 ] && [ "$crashes" = 0 ]; then crashes=1; fi
        line=$(printf "%-15s %12s executions  %d crashes" "$t" "${runs:-?}" "$crashes")
        if [ "$crashes" != 0 ]; then
            FAILED=1
            line="$line  (rc $rc; inputs in $BUILD/crashes/$t/, log $log)"
            grep -m1 -E "ERROR: |runtime error|property failed" "$log" | sed 's/^/    /'
        fi
        SUMMARY+=("$line")
    done

    echo "== replaying fuzz/regressions/"
    for t in $C_TARGETS; do
        dir=fuzz/regressions/$t
        files=$(find "$dir" -type f 2>/dev/null | sort)
        [ -n "$files" ] || continue
        n=$(echo "$files" | wc -l)
        # shellcheck disable=SC2086
        if "$BUILD/$t" $files >"$BUILD/logs/$t.replay.log" 2>&1; then
            SUMMARY+=("$(printf "%-15s %12s replayed     0 crashes" "$t" "$n")")
        else
            FAILED=1
            SUMMARY+=("$(printf "%-15s %12s replayed     crashed (log %s)" "$t" "$n" "$BUILD/logs/$t.replay.log")")
        fi
    done
fi

if [ "$PARSERS" = 1 ]; then
    # About 6 examples per test per budget second (the defaults keep the test-suite run short).
    export AWQ_FUZZ_EXAMPLES=${AWQ_FUZZ_EXAMPLES:-$((BUDGET * 6))}
    echo "== hypothesis parser tests (AWQ_FUZZ_EXAMPLES=$AWQ_FUZZ_EXAMPLES)"
    mkdir -p "$BUILD/logs"
    start=$(date +%s)
    if "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_fuzz_parsers.py >"$BUILD/logs/parsers.log" 2>&1; then
        res="passed"
    else
        res="FAILED (log $BUILD/logs/parsers.log)"
        FAILED=1
        tail -n 30 "$BUILD/logs/parsers.log"
    fi
    SUMMARY+=("$(printf "%-15s %12s examples/test  %s in %ss" parsers "$AWQ_FUZZ_EXAMPLES" "$res" $(( $(date +%s) - start )))")
fi

echo "== summary"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
