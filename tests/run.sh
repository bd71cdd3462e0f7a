#!/usr/bin/env bash
# The whole hrx test suite, as the README gives it and .ci/run runs it on a fresh clone:
# formatting, lints, every Rust test — the embedded node, and the Kafka + PostgreSQL
# adapters against a real single-node Kafka (KRaft) and a real PostgreSQL started here —
# and the independent Python implementation of the wire contract.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# A clean clone builds everything once: incremental state would only cost disk (~2 GB).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Kafka and PostgreSQL for the distributed tests (deploy/testenv)"
bash deploy/testenv/testenv.sh install
services=$(mktemp -d "${TMPDIR:-/tmp}/hrx-testenv.XXXXXX")
cleanup() { bash deploy/testenv/testenv.sh down "$services" >/dev/null 2>&1 || true; }
trap cleanup EXIT
bash deploy/testenv/testenv.sh up "$services"
# shellcheck disable=SC1091
. "$services/env"
export HRX_TEST_KAFKA_BROKERS="$HRX_KAFKA_BROKERS"
export HRX_TEST_DATABASE_URL="$HRX_DATABASE_URL"
# Both services run over TLS only; Kafka wants a client certificate (identity `hrx`,
# which may do anything; tests of the ACLs find the other identities in
# HRX_TEST_KAFKA_TLS_DIR).
export HRX_TEST_KAFKA_CA_FILE="$HRX_KAFKA_CA_FILE"
export HRX_TEST_KAFKA_CERT_FILE="$HRX_KAFKA_CERT_FILE"
export HRX_TEST_KAFKA_KEY_FILE="$HRX_KAFKA_KEY_FILE"
export HRX_TEST_KAFKA_TLS_DIR="$HRX_TESTENV_TLS_DIR"
# The distributed tests skip without these; here they must run.
export HRX_TEST_REQUIRE_SERVICES=1
# The crash tests restart these services through deploy/testenv.
export HRX_TEST_SERVICES_DIR="$services"
unset HRX_KAFKA_BROKERS HRX_DATABASE_URL HRX_TESTENV_DIR HRX_KAFKA_PID HRX_POSTGRES_PID \
    HRX_KAFKA_CA_FILE HRX_KAFKA_CERT_FILE HRX_KAFKA_KEY_FILE HRX_TESTENV_TLS_DIR

step "cargo test"
cargo test --workspace --locked

step "Python cross-check of the wire contract (tests/python)"
# The key-file tests run the hrx executable `cargo test` just built.
export HRX_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/hrx"
bash tests/python/run.sh

step "fuzz smoke: every target builds, replays its regressions and runs 2,000 inputs (tests/fuzz)"
FUZZ_DEV=1 bash tests/fuzz/run.sh 2000
