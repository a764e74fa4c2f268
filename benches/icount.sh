#!/usr/bin/env bash
# Instructions per operation through the safe TD API and as the raw leaf
# calls that do the same work, counted by callgrind (repeatable on a noisy
# machine), on the simulator and on a backend with no cost of its own
# (benches/null), for: 4K map and unmap, 2M map and unmap, range unmap (per
# 4K page), demote and promote of a 2M page, and vCPU entry and exit
# handling (on the simulator, a guest whose read of an unmapped GPA exits
# at every entry: see benches/td_mapping_icount.rs).
# Usage: benches/icount.sh
#
# Each bench prints "op <name> <safe function> <raw function> <operations
# a pass>" lines; each named function is one `#[inline(never)]` pass whose
# inclusive count callgrind reports.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "icount.sh: valgrind is needed (apt install valgrind)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# run <bench> <name>: builds the bench, runs it under callgrind, writes
# $dir/<name>.out (its stdout) and $dir/<name>.prof (the inclusive profile).
run() {
    echo "building $1 (cargo bench --no-run)..." >&2
    local bin
    bin=$(cargo bench --bench "$1" --no-run --message-format=json |
        sed -n "s/.*\"executable\":\"\([^\"]*$1[^\"]*\)\".*/\1/p" | tail -1)
    [ -x "$bin" ] || { echo "icount.sh: no $1 executable found" >&2; exit 1; }
    echo "running $1 under callgrind..." >&2
    if ! valgrind --tool=callgrind --callgrind-out-file="$dir/$2.cg" "$bin" --bench >"$dir/$2.out" 2>"$dir/$2.log"; then
        echo "icount.sh: $1 failed under valgrind:" >&2
        cat "$dir/$2.out" "$dir/$2.log" >&2
        exit 1
    fi
    callgrind_annotate --threshold=100 --inclusive=yes "$dir/$2.cg" 2>/dev/null |
        grep -v closure | sed 's/,//g' >"$dir/$2.prof"
}

# count <name> <function>: the function's inclusive instruction count.
count() {
    awk -v fn="$2" '$0 ~ ("::" fn "([^A-Za-z0-9_]|$)") { print $1; exit }' "$dir/$1.prof"
}

run td_mapping_icount sim
run td_null_icount null

printf '\ninstructions per operation (callgrind, one run)\n'
printf '%-22s %28s %36s\n' "" "simulator" "no-cost backend"
printf '%-22s %9s %9s %8s   %9s %9s %14s\n' operation safe raw safe/raw safe raw "library adds"
grep '^op ' "$dir/null.out" | while read -r _ name nsafe nraw nops; do
    ns=$(count null "$nsafe"); nr=$(count null "$nraw")
    [ -n "$ns" ] && [ -n "$nr" ] || { echo "icount.sh: $name not found in the no-cost profile" >&2; exit 1; }
    line=$(grep "^op $name " "$dir/sim.out" || true)
    if [ -z "$line" ]; then
        # Not counted on the simulator (see the bench's docs).
        awk -v name="$name" -v ns="$ns" -v nr="$nr" -v m="$nops" 'BEGIN {
            printf "%-22s %9s %9s %8s   %9.0f %9.0f %14.0f\n", name, "-", "-", "-", ns / m, nr / m, (ns - nr) / m
        }'
        continue
    fi
    read -r _ _ safe raw ops <<<"$line"
    ss=$(count sim "$safe"); sr=$(count sim "$raw")
    [ -n "$ss" ] && [ -n "$sr" ] || { echo "icount.sh: $name not found in the simulator profile" >&2; exit 1; }
    awk -v name="$name" -v ss="$ss" -v sr="$sr" -v n="$ops" -v ns="$ns" -v nr="$nr" -v m="$nops" 'BEGIN {
        printf "%-22s %9.0f %9.0f %8.3f   %9.0f %9.0f %14.0f\n", name, ss / n, sr / n, ss / sr, ns / m, nr / m, (ns - nr) / m
    }'
done

# Dynamic PAMT (simulator, module 1.5.16) and a TD 16 times larger
# (no-cost backend).
n=$(sed -n 's/^pages per pass: //p' "$dir/sim.out")
sm=$(count sim measured_safe_map); su=$(count sim measured_safe_unmap)
dm=$(count sim measured_dpamt_map); du=$(count sim measured_dpamt_unmap)
bm=$(count null measured_null_big_td_map); bu=$(count null measured_null_big_td_unmap)
awk -v n="$n" -v sm="$sm" -v su="$su" -v dm="$dm" -v du="$du" -v bm="$bm" -v bu="$bu" 'BEGIN {
    printf "\nwith Dynamic PAMT (simulator, module 1.5.16, a pair added and removed per 2 MiB range):\n"
    printf "  map-4K %.0f (%.2fx static)  unmap-4K %.0f (%.2fx static)\n", dm / n, dm / sm, du / n, du / su
    printf "no-cost backend, a TD with 1 Mi more 4K pages mapped: map-4K %.0f, unmap-4K %.0f\n", bm / n, bu / n
}'
