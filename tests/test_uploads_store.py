"""The file service on a real database (SQLite and PostgreSQL), below HTTP: two parts
racing for one offset cannot both land (compare-and-set), a chunk swapped or moved in
storage does not open (each is bound to its file id and index), and the purge expires
idle sessions."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import pytest
from sqlalchemy import select, update

from conftest import postgres_env, postgres_schema
from llamahost.config import FilesConfig
from llamahost.errors import Conflict
from llamahost.files.protocol import UploadCreate
from llamahost.files.service import FileService
from llamahost.files.storage import DatabaseChunks
from llamahost.store.crypto import CryptoError
from llamahost.store.keyring import open_store
from llamahost.store.models import FileChunk, FilePart
from llamahost.tenancy.teams import TeamStore


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, tmp_path, monkeypatch):
    for name in ("LLAMAHOST_MASTER_KEY", "LLAMAHOST_MASTER_KEY_FILE", "LLAMAHOST_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with ExitStack() as stack:
        if request.param == "postgresql":
            for name, value in postgres_env(stack.enter_context(postgres_schema("llh_files"))).items():
                monkeypatch.setenv(name, value)
        db, keyring = open_store(tmp_path)
        team_id, _ = TeamStore(db, keyring).ensure("team")
        yield FileService(db, keyring, DatabaseChunks(db), FilesConfig()), team_id
        db.close()


def _write(writer, data: bytes) -> None:
    for chunk in writer.feed(data):
        writer.store(chunk)
    writer.finish()


def _session(files: FileService, team_id: int, size: int):
    body = UploadCreate(bytes=size, filename="f.txt", mime_type="text/plain", purpose="attachment")
    return files.create_session(team_id, None, body)


def test_two_parts_racing_for_one_offset_cannot_both_land(service):
    files, team_id = service
    session = _session(files, team_id, 20)
    first_session, first = files.begin_part(team_id, session.id, 0)
    second_session, second = files.begin_part(team_id, session.id, 0)  # both passed the offset check
    _write(first, b"a" * 10)
    _write(second, b"b" * 10)
    # Both commit at once (threads released together): the database's compare-and-set
    # on the offset lets exactly one through.
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def commit(name, part_session, writer):
        barrier.wait()
        try:
            outcomes[name] = files.commit_part(part_session, writer)
        except Conflict as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=commit, args=args) for args in
               (("first", first_session, first), ("second", second_session, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    conflicts = [o for o in outcomes.values() if isinstance(o, Conflict)]
    assert len(conflicts) == 1, outcomes
    assert conflicts[0].details == {"offset": 10} and conflicts[0].status_code == 409
    winner_bytes = b"a" * 10
    if isinstance(outcomes["first"], Conflict):  # name the winner "first" for what follows
        first, second, winner_bytes = second, first, b"b" * 10
    with files.db.session() as s:  # the loser's chunks are gone, only the winner's part counts
        assert s.scalars(select(FileChunk.attempt)).all() == [first.attempt]
        assert s.scalars(select(FilePart.attempt)).all() == [first.attempt]
    last_session, last = files.begin_part(team_id, session.id, 10)
    _write(last, b"c" * 10)
    outcome = files.commit_part(last_session, last)
    assert outcome.file_id and outcome.offset == 20
    view, stream = files.content(team_id, outcome.file_id)
    assert b"".join(stream) == winner_bytes + b"c" * 10 and view.status == "processed"


def test_a_swapped_chunk_does_not_open(service, monkeypatch):
    import llamahost.files.service as service_module

    monkeypatch.setattr(service_module, "CHUNK_BYTES", 4)  # several chunks from a few bytes
    files, team_id = service
    session = _session(files, team_id, 12)
    part_session, writer = files.begin_part(team_id, session.id, 0)
    _write(writer, b"aaaabbbbcccc")
    file_id = files.commit_part(part_session, writer).file_id
    assert b"".join(files.content(team_id, file_id)[1]) == b"aaaabbbbcccc"
    with files.db.session() as s:
        blobs = dict(s.execute(select(FileChunk.seq, FileChunk.data)).all())
        s.execute(update(FileChunk).where(FileChunk.seq == 0).values(data=blobs[1]))
        s.execute(update(FileChunk).where(FileChunk.seq == 1).values(data=blobs[0]))
    with pytest.raises(CryptoError, match="chunk 0"):
        b"".join(files.content(team_id, file_id)[1])


def test_the_purge_expires_idle_sessions_and_keeps_files(service):
    from datetime import UTC, datetime, timedelta

    files, team_id = service
    abandoned = _session(files, team_id, 20)
    part_session, writer = files.begin_part(team_id, abandoned.id, 0)
    _write(writer, b"x" * 10)
    files.commit_part(part_session, writer)
    done = _session(files, team_id, 4)
    part_session, writer = files.begin_part(team_id, done.id, 0)
    _write(writer, b"kept")
    file_id = files.commit_part(part_session, writer).file_id
    assert files.purge()["sessions"] == 0  # nothing is idle yet
    counts = files.purge(datetime.now(UTC) + timedelta(hours=25))
    assert counts["sessions"] == 2 and counts["files"] == 0  # no retention_days: files stay
    with files.db.session() as s:
        assert s.scalars(select(FileChunk.file_id)).all() == [file_id]  # the abandoned part's chunks are gone
    assert b"".join(files.content(team_id, file_id)[1]) == b"kept"
    files.config = files.config.model_copy(update={"retention_days": 1})
    assert files.purge(datetime.now(UTC) + timedelta(days=2))["files"] == 1
    with files.db.session() as s:
        assert s.scalars(select(FileChunk.file_id)).all() == []


def test_chunks_of_a_part_cut_off_by_a_crash_are_deleted_at_completion(service):
    files, team_id = service
    session = _session(files, team_id, 10)
    _, crashed = files.begin_part(team_id, session.id, 0)
    _write(crashed, b"z" * 10)  # stored, never committed: the server died here
    part_session, writer = files.begin_part(team_id, session.id, 0)
    _write(writer, b"y" * 10)
    file_id = files.commit_part(part_session, writer).file_id
    with files.db.session() as s:
        assert s.scalars(select(FileChunk.attempt)).all() == [writer.attempt]
    assert b"".join(files.content(team_id, file_id)[1]) == b"y" * 10


def test_the_team_quota_counts_files_and_open_uploads(service):
    from llamahost.errors import InvalidRequest

    files, team_id = service
    files.config = files.config.model_copy(update={"team_quota_bytes": 100})
    _session(files, team_id, 60)
    with pytest.raises(InvalidRequest) as raised:
        _session(files, team_id, 50)
    assert raised.value.code == "storage_quota_exceeded" and raised.value.param == "bytes"
    _session(files, team_id, 40)
