"""Fine-tuning jobs as Kubernetes Jobs: the manifest, the API calls, and what a Job's
status means for the fine-tuning job.

The trainer is the same entrypoint as everywhere (``python -m llamahost.finetune``), run
in the llamahost image as a ``batch/v1`` Job. Kubernetes retries a pod that failed for a
reason it counts (a lost node, an OOM kill) up to ``backoffLimit`` times, and the retry
resumes from the last checkpoint the trainer published; a pod failure policy makes the
trainer's own verdicts final: exit 1 (the training failed: a bad dataset, a trainer
error), 2 (an unusable spec) and 3 (cancelled) fail the Job at once instead of burning
retries, and a pod evicted by a disruption (node drain, preemption) is retried without
counting against the limit.

The ``kubernetes`` package (the maintained client, the ``kubernetes`` extra) is imported
only here and only when used: the manifest is built from its model classes, so a field
the API does not know or a value of the wrong type fails when the manifest is rendered,
not when the cluster refuses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from ..config import ConfigError, KubernetesConfig

if TYPE_CHECKING:
    from kubernetes.client import V1Job, V1Pod

CONTAINER = "trainer"
SCRATCH = "/scratch"  # the trainer's emptyDir: dataset, output dir
CONFIG_DIR = "/etc/llamahost"
CONFIG_KEY = "llamahost.toml"
# The trainer's exit statuses that are verdicts, not accidents (finetune/__main__.py):
# 1 failed, 2 unusable spec, 3 cancelled. Retrying them would only repeat them.
FINAL_EXIT_CODES = [1, 2, 3]
LABEL_JOB = "llamahost.dev/fine-tuning-job"
# The Job's run (remote.RemoteRun): whoever deletes a Job its worker left behind frees its blobs.
ANNOTATION_RUN = "llamahost.dev/run"
COMMON_LABELS = {"app.kubernetes.io/name": "llamahost", "app.kubernetes.io/component": "fine-tuning"}
# Pod waiting reasons that do not fix themselves: the pod never starts while they last.
STUCK_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})
INSTALL_HINT = "pip install 'llamahost[kubernetes]'"


def client_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("kubernetes") is not None


def require_client() -> None:
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        raise ConfigError(f'[fine_tuning] backend = "kubernetes" needs the kubernetes client: {INSTALL_HINT}') from None


def job_name(job_id: str) -> str:
    """A DNS-1123 label (the Job's name; its pods add a suffix): lower case, digits, '-'."""
    slug = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    return f"llamahost-ft-{slug}"[:52].rstrip("-")  # room for the pods' "-xxxxx" suffixes


def render_job(
    job_id: str, trainer_args: list[str], settings: KubernetesConfig, annotations: dict[str, str] | None = None
) -> V1Job:
    """The Job for one fine-tuning job, as the client's model (validated as it is built)."""
    require_client()
    from kubernetes import client as k8s

    if not settings.image:
        raise ConfigError('[fine_tuning.kubernetes] image is required for backend = "kubernetes"')
    name = job_name(job_id)
    labels = {**settings.labels, **COMMON_LABELS, LABEL_JOB: name}
    env = [
        k8s.V1EnvVar(name="LLAMAHOST_DATA_DIR", value=f"{SCRATCH}/data"),
        # The trainer logs to stdout/stderr (kubectl logs); Python buffers it otherwise.
        k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
    ]
    mounts = [k8s.V1VolumeMount(name="scratch", mount_path=SCRATCH)]
    volumes = [k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=settings.scratch_size))]
    if settings.config_map:
        env.append(k8s.V1EnvVar(name="LLAMAHOST_CONFIG", value=f"{CONFIG_DIR}/{CONFIG_KEY}"))
        mounts.append(k8s.V1VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True))
        volumes.append(k8s.V1Volume(name="config", config_map=k8s.V1ConfigMapVolumeSource(name=settings.config_map)))
    env += [k8s.V1EnvVar(name=key, value=value) for key, value in sorted(settings.env.items())]
    volumes += [_validated(k8s.V1Volume, v, "volumes") for v in settings.volumes]
    mounts += [_validated(k8s.V1VolumeMount, m, "volume_mounts") for m in settings.volume_mounts]

    quantities = {k: v for k, v in (("cpu", settings.cpu), ("memory", settings.memory)) if v}
    limits = dict(quantities)
    if settings.gpus:
        limits[settings.gpu_resource] = str(settings.gpus)
    container = k8s.V1Container(
        name=CONTAINER,
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        command=["python", "-m", "llamahost.finetune"],
        args=trainer_args,
        env=env,
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s)) for s in settings.env_from_secrets] or None,
        resources=k8s.V1ResourceRequirements(requests=quantities or None, limits=limits or None),
        volume_mounts=mounts,
        working_dir=SCRATCH,
    )
    pod = k8s.V1PodSpec(
        containers=[container],
        restart_policy="Never",  # retries are the Job's (backoffLimit), each a fresh pod
        service_account_name=settings.service_account,
        # The trainer never calls the Kubernetes API: no token in the pod.
        automount_service_account_token=False,
        node_selector=settings.node_selector or None,
        tolerations=[_validated(k8s.V1Toleration, t, "tolerations") for t in settings.tolerations] or None,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=s) for s in settings.image_pull_secrets] or None,
        volumes=volumes,
        # SIGTERM (a cancel, a drain) makes the trainer record the cancel and publish it;
        # that takes a few seconds, well inside the default 30.
        termination_grace_period_seconds=30,
    )
    spec = k8s.V1JobSpec(
        backoff_limit=settings.backoff_limit,
        active_deadline_seconds=settings.active_deadline_seconds,
        ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
        pod_failure_policy=k8s.V1PodFailurePolicy(
            rules=[
                k8s.V1PodFailurePolicyRule(
                    action="FailJob",
                    on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                        container_name=CONTAINER, operator="In", values=FINAL_EXIT_CODES
                    ),
                ),
                k8s.V1PodFailurePolicyRule(
                    action="Ignore",
                    on_pod_conditions=[k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")],
                ),
            ]
        ),
        template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod),
    )
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(name=name, namespace=settings.namespace, labels=labels, annotations=annotations),
        spec=spec,
    )


def _validated(model: Any, raw: dict[str, Any], key: str) -> Any:
    """A setting in Kubernetes' own shape as the client's model; model_validate, not
    from_dict: an unknown key (a typo) is an error instead of being dropped."""
    from pydantic import ValidationError

    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"[fine_tuning.kubernetes] {key}: {raw}: {where}: {first['msg']}") from None


def manifest(job: V1Job) -> dict[str, Any]:
    """The Job as the API's JSON (camelCase keys, unset fields left out): what is sent."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(job)


# --- what a Job's status means ------------------------------------------------------------

Phase = Literal["pending", "running", "succeeded", "failed"]


@dataclass
class JobState:
    phase: Phase
    message: str = ""
    # Why a pod is not running when it should be (pulling an image that does not exist, a
    # missing secret, no node fits): told as events, and fatal after start_timeout_seconds.
    problems: list[str] = field(default_factory=list)
    failed_pods: int = 0
    # How each pod that failed ended (OOMKilled, evicted, an exit status): the Job retries
    # it while backoff_limit allows, so these are told even while the Job goes on.
    failures: list[str] = field(default_factory=list)

    @property
    def stuck(self) -> bool:
        return self.phase == "pending" and bool(self.problems)


def _true(conditions: list[Any] | None, *types: str) -> Any | None:
    for condition in conditions or ():
        if condition.type in types and condition.status == "True":
            return condition
    return None


def pod_problems(pod: V1Pod) -> list[str]:
    """What keeps a pod from running, or what ended it, in a line each."""
    status = pod.status
    if status is None:
        return []
    name = pod.metadata.name if pod.metadata else "pod"
    problems = []
    scheduled = next((c for c in status.conditions or () if c.type == "PodScheduled"), None)
    if scheduled is not None and scheduled.status == "False" and scheduled.reason == "Unschedulable":
        problems.append(f"{name} cannot be scheduled: {scheduled.message or 'no node fits'}")
    if status.phase == "Failed" and status.reason:
        problems.append(f"{name} {status.reason.lower()}: {status.message or ''}".rstrip(": "))
    for container in status.container_statuses or ():
        state = container.state
        if state is None:
            continue
        if state.waiting is not None and state.waiting.reason in STUCK_REASONS:
            problems.append(f"{name}: {state.waiting.reason}: {state.waiting.message or ''}".rstrip(": "))
        terminated = state.terminated
        if terminated is not None and terminated.exit_code != 0:
            what = "OOMKilled (out of memory)" if terminated.reason == "OOMKilled" else terminated.reason or "Error"
            problems.append(f"{name}: the trainer exited with {terminated.exit_code} ({what})")
    return problems


def job_state(job: V1Job, pods: list[V1Pod]) -> JobState:
    """The fine-tuning view of a Job and its pods (newest pod last)."""
    status = job.status
    conditions = status.conditions if status is not None else None
    failed_pods = (status.failed or 0) if status is not None else 0
    problems = [p for pod in pods for p in pod_problems(pod)]
    failures = [p for pod in pods if pod.status is not None and pod.status.phase == "Failed" for p in pod_problems(pod)]
    if _true(conditions, "Complete", "SuccessCriteriaMet"):
        return JobState("succeeded", "the Kubernetes Job completed", failed_pods=failed_pods, failures=failures)
    # FailureTarget comes first (1.31+): the Job has failed, its pods are being terminated.
    ended = _true(conditions, "Failed", "FailureTarget")
    if ended is not None:
        reason = {
            "BackoffLimitExceeded": "its pods failed more often than backoff_limit allows",
            "DeadlineExceeded": "it ran longer than active_deadline_seconds",
            "PodFailurePolicy": "the trainer failed",
        }.get(ended.reason or "", ended.reason or "failed")
        detail = f": {problems[-1]}" if problems else ""
        return JobState("failed", f"the Kubernetes Job failed, {reason}{detail}", problems, failed_pods, failures)
    suspended = _true(conditions, "Suspended")
    if suspended is not None:
        message = f"the Kubernetes Job is suspended: {suspended.message or ''}".rstrip(": ")
        return JobState("pending", message, [], failed_pods, failures)
    running = any(pod.status is not None and pod.status.phase == "Running" for pod in pods)
    if status is not None and (status.active or 0) > 0 and running:
        return JobState("running", "the trainer is running", [], failed_pods, failures)
    # Nothing running: a pod is being created or scheduled, or a failed one awaits its retry.
    live = [pod for pod in pods if pod.status is None or pod.status.phase in (None, "Pending")]
    stuck = [p for pod in live for p in pod_problems(pod)]
    waiting = "a retry of the trainer's pod is starting" if failed_pods else "the trainer's pod is starting"
    return JobState("pending", waiting, stuck, failed_pods, failures)


# --- the API --------------------------------------------------------------------------------


class KubeJobs:
    """Create, read and delete the fine-tuning Jobs of one namespace."""

    def __init__(self, settings: KubernetesConfig) -> None:
        require_client()
        from kubernetes import client as k8s
        from kubernetes import config as kconfig

        self.settings = settings
        self.namespace = settings.namespace
        if settings.kubeconfig or settings.context:
            api = kconfig.new_client_from_config(config_file=settings.kubeconfig, context=settings.context)
        else:
            configuration = k8s.Configuration()
            try:  # in a pod: its service account
                kconfig.load_incluster_config(client_configuration=configuration)
            except kconfig.ConfigException:
                kconfig.load_kube_config(client_configuration=configuration)
            api = k8s.ApiClient(configuration)
        self.api = api
        self.batch = k8s.BatchV1Api(api)
        self.core = k8s.CoreV1Api(api)

    def close(self) -> None:
        self.api.close()

    def submit(self, job: V1Job) -> V1Job:
        """Creates the Job; one of the same name (submitted by an earlier attempt of this
        fine-tuning job, whose worker died) is adopted, not duplicated."""
        from kubernetes.client.exceptions import ApiException

        assert job.metadata is not None and job.metadata.name is not None
        try:
            return self.batch.create_namespaced_job(self.namespace, job)
        except ApiException as exc:
            if exc.status != 409:
                raise
        return self.batch.read_namespaced_job(job.metadata.name, self.namespace)

    def read(self, name: str) -> tuple[V1Job | None, list[V1Pod]]:
        """The Job (None once deleted) and its pods, oldest first."""
        from kubernetes.client.exceptions import ApiException

        try:
            job = self.batch.read_namespaced_job(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None, []
            raise
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_JOB}={name}").items
        return job, sorted(pods, key=lambda p: _created(p))

    def log_tail(self, pod: str, lines: int = 20) -> str:
        """The end of a pod's trainer log ('' if it cannot be read): why a pod that published
        no verdict ended (a missing setting, a traceback before training)."""
        from kubernetes.client.exceptions import ApiException

        try:
            text = self.core.read_namespaced_pod_log(pod, self.namespace, container=CONTAINER, tail_lines=lines)
        except (ApiException, OSError):
            return ""
        return str(text or "").strip()

    def delete(self, name: str) -> bool:
        """Deletes the Job and its pods (their trainer gets SIGTERM, then the grace period);
        False if there was none."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


def _created(pod: V1Pod) -> datetime:
    stamp = pod.metadata.creation_timestamp if pod.metadata else None
    return stamp or datetime.min.replace(tzinfo=UTC)
