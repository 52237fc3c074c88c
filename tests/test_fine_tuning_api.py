"""The fine-tuning API for real: a server, a separate `llamahost jobs work` process
running the `fine_tune` kind, the trainer on the bundled SmolLM2 GGUF, and the `openai`
SDK as the client.

One job does the end-to-end run and the worker-killed test at once, because each run
loads the model on a 2-core machine: its first attempt is stopped once its first
checkpoint is uploaded (the trainer frozen, then worker and trainer SIGKILLed), a new
worker resumes it from that checkpoint, and the finished job is what the later tests
read (job object, events, checkpoints, artifacts, usage). The second worker runs the
`command` backend with the local trainer as its command, so the resumed attempt (and
the cancel test after it) prove that backend too. The trainer is frozen when
its first checkpoint appears on disk, before it can finish the second epoch, so the kill
lands mid-run whatever the machine's speed.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from conftest import llamahost_env, start_server, stop_process

openai = pytest.importorskip("openai")
pytest.importorskip("torch")  # the trainer's extra; CI installs it (see README, Tests)

from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent  # noqa: E402
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint  # noqa: E402

CONFIG = """
[jobs]
run_in_server = false
poll_interval_seconds = 0.2
lease_seconds = 4

[fine_tuning]
threads = 2
max_jobs_per_team = 1
"""
# The same, training through the `command` backend with the local trainer as the command.
COMMAND_CONFIG = CONFIG.replace("[fine_tuning]\n", f"""[fine_tuning]
backend = "command"
command = {json.dumps([sys.executable, "-m", "llamahost.finetune", "--spec", "{spec}"])}
""")
DEADLINE = 1800.0
CANARY = "CANARY-ft-metadata-5b1e"  # a model load or two on a crowded 2-core CPU: generous on purpose

# Ten rows (the least a fine-tuning dataset may have), short, with a short system
# prompt (SmolLM2's template adds a long default one otherwise).
ROWS = [
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": f"Code of locker {n}?"},
                  {"role": "assistant", "content": f"Locker {n}: KIWI-{n * 7}."}]}
    for n in range(1, 11)
]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def client(server, surface: str = "v1", key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/{surface}", api_key=key or server.key, max_retries=0, timeout=120)


class Worker:
    """`llamahost jobs work` over the server's database, with the server's configuration
    or another (``config``: a different training backend)."""

    def __init__(self, server, name: str, config: str | None = None) -> None:
        self.log_path = server.data_dir.parent / f"{name}.log"
        config_path = server.data_dir.parent / "llamahost.toml"
        if config is not None:
            config_path = server.data_dir.parent / f"{name}.toml"
            config_path.write_text(config)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llamahost", "jobs", "work", "--config", str(config_path), "--kind", "fine_tune"],
            env=llamahost_env(server.data_dir, server.env), stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, timeout=30)


def poll(condition, what: str, deadline: float = DEADLINE, every: float = 0.2):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def trainer_pids(spec_marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"llamahost.finetune" in cmdline and any(spec_marker.encode() in part for part in cmdline):
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("fine-tuning"), CONFIG)
    # Creating and cancelling jobs takes an admin key (the fixture's own key is a member's).
    s.key = s.cli("keys", "create", "--team", "test", "--role", "admin").stdout.strip()
    workers: list[Worker] = []
    s.workers = workers  # type: ignore[attr-defined]
    yield s
    for worker in workers:
        worker.stop()
    s.stop()


def start_worker(server, name: str, config: str | None = None) -> Worker:
    worker = Worker(server, name, config)
    server.workers.append(worker)
    return worker


@pytest.fixture(scope="module")
def training_file(server) -> str:
    # OpenAI's one-shot upload is on the compatible surface (/v1 has the resumable uploads).
    f = client(server, "compat/v1").files.create(file=("lockers.jsonl", jsonl(ROWS), "application/jsonl"),
                                                 purpose="fine-tune")
    assert f.status == "processed", f.status_details
    return f.id


@pytest.fixture(scope="module")
def finished(server, training_file):
    """A job run to the end across a worker killed mid-run: (job, seconds it took)."""
    c = client(server)
    started = time.monotonic()
    first = start_worker(server, "worker-1")
    job = c.fine_tuning.jobs.create(
        # The same file validates too (a validation loss at each epoch's end, for the plumbing).
        model="SmolLM2-135M-Instruct", training_file=training_file, validation_file=training_file, suffix="lockers",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 10,
                                                                         "learning_rate_multiplier": 4}}},
        metadata={"purpose": CANARY},
    )
    assert job.status == "queued"
    attempt_dir = server.data_dir / "fine-tuning" / job.id / "attempt-1"
    checkpoint = attempt_dir / "output" / "checkpoints" / "epoch-0001"
    poll(checkpoint.exists, "the first checkpoint on disk", every=0.01)
    trainers = trainer_pids(str(attempt_dir))
    assert trainers, "the trainer process was not found"
    for pid in trainers:
        os.kill(pid, signal.SIGSTOP)  # frozen before it can finish the second epoch
    poll(lambda: c.fine_tuning.jobs.checkpoints.list(job.id).data, "the first checkpoint uploaded")
    assert c.fine_tuning.jobs.retrieve(job.id).status == "running"
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    for pid in trainers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    start_worker(server, "worker-2", COMMAND_CONFIG)
    done = poll(lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status not in ("queued", "running") and j,
                "the job to end")
    assert done.status == "succeeded", (done.error, server.workers[-1].log()[-3000:])
    return done, time.monotonic() - started


def test_job_runs_to_succeeded_across_a_killed_worker(server, finished):
    job, seconds = finished
    print(f"\nfine-tuning job wall time (2 attempts, worker killed after epoch 1): {seconds:.1f} s")
    raw = httpx.get(f"{server.base_url}/fine_tuning/jobs/{job.id}", headers=server.headers()).json()
    FineTuningJob.model_validate(raw)
    assert set(FineTuningJob.model_fields) <= set(raw)  # every field present, none left out
    assert raw["object"] == "fine_tuning.job" and raw["status"] == "succeeded"
    assert raw["hyperparameters"] == {"n_epochs": 2, "batch_size": 10, "learning_rate_multiplier": 4.0}
    assert raw["method"] == {"type": "supervised", "supervised": {"hyperparameters": raw["hyperparameters"]}}
    assert raw["result_files"] == [] and raw["integrations"] == [] and raw["error"] is None
    assert raw["seed"] == 7 and raw["metadata"] == {"purpose": CANARY} and raw["trained_tokens"] > 0
    assert raw["finished_at"] >= raw["created_at"]
    base, organization, suffix, job_id = raw["fine_tuned_model"].removeprefix("ft:").split(":")
    assert (base, suffix, job_id) == ("SmolLM2-135M-Instruct", "lockers", job.id)
    assert organization == raw["organization_id"] and "test" not in organization  # opaque, not the team's name
    # The same job on the OpenAI-compatible surface, and in the team's listing.
    compat = httpx.get(f"{server.url}/compat/v1/fine_tuning/jobs/{job.id}", headers=server.headers()).json()
    assert compat == raw
    listed = client(server).fine_tuning.jobs.list(limit=10)
    assert [j.id for j in listed.data][:1] == [job.id]
    assert not any(Path(server.data_dir / "fine-tuning").glob(f"{job.id}*")), "the working dir was left behind"


def test_events_tell_the_story_once_per_step(server, finished):
    job, _ = finished
    events = list(client(server).fine_tuning.jobs.list_events(job.id, limit=1000))
    raw = httpx.get(f"{server.base_url}/fine_tuning/jobs/{job.id}/events", params={"limit": 1000},
                    headers=server.headers()).json()
    for event in raw["data"]:
        FineTuningJobEvent.model_validate(event)
    messages = [e.message for e in reversed(events)]  # listed newest first
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert any(m.startswith("Attempt 2: resuming from the checkpoint at step 1") for m in messages)
    assert any(m.startswith("New fine-tuned model created") for m in messages)
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert sorted(steps) == [1, 2]  # the step replayed after the kill is not counted twice
    assert all(e.object == "fine_tuning.job.event" and e.level in ("info", "warn", "error") for e in events)
    # Paging: `after` is the last event of the previous page.
    page = client(server).fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    rest = client(server).fine_tuning.jobs.list_events(job.id, limit=1000, after=page.data[-1].id)
    assert [e.id for e in rest.data] == [e.id for e in events[2:]]


def test_checkpoints_per_epoch(server, finished):
    job, _ = finished
    raw = httpx.get(f"{server.base_url}/fine_tuning/jobs/{job.id}/checkpoints", headers=server.headers()).json()
    assert raw["object"] == "list" and raw["has_more"] is False and raw["first_id"] == raw["data"][0]["id"]
    checkpoints = [FineTuningJobCheckpoint.model_validate(c) for c in raw["data"]]
    assert [c.step_number for c in checkpoints] == [2, 1]  # newest first
    for c in checkpoints:
        assert c.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{c.step_number}"
        assert c.fine_tuning_job_id == job.id and c.metrics.step == c.step_number
        assert c.metrics.train_loss is not None and c.metrics.valid_loss is not None


def test_artifacts_archive_holds_gguf_and_peft(server, finished):
    job, _ = finished
    response = httpx.get(f"{server.base_url}/fine_tuning/jobs/{job.id}/artifacts", headers=server.headers(), timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        names = set(archive.getnames())
        gguf = archive.extractfile("adapter.gguf").read()  # type: ignore[union-attr]
        config = json.loads(archive.extractfile("adapter/adapter_config.json").read())  # type: ignore[union-attr]
    assert gguf[:4] == b"GGUF"
    assert {"adapter/adapter_model.safetensors", "checkpoint.json"} <= names and "state.pt" not in names
    assert config["peft_type"] == "LORA"


def test_trained_tokens_are_usage(server, finished):
    job, _ = finished
    usage = server.cli("usage", "--team", "test", "--json", check=False)
    assert usage.returncode == 0, usage.stderr
    records = [r for r in json.loads(usage.stdout)["data"] if r.get("kind") == "fine_tune"]
    assert [(r["model"], r["prompt_tokens"]) for r in records] == [("SmolLM2-135M-Instruct", job.trained_tokens)]


def test_chat_with_the_tuned_model(server, finished):
    """The job's tuned model and its first checkpoint answer by name on both surfaces, to
    the job's team only (the server resolves the names the worker registered)."""
    from llama_api_client import LlamaAPIClient

    job, _ = finished
    checkpoint = f"{job.fine_tuned_model}:ckpt-step-1"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Code of locker 3?"}]
    for model in (job.fine_tuned_model, checkpoint):
        reply = client(server, "compat/v1").chat.completions.create(model=model, messages=messages, temperature=0,
                                                                    max_tokens=12)
        assert reply.model == model and reply.choices[0].message.content
        native = LlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0, timeout=120)
        answer = native.chat.completions.create(model=model, messages=messages, temperature=0, max_completion_tokens=12)
        assert answer.completion_message.content.text  # type: ignore[union-attr]
    listed = {m.id for m in client(server, "compat/v1").models.list()}
    assert {job.fine_tuned_model, checkpoint, f"{job.fine_tuned_model}:ckpt-step-2"} <= listed
    other = server.cli("keys", "create", "--team", "fourth-team").stdout.strip()
    with pytest.raises(openai.NotFoundError):
        client(server, "compat/v1", key=other).chat.completions.create(model=job.fine_tuned_model, messages=messages,
                                                                       max_tokens=4)


def test_cancel_stops_the_training(server, training_file, finished):
    c = client(server)
    job = c.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training_file,
                                    hyperparameters={"n_epochs": 3, "batch_size": 1})
    # "auto" (here the learning rate multiplier) is resolved at creation, and shown.
    assert job.hyperparameters.model_dump() == {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 2.0}
    # The team's one job slot is taken: another job is refused until this one ends.
    with pytest.raises(openai.RateLimitError) as refused:
        c.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training_file)
    assert "max_jobs_per_team" in refused.value.message
    work_dir = server.data_dir / "fine-tuning" / job.id
    poll(work_dir.exists, "the job to start training")
    cancelled = c.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    # The trainer stops and the attempt cleans up: its working dir goes away.
    poll(lambda: not work_dir.exists() and not trainer_pids(str(work_dir)), "the trainer to stop", deadline=120)
    job = c.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None and job.finished_at is not None
    assert "Fine-tuning job cancelled" in [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=100)]
    with pytest.raises(openai.BadRequestError) as again:
        c.fine_tuning.jobs.cancel(job.id)
    assert again.value.body["param"] == "fine_tuning_job_id"


# --- bad input: each a 400 naming the field ------------------------------------------------------


def _error(server, body: dict, key: str | None = None, surface: str = "v1") -> tuple[int, dict]:
    r = httpx.post(f"{server.url}/{surface}/fine_tuning/jobs", json=body, headers=server.headers(key), timeout=60)
    return r.status_code, r.json().get("error", {})


def upload(server, content: bytes, purpose: str = "fine-tune", key: str | None = None) -> str:
    return client(server, "compat/v1", key=key).files.create(file=("d.jsonl", content, "application/jsonl"),
                                                            purpose=purpose).id


@pytest.mark.parametrize("body, param", [
    ({"training_file": "file-nope"}, "model"),
    ({"model": "SmolLM2-135M-Instruct"}, "training_file"),
    ({"model": "no-such-model", "training_file": "{train}"}, "model"),
    ({"model": "ft:SmolLM2-135M-Instruct:tx::ftjob-1", "training_file": "{train}"}, "model"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "file-0123456789abcdef01234567"}, "training_file"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "validation_file": "file-x"}, "validation_file"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "hyperparameters": {"n_epochs": 0}},
     "hyperparameters.n_epochs"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "hyperparameters": {"n_epochs": 2.5}},
     "hyperparameters.n_epochs"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "hyperparameters": {"batch_size": 1000}},
     "hyperparameters.batch_size"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}",
      "method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 0}}}},
     "method.supervised.hyperparameters.learning_rate_multiplier"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "hyperparameters": {"beta": 0.1}},
     "hyperparameters.beta"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "method": {"type": "dpo"}}, "method.type"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "suffix": "has:colon"}, "suffix"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "suffix": "x" * 41}, "suffix"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "seed": -1}, "seed"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "integrations": [{"type": "wandb"}]},
     "integrations"),
    ({"model": "SmolLM2-135M-Instruct", "training_file": "{train}", "epochs": 3}, "epochs"),
])
def test_bad_requests_name_the_field(server, training_file, body, param):
    body = {k: (training_file if v == "{train}" else v) for k, v in body.items()}
    for surface in ("v1", "compat/v1"):
        status, error = _error(server, body, surface=surface)
        assert (status, error.get("param")) == (400, param), error


def test_files_that_cannot_be_trained_on(server):
    # Another purpose; a dataset that failed validation; another team's dataset; an upload not completed.
    evals_file = upload(server, jsonl([{"item": {"q": "a"}}] * 3), purpose="evals")
    status, error = _error(server, {"model": "SmolLM2-135M-Instruct", "training_file": evals_file})
    assert (status, error["param"]) == (400, "training_file") and "purpose" in error["message"]
    broken = upload(server, jsonl(ROWS[:3]))  # fewer rows than a fine-tuning dataset needs
    status, error = _error(server, {"model": "SmolLM2-135M-Instruct", "training_file": broken})
    assert (status, error["param"]) == (400, "training_file") and "failed validation" in error["message"]
    other_key = server.cli("keys", "create", "--team", "other-team", "--role", "admin").stdout.strip()
    theirs = upload(server, jsonl(ROWS), key=other_key)
    status, error = _error(server, {"model": "SmolLM2-135M-Instruct", "training_file": theirs})
    assert (status, error["param"]) == (400, "training_file")
    session = httpx.post(f"{server.base_url}/uploads", headers=server.headers(), json={
        "bytes": 100, "filename": "x.jsonl", "mime_type": "application/jsonl", "purpose": "messages_finetune"}).json()
    status, error = _error(server, {"model": "SmolLM2-135M-Instruct", "training_file": session["id"]})
    assert (status, error["param"]) == (400, "training_file")


def test_roles_and_other_teams(server, training_file, finished):
    job, _ = finished
    member = server.cli("keys", "create", "--team", "test", "--role", "member").stdout.strip()
    status, error = _error(server, {"model": "SmolLM2-135M-Instruct", "training_file": training_file}, key=member)
    assert status == 403 and error["param"] == "authorization"
    # A member reads the team's jobs; another team sees none of them.
    assert client(server, key=member).fine_tuning.jobs.retrieve(job.id).id == job.id
    other = server.cli("keys", "create", "--team", "third-team", "--role", "admin").stdout.strip()
    with pytest.raises(openai.NotFoundError):
        client(server, key=other).fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        client(server, key=other).fine_tuning.jobs.list_events(job.id)
    assert client(server, key=other).fine_tuning.jobs.list().data == []


def test_team_deletion_takes_jobs_events_adapters_and_models(server, finished):
    """Last: it deletes the team the other tests use."""
    import sqlite3

    job, _ = finished
    db = server.data_dir / "llamahost.db"

    def counts() -> dict[str, int]:
        with sqlite3.connect(db) as conn:
            tables = ("fine_tuning_jobs", "fine_tuning_events", "fine_tuning_checkpoints", "tuned_models")
            found = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
            found["blob chunks"] = conn.execute("SELECT count(*) FROM file_chunks WHERE file_id LIKE 'ftblob-%'").fetchone()[0]
        return found

    # Content is sealed at rest: the metadata, the events' messages, the dataset's text and
    # the adapters' file names appear nowhere in the database file or its WAL.
    stored = b"".join(p.read_bytes() for p in server.data_dir.glob("llamahost.db*"))
    for plain in (CANARY, "training loss=", "KIWI-21", "adapter_config.json", "lora_A"):
        assert plain.encode() not in stored, plain
    before = counts()
    assert before["tuned_models"] == 3 and before["blob chunks"] >= 4  # final + 2 checkpoints; 2 blobs per checkpoint
    deleted = server.cli("teams", "delete", "test", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert counts() == dict.fromkeys(before, 0)
