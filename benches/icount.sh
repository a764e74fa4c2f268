#!/usr/bin/env bash
# Instructions per 4K page for mapping and unmapping through the safe TD API
# and as raw leaf calls, counted by callgrind (repeatable on a noisy
# machine). Usage: benches/icount.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "icount.sh: valgrind is needed (apt install valgrind)" >&2; exit 1; }
echo "building the bench (cargo bench --no-run)..." >&2
bin=$(cargo bench --bench td_mapping_icount --no-run --message-format=json |
    sed -n 's/.*"executable":"\([^"]*td_mapping_icount[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "icount.sh: no bench executable found" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "running it under callgrind (about 15 s)..." >&2
if ! valgrind --tool=callgrind --callgrind-out-file="$dir/out" "$bin" --bench >"$dir/stdout" 2>"$dir/log"; then
    echo "icount.sh: the bench failed under valgrind:" >&2
    cat "$dir/stdout" "$dir/log" >&2
    exit 1
fi
n=$(sed -n 's/^pages per pass: //p' "$dir/stdout")
[ -n "$n" ] || { echo "icount.sh: the bench did not say how many pages a pass maps" >&2; exit 1; }
callgrind_annotate --threshold=100 --inclusive=yes "$dir/out" 2>/dev/null | awk -v n="$n" '
    # callgrind_annotate prints "1,234,567 (12.3%)  file:function"
    { gsub(",", "", $1) }
    /closure/ { next }
    /measured_safe_map/   { safe_map = $1 }
    /measured_safe_unmap/ { safe_unmap = $1 }
    /measured_raw_map/    { raw_map = $1 }
    /measured_raw_unmap/  { raw_unmap = $1 }
    /measured_dpamt_map/   { dp_map = $1 }
    /measured_dpamt_unmap/ { dp_unmap = $1 }
    END {
        if (!safe_map || !safe_unmap || !raw_map || !raw_unmap || !dp_map || !dp_unmap) {
            print "icount.sh: measured functions not found in the profile" > "/dev/stderr"; exit 1
        }
        printf "instructions per 4K page (callgrind, %d pages a pass)\n", n
        printf "  map:   safe %.0f  raw %.0f  ratio %.2f\n", safe_map / n, raw_map / n, safe_map / raw_map
        printf "  unmap: safe %.0f  raw %.0f  ratio %.2f\n", safe_unmap / n, raw_unmap / n, safe_unmap / raw_unmap
        printf "  with Dynamic PAMT (module 1.5.16, a pair added and removed per 2 MiB range):\n"
        printf "    map %.0f (%.2fx static)  unmap %.0f (%.2fx static)\n", dp_map / n, dp_map / safe_map, dp_unmap / n, dp_unmap / safe_unmap
    }'

# The library alone: the same passes against a backend with no cost of its
# own (benches/null: SEAMCALLs answer success at once, CLFLUSH does nothing).
# The difference safe - raw is what tdx-api itself adds per page.
echo "building the no-cost-backend bench..." >&2
bin=$(cargo bench --bench td_null_icount --no-run --message-format=json |
    sed -n 's/.*"executable":"\([^"]*td_null_icount[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "icount.sh: no td_null_icount executable found" >&2; exit 1; }
if ! valgrind --tool=callgrind --callgrind-out-file="$dir/null" "$bin" --bench >"$dir/stdout" 2>"$dir/log"; then
    echo "icount.sh: the no-cost bench failed under valgrind:" >&2
    cat "$dir/stdout" "$dir/log" >&2
    exit 1
fi
n=$(sed -n 's/^pages per pass: //p' "$dir/stdout")
callgrind_annotate --threshold=100 --inclusive=yes "$dir/null" 2>/dev/null | awk -v n="$n" '
    { gsub(",", "", $1) }
    /closure/ { next }
    /measured_null_safe_map/ { safe_map = $1 }
    /measured_null_safe_unmap_batched/ { batched = $1; next }
    /measured_null_safe_unmap/ { safe_unmap = $1 }
    /measured_null_big_td_map/ { big_map = $1; next }
    /measured_null_big_td_unmap/ { big_unmap = $1; next }
    /measured_null_raw_map/ { raw_map = $1 }
    /measured_null_raw_unmap/ { raw_unmap = $1 }
    END {
        if (!safe_map || !safe_unmap || !raw_map || !raw_unmap || !batched) {
            print "icount.sh: no-cost measured functions not found" > "/dev/stderr"; exit 1
        }
        printf "against a no-cost backend (instructions per 4K page, %d pages a pass)\n", n
        printf "  map:   safe %.0f  raw %.0f  the library adds %.0f\n", safe_map / n, raw_map / n, (safe_map - raw_map) / n
        printf "  unmap: safe %.0f  raw %.0f  the library adds %.0f\n", safe_unmap / n, raw_unmap / n, (safe_unmap - raw_unmap) / n
        printf "  unmap in 2 MiB batches (unmap_range): %.0f per page\n", batched / n
        printf "  in a TD with 1 Mi more 4K pages mapped: map %.0f, unmap %.0f\n", big_map / n, big_unmap / n
    }'

