#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels that the GPU check (scripts/device-bench.sh) needs
# on the lent GPU machine and that its image lacks: that image has python3 3.12 with torch,
# numpy, scipy, PyYAML, safetensors, matplotlib, rich and pytest, but not pydantic. Versions are
# those of requirements.lock; nothing is resolved (the list is complete: pydantic and its four
# dependencies). Run here, where a package registry is reachable; the device machine has none.
# Usage: scripts/device-wheels.sh            (then pass carry [".whl"] with the device call)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.whl"
PYTHON="${PYTHON:-python3}"
pin() { grep -i -E "^$1==" "$ROOT/requirements.lock" | head -1; }
WANT=(pydantic pydantic_core annotated-types typing-inspection typing_extensions)
mkdir -p "$DEST"
for name in "${WANT[@]}"; do
  spec="$(pin "$name")"
  [[ -n "$spec" ]] || { echo "device-wheels: $name is not pinned in requirements.lock" >&2; exit 2; }
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" "$spec" 2>&1 \
    | { grep -v -e '^WARNING: Location' || true; }
done
ls -1 "$DEST"
