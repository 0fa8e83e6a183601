#!/usr/bin/env bash
# Put checkov (the policy checker of tests/test_chart.py) in its own virtual environment,
# .tools/checkov (git-ignored), with the exact versions of requirements-checkov.lock. It cannot
# share .venv: its pins (packaging<24, networkx<2.7, boto3==1.35.49, ...) conflict with requirements.lock.
# Usage: scripts/get-checkov.sh [python]
set -euo pipefail
PYTHON="${1:-${PYTHON:-python3}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.tools/checkov"
LOCK="$ROOT/requirements-checkov.lock"
STAMP="$DEST/.lock-sha256"
SUM="$(sha256sum "$LOCK" | cut -d' ' -f1)"
if [[ -x "$DEST/bin/checkov" && -f "$STAMP" && "$(cat "$STAMP")" == "$SUM" ]]; then
  exit 0
fi
rm -rf "$DEST"
"$PYTHON" -m venv "$DEST"
# (pip's notes about index locations this machine's pip config cannot read are filtered out)
"$DEST/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$LOCK" 2>&1 \
  | { grep -v -e '^WARNING: Location' || true; }
echo "$SUM" > "$STAMP"
echo "checkov installed in $DEST: $("$DEST/bin/checkov" --version)"
