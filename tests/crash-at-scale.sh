#!/usr/bin/env bash
# The long form of the crash reconciliation (services/hrx/tests/crash.rs): at least
# 100 000 events from 20 facilities while the projector is SIGKILLed 50 times and
# PostgreSQL and Kafka are each restarted once under load; then kcat's count of Kafka,
# psql's count of PostgreSQL and every facility's chain head must agree.
#
#   bash tests/crash-at-scale.sh            # ~5-10 min on 2 cores after the build
#   HRX_CRASH_EVENTS=1000000 HRX_CRASH_KILLS=200 bash tests/crash-at-scale.sh
#
# Starts its own throwaway Kafka and PostgreSQL (deploy/testenv) and stops them after.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export HRX_CRASH_EVENTS="${HRX_CRASH_EVENTS:-100000}"
export HRX_CRASH_FACILITIES="${HRX_CRASH_FACILITIES:-20}"
export HRX_CRASH_KILLS="${HRX_CRASH_KILLS:-50}"
export HRX_CRASH_BATCH="${HRX_CRASH_BATCH:-100}"

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
export HRX_TEST_REQUIRE_SERVICES=1
export HRX_TEST_SERVICES_DIR="$services"
unset HRX_KAFKA_BROKERS HRX_DATABASE_URL HRX_TESTENV_DIR HRX_KAFKA_PID HRX_POSTGRES_PID \
    HRX_KAFKA_CA_FILE HRX_KAFKA_CERT_FILE HRX_KAFKA_KEY_FILE HRX_TESTENV_TLS_DIR

# Release build: the point is the volume, and the spawned hrx processes are the binary
# under test.
cargo test --release --locked -p hrx --test crash \
    crash_reconciliation_counts_agree_with_kafka_and_postgres -- --exact --nocapture
