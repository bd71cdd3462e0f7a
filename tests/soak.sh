#!/usr/bin/env bash
# The soak of the distributed deployment (BENCHMARKS.md, "Soak"): starts a throwaway
# Kafka (KRaft) and PostgreSQL through deploy/testenv (as tests/bench.sh does), then runs
# `hrx soak` (release build) on them: every hrx role in child processes, a steady mix for
# 10 minutes, RSS and lag sampled, everything reconciled at the end.
#
#   bash tests/soak.sh                                  10 minutes (target/soak/latest.json)
#   bash tests/soak.sh --duration 60 --json /tmp/s.json  any `hrx soak` flag passes through
#   bash tests/soak.sh --smoke                          15 seconds
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

# Build first: a compile error should fail before any service starts.
step "cargo build --release"
cargo build --release --locked

step "Kafka and PostgreSQL (deploy/testenv)"
bash deploy/testenv/testenv.sh install
services=$(mktemp -d "${TMPDIR:-/tmp}/hrx-soak-env.XXXXXX")
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
# Not configuration for the soak's own processes: the run sets up its own database and
# topics on these services.
unset HRX_KAFKA_BROKERS HRX_DATABASE_URL HRX_TESTENV_DIR HRX_KAFKA_PID HRX_POSTGRES_PID \
    HRX_KAFKA_CA_FILE HRX_KAFKA_CERT_FILE HRX_KAFKA_KEY_FILE HRX_TESTENV_TLS_DIR

step "hrx soak $*"
cargo run --release --locked -- soak "$@"
