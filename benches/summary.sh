#!/usr/bin/env bash
# Median and median absolute deviation of every criterion benchmark whose
# id matches the pattern (default: all), from target/criterion/*/new/
# estimates.json as the last `cargo bench` left them. Criterion's own
# console line is [lower bound, mean, upper bound] of the mean; BENCHMARKS.md
# quotes medians. Usage: benches/summary.sh [grep pattern]
set -euo pipefail
cd "$(dirname "$0")/.."
pat=${1:-.}
find target/criterion -path '*/new/estimates.json' | sort | grep -E -- "$pat" |
    while read -r f; do
        id=${f#target/criterion/}
        id=${id%/new/estimates.json}
        python3 - "$f" "$id" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
med, mad = e["median"]["point_estimate"], e["median_abs_dev"]["point_estimate"]
def fmt(ns):
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            return f"{ns / div:.3g} {unit}"
    return f"{ns:.3g} ns"
print(f"{sys.argv[2]:<55} median {fmt(med):>10}  MAD {fmt(mad):>10} ({100 * mad / med:.1f}%)")
PY
    done
