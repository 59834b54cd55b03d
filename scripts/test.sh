#!/usr/bin/env bash
# Runs every test on a fresh machine: setup, formatting, clippy, the
# whole cargo test suite, a short benchmark smoke run, bounded fuzzing,
# and the interop suite against Linux kernel rxe in a QEMU guest.
# This is exactly what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"

step() { printf '\n==> %s\n' "$*"; }

step "setup"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "benchmark smoke run (wire: ICRC, parse/emit, with baselines)"
cargo bench --locked -p transport --bench wire -- --quick

step "fuzzing, ${FUZZ_SECONDS}s per target"
scripts/fuzz.sh "$FUZZ_SECONDS"

step "interop with Linux kernel rxe in a QEMU guest (tests/interop/run.sh)"
tests/interop/run.sh

step "stock guests end to end: vmw_pvrdma on our device vs kernel rxe (tests/e2e/run.sh)"
tests/e2e/run.sh

step "all checks passed"
