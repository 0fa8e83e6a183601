"""Create (or set the password of) the MLflow user of the pipeline tasks, as MLflow's admin.

Run by the chart's post-install/post-upgrade Job against MLflow's basic-auth app. Environment:
  MLFLOW_URL                        the server, e.g. http://mmfl-mmfl-mlflow.mmfl:5000
  MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD   the admin user the server was started with
  PIPELINE_USERNAME/PASSWORD        the user to create (the tasks get it as MLFLOW_TRACKING_*)
  WAIT_SECONDS                      how long to wait for the server to answer (default 600)
Python standard library only. Prints one line; exits 1 with one line saying what failed.
"""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def call(url, method, path, auth, body=None):
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait(url, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"error: MLflow at {url} did not answer /health within {seconds:.0f}s")
        time.sleep(3)


def main():
    url = os.environ["MLFLOW_URL"].rstrip("/")
    admin = (os.environ["MLFLOW_AUTH_ADMIN_USERNAME"], os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
    user, password = os.environ["PIPELINE_USERNAME"], os.environ["PIPELINE_PASSWORD"]
    wait(url, float(os.environ.get("WAIT_SECONDS", "600")))
    status = call(url, "GET", "/api/2.0/mlflow/users/get?" + urllib.parse.urlencode({"username": user}), admin)
    if status in (401, 403):
        print(f"error: MLflow refused the admin credentials (HTTP {status}); check MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD",
              file=sys.stderr)
        return 1
    if status == 200:
        status = call(url, "PATCH", "/api/2.0/mlflow/users/update-password", admin, {"username": user, "password": password})
        done = "password set"
    else:
        status = call(url, "POST", "/api/2.0/mlflow/users/create", admin, {"username": user, "password": password})
        done = "created"
    if status != 200:
        print(f"error: MLflow answered HTTP {status} for user {user!r}", file=sys.stderr)
        return 1
    print(f"MLflow user {user!r} {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
