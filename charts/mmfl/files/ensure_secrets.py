"""Create the chart's Secrets once, in the cluster (the chart's pre-install/pre-upgrade hook).

The plan comes as JSON in $PLAN (rendered by templates/secrets.yaml):
  create:  [{namespace, name, data: {key: {"value": text} | {"random": length}}}]
           created with fresh random values when missing; an existing Secret is never changed
           (a key it lacks is an error: the servers already use its values)
  require: [{namespace, name, keys: [...]}]   the installer's Secrets: must exist with these keys
  copy:    [{from: {namespace, name}, to: {namespace, name}, keys: [...]}]
           the pipeline namespace's copies, created or updated to equal their source
  labels:  labels of the Secrets this script creates

Talks to the Kubernetes API with the pod's service-account token, Python standard library only.
$KUBERNETES_API, $SA_TOKEN_FILE and $SA_CA_FILE override the in-cluster defaults. Prints one line
per Secret; exits 1 with one line naming the Secret and key on the first problem.
"""

import base64
import json
import os
import secrets
import ssl
import sys
import urllib.error
import urllib.request

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class PlanError(Exception):
    pass


class Api:
    def __init__(self):
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.base = os.environ.get("KUBERNETES_API") or f"https://{host}:{port}"
        with open(os.environ.get("SA_TOKEN_FILE", f"{SA_DIR}/token")) as fh:
            self.token = fh.read().strip()
        ca = os.environ.get("SA_CA_FILE", f"{SA_DIR}/ca.crt")
        self.context = ssl.create_default_context(cafile=ca) if self.base.startswith("https") else None

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.context) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                return 404, None
            raise PlanError(f"{method} {path}: HTTP {exc.code} {exc.read()[:300].decode(errors='replace')}") from None

    def get(self, namespace, name):
        status, obj = self.call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return obj if status == 200 else None

    def create(self, namespace, name, data, labels):
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace, "labels": labels}, "data": data}
        self.call("POST", f"/api/v1/namespaces/{namespace}/secrets", body)

    def replace(self, obj, data):
        obj["data"] = data
        meta = obj["metadata"]
        self.call("PUT", f"/api/v1/namespaces/{meta['namespace']}/secrets/{meta['name']}", obj)


def b64(text):
    return base64.b64encode(text.encode()).decode()


def generated(spec):
    if "value" in spec:
        return spec["value"]
    return secrets.token_urlsafe(int(spec["random"]))[: int(spec["random"])]


def check_keys(obj, namespace, name, keys):
    missing = [k for k in keys if k not in (obj.get("data") or {})]
    if missing:
        raise PlanError(f"Secret {namespace}/{name} has no key {missing[0]!r}; it needs the keys {', '.join(keys)}")


def run(plan, api):
    labels = plan.get("labels", {})
    for item in plan.get("create", []):
        ns, name = item["namespace"], item["name"]
        existing = api.get(ns, name)
        if existing is None:
            api.create(ns, name, {k: b64(generated(v)) for k, v in item["data"].items()}, labels)
            print(f"created Secret {ns}/{name}")
        else:
            check_keys(existing, ns, name, list(item["data"]))
            print(f"kept Secret {ns}/{name}")
    for item in plan.get("require", []):
        ns, name = item["namespace"], item["name"]
        existing = api.get(ns, name)
        if existing is None:
            raise PlanError(f"Secret {ns}/{name} does not exist; create it with the keys {', '.join(item['keys'])}")
        check_keys(existing, ns, name, item["keys"])
        print(f"found Secret {ns}/{name}")
    for item in plan.get("copy", []):
        src, dst = item["from"], item["to"]
        source = api.get(src["namespace"], src["name"])
        if source is None:
            raise PlanError(f"Secret {src['namespace']}/{src['name']} does not exist (source of {dst['namespace']}/{dst['name']})")
        check_keys(source, src["namespace"], src["name"], item["keys"])
        data = {k: source["data"][k] for k in item["keys"]}
        target = api.get(dst["namespace"], dst["name"])
        if target is None:
            api.create(dst["namespace"], dst["name"], data, labels)
            print(f"copied Secret {src['namespace']}/{src['name']} to {dst['namespace']}/{dst['name']}")
        elif target.get("data") != data:
            api.replace(target, data)
            print(f"updated copy {dst['namespace']}/{dst['name']} from {src['namespace']}/{src['name']}")
        else:
            print(f"copy {dst['namespace']}/{dst['name']} is current")


def main():
    try:
        run(json.loads(os.environ["PLAN"]), Api())
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
