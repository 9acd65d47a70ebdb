#!/usr/bin/env bash
# hypernet's demo (creates/refreshes .venv first). Extra arguments go to the demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HYPERNET_EXTRAS=test bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
exec "$ROOT/.venv/bin/python" -m hypernet.demo "$@"
