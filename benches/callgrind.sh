#!/usr/bin/env bash
# Instructions per admission for each path of benches/instructions.rs: runs it under
# callgrind with N and 2N calls and prints (Ir(2N) - Ir(N)) / N, which cancels the set-up.
# Only the instructions inside `run` count: the clocks' calibration happens before it.
# Usage: bash benches/callgrind.sh [N]   (N defaults to 100000)
#        PATHS="ratekeeper_allow_at governor_check" bash benches/callgrind.sh [N]   (some paths)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
bin=$(cargo bench --bench instructions --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p')
out=$(mktemp -d)
ir() { # total instructions of one run
    valgrind --tool=callgrind --toggle-collect='instructions::run' --callgrind-out-file="$out/cg" \
        "$bin" "$1" "$2" >/dev/null 2>&1
    sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out/cg"
}
printf '%-34s %s\n' path "instructions/admission"
paths=${PATHS:-"ratekeeper_allow ratekeeper_allow_small_burst ratekeeper_try_acquire
    ratekeeper_try_acquire_3 ratekeeper_allow_at ratekeeper_try_acquire_at ratekeeper_try_acquire_at_3
    ratekeeper_try_acquire_set_limit ratekeeper_allow_deny ratekeeper_allow_at_deny
    ratekeeper_try_acquire_deny ratekeeper_try_acquire_at_deny governor_check
    governor_check_fake_clock governor_stacked_rpm_tpm governor_check_deny"}
for path in $paths; do
    a=$(ir "$path" "$n")
    b=$(ir "$path" $((2 * n)))
    printf '%-34s %s\n' "$path" "$(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')"
done
rm -rf "$out"
