#!/usr/bin/env bash
# Create or refresh .venv with what hypernet needs; idempotent and cheap when nothing changed.
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
EXTRAS="${HYPERNET_EXTRAS:-test}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "hypernet: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi

# Re-install only when the project's dependency list (or the requested extras) changed.
STAMP="$VENV/.hypernet-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "hypernet: installing dependencies into .venv (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1; then
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch
        else
            # CPU-only machine: the pinned CPU wheel, never a multi-GB CUDA build.
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
        fi
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$EXTRAS]"
    echo "$WANT" > "$STAMP"
fi
