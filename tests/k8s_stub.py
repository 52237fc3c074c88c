"""A stand-in for the Kubernetes API server: the few routes the fine-tuning backend calls,
over real HTTP, so the real ``kubernetes`` client (its kubeconfig loading, serialization,
URL building, error handling) runs unchanged against it.

- ``POST /apis/batch/v1/namespaces/{ns}/jobs``: stores the Job (201), or 409 AlreadyExists.
- ``GET /apis/batch/v1/namespaces/{ns}/jobs/{name}``: the Job with the status the test set, or 404 NotFound.
- ``DELETE /apis/batch/v1/namespaces/{ns}/jobs/{name}``: removes it (and its pods), 200 Status Success.
- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=k=v``: the pods the test set, filtered by label.

Errors are ``Status`` objects as the API server sends them. Every request is recorded
(method, path, query, body) for the tests to check.

With ``KubeStub(kubelet=Kubelet(...))`` it also runs what a node would: each Job's pod is
its container's own command and args as a local process, with the container's env, its
``envFrom`` secrets (given to the Kubelet) and its volume mounts mapped to local
directories; the Job's and pod's status follow the process as Kubernetes' would (Running,
then Complete, or a failed pod retried up to backoffLimit, or the pod failure policy's
FailJob for the trainer's own exit codes), and deleting the Job sends the process SIGTERM.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def status_object(code: int, reason: str, message: str, name: str | None = None) -> dict:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
        "message": message, "reason": reason, "details": {"name": name, "group": "batch", "kind": "jobs"}, "code": code,
    }


def _public(job: dict) -> dict:
    """The Job as the API shows it (without the stub's own bookkeeping)."""
    return {k: v for k, v in job.items() if not k.startswith("_")}


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    """Runs a Job's pod as a local process (see the module's docstring)."""

    def __init__(self, root: Path, secrets: dict[str, dict[str, str]], base_env: dict[str, str]) -> None:
        self.root = root
        self.secrets = secrets
        self.base_env = base_env
        self.processes: list[subprocess.Popen] = []
        # Set by a test: called with the pod's process once it runs (e.g. to kill it).
        self.on_start = None
        # The image cannot be pulled: pods stay Pending in ImagePullBackOff, nothing runs.
        self.pull_fails = False

    def mount_map(self, job: dict) -> dict[str, Path]:
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mapped = {}
        for mount in container.get("volumeMounts", []):
            local = self.root / job["metadata"]["name"] / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            mapped[mount["mountPath"]] = local
        return mapped

    def start(self, job: dict, log_path: Path) -> subprocess.Popen:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        mapped = self.mount_map(job)

        def local(value: str) -> str:
            for mount_path, path in mapped.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    return str(path) + value[len(mount_path):]
            return value

        env = dict(self.base_env)
        for source in container.get("envFrom", []):
            env.update(self.secrets[source["secretRef"]["name"]])
        for var in container.get("env", []):
            env[var["name"]] = local(var["value"])
        argv = [local(a) for a in container["command"] + container.get("args", [])]
        if argv[0] == "python":  # the image's Python: here, the one running the tests
            argv[0] = sys.executable
        process = subprocess.Popen(
            argv, env=env, cwd=local(container.get("workingDir", str(self.root))), stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class KubeStub:
    def __init__(self, kubelet: Kubelet | None = None) -> None:
        self.kubelet = kubelet
        self.jobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], list[dict]] = {}
        self.pod_logs: dict[str, Path] = {}
        # Set by a test: (method, path) -> (status, body) to answer instead, or None.
        self.route_override = None
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, code: int, body: dict | str) -> None:
                raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
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
        if self.kubelet is not None:
            self.kubelet.stop_all()

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

    def route(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict | str]:
        if self.route_override is not None and (answer := self.route_override(method, path)) is not None:
            return answer  # a test's answer (e.g. RBAC's 403)
        log = POD_LOG.match(path)
        if log and method == "GET":
            log_path = self.pod_logs.get(log.group(2))
            if log_path is None:
                return 404, status_object(404, "NotFound", f'pods "{log.group(2)}" not found', log.group(2))
            lines = log_path.read_text(errors="replace").splitlines()
            return 200, "\n".join(lines[-int(query.get("tailLines", len(lines) or 1)):]) + "\n"
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
                if self.kubelet is not None:
                    self._run_pod(key)
                return 201, _public(job)
            key = (namespace, name or "")
            if key not in self.jobs:
                return 404, status_object(404, "NotFound", f'jobs.batch "{name}" not found', name)
            if method == "GET":
                return 200, _public(self.jobs[key])
            if method == "DELETE":
                job = self.jobs.pop(key)
                self.pods.pop(key, None)
                for process in job.get("_processes", []):
                    if process.poll() is None:  # the kubelet's SIGTERM, then the grace period
                        os.killpg(process.pid, signal.SIGTERM)
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

    # --- the kubelet's part ------------------------------------------------------------------

    def _run_pod(self, key: tuple[str, str]) -> None:
        """Starts the Job's next pod (called with the lock held)."""
        assert self.kubelet is not None
        job = self.jobs[key]
        pod_name = f"{key[1]}-{secrets.token_hex(3)}"
        labels = dict(job["spec"]["template"]["metadata"]["labels"], **{"job-name": key[1]})
        if self.kubelet.pull_fails:
            image = job["spec"]["template"]["spec"]["containers"][0]["image"]
            self.pods.setdefault(key, []).append({
                "metadata": {"name": pod_name, "namespace": key[0], "labels": labels, "creationTimestamp": _now()},
                "status": {"phase": "Pending", "containerStatuses": [{
                    "name": "trainer", "image": image, "imageID": "", "ready": False, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}}}]},
            })
            job["status"].update(startTime=_now(), active=1, ready=0)
            return
        log_path = self.kubelet.root / f"{pod_name}.log"
        self.pod_logs[pod_name] = log_path
        process = self.kubelet.start(job, log_path)
        job.setdefault("_processes", []).append(process)
        pod = {"metadata": {"name": pod_name, "namespace": key[0], "labels": labels, "creationTimestamp": _now()},
               "status": {"phase": "Running", "startTime": _now(), "containerStatuses": [
                   {"name": "trainer", "image": "stub", "imageID": "", "ready": True, "restartCount": 0,
                    "state": {"running": {"startedAt": _now()}}}]}}
        self.pods.setdefault(key, []).append(pod)
        status = job["status"]
        status.update(startTime=status.get("startTime", _now()), active=1, ready=1)
        threading.Thread(target=self._watch, args=(key, job, pod, process), daemon=True).start()
        if self.kubelet.on_start is not None:
            self.kubelet.on_start(process)

    def _watch(self, key: tuple[str, str], job: dict, pod: dict, process: subprocess.Popen) -> None:
        code = process.wait()
        code = 128 - code if code < 0 else code
        with self.lock:
            pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
            pod["status"]["containerStatuses"][0]["state"] = {"terminated": {
                "exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": _now(), "finishedAt": _now()}}
            if self.jobs.get(key) is not job:
                return  # deleted meanwhile
            status = job["status"]
            status.update(active=0, ready=0)
            now = _now()
            if code == 0:
                status["succeeded"] = 1
                status["completionTime"] = now
                status["conditions"] = [
                    {"type": t, "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now}
                    for t in ("SuccessCriteriaMet", "Complete")
                ]
                return
            status["failed"] = status.get("failed", 0) + 1
            spec = job["spec"]
            final = [r for r in spec.get("podFailurePolicy", {}).get("rules", [])
                     if r["action"] == "FailJob" and code in r.get("onExitCodes", {}).get("values", [])]
            if final:
                reason, message = "PodFailurePolicy", f"Container trainer for pod {key[0]}/{pod['metadata']['name']} failed with exit code {code} matching FailJob rule at index 0"
            elif status["failed"] > spec.get("backoffLimit", 6):
                reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            else:
                self._run_pod(key)  # the Job controller's retry: a fresh pod
                return
            status["conditions"] = [
                {"type": t, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now}
                for t in ("FailureTarget", "Failed")
            ]

    def set_state(self, namespace: str, name: str, recorded: dict) -> None:
        """Gives the stored Job the status, and the namespace the pods, of a recorded response."""
        with self.lock:
            self.jobs[(namespace, name)]["status"] = copy.deepcopy(recorded["job"]["status"])
            pods = copy.deepcopy(recorded["pods"]["items"])
            for pod in pods:  # the recorded pods carry the recorded Job's name: relabel them as this Job's
                pod["metadata"]["labels"]["llamahost.dev/fine-tuning-job"] = name
            self.pods[(namespace, name)] = pods
