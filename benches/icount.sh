#!/usr/bin/env bash
# Instructions per 4K page for mapping and unmapping through the safe TD API
# and as raw leaf calls, counted by callgrind (repeatable on a noisy
# machine). Usage: benches/icount.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt install valgrind)" >&2; exit 1; }
bin=$(cargo bench --bench td_mapping_icount --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*td_mapping_icount[^"]*\)".*/\1/p' | tail -1)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --bench >/dev/null 2>&1
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | awk -v n=65536 '
    # callgrind_annotate prints "1,234,567 (12.3%)  file:function"
    { gsub(",", "", $1) }
    /measured_safe_map/   { safe_map = $1 }
    /measured_safe_unmap/ { safe_unmap = $1 }
    /measured_raw_map/    { raw_map = $1 }
    /measured_raw_unmap/  { raw_unmap = $1 }
    END {
        if (!safe_map || !safe_unmap || !raw_map || !raw_unmap) {
            print "measured functions not found in the profile" > "/dev/stderr"; exit 1
        }
        printf "instructions per 4K page (callgrind, %d pages a pass)\n", n
        printf "  map:   safe %.0f  raw %.0f  ratio %.2f\n", safe_map / n, raw_map / n, safe_map / raw_map
        printf "  unmap: safe %.0f  raw %.0f  ratio %.2f\n", safe_unmap / n, raw_unmap / n, safe_unmap / raw_unmap
    }'
