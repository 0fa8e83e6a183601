#!/usr/bin/env bash
# Build the CPU image without Docker Hub or a Docker daemon and run one pipeline component in it:
#   1. a Debian bookworm base from Debian's packages (mmdebstrap --variant=minbase)
#   2. imported as a local image (podman import)
#   3. images/Dockerfile.cpu built on it (buildah bud --isolation chroot)
#   4. the `prepare` component's entry point, exactly as compiled for KFP, run in the image
#      (buildah run --isolation chroot) against SeaweedFS and an MLflow server with basic-auth on
#      127.0.0.1 (scripts/image_check.py)
# Each step prints "image-check: step N ..." so a refusal names its step. Needs root (or a user
# namespace), mmdebstrap, podman and buildah (Debian: apt-get install mmdebstrap podman buildah).
# Environment:
#   TORCH_INDEX  index of the torch wheel (default: the Dockerfile's PyTorch CPU index)
#   WHEELS       a local wheel folder mounted into the build as pip's find-links (optional)
#   OUT          work folder (default build/image-check)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/image-check}"
BASE_TAG=localhost/mmfl-debian:bookworm
IMAGE_TAG=localhost/mmfl-cpu:check
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
step() { echo "image-check: step $*" >&2; }

step "0 tools"
for tool in mmdebstrap podman buildah; do
  command -v "$tool" >/dev/null || { echo "image-check: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done

step "1 debian base: mmdebstrap --variant=minbase bookworm"
if [[ ! -s "$OUT/base.tar" ]]; then
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    bookworm "$OUT/base.tar.part" http://deb.debian.org/debian
  mv "$OUT/base.tar.part" "$OUT/base.tar"
fi

step "2 podman import $BASE_TAG"
podman image exists "$BASE_TAG" || podman import "$OUT/base.tar" "$BASE_TAG" >/dev/null

step "3 buildah bud images/Dockerfile.cpu on $BASE_TAG"
# pip inside the build: the host's CA bundle (TLS-inspecting proxies) and, optionally, local wheels.
{
  echo "[global]"
  echo "cert = /etc/ssl/certs/ca-certificates.crt"
  [[ -n "${WHEELS:-}" ]] && echo "find-links = /wheels"
} > "$OUT/pip.conf"
mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro -v "$PWD/$OUT/pip.conf:/etc/pip.conf:ro")
[[ -n "${WHEELS:-}" ]] && mounts+=(-v "$WHEELS:/wheels:ro")
build_args=(--build-arg "BASE_IMAGE=$BASE_TAG")
[[ -n "${TORCH_INDEX:-}" ]] && build_args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
start=$SECONDS
buildah bud --isolation chroot --layers "${mounts[@]}" "${build_args[@]}" \
  -f images/Dockerfile.cpu -t "$IMAGE_TAG" . 2>&1 | tee "$OUT/build.log"
echo "image-check: built $IMAGE_TAG in $((SECONDS - start)) s" >&2
podman image inspect "$IMAGE_TAG" --format '{{.Size}}' | awk '{printf "image-check: image size %.0f MB\n", $1/1e6}' >&2
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE_TAG" | cut -c1-140 > "$OUT/layers.txt"

step "4 prepare component in the image against SeaweedFS and MLflow (basic-auth) on 127.0.0.1"
PYTHONPATH="$PWD" "$PY" scripts/image_check.py --image "$IMAGE_TAG" --out "$OUT"
echo "image-check: all steps passed" >&2
