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
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == {"scratch": "/scratch", "config": "/etc/llamahost"}
    assert pod["volumes"] == [
        {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}},
        {"name": "config", "configMap": {"name": "llamahost-config"}},
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
