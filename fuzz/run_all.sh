#!/bin/sh
# Runs each fuzz target (or those named) for $SECS seconds (default 600), one after another,
# one job, niced. Logs: fuzz-<target>.log; crashes: artifacts/<target>/.
set -u
secs=${SECS:-600}
cd "$(dirname "$0")"
targets=${*:-metainfo wire krpc}
for t in $targets; do
    mkdir -p corpus/$t
    RUSTC_BOOTSTRAP=1 nice -n 10 cargo fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=16384 -print_final_stats=1 \
        > "fuzz-$t.log" 2>&1
    echo "$t: exit $? after $(grep -h number_of_executed_units "fuzz-$t.log" | tail -1)"
done
