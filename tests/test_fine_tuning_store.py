"""The fine-tuning store on SQLite and PostgreSQL, without training: event numbering under
concurrent writers, paging, a resumed run's metrics replaced, checkpoints once per epoch,
conditional status moves, tuned models as the serving side reads them (adapters as
sealed blobs in the files backend), another team seeing nothing, team deletion, and
content sealed in the rows; which models the local backends can tune."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from conftest import opened_stores
from llamahost.config import ModelConfig, load_config
from llamahost.errors import InvalidRequest
from llamahost.files.service import open_files
from llamahost.files.storage import MissingChunk
from llamahost.fine_tuning.service import (
    TunedModels,
    auto_hyperparameters,
    checkpoint_model_id,
    open_fine_tuning,
    tuned_model_id,
)
from llamahost.fine_tuning.store import (
    ACTIVE,
    CANCELLED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Blob,
    FineTuningStore,
    NewEvent,
)
from llamahost.finetune.backends import base_model_path
from llamahost.jobs.service import open_jobs
from llamahost.tenancy.stores import open_stores

SECRET = "CANARY-metadata-7f3a"


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path, monkeypatch):
    with opened_stores(request.param, tmp_path, monkeypatch, "llh_ftst") as stores:
        team, _ = stores.teams.ensure("t")
        other, _ = stores.teams.ensure("u")
        files = open_files(stores.config, stores.db, stores.keyring)
        yield FineTuningStore(stores.db, stores.keyring), files, stores, team, other


def _job(store: FineTuningStore, team: int) -> str:
    return store.create_job(team, None, model="base", training_file="file-a", validation_file=None,
                            hyperparameters={"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.0}, seed=1,
                            suffix="s", metadata={"k": SECRET})


def test_events_are_numbered_once_under_concurrent_writers(env):
    store, _, _, team, other = env
    job_id = _job(store, team)
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            for i in range(10):
                store.add_events(job_id, team, [NewEvent(f"{name} {i}")])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    events = store.list_events(team, job_id, after=None, limit=100)
    assert [e.seq for e in events] == list(range(30, 0, -1))  # newest first, no gap, no repeat
    page = store.list_events(team, job_id, after=events[9].id, limit=5)
    assert [e.seq for e in page] == [20, 19, 18, 17, 16]
    with pytest.raises(Exception, match="no fine-tuning job"):
        store.list_events(other, job_id, after=None, limit=10)


def test_a_resumed_run_replaces_the_metrics_it_replays(env):
    store, _, _, team, _ = env
    job_id = _job(store, team)
    store.add_events(job_id, team, [NewEvent(f"step {s}", type="metrics", data={"step": s}) for s in (1, 2, 3)])
    store.forget_metrics_after(job_id, 1)
    store.add_events(job_id, team, [NewEvent(f"step {s} again", type="metrics", data={"step": s}) for s in (2, 3)])
    metrics = [e for e in store.list_events(team, job_id, after=None, limit=100) if e.type == "metrics"]
    assert sorted((e.data["step"], e.message) for e in metrics) == [(1, "step 1"), (2, "step 2 again"), (3, "step 3 again")]


def test_status_moves_only_from_what_they_expect(env):
    store, _, _, team, _ = env
    job_id = _job(store, team)
    assert store.get_job(team, job_id).status == QUEUED
    assert store.transition(job_id, RUNNING, only_from=ACTIVE)
    assert store.transition(job_id, CANCELLED, only_from=ACTIVE)
    job = store.get_job(team, job_id)
    assert not store.succeed(job, "ft:x", 10, [])  # cancelled meanwhile: not succeeded after all
    assert store.get_job(team, job_id).status == CANCELLED and store.get_job(team, job_id).finished_at is not None
    assert store.count_active(team) == 0


def test_tuned_models_and_their_adapters(env):
    store, files, stores, team, other = env
    job_id = _job(store, team)
    store.transition(job_id, RUNNING, only_from=ACTIVE)
    job = store.get_job(team, job_id)
    final = tuned_model_id("base", stores.keyring.team_opaque_id(team), "s", job_id)
    for epoch in (1, 2):
        blobs = []
        for kind in ("gguf", "tar"):
            blob_id = f"ftblob-{epoch}{kind}"
            # Two chunks and a bit: chunking and order are exercised.
            size, chunks = files.put_blob(team, blob_id, [bytes([epoch]) * (1024 * 1024), b"GGUF" * (300 * 1024)])
            blobs.append(Blob(blob_id, chunks, size))
        assert store.add_checkpoint(job, epoch=epoch, step=epoch, trained_tokens=10 * epoch,
                                    model_id=checkpoint_model_id(final, epoch), metrics={"train_loss": 1.0 / epoch},
                                    gguf=blobs[0], archive=blobs[1])
    assert not store.add_checkpoint(job, epoch=2, step=2, trained_tokens=20, model_id="dup", metrics={},
                                    gguf=Blob("x", 1, 1), archive=Blob("y", 1, 1))
    checkpoints = store.checkpoints(job_id)
    assert [c.epoch for c in checkpoints] == [2, 1] and checkpoints[0].metrics == {"train_loss": 0.5}
    assert store.succeed(job, final, 20, [(final, checkpoints[0].id)] + [(c.model_id, c.id) for c in checkpoints])
    assert store.get_job(team, job_id).status == SUCCEEDED

    models = TunedModels(store, files)
    assert [m.id for m in models.list(team)] == sorted([final, f"{final}:ckpt-step-1", f"{final}:ckpt-step-2"])
    assert models.list(other) == [] and models.get(other, final) is None
    assert [m.team_id for m in models.all_for_base("base")] == [team] * 3
    model = models.get(team, final)
    assert model is not None and model.base_model == "base" and model.job_id == job_id
    assert models.adapter_gguf(model) == b"\x02" * (1024 * 1024) + b"GGUF" * (300 * 1024)
    # The final model and the last checkpoint share an adapter: it stays until both are gone.
    assert not models.delete(other, final)
    assert models.delete(team, final)
    last = models.get(team, f"{final}:ckpt-step-2")
    assert last is not None and models.adapter_gguf(last)
    assert models.delete(team, f"{final}:ckpt-step-2")
    assert not models.delete(team, f"{final}:ckpt-step-2")  # gone already
    assert store.checkpoint(checkpoints[0].id).gguf is None  # type: ignore[union-attr]
    with pytest.raises(MissingChunk):  # the chunks are gone from the files backend
        list(files.read_blob(team, "ftblob-2gguf", 2))

    # Sealed in the rows: the metadata's canary appears nowhere in clear.
    with stores.db.session() as s:
        raw = s.execute(text("SELECT metadata_sealed FROM fine_tuning_jobs")).scalars().all()
        chunks = s.execute(text("SELECT data FROM file_chunks")).scalars().all()
    assert raw and all(SECRET.encode() not in bytes(b) for b in raw)
    assert chunks and all(b"GGUF" not in bytes(c) for c in chunks)
    assert store.get_job(team, job_id).metadata == {"k": SECRET}

    assert store.delete_team(team) == {"fine_tuning_jobs": 1}
    files.delete_team(team)
    assert models.all_for_base("base") == [] and store.checkpoints(job_id) == []
    with stores.db.session() as s:
        assert s.execute(text("SELECT count(*) FROM file_chunks")).scalar() == 0


def test_embedded_models_and_upstream_ones_with_hf_weights_can_be_tuned():
    upstream = ModelConfig(id="big", engine="openai", replicas=["http://10.0.0.5:8000/v1"])
    with pytest.raises(InvalidRequest) as refused:
        base_model_path(upstream)
    assert refused.value.param == "model" and "upstream" in refused.value.message and "hf_weights" in refused.value.message
    assert base_model_path(ModelConfig(id="small")) == "bundled"
    with_weights = ModelConfig(id="big", engine="openai", replicas=["http://10.0.0.5:8000/v1"], hf_weights="/models/big")
    assert base_model_path(with_weights) == "/models/big"
    assert auto_hyperparameters(10) == {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 2.0}
    assert auto_hyperparameters(1000)["batch_size"] == 8


def test_adapter_blobs_on_an_s3_backend(tmp_path, monkeypatch):
    """Checkpoints go to whichever files backend is configured: here a real S3-compatible
    server (moto's server mode); sealed objects under the team's prefix, gone with the team."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    from conftest import free_port

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        bucket = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                              aws_secret_access_key="s")
        bucket.create_bucket(Bucket="llamahost-ft")
        monkeypatch.setenv("LLAMAHOST_S3_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("LLAMAHOST_S3_SECRET_ACCESS_KEY", "s")
        config = tmp_path / "llamahost.toml"
        config.write_text(f'[files]\nbackend = "s3"\n[files.s3]\nendpoint_url = "{endpoint}"\nbucket = "llamahost-ft"\n'
                          'region = "us-east-1"\nprefix = "llh/"\n')
        stores = open_stores(load_config(config, data_dir=tmp_path / "data"))
        team, _ = stores.teams.ensure("t")
        files = open_files(stores.config, stores.db, stores.keyring)
        data = b"GGUF" + bytes(range(256)) * 5000  # two chunks
        assert files.put_blob(team, "ftblob-s3", [data[:1000], data[1000:]]) == (len(data), 2)
        keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="llamahost-ft").get("Contents", [])]
        assert len(keys) == 2 and all(k.startswith(f"llh/{team}/ftblob-s3/") for k in keys)
        assert all(b"GGUF" not in bucket.get_object(Bucket="llamahost-ft", Key=k)["Body"].read() for k in keys)
        assert b"".join(files.read_blob(team, "ftblob-s3", 2)) == data
        files.delete_team(team)
        assert bucket.list_objects_v2(Bucket="llamahost-ft").get("KeyCount") == 0
        stores.db.close()
    finally:
        moto.stop()


def test_a_job_the_queue_gave_up_on_is_failed_not_left_running(env):
    """Its last worker killed: the queue fails the queue job; reading the fine-tuning job
    (or creating another, which counts the team's active ones) fails it too."""
    from llamahost.fine_tuning import runner

    store, files, stores, team, _ = env
    jobs = open_jobs(stores, (runner.register,))
    service = open_fine_tuning(stores, files, jobs.queue)
    job_id = _job(store, team)
    queue_job = jobs.queue.enqueue("fine_tune", {"fine_tuning_job_id": job_id}, team_id=team)
    store.set_queue_job(job_id, queue_job)
    store.transition(job_id, RUNNING, only_from=ACTIVE)
    for attempt in range(stores.config.fine_tuning.max_attempts):
        claimed = jobs.queue.claim(f"w{attempt}", ["fine_tune"], 30)
        assert claimed is not None and claimed.id == queue_job
        assert service.get_job(team, job_id)["status"] == "running"  # still retrying
        jobs.queue.fail(queue_job, f"w{attempt}", "the worker running it stopped renewing its lease", 0)
    assert store.count_active(team) == 1  # nobody has looked yet
    job = service.get_job(team, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "training_interrupted"
    assert "stopped renewing its lease" in job["error"]["message"] and job["finished_at"] is not None
    assert store.count_active(team) == 0
