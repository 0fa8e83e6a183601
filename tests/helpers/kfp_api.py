"""A local stand-in for the Kubeflow Pipelines v2beta1 REST API, for testing submission.

It implements the calls ``kfp.Client`` makes to submit runs and recurring runs, keeps what it is
sent, and refuses (HTTP 400, with the reason) request bodies a real API server would refuse: an
unknown experiment, a pipeline spec that does not parse into the pipeline-spec protos, run
parameters the pipeline does not declare, or a cron that is not KFP's 6-field format.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

PREFIX = "/apis/v2beta1"


class Rejected(Exception):
    pass


@dataclass
class KfpApiState:
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    run_state: str = "SUCCEEDED"  # what GET /runs/{id} reports
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)  # version id -> {pipeline_id, display_name, spec}


def check_pipeline(body: dict, versions: dict[str, dict] | None = None) -> pipeline_spec_pb2.PipelineSpec:
    ref = body.get("pipeline_version_reference")
    if ref and not body.get("pipeline_spec"):
        version = (versions or {}).get(ref.get("pipeline_version_id"))
        if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
            raise Rejected(f"pipeline_version_reference {ref!r} does not exist")
        body = {**body, "pipeline_spec": version["spec"]}
    doc = body.get("pipeline_spec")
    if not isinstance(doc, dict):
        raise Rejected("pipeline_spec is missing")
    spec_dict = doc.get("pipeline_spec", doc)
    try:
        spec = json_format.ParseDict(spec_dict, pipeline_spec_pb2.PipelineSpec())
        if "platform_spec" in doc:
            json_format.ParseDict(doc["platform_spec"], pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as exc:
        raise Rejected(f"pipeline_spec does not parse: {exc}") from None
    if not spec.root.dag.tasks:
        raise Rejected("pipeline_spec has no tasks")
    declared = set(spec.root.input_definitions.parameters)
    given = set((body.get("runtime_config") or {}).get("parameters") or {})
    if not given <= declared:
        raise Rejected(f"runtime_config.parameters {sorted(given - declared)} not declared by the pipeline")
    return spec


class _Handler(BaseHTTPRequestHandler):
    state: KfpApiState

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _reply(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        self.state.requests.append(("GET", url.path, parse_qs(url.query)))
        if url.path == f"{PREFIX}/healthz":
            return self._reply(200, {"multi_user": False})
        if url.path == f"{PREFIX}/experiments":
            flt = json.loads(parse_qs(url.query).get("filter", ["{}"])[0])
            names = [p.get("string_value", p.get("stringValue")) for p in flt.get("predicates", [])
                     if p.get("key") == "display_name"]
            found = [e for e in self.state.experiments.values() if not names or e["display_name"] in names]
            return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
        if url.path.startswith(f"{PREFIX}/runs/"):
            run = self.state.runs.get(url.path.rsplit("/", 1)[-1])
            if run is None:
                return self._reply(404, {"error": "run not found"})
            fields = ("pipeline_spec", "pipeline_version_reference", "runtime_config", "service_account")
            body = {k: run["body"][k] for k in fields if run["body"].get(k) is not None}
            return self._reply(200, {**{k: v for k, v in run.items() if k != "body"}, **body, "state": self.state.run_state})
        if url.path.startswith(f"{PREFIX}/pipelines/") and url.path.endswith("/versions"):
            pid = url.path.split("/")[-2]
            found = [{k: v for k, v in ver.items() if k != "spec"} for ver in self.state.versions.values()
                     if ver["pipeline_id"] == pid]
            return self._reply(200, {"pipeline_versions": found, "total_size": len(found)} if found else {})
        if url.path == f"{PREFIX}/pipelines":
            flt = json.loads(parse_qs(url.query).get("filter", ["{}"])[0])
            names = [p.get("string_value", p.get("stringValue")) for p in flt.get("predicates", [])
                     if p.get("key") in ("display_name", "name")]
            found = [p for p in self.state.pipelines.values() if not names or p["display_name"] in names]
            return self._reply(200, {"pipelines": found, "total_size": len(found)} if found else {})
        return self._reply(404, {"error": f"no route {url.path}"})

    def _upload(self, url) -> None:
        """``/pipelines/upload`` and ``/pipelines/upload_version``: a multipart YAML package."""
        from email.parser import BytesParser

        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        msg = BytesParser().parsebytes(f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + raw)
        (part,) = [p for p in msg.get_payload() if p.get_param("name", header="content-disposition") == "uploadfile"]
        import yaml

        docs = list(yaml.safe_load_all(part.get_payload(decode=True)))
        spec = {"pipeline_spec": docs[0], **({"platform_spec": docs[1]} if len(docs) > 1 else {})}
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.state.requests.append(("POST", url.path, query))
        check_pipeline({"pipeline_spec": spec})
        if url.path.endswith("/upload"):
            name = query.get("name") or "pipeline"
            if any(p["display_name"] == name for p in self.state.pipelines.values()):
                raise Rejected(f"pipeline {name!r} already exists")
            pipeline = {"pipeline_id": str(uuid.uuid4()), "display_name": name}
            self.state.pipelines[pipeline["pipeline_id"]] = pipeline
            pid, vname = pipeline["pipeline_id"], name
        else:
            pid, vname = query.get("pipelineid"), query.get("name") or "version"
            if pid not in self.state.pipelines:
                raise Rejected(f"pipelineid {pid!r} does not exist")
        version = {"pipeline_version_id": str(uuid.uuid4()), "pipeline_id": pid, "display_name": vname}
        self.state.versions[version["pipeline_version_id"]] = {**version, "spec": spec}
        if url.path.endswith("/upload"):
            return self._reply(200, {**self.state.pipelines[pid]})
        return self._reply(200, version)

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path.startswith(f"{PREFIX}/pipelines/upload"):
            try:
                return self._upload(url)
            except Rejected as exc:
                self.state.rejected.append(str(exc))
                return self._reply(400, {"error": str(exc), "code": 3, "message": str(exc)})
        body = self._body()
        self.state.requests.append(("POST", url.path, body))
        try:
            if url.path == f"{PREFIX}/experiments":
                if not body.get("display_name"):
                    raise Rejected("experiment display_name is required")
                exp = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                       "namespace": body.get("namespace")}
                self.state.experiments[exp["experiment_id"]] = exp
                return self._reply(200, exp)
            if url.path == f"{PREFIX}/runs":
                self._check_experiment(body)
                check_pipeline(body, self.state.versions)
                run = {"run_id": str(uuid.uuid4()), "display_name": body.get("display_name"),
                       "experiment_id": body["experiment_id"], "state": "PENDING"}
                self.state.runs[run["run_id"]] = {**run, "body": body}
                return self._reply(200, run)
            if url.path == f"{PREFIX}/recurringruns":
                self._check_experiment(body)
                check_pipeline(body, self.state.versions)
                cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron", "")
                if len(cron.split()) != 6:
                    raise Rejected(f"trigger.cron_schedule.cron {cron!r}: KFP needs 6 fields")
                job = {"recurring_run_id": str(uuid.uuid4()), "display_name": body.get("display_name"),
                       "experiment_id": body["experiment_id"], "mode": body.get("mode"), "status": "ENABLED"}
                self.state.recurring_runs[job["recurring_run_id"]] = {**job, "body": body}
                return self._reply(200, job)
        except Rejected as exc:
            self.state.rejected.append(str(exc))
            return self._reply(400, {"error": str(exc), "code": 3, "message": str(exc)})
        return self._reply(404, {"error": f"no route {url.path}"})

    def _check_experiment(self, body: dict) -> None:
        if body.get("experiment_id") not in self.state.experiments:
            raise Rejected(f"experiment_id {body.get('experiment_id')!r} does not exist")


@contextlib.contextmanager
def kfp_api_stub() -> Iterator[tuple[str, KfpApiState]]:
    """Serve the stand-in on 127.0.0.1 in a thread; yields (host URL, recorded state)."""
    state = KfpApiState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
