#!/usr/bin/env bash
# Coverage-guided fuzzing of hrx's parsers of untrusted bytes, with libFuzzer through
# cargo-fuzz on the nightly toolchain (AddressSanitizer on).
#
#   tests/fuzz/run.sh RUNS [TARGET ...]     RUNS executions per target (all targets by default)
#
# FUZZ_DEV=1 builds unoptimised (faster to build, slower to run): the CI smoke.
# FUZZ_SANITIZER=none runs without AddressSanitizer (about 3x faster): for targets whose
# code under test has no `unsafe` of its own, where ASan finds nothing the Rust checks
# do not (BENCHMARKS.md says which runs used it).
#
# cargo-fuzz is installed at a pinned version into .cache/tools. Each target keeps its
# corpus in .cache/fuzz/corpus/TARGET (so runs build on each other); a crash leaves its
# input in .cache/fuzz/artifacts/TARGET and fails the run: turn it into a regression
# test (tests/fuzz/regressions/TARGET/, replayed by every run) before fixing it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
REPO=$(cd ../.. && pwd)
CARGO_FUZZ_VERSION=0.13.2
TOOLS="$REPO/.cache/tools"
runs=${1:?usage: run.sh RUNS [TARGET ...]}
shift
if [[ "$(cat "$TOOLS/cargo-fuzz.version" 2>/dev/null)" != "$CARGO_FUZZ_VERSION" ]]; then
    cargo install --quiet --root "$TOOLS" --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
    echo "$CARGO_FUZZ_VERSION" >"$TOOLS/cargo-fuzz.version"
fi
export PATH="$TOOLS/bin:$PATH"
profile=(--sanitizer "${FUZZ_SANITIZER:-address}")
[[ -n "${FUZZ_DEV:-}" ]] && profile+=(--dev)
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir .)
cargo +nightly fuzz build "${profile[@]}" --fuzz-dir .
for t in "${targets[@]}"; do
    corpus="$REPO/.cache/fuzz/corpus/$t"
    artifacts="$REPO/.cache/fuzz/artifacts/$t/"
    mkdir -p "$corpus" "$artifacts"
    # Inputs that once crashed a target are replayed first, every run.
    if compgen -G "regressions/$t/*" >/dev/null; then
        cargo +nightly fuzz run "${profile[@]}" --fuzz-dir . "$t" "regressions/$t"/* -- -runs=0 >/dev/null
    fi
    start=$SECONDS
    log="$REPO/.cache/fuzz/$t.log"
    if ! cargo +nightly fuzz run "${profile[@]}" --fuzz-dir . "$t" "$corpus" -- \
        -runs="$runs" -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $t FAILED (input in $artifacts)" >&2
        exit 1
    fi
    done_line=$(grep -aE '^Done [0-9]+ runs' "$log" | tail -1)
    cov=$(grep -aE '^#[0-9]+.*DONE' "$log" | tail -1 | grep -oE 'cov: [0-9]+' || true)
    echo "fuzz: $t: $done_line ($cov, corpus $(ls "$corpus" | wc -l) inputs, $((SECONDS - start)) s)"
done
