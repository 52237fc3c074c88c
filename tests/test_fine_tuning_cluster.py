"""Fine-tuning an upstream model on a cluster, end to end through the API: a server and a
`llamahost jobs work` process on PostgreSQL with `[fine_tuning] backend = "kubernetes"`,
the `openai` SDK as the client.

The cluster is tests/k8s_stub.py: a stand-in API server the worker's real kubernetes client
talks to, which runs each Job's pod as a local process from the rendered container (the
trainer in `--remote` mode, reaching the database through the secret's variables). The
model is an upstream one (`engine = "openai"`) whose base weights are a tiny Hugging Face
llama (`hf_weights`), served by vLLM-shaped replicas (tests/vllm_stub.py); its tuned model
is answered by a replica with the adapter llamahost loaded into it at run time.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from conftest import SRC, start_server

openai = pytest.importorskip("openai")
pytest.importorskip("kubernetes", reason="the kubernetes extra is not installed")

from k8s_stub import Kubelet, KubeStub  # noqa: E402
from test_fine_tuning_api import ROWS, Worker, client, jsonl, poll  # noqa: E402
from test_finetune_hf import MISSING  # noqa: E402
from test_upstream_lora import Replica  # noqa: E402

pytestmark = pytest.mark.skipif(bool(MISSING), reason="fine-tuning extra not installed")


@pytest.fixture
def cluster_server(tmp_path, pg_env, hf_folder):
    replica = Replica(tmp_path, "vllm").start()
    base_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": str(SRC)}
    kubelet = Kubelet(tmp_path / "node", {"llamahost-trainer-env": dict(pg_env)}, base_env)
    with KubeStub(kubelet) as stub:
        config = f"""
[jobs]
run_in_server = false
poll_interval_seconds = 0.2
lease_seconds = 4

[[models]]
id = "tiny-upstream"
engine = "openai"
upstream_model = "base"
replicas = ["{replica.url}"]
context_window = 512
health_check_interval = 0.5
hf_weights = "{hf_folder}"
lora_dir = "{tmp_path / 'lora'}"

[fine_tuning]
backend = "kubernetes"

[fine_tuning.kubernetes]
image = "registry.example/llamahost-train:test"
namespace = "training"
env_from_secrets = ["llamahost-trainer-env"]
kubeconfig = "{stub.kubeconfig(tmp_path / 'kubeconfig')}"
cpu = "1"
poll_seconds = 0.2
"""
        server = start_server(tmp_path / "server", config, env=dict(pg_env))
        server.key = server.cli("keys", "create", "--team", "test", "--role", "admin").stdout.strip()
        worker = Worker(server, "worker")
        try:
            yield server, stub, replica, worker
        finally:
            worker.stop()
            server.stop()
            replica.stop()


def test_an_upstream_model_is_tuned_in_a_kubernetes_job_and_served_by_vllm(cluster_server) -> None:
    server, stub, replica, worker = cluster_server
    c = client(server)
    f = client(server, "compat/v1").files.create(file=("lockers.jsonl", jsonl(ROWS), "application/jsonl"),
                                                 purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model="tiny-upstream", training_file=f.id, suffix="lockers",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 10}}},
    )
    done = poll(lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status not in ("queued", "running") and j,
                "the job to end", deadline=900)
    pod_logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (Path(stub.kubelet.root)).glob("*.log"))
    assert done.status == "succeeded", (done.error, worker.log()[-3000:], pod_logs)

    # It ran as a Job: submitted to the namespace, the trainer in --remote mode in the image.
    (posted,) = [r for r in stub.requests if r["method"] == "POST"]
    assert posted["path"] == "/apis/batch/v1/namespaces/training/jobs"
    container = posted["body"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/llamahost-train:test" and container["args"][0] == "--remote"
    events = list(reversed(c.fine_tuning.jobs.list_events(job.id, limit=100).data))
    messages = [e.message for e in events]
    assert any(m.startswith("Kubernetes Job training/") and m.endswith("submitted") for m in messages)
    assert [e.data["step"] for e in events if e.type == "metrics"] == [1, 2]
    assert len(c.fine_tuning.jobs.checkpoints.list(job.id).data) == 2

    # The adapter is a PEFT folder only (an upstream base has no llama.cpp adapter).
    archive = httpx.get(f"{server.base_url}/fine_tuning/jobs/{job.id}/artifacts", headers=server.headers(), timeout=60)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        names = tar.getnames()
    assert "adapter/adapter_config.json" in names and "adapter.gguf" not in names

    # Served by name: the replica gets the adapter through vLLM's runtime LoRA endpoint.
    reply = client(server, "compat/v1").chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Code of locker 3?"}], max_tokens=8
    )
    assert reply.choices[0].message.content.startswith(f"adapter {done.fine_tuned_model} (r=")
    (load,) = replica.calls("/v1/load_lora_adapter")
    assert load["body"]["lora_name"] == done.fine_tuned_model
    assert json.loads((Path(load["body"]["lora_path"]) / "adapter_config.json").read_text())["peft_type"] == "LORA"
