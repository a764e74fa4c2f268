#!/usr/bin/env bash
# Miri over the code whose `unsafe` runs without the simulator's threads:
# tdx-types (every test) and tdx-api's unit tests (the platform's provided
# methods, the page array, the lock-free S-EPT record and Dynamic PAMT pair
# table single-threaded, the planner's property test with two cases).
# Property tests run a few cases and keep no failure file under Miri
# (cfg(miri)); the two tests that execute CLFLUSH and MOVDIR64B are
# skipped (Miri cannot interpret inline assembly).
#
# About 7 minutes on 2 cores, so not part of .ci/run. Usage: scripts/miri.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install nightly --profile minimal --component miri,rust-src
# Miri builds its own sysroot and target files: keep them apart from the
# stable build's.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/miri}
cargo +nightly miri setup
cargo +nightly miri test -p tdx-types
cargo +nightly miri test -p tdx-api --lib
