"""A local stand-in of the Kubernetes core API's Secret endpoints, for the chart's secrets hook.

No kube-apiserver can be installed from a package registry here, so the hook script is run
against this server on 127.0.0.1: it checks the bearer token and keeps Secrets in memory with
the API's status codes (404 on a missing Secret, 409 on creating an existing one) and records
every request.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")


@dataclass
class SecretsApi:
    url: str
    token: str
    secrets: dict[tuple[str, str], dict] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def secrets_api(token: str) -> Iterator[SecretsApi]:
    state = SecretsApi(url="", token=token)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def handle_any(self) -> None:
            with lock:
                state.requests.append((self.command, self.path))
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                return self.reply(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
            m = PATH.match(self.path)
            if not m:
                return self.reply(404, {"kind": "Status", "code": 404})
            ns, name = m.groups()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with lock:
                if self.command == "GET" and name:
                    obj = state.secrets.get((ns, name))
                    return self.reply(200, obj) if obj else self.reply(404, {"kind": "Status", "code": 404})
                if self.command == "POST" and not name:
                    key = (ns, body["metadata"]["name"])
                    if key in state.secrets:
                        return self.reply(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                    body["metadata"]["namespace"] = ns
                    state.secrets[key] = body
                    return self.reply(201, body)
                if self.command == "PUT" and name and (ns, name) in state.secrets:
                    state.secrets[(ns, name)] = body
                    return self.reply(200, body)
            return self.reply(405, {"kind": "Status", "code": 405})

        do_GET = do_POST = do_PUT = handle_any

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
