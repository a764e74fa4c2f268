#!/usr/bin/env bash
# Miri over the code whose `unsafe` the tests reach without the trap
# backend, in four parts, each timed:
#
# - tdx-types: every test.
# - tdx-api's unit tests: the platform's provided methods, the page array,
#   the lock-free S-EPT record and Dynamic PAMT pair table single-threaded,
#   the planner's property test with two cases. The two tests that execute
#   CLFLUSH and MOVDIR64B are skipped (Miri cannot interpret inline
#   assembly).
# - tdx-api's doc examples: each brings up a simulated module and runs a TD
#   on it, as its text shows.
# - `cargo +nightly miri test` at the workspace root, as written: the
#   facade's doc example and the simulator-backed integration suites. A
#   simulated leaf costs Miri milliseconds and a test thousands of leaves,
#   so under `cfg(miri)` the suites run one test of each area (bring-up and
#   the page array, TD build, maps, demote/promote and teardown, vCPUs, the
#   run loop with a kicking thread, a held S-EPT entry, threads on the
#   Dynamic PAMT pair table, the platform's frame accessors, allocation
#   failure; not the property tests) and mark the others `ignore`
#   with the reason: `cargo +nightly miri test -- --include-ignored` runs
#   them all, in hours. Files that read memory maps from disk and the
#   trybuild test are ignored under Miri whatever the time. The fixtures
#   give each TDH.SYS.TDMR.INIT 1 GiB under Miri (4 calls for 4 GiB instead
#   of 1024). Property tests run one case of shorter sequences under Miri
#   (with --include-ignored) and keep no failure file, which Miri's
#   isolation would refuse.
#
# Not here: tdx-sim's and tdx-plan's own tests (the simulator is the test
# bench; its `unsafe` is the trap backend, which Miri cannot run, and loom
# models; tdx-plan's tests read memory maps from disk and bring up large
# simulated machines), tdx-sys (inline assembly), and tests/soak.rs and
# tests/hostile_module.rs.
#
# Usage: scripts/miri.sh [part...]   parts: types api-lib api-doc root
# (default: all four). Times are in RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install nightly --profile minimal --component miri,rust-src
# Miri builds its own sysroot and target files: keep them apart from the
# stable build's.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/miri}
cargo +nightly miri setup

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(types api-lib api-doc root)
times=()
for part in "${parts[@]}"; do
    start=$SECONDS
    case $part in
    types) cargo +nightly miri test -p tdx-types ;;
    api-lib) cargo +nightly miri test -p tdx-api --lib ;;
    api-doc) cargo +nightly miri test -p tdx-api --doc ;;
    root) cargo +nightly miri test ;;
    *)
        echo "unknown part $part (types, api-lib, api-doc, root)" >&2
        exit 2
        ;;
    esac
    times+=("$part: $((SECONDS - start)) s")
done
printf '\nMiri time per part:\n'
printf '  %s\n' "${times[@]}"
