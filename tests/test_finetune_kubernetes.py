"""The `kubernetes` fine-tuning backend: the Job it renders, what it makes of a Job's status,
and its calls to the API server.

- The manifest is checked against the kubernetes client's own models (generated from the
  API's OpenAPI document, pydantic with unknown fields forbidden): it must validate as a
  ``V1Job`` and serialize back to itself, so every field exists where it is put and has
  the API's type.
- The status logic runs on recorded API responses (tests/data/k8s/: a Job and its pods
  in each state that matters, in the shape Kubernetes 1.31+ returns them).
- The client runs for real over HTTP against tests/k8s_stub.py, a stand-in API server,
  configured the way an operator does it: a kubeconfig file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("kubernetes", reason="the kubernetes extra is not installed: pip install -e '.[kubernetes]'")

from kubernetes.client import ApiClient, V1Job, V1Pod  # noqa: E402

from k8s_stub import KubeStub  # noqa: E402
from llamahost.config import ConfigError, KubernetesConfig  # noqa: E402
from llamahost.finetune.kube import FINAL_EXIT_CODES, KubeJobs, job_name, job_state, manifest, render_job  # noqa: E402

DATA = Path(__file__).parent / "data" / "k8s"
JOB_ID = "ftjob-4F2A9C"
ARGS = ["--publish", "--spec-json", '{"n_epochs": 3}']


def settings(**overrides) -> KubernetesConfig:
    values: dict = {
        "image": "registry.example/llamahost:0.1.0",
        "namespace": "training",
        "service_account": "llamahost-trainer",
        "cpu": "8",
        "memory": "32Gi",
        "gpus": 1,
        "node_selector": {"cloud.example/accelerator": "l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "env_from_secrets": ["llamahost-db", "llamahost-keys"],
        "config_map": "llamahost-config",
        "env": {"HF_HOME": "/scratch/hf"},
        "image_pull_secrets": ["registry-pull"],
        "scratch_size": "50Gi",
        "backoff_limit": 2,
        "active_deadline_seconds": 7200,
        "volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "base-weights", "readOnly": True}}],
        "volume_mounts": [{"name": "weights", "mountPath": "/models", "readOnly": True}],
    }
    values.update(overrides)
    return KubernetesConfig(**values)


def test_the_manifest_is_a_valid_v1_job_with_every_setting_in_its_place() -> None:
    rendered = manifest(render_job(JOB_ID, ARGS, settings()))
    # Validates against the client's models (unknown fields forbidden) and round-trips unchanged.
    job = V1Job.model_validate(rendered)
    assert ApiClient().sanitize_for_serialization(job) == rendered

    assert rendered["apiVersion"] == "batch/v1" and rendered["kind"] == "Job"
    name = rendered["metadata"]["name"]
    assert name == "llamahost-ft-ftjob-4f2a9c" == job_name(JOB_ID) and rendered["metadata"]["namespace"] == "training"
    spec = rendered["spec"]
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 7200 and spec["ttlSecondsAfterFinished"] == 3600
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": FINAL_EXIT_CODES}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"]["llamahost.dev/fine-tuning-job"] == name
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "llamahost-trainer"
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"cloud.example/accelerator": "l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}]
    (container,) = pod["containers"]
    assert container["name"] == "trainer" and container["image"] == "registry.example/llamahost:0.1.0"
    assert container["command"] == ["python", "-m", "llamahost.finetune"] and container["args"] == ARGS
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    assert container["envFrom"] == [{"secretRef": {"name": "llamahost-db"}}, {"secretRef": {"name": "llamahost-keys"}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LLAMAHOST_CONFIG"] == "/etc/llamahost/llamahost.toml" and env["HF_HOME"] == "/scratch/hf"
    assert env["LLAMAHOST_DATA_DIR"].startswith("/scratch/")
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == {
        "scratch": "/scratch", "config": "/etc/llamahost", "weights": "/models"
    }
    assert pod["volumes"] == [
        {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}},
        {"name": "config", "configMap": {"name": "llamahost-config"}},
        {"name": "weights", "persistentVolumeClaim": {"claimName": "base-weights", "readOnly": True}},
    ]


def test_a_minimal_configuration_renders_without_optional_parts() -> None:
    rendered = manifest(render_job("ftjob-1", ARGS, KubernetesConfig(image="llamahost:dev")))
    V1Job.model_validate(rendered)
    pod = rendered["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod and "serviceAccountName" not in pod
    (container,) = pod["containers"]
    assert "resources" not in container or container["resources"] == {}
    assert "envFrom" not in container and rendered["metadata"]["namespace"] == "default"


def test_bad_settings_fail_when_rendered_not_in_the_cluster() -> None:
    with pytest.raises(ConfigError, match="image is required"):
        render_job(JOB_ID, ARGS, KubernetesConfig())
    with pytest.raises(ConfigError, match="tolerations"):
        render_job(JOB_ID, ARGS, settings(tolerations=[{"key": "gpu", "efect": "NoSchedule"}]))
    with pytest.raises(ConfigError, match="volume_mounts"):
        render_job(JOB_ID, ARGS, settings(volume_mounts=[{"name": "weights", "mount_path": 7}]))


def test_job_names_are_dns_labels_with_room_for_the_pod_suffix() -> None:
    assert job_name("FTJOB_abc:1") == "llamahost-ft-ftjob-abc-1"
    long = job_name("ftjob-" + "a" * 80)
    assert len(long) <= 52 and not long.endswith("-")


def recorded(name: str) -> tuple[V1Job, list[V1Pod]]:
    doc = json.loads((DATA / f"{name}.json").read_text())
    return V1Job.from_dict(doc["job"]), [V1Pod.from_dict(p) for p in doc["pods"]["items"]]


@pytest.mark.parametrize(
    "name, phase, message, problems",
    [
        ("running", "running", "running", []),
        ("image-pull-backoff", "pending", "starting", ["ImagePullBackOff", "registry.example/llamahost:0.1.0: not found"]),
        ("unschedulable", "pending", "starting", ["cannot be scheduled", "Insufficient nvidia.com/gpu"]),
        ("retrying-after-oom", "pending", "a retry", []),
        ("evicted-retrying", "running", "running", []),
        ("succeeded", "succeeded", "completed", []),
        ("failed-backoff-limit", "failed", "backoff_limit", ["OOMKilled", "exited with 137"]),
        ("failed-pod-failure-policy", "failed", "the trainer failed", ["exited with 1 (Error)"]),
        ("failed-deadline", "failed", "active_deadline_seconds", ["deadlineexceeded"]),
    ],
)
def test_status_logic_on_recorded_responses(name: str, phase: str, message: str, problems: list[str]) -> None:
    state = job_state(*recorded(name))
    assert state.phase == phase and message in state.message
    text = " | ".join(state.problems)
    for expected in problems:
        assert expected in text, text
    if phase == "pending":
        assert state.stuck == bool(problems)  # only a pod that cannot start counts as stuck
    if name == "retrying-after-oom":
        assert state.failed_pods == 1 and not state.stuck  # the retry's pod is just being created
        assert len(state.failures) == 1 and "OOMKilled" in state.failures[0]  # told while the Job retries
    if name == "evicted-retrying":
        assert state.failures and "evicted: The node was low on resource: ephemeral-storage" in state.failures[0]
    if phase == "failed":
        assert state.problems[-1] in state.message  # the last pod's end is told with the Job's


def test_the_client_submits_adopts_reads_and_deletes_over_http(tmp_path: Path) -> None:
    with KubeStub() as stub:
        jobs = KubeJobs(settings(kubeconfig=str(stub.kubeconfig(tmp_path / "kubeconfig"))))
        try:
            job = render_job(JOB_ID, ARGS, jobs.settings)
            name = job_name(JOB_ID)
            created = jobs.submit(job)
            assert created.metadata is not None and created.metadata.uid == "uid-1"
            posted = stub.requests[0]
            assert (posted["method"], posted["path"]) == ("POST", "/apis/batch/v1/namespaces/training/jobs")
            assert posted["body"] == manifest(job)
            # A second submit (a worker resuming the job after a crash) adopts the running Job.
            adopted = jobs.submit(render_job(JOB_ID, ARGS, jobs.settings))
            assert adopted.metadata is not None and adopted.metadata.uid == "uid-1" and len(stub.jobs) == 1

            stub.set_state("training", name, json.loads((DATA / "image-pull-backoff.json").read_text()))
            state = job_state(*jobs.read(name))
            assert state.stuck and "ImagePullBackOff" in state.problems[0]
            pods_call = stub.requests[-1]
            assert pods_call["path"] == "/api/v1/namespaces/training/pods"
            assert pods_call["query"]["labelSelector"] == f"llamahost.dev/fine-tuning-job={name}"

            stub.set_state("training", name, json.loads((DATA / "running.json").read_text()))
            assert job_state(*jobs.read(name)).phase == "running"

            assert jobs.delete(name) is True
            deleted = stub.requests[-1]
            assert deleted["method"] == "DELETE" and deleted["path"].endswith(f"/jobs/{name}")
            # Propagation: the Job's pods go with it (their trainer gets SIGTERM).
            assert deleted["query"] == {"propagationPolicy": "Background"}
            assert jobs.read(name) == (None, [])
            assert jobs.delete(name) is False
        finally:
            jobs.close()


# --- a training run as a Job, end to end ----------------------------------------------------
#
# The stand-in API server runs each Job's pod as a local process: the rendered container's
# own command, args and env (its secret holds the database URL and master key, as an
# operator's Secret would), its volumes mapped to local directories. The trainer trains a
# tiny Hugging Face llama (test_finetune_hf.py) in seconds; the run's inputs and output
# travel through the files backend of a real PostgreSQL database, as in a cluster.

from test_finetune_hf import MISSING as TRAINING_MISSING  # noqa: E402
from test_finetune_trainer import ROWS, _write_jsonl  # noqa: E402

needs_training = pytest.mark.skipif(bool(TRAINING_MISSING), reason="fine-tuning extra not installed")


@pytest.fixture
def cluster(tmp_path, pg_env, monkeypatch):
    """The worker's stores on PostgreSQL, and a stand-in cluster whose pods reach them."""
    import asyncio  # noqa: F401

    from conftest import SRC
    from k8s_stub import Kubelet
    from llamahost.config import FilesConfig
    from llamahost.files.service import FileService
    from llamahost.files.storage import DatabaseChunks
    from llamahost.store.keyring import open_store
    from llamahost.tenancy.teams import TeamStore

    for name in ("LLAMAHOST_MASTER_KEY_FILE", "LLAMAHOST_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    db, keyring = open_store(tmp_path / "worker")
    team_id, _ = TeamStore(db, keyring).ensure("team")
    files = FileService(db, keyring, DatabaseChunks(db), FilesConfig())
    base_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    kubelet = Kubelet(tmp_path / "node", {"llamahost-db": dict(pg_env)}, base_env)
    with KubeStub(kubelet) as stub:
        yield stub, kubelet, files, team_id, db
    db.close()


def training_run(tmp_path: Path, team_id: int, base: Path, attempt: int = 1, **spec):
    from llamahost.finetune.backends import TrainingRun
    from llamahost.finetune.spec import TrainingSpec

    work = tmp_path / "attempt"
    (work / "output").mkdir(parents=True)
    values = dict(
        base_model=str(base), training_file=_write_jsonl(work / "training.jsonl", ROWS),
        validation_file=_write_jsonl(work / "validation.jsonl", ROWS[:1]), output_dir=work / "output",
        n_epochs=2, batch_size=2, lora_rank=4, lora_alpha=8, threads=1,
    )
    values.update(spec)
    training = TrainingSpec(**values)
    return TrainingRun(job_id="ftjob-e2e", team_id=team_id, attempt=attempt, spec=training, spec_path=work / "job.json",
                       work_dir=work, log_path=work / "trainer.log")


def kube_settings(stub: KubeStub, tmp_path: Path, **overrides) -> KubernetesConfig:
    values: dict = dict(image="llamahost:test", namespace="training", env_from_secrets=["llamahost-db"], cpu="1",
                        kubeconfig=str(stub.kubeconfig(tmp_path / "kubeconfig")), poll_seconds=0.2, backoff_limit=1)
    values.update(overrides)
    return KubernetesConfig(**values)


def events_of(run) -> list[dict]:
    from llamahost.finetune.journal import read_jsonl

    path = run.output_dir / "events.jsonl"
    return read_jsonl(path) if path.exists() else []


def run_blobs(db) -> list[str]:
    from sqlalchemy import select

    from llamahost.store.models import FileChunk

    with db.session() as s:
        return list(s.scalars(select(FileChunk.file_id).where(FileChunk.file_id.like("ftk-%"))))


@needs_training
def test_a_run_trains_in_its_pod_and_is_mirrored_back_then_cleaned_up(cluster, tmp_path, hf_folder) -> None:
    import asyncio

    from llamahost.finetune.kube_backend import run_on_kubernetes

    stub, kubelet, files, team_id, db = cluster
    run = training_run(tmp_path, team_id, hf_folder)
    code = asyncio.run(run_on_kubernetes(kube_settings(stub, tmp_path), files, run))
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "node").glob("*.log"))
    assert code == 0, logs[-3000:]
    result = json.loads((run.output_dir / "result.json").read_text())
    assert result["status"] == "succeeded" and result["steps"] == 2 and result["adapter_gguf"] is None
    # The checkpoints arrived whole, where the fine-tuning job uploads them from.
    for epoch in (1, 2):
        folder = run.output_dir / "checkpoints" / f"epoch-{epoch:04d}"
        assert json.loads((folder / "checkpoint.json").read_text())["epoch"] == epoch
        assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["r"] == 4
    events = events_of(run)
    messages = [e["message"] for e in events]
    assert any("Kubernetes Job training/llamahost-ft-ftjob-e2e-1 submitted" in m for m in messages)
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == [1, 2]
    assert messages[-1] == "The job has successfully completed"
    # What ran was the rendered container: the trainer in --remote mode, threads from the cpu setting.
    (posted,) = [r for r in stub.requests if r["method"] == "POST"]
    args = posted["body"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "--remote" and json.loads(args[1])["team_id"] == team_id
    assert run_blobs(db) == []  # the run's inputs and published output are gone; the job keeps its own copies


@needs_training
def test_a_pod_killed_mid_run_is_retried_by_the_job(cluster, tmp_path, hf_folder) -> None:
    import asyncio
    import signal

    from llamahost.finetune.kube_backend import run_on_kubernetes

    stub, kubelet, files, team_id, db = cluster
    killed: list[int] = []

    def kill_first(process) -> None:
        if not killed:  # the first pod dies at once (a lost node, the OOM killer): SIGKILL, exit 137
            killed.append(process.pid)
            os.killpg(process.pid, signal.SIGKILL)

    kubelet.on_start = kill_first
    run = training_run(tmp_path, team_id, hf_folder, n_epochs=1)
    code = asyncio.run(run_on_kubernetes(kube_settings(stub, tmp_path), files, run))
    assert code == 0 and killed
    messages = [e["message"] for e in events_of(run)]
    assert any("exited with 137" in m for m in messages), messages  # told, then retried by the Job
    assert json.loads((run.output_dir / "result.json").read_text())["status"] == "succeeded"


@needs_training
def test_cancel_deletes_the_job_and_the_trainer_records_it(cluster, tmp_path, hf_folder) -> None:
    import asyncio

    from llamahost.finetune.kube_backend import run_on_kubernetes

    stub, kubelet, files, team_id, db = cluster
    run = training_run(tmp_path, team_id, hf_folder, n_epochs=100)

    async def scenario() -> int:
        task = asyncio.create_task(run_on_kubernetes(kube_settings(stub, tmp_path), files, run))
        while not any(e["type"] == "metrics" for e in events_of(run)):  # training is under way
            assert not task.done(), task.result()
            await asyncio.sleep(0.1)
        run.cancel.set()
        return await task

    assert asyncio.run(scenario()) == 3
    assert json.loads((run.output_dir / "result.json").read_text())["status"] == "cancelled"
    (deleted,) = [r for r in stub.requests if r["method"] == "DELETE"]
    assert deleted["query"] == {"propagationPolicy": "Background"}
    assert "Fine-tuning job cancelled" in [e["message"] for e in events_of(run)]
    assert run_blobs(db) == []


def test_a_pod_that_cannot_start_fails_the_run_with_the_reason(cluster, tmp_path) -> None:
    import asyncio

    from llamahost.finetune.kube_backend import run_on_kubernetes

    stub, kubelet, files, team_id, db = cluster
    kubelet.pull_fails = True
    run = training_run(tmp_path, team_id, tmp_path)
    settings = kube_settings(stub, tmp_path, image="registry.example/llamahost:missing", start_timeout_seconds=1)
    assert asyncio.run(run_on_kubernetes(settings, files, run)) == 1
    result = json.loads((run.output_dir / "result.json").read_text())
    assert result["status"] == "failed" and "did not start within 1 s" in result["error"]["message"]
    assert "ImagePullBackOff" in result["error"]["message"]
    warnings = [e["message"] for e in events_of(run) if e["level"] == "warn"]
    assert any("ImagePullBackOff" in m for m in warnings)
    assert [r["method"] for r in stub.requests if r["method"] in ("POST", "DELETE")] == ["POST", "DELETE"]


def test_a_retried_pod_continues_the_run_from_its_published_checkpoint(cluster, tmp_path) -> None:
    """What a pod retried by the Job finds: the run's newest checkpoint (restored whole), and
    the event numbering to continue; the worker's mirror keeps one metrics point per step."""
    from llamahost.finetune.remote import Mirror, Publisher, RemoteRun

    stub, kubelet, files, team_id, db = cluster
    run = RemoteRun(team_id, RemoteRun.new_id(), 0)
    first = tmp_path / "pod-1"
    checkpoint = first / "checkpoints" / "epoch-0001"
    (checkpoint / "adapter").mkdir(parents=True)
    (checkpoint / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(3000))
    (checkpoint / "state.pt").write_bytes(os.urandom(2_500_000))  # more than one chunk
    (checkpoint / "checkpoint.json").write_text(json.dumps({"epoch": 1, "step": 2, "trained_tokens": 40}))

    def metrics(step: int, loss: float) -> str:
        return json.dumps({"created_at": 0, "level": "info", "message": f"Step {step}", "type": "metrics",
                           "data": {"step": step, "train_loss": loss}}) + "\n"

    (first / "events.jsonl").write_text(metrics(1, 3.0) + metrics(2, 2.5) + metrics(3, 2.4) + '{"partial')
    Publisher(files, run, first).publish()

    second = tmp_path / "pod-2"
    second.mkdir()
    retried = Publisher(files, run, second)
    assert retried.segments == 1 and retried.published == {1}
    assert retried.restore_newest() == 1
    for path in checkpoint.rglob("*"):
        if path.is_file():
            assert (second / path.relative_to(first)).read_bytes() == path.read_bytes()
    # The retry resumes at step 2 and replays step 3 (another loss): the curve keeps one point per step.
    (second / "events.jsonl").write_text(metrics(3, 2.2) + metrics(4, 2.0))
    retried.finish(0)

    mirrored = tmp_path / "worker-output"
    mirrored.mkdir()
    mirror = Mirror(files, run, mirrored)
    assert mirror.pull() and mirror.outcome == {"exit": 0, "result": None}
    steps = [(e["data"]["step"], e["data"]["train_loss"]) for e in map(json.loads, (mirrored / "events.jsonl").read_text().splitlines())]
    assert steps == [(1, 3.0), (2, 2.5), (3, 2.4), (4, 2.0)]
    assert (mirrored / "checkpoints" / "epoch-0001" / "state.pt").read_bytes() == (checkpoint / "state.pt").read_bytes()
    mirror.delete()
    assert run_blobs(db) == []


def test_the_deploy_manifests_for_fine_tuning_are_valid_objects() -> None:
    """deploy/kubernetes/fine-tuning.yaml: the job loop's service account may do what the
    backend does (create/get/delete jobs, list pods), checked as the client's models."""
    import yaml
    from kubernetes.client import V1Role, V1RoleBinding, V1Secret, V1ServiceAccount

    deploy = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
    docs = {d["kind"]: d for d in yaml.safe_load_all((deploy / "fine-tuning.yaml").read_text()) if d}
    V1ServiceAccount.model_validate(docs["ServiceAccount"])
    role = V1Role.model_validate(docs["Role"])
    V1RoleBinding.model_validate(docs["RoleBinding"])
    allowed = {(g, r, v) for rule in role.rules or () for g in rule.api_groups or () for r in rule.resources or () for v in rule.verbs}
    needed = {("batch", "jobs", "create"), ("batch", "jobs", "get"), ("batch", "jobs", "delete"), ("", "pods", "list"),
              ("", "pods/log", "get")}
    assert needed <= allowed
    secrets = [d for d in yaml.safe_load_all((deploy / "secrets.example.yaml").read_text()) if d]
    trainer_env = next(V1Secret.model_validate(d) for d in secrets if d["metadata"]["name"] == "llamahost-trainer-env")
    assert {"LLAMAHOST_DATABASE_URL", "LLAMAHOST_MASTER_KEY"} <= set(trainer_env.string_data or {})
    assert "fine-tuning.yaml" in (deploy / "kustomization.yaml").read_text()


def test_a_pod_without_the_servers_database_fails_the_run_with_its_log(cluster, tmp_path) -> None:
    """A Secret that lacks the database URL: the pod finds no inputs, says what it needs
    and exits 2 (final: no retry); the run fails with the end of the pod's log."""
    import asyncio

    from llamahost.finetune.kube_backend import run_on_kubernetes

    stub, kubelet, files, team_id, db = cluster
    kubelet.secrets["llamahost-db"] = {"LLAMAHOST_MASTER_KEY": kubelet.secrets["llamahost-db"]["LLAMAHOST_MASTER_KEY"]}
    run = training_run(tmp_path, team_id, tmp_path)
    assert asyncio.run(run_on_kubernetes(kube_settings(stub, tmp_path), files, run)) == 1
    message = json.loads((run.output_dir / "result.json").read_text())["error"]["message"]
    assert "the trainer failed" in message and "exited with 2" in message
    assert "cannot read this run's inputs" in message and "LLAMAHOST_DATABASE_URL" in message
    assert len([r for r in stub.requests if r["method"] == "POST"]) == 1  # not retried
    assert run_blobs(db) == []


def test_an_earlier_attempts_job_and_its_run_are_removed_before_the_next(cluster, tmp_path) -> None:
    """A worker that died left its Job running and its run's blobs: the next attempt deletes
    that Job and, through the run named in its annotation, the blobs."""
    import asyncio

    from llamahost.finetune.kube import ANNOTATION_RUN
    from llamahost.finetune.kube_backend import run_on_kubernetes
    from llamahost.finetune.remote import Publisher, RemoteRun

    stub, kubelet, files, team_id, db = cluster
    kubelet.pull_fails = True  # no pod runs: this is about what the next attempt clears away
    settings = kube_settings(stub, tmp_path, start_timeout_seconds=1)
    left = RemoteRun(team_id, RemoteRun.new_id(), 0)
    (tmp_path / "left").mkdir()
    (tmp_path / "left" / "events.jsonl").write_text('{"type": "message", "message": "hello"}\n')
    Publisher(files, left, tmp_path / "left").finish(137)
    jobs = KubeJobs(settings)
    jobs.submit(render_job("ftjob-e2e-1", ["--remote", left.to_arg()], settings, annotations={ANNOTATION_RUN: left.run}))
    jobs.close()
    assert run_blobs(db)

    run = training_run(tmp_path, team_id, tmp_path, attempt=2)
    assert asyncio.run(run_on_kubernetes(settings, files, run)) == 1  # its own pod cannot start either
    deleted = [r["path"].rsplit("/", 1)[1] for r in stub.requests if r["method"] == "DELETE"]
    assert deleted == ["llamahost-ft-ftjob-e2e-1", "llamahost-ft-ftjob-e2e-2"]
    assert run_blobs(db) == []


def test_settings_kubernetes_refuses_fail_the_run_saying_what_to_fix(cluster, tmp_path) -> None:
    """Not crashes to retry: no kubeconfig to reach the API with, and a namespace the API
    server does not serve (its 404 Status message quoted)."""
    import asyncio

    from llamahost.finetune.kube_backend import run_on_kubernetes

    stub, kubelet, files, team_id, db = cluster
    run = training_run(tmp_path, team_id, tmp_path)
    missing = kube_settings(stub, tmp_path, kubeconfig=str(tmp_path / "no-such-kubeconfig"))
    assert asyncio.run(run_on_kubernetes(missing, files, run)) == 1
    message = json.loads((run.output_dir / "result.json").read_text())["error"]["message"]
    assert "cannot reach the Kubernetes API" in message and "kubeconfig" in message
    assert run_blobs(db) == []

    (run.output_dir / "result.json").unlink()
    stub.route_override = lambda method, path: (
        (403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
               "message": 'jobs.batch is forbidden: User "system:serviceaccount:llamahost:default" cannot create '
                          'resource "jobs" in API group "batch" in the namespace "training"'})
        if method == "POST" else None
    )
    assert asyncio.run(run_on_kubernetes(kube_settings(stub, tmp_path), files, run)) == 1
    message = json.loads((run.output_dir / "result.json").read_text())["error"]["message"]
    assert message.startswith("Kubernetes refused the Job (HTTP 403: jobs.batch is forbidden")
    assert run_blobs(db) == []
