"""A stand-in for the Kubernetes API server: the few routes the fine-tuning backend calls,
over real HTTP, so the real ``kubernetes`` client (its kubeconfig loading, serialization,
URL building, error handling) runs unchanged against it.

- ``POST /apis/batch/v1/namespaces/{ns}/jobs``: stores the Job (201), or 409 AlreadyExists.
- ``GET /apis/batch/v1/namespaces/{ns}/jobs/{name}``: the Job with the status the test set, or 404 NotFound.
- ``DELETE /apis/batch/v1/namespaces/{ns}/jobs/{name}``: removes it (and its pods), 200 Status Success.
- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=k=v``: the pods the test set, filtered by label.

Errors are ``Status`` objects as the API server sends them. Every request is recorded
(method, path, query, body) for the tests to check.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")


def status_object(code: int, reason: str, message: str, name: str | None = None) -> dict:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
        "message": message, "reason": reason, "details": {"name": name, "group": "batch", "kind": "jobs"}, "code": code,
    }


class KubeStub:
    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], list[dict]] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, code: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                with stub.lock:
                    stub.requests.append({"method": method, "path": url.path, "query": query, "body": body})
                    code, reply = stub.route(method, url.path, query, body)
                self._reply(code, reply)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> KubeStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig naming this server, as `kubectl config` writes one (token auth)."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": self.url}}],
            "users": [{"name": "worker", "user": {"token": "stub-token"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "worker", "namespace": namespace}}],
        }
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        return path

    def route(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        jobs = JOBS.match(path)
        if jobs:
            namespace, name = jobs.groups()
            if method == "POST" and name is None:
                assert body is not None
                key = (namespace, body["metadata"]["name"])
                if key in self.jobs:
                    return 409, status_object(409, "AlreadyExists", f'jobs.batch "{key[1]}" already exists', key[1])
                job = copy.deepcopy(body)
                job["metadata"].update(uid=f"uid-{len(self.jobs) + 1}", resourceVersion="1", creationTimestamp="2026-11-29T18:00:00Z")
                job["status"] = {}
                self.jobs[key] = job
                return 201, job
            key = (namespace, name or "")
            if key not in self.jobs:
                return 404, status_object(404, "NotFound", f'jobs.batch "{name}" not found', name)
            if method == "GET":
                return 200, self.jobs[key]
            if method == "DELETE":
                del self.jobs[key]
                self.pods.pop(key, None)
                return 200, {**status_object(200, "", ""), "status": "Success", "details": {"name": name, "group": "batch", "kind": "jobs", "uid": "uid"}}
        pods = PODS.match(path)
        if pods and method == "GET":
            namespace = pods.group(1)
            selector = dict(part.split("=", 1) for part in query.get("labelSelector", "").split(",") if part)
            items = [
                pod
                for (ns, _), listed in self.pods.items()
                if ns == namespace
                for pod in listed
                if all(pod["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
            ]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "2"}, "items": items}
        return 404, status_object(404, "NotFound", f"the server could not find the requested resource ({method} {path})")

    def set_state(self, namespace: str, name: str, recorded: dict) -> None:
        """Gives the stored Job the status, and the namespace the pods, of a recorded response."""
        with self.lock:
            self.jobs[(namespace, name)]["status"] = copy.deepcopy(recorded["job"]["status"])
            pods = copy.deepcopy(recorded["pods"]["items"])
            for pod in pods:  # the recorded pods carry the recorded Job's name: relabel them as this Job's
                pod["metadata"]["labels"]["llamahost.dev/fine-tuning-job"] = name
            self.pods[(namespace, name)] = pods
