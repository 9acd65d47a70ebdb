#!/usr/bin/env bash
# Run hypernet's test suite (creates/refreshes .venv first). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HYPERNET_EXTRAS=test bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
exec "$ROOT/.venv/bin/python" -m pytest "$@"
