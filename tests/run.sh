#!/usr/bin/env bash
# The whole hrx test suite, as the README gives it and .ci/run runs it on a fresh clone:
# formatting, lints, every Rust test, and the independent Python implementation of the
# wire contract checked against the same vectors.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "Python cross-check of the wire contract (tests/python)"
bash tests/python/run.sh
