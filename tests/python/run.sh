#!/usr/bin/env bash
# Runs the independent Python implementation of the hrx wire contract against
# tests/vectors/*.json. Usage: bash tests/python/run.sh [extra pytest args]
#
# Keeps a virtualenv at $REPO/.cache/python-venv and reinstalls requirements.txt only when
# its hash changes. Needs only python3 (with pip or venv/ensurepip) on the machine.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$REPO/.cache/python-venv"
REQS="$HERE/requirements.txt"
STAMP="$VENV/.hrx-requirements.sha256"
PY="${PYTHON:-python3}"

log() { printf 'tests/python/run.sh: %s\n' "$*" >&2; }

command -v "$PY" >/dev/null 2>&1 || { log "no $PY on PATH"; exit 1; }

venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 \
    && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

make_venv() {
  rm -rf "$VENV"
  mkdir -p "$REPO/.cache"
  log "creating virtualenv at $VENV"
  if "$PY" -m venv "$VENV" >/dev/null 2>&1 && venv_ok; then
    return 0
  fi
  # Typical on Debian/Ubuntu without python3-venv: the venv module lacks ensurepip.
  log "'$PY -m venv' failed (ensurepip missing?); falling back to virtualenv"
  rm -rf "$VENV"
  local boot="$REPO/.cache/virtualenv-bootstrap"
  if ! "$PY" -m pip --version >/dev/null 2>&1; then
    log "ERROR: neither a working 'venv' module nor pip is available for $PY."
    log "Install one of them (e.g. apt-get install python3-venv or python3-pip) and rerun."
    exit 1
  fi
  # --target avoids touching the system site-packages (and PEP 668's guard).
  "$PY" -m pip install --disable-pip-version-check -q --upgrade --target "$boot" virtualenv
  PYTHONPATH="$boot" "$PY" -m virtualenv -q "$VENV"
  if ! venv_ok; then
    log "ERROR: could not create a working virtualenv at $VENV"
    exit 1
  fi
}

venv_ok || make_venv

want="$( { cat "$REQS"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
  log "installing $REQS"
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQS"
  printf '%s\n' "$want" >"$STAMP"
fi

cd "$REPO"
exec "$VENV/bin/python" -m pytest -q tests/python "$@"
