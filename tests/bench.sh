#!/usr/bin/env bash
# The one benchmark command: the whole table of BENCHMARKS.md, with ratios, on a fresh
# clone. Starts a throwaway Kafka (KRaft) and PostgreSQL through deploy/testenv (as
# tests/run.sh does), then runs `hrx bench` (release build) with them, so that the
# Kafka + PostgreSQL rows are measured in the same run as the embedded ones.
#
#   bash tests/bench.sh                  full run (prints the table, writes target/bench/latest.json)
#   bash tests/bench.sh --smoke          seconds; any other `hrx bench` flag passes through
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

# Build first: on 2 vCPUs the release build takes minutes, and a compile error should
# fail before any service starts.
step "cargo build --release"
cargo build --release --locked

step "Kafka and PostgreSQL for the distributed rows (deploy/testenv)"
bash deploy/testenv/testenv.sh install
services=$(mktemp -d "${TMPDIR:-/tmp}/hrx-bench-env.XXXXXX")
cleanup() {
    bash deploy/testenv/testenv.sh down "$services" >/dev/null 2>&1 || true
    rm -rf "$services"
}
trap cleanup EXIT
bash deploy/testenv/testenv.sh up "$services"
# shellcheck disable=SC1091
. "$services/env"
export HRX_BENCH_KAFKA_BROKERS="$HRX_KAFKA_BROKERS"
export HRX_BENCH_DATABASE_URL="$HRX_DATABASE_URL"
# TLS to Kafka with the testenv's `hrx` client identity (PostgreSQL's TLS is in the URL).
export HRX_BENCH_KAFKA_CA_FILE="$HRX_KAFKA_CA_FILE"
export HRX_BENCH_KAFKA_CERT_FILE="$HRX_KAFKA_CERT_FILE"
export HRX_BENCH_KAFKA_KEY_FILE="$HRX_KAFKA_KEY_FILE"
# Not configuration for the bench's own nodes: each run sets up its own database and
# topics on these services.
unset HRX_KAFKA_BROKERS HRX_DATABASE_URL HRX_TESTENV_DIR HRX_KAFKA_PID HRX_POSTGRES_PID \
    HRX_KAFKA_CA_FILE HRX_KAFKA_CERT_FILE HRX_KAFKA_KEY_FILE HRX_TESTENV_TLS_DIR

step "hrx bench $*"
cargo run --release --locked -- bench "$@"
