"""Uploads and files: resumable sessions, encrypted chunked storage, completion checks.

A file's bytes are sealed in chunks of at most ``CHUNK_BYTES`` under its team's data
key, each bound to (file id, chunk index): a chunk moved to another file or position
does not open. Metadata (sessions, committed parts, files) lives in the database, which
replicas share; the chunks live in a ``ChunkStore`` (the database or an S3 bucket).

A part is written under a fresh ``attempt`` and becomes part of the file only when
``commit_part`` moves the session's offset from the part's start to its end in one
compare-and-set UPDATE; a part racing it for the same offset (on this replica or
another) finds the offset moved, has its chunks deleted and gets a 409.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update

from ..config import Config, FilesConfig
from ..errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from ..store.crypto import CryptoError, key_version, open_sealed
from ..store.db import Database, affected_rows, aware_utc
from ..store.keyring import Keyring, Sealed
from ..store.models import FilePart, StoredFile, Team, UploadSession
from .datasets import check_dataset
from .protocol import DATASET_PURPOSES, MIMES_FOR_PURPOSE, UploadCreate
from .storage import ChunkRef, ChunkStore, DatabaseChunks, MissingChunk, S3Chunks, S3Settings

log = logging.getLogger(__name__)

# Plaintext per sealed chunk: large enough that the 28 bytes of framing and one row or
# object per chunk cost little, small enough that a part in flight holds one in memory.
CHUNK_BYTES = 1024 * 1024
CHUNKS = "file_chunks"  # the table name bound into every chunk's associated data
BLOBS = "blobs"  # bound into the chunks of internal blobs instead
BLOB_ATTEMPT = "blob"  # a blob is written once, whole: one attempt


def _now() -> datetime:
    return datetime.now(UTC)


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def filename_place(file_id: str) -> Sealed:
    return Sealed("files", file_id, "filename")


def sha256_place(file_id: str) -> Sealed:
    return Sealed("files", file_id, "sha256")


@dataclass(frozen=True)
class SessionView:
    id: str
    file_id: str
    team_id: int
    bytes: int
    filename: str
    mime_type: str
    purpose: str
    offset: int
    chunks: int
    completed: bool


@dataclass(frozen=True)
class FileView:
    id: str
    team_id: int
    bytes: int
    created_at: datetime
    filename: str
    mime_type: str
    purpose: str
    surface: str
    sha256: str | None
    status: str
    status_details: str | None


@dataclass(frozen=True)
class PartOutcome:
    upload_id: str
    offset: int
    file_id: str | None  # when this part completed the upload


class PartWriter:
    """One part being received: buffers at most one chunk of plaintext, seals and stores
    each full chunk (``store`` is blocking: call it off the event loop)."""

    def __init__(self, service: FileService, team_id: int, file_id: str, start: int, first_chunk: int, limit: int):
        self.service = service
        self.team_id = team_id
        self.file_id = file_id
        self.attempt = secrets.token_hex(8)
        self.start = start
        self.first_chunk = first_chunk
        self.limit = limit  # bytes this part may carry before it overruns the file
        self.length = 0
        self.chunks = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Take bytes as they arrive; returns the full chunks now ready to store."""
        self.length += len(data)
        if self.length > self.limit:
            raise self.service.overrun(self)
        self._buffer.extend(data)
        ready = []
        while len(self._buffer) >= CHUNK_BYTES:
            ready.append(bytes(self._buffer[:CHUNK_BYTES]))
            del self._buffer[:CHUNK_BYTES]
        return ready

    def store(self, plaintext: bytes) -> None:
        index = self.first_chunk + self.chunks
        blob = self.service.keyring.seal(self.team_id, plaintext, Sealed(CHUNKS, self.file_id, str(index)))
        self.service.chunks.put(ChunkRef(self.team_id, self.file_id, self.attempt, self.chunks), blob)
        self.chunks += 1

    def finish(self) -> None:
        if self._buffer:
            self.store(bytes(self._buffer))
            self._buffer.clear()

    def abort(self) -> None:
        self._buffer.clear()
        if self.chunks:
            try:
                self.service.chunks.delete_attempt(self.team_id, self.file_id, self.attempt)
            except Exception:  # left for the session's expiry or the file's deletion
                log.exception("could not delete the chunks of an aborted part of %s", self.file_id)


class FileService:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        chunks: ChunkStore,
        config: FilesConfig,
        quota: Callable[[int], int | None] | None = None,
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.chunks = chunks
        self.config = config
        # A team's storage quota (its setting, defaulting to [files] team_quota_bytes).
        self._quota = quota

    # --- sessions -----------------------------------------------------------------------

    def create_session(self, team_id: int, key_id: str | None, body: UploadCreate) -> SessionView:
        allowed = MIMES_FOR_PURPOSE[body.purpose]
        if body.mime_type not in allowed:
            raise InvalidRequest(
                f"mime_type {body.mime_type!r} does not fit purpose {body.purpose!r} (it takes {', '.join(allowed)})",
                param="mime_type",
            )
        if body.bytes > self.config.max_bytes:
            raise InvalidRequest(
                f"bytes: {body.bytes} exceeds the largest file accepted, {self.config.max_bytes} bytes", param="bytes"
            )
        self._check_quota(team_id, body.bytes)
        upload_id, file_id, now = _id("upload"), _id("file"), _now()
        with self.db.session() as s:
            s.add(
                UploadSession(
                    id=upload_id,
                    file_id=file_id,
                    team_id=team_id,
                    key_id=key_id,
                    filename_sealed=self.keyring.seal(team_id, body.filename, filename_place(file_id)),
                    size=body.bytes,
                    mime_type=body.mime_type,
                    purpose=body.purpose,
                    received=0,
                    chunks=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        return SessionView(upload_id, file_id, team_id, body.bytes, body.filename, body.mime_type, body.purpose, 0, 0, False)

    def quota(self, team_id: int) -> int | None:
        return self._quota(team_id) if self._quota is not None else self.config.team_quota_bytes

    def _check_quota(self, team_id: int, more: int) -> None:
        quota = self.quota(team_id)
        if quota is None:
            return
        used = self.stored_bytes(team_id)
        with self.db.session() as s:
            pending = s.scalar(
                select(func.coalesce(func.sum(UploadSession.size), 0)).where(
                    UploadSession.team_id == team_id, UploadSession.completed_at.is_(None)
                )
            )
        pending = pending or 0
        if used + pending + more > quota:
            raise InvalidRequest(
                f"bytes: the team's files would exceed its storage quota of {quota} bytes "
                f"({used} stored, {pending} in open uploads)",
                param="bytes",
                code="storage_quota_exceeded",
            )

    def session(self, team_id: int, upload_id: str) -> SessionView:
        with self.db.session() as s:
            row = s.scalar(select(UploadSession).where(UploadSession.id == upload_id, UploadSession.team_id == team_id))
        if row is None:
            raise NotFound(f"no upload {upload_id!r}", param="upload_id")
        return SessionView(
            row.id, row.file_id, row.team_id, row.size,
            self.keyring.open(team_id, row.filename_sealed, filename_place(row.file_id)),
            row.mime_type, row.purpose, row.received, row.chunks, row.completed_at is not None,
        )

    def open_sessions(self, team_id: int) -> list[tuple[SessionView, datetime, datetime]]:
        """The team's unfinished uploads, newest first, with when each started and when it
        expires unless a part arrives."""
        with self.db.session() as s:
            rows = s.scalars(
                select(UploadSession)
                .where(UploadSession.team_id == team_id, UploadSession.completed_at.is_(None))
                .order_by(UploadSession.created_at.desc(), UploadSession.id.desc())
                .limit(1000)
            ).all()
        ttl = timedelta(hours=self.config.session_ttl_hours)
        return [
            (
                SessionView(
                    row.id, row.file_id, row.team_id, row.size,
                    self.keyring.open(team_id, row.filename_sealed, filename_place(row.file_id)),
                    row.mime_type, row.purpose, row.received, row.chunks, False,
                ),
                aware_utc(row.created_at),
                aware_utc(row.updated_at) + ttl,
            )
            for row in rows
        ]

    def cancel_session(self, team_id: int, upload_id: str) -> None:
        """Drop an unfinished upload and its stored parts (a completed one's file stays)."""
        session = self.session(team_id, upload_id)
        with self.db.session() as s:
            s.execute(delete(UploadSession).where(UploadSession.id == upload_id))
            if not session.completed:
                s.execute(delete(FilePart).where(FilePart.file_id == session.file_id))
        if not session.completed:
            self.chunks.delete_file(team_id, session.file_id)

    def begin_part(self, team_id: int, upload_id: str, offset: int | None) -> tuple[SessionView, PartWriter]:
        session = self.session(team_id, upload_id)
        if session.completed:
            raise Conflict(
                f"upload {upload_id} is complete (file {session.file_id}); it takes no more parts",
                code="upload_complete", param="upload_id", details={"offset": session.offset, "file_id": session.file_id},
            )
        if offset is not None and offset != session.offset:
            raise self.offset_conflict(upload_id, session.offset, f"X-Upload-Offset is {offset}")
        writer = PartWriter(self, team_id, session.file_id, session.offset, session.chunks, session.bytes - session.offset)
        return session, writer

    def overrun(self, writer: PartWriter) -> InvalidRequest:
        return InvalidRequest(
            f"data: the part overruns the upload: the file has {writer.start + writer.limit} bytes and this part, "
            f"starting at {writer.start}, carries more than {writer.limit}",
            param="data", code="upload_overrun",
        )

    @staticmethod
    def offset_conflict(upload_id: str, current: int, why: str) -> Conflict:
        return Conflict(
            f"{why}, but upload {upload_id} continues at offset {current}: resume from there",
            param="x-upload-offset", code="offset_mismatch", details={"offset": current},
            headers={"X-Upload-Offset": str(current)},
        )

    def commit_part(self, session: SessionView, writer: PartWriter) -> PartOutcome:
        """Make the stored part the session's next bytes (compare-and-set on the offset)."""
        if writer.length == 0:
            return PartOutcome(session.id, session.offset, None)
        end = writer.start + writer.length
        complete = end == session.bytes
        now = _now()
        with self.db.session() as s:
            moved = affected_rows(s.execute(
                update(UploadSession)
                .where(UploadSession.id == session.id, UploadSession.received == writer.start)
                .values(
                    received=end,
                    chunks=writer.first_chunk + writer.chunks,
                    updated_at=now,
                    completed_at=now if complete else None,
                )
            ))
            if moved == 1:
                s.add(
                    FilePart(
                        file_id=writer.file_id, start=writer.start, length=writer.length, attempt=writer.attempt,
                        first_chunk=writer.first_chunk, chunks=writer.chunks,
                    )
                )
                if complete:
                    row = s.get(UploadSession, session.id)
                    assert row is not None  # it was just updated in this transaction
                    s.add(self._file_row(row, "native", now))
        if moved != 1:
            writer.abort()
            current = self.session(session.team_id, session.id)
            raise self.offset_conflict(session.id, current.offset, f"another part reached offset {writer.start} first")
        if complete:
            self.finalize(session.team_id, writer.file_id)
        return PartOutcome(session.id, end, writer.file_id if complete else None)

    def _file_row(self, session: UploadSession, surface: str, now: datetime) -> StoredFile:
        return StoredFile(
            id=session.file_id, team_id=session.team_id, key_id=session.key_id, filename_sealed=session.filename_sealed,
            size=session.size, mime_type=session.mime_type, purpose=session.purpose, surface=surface,
            backend=self.chunks.name, status="processing", created_at=now,
        )

    # --- one-shot files (OpenAI's files.create) ----------------------------------------------

    def begin_oneshot(self, team_id: int) -> PartWriter:
        self._check_quota(team_id, 0)
        limit = self.config.max_bytes
        quota = self.quota(team_id)
        if quota is not None:
            limit = min(limit, quota - self.stored_bytes(team_id))
        return PartWriter(self, team_id, _id("file"), 0, 0, max(limit, 0))

    def oneshot_too_large(self, writer: PartWriter) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"file: larger than the {writer.limit} bytes accepted (max_bytes, or the team's storage quota left)",
            param="file",
        )

    def commit_oneshot(
        self, writer: PartWriter, *, key_id: str | None, filename: str, mime_type: str, purpose: str, surface: str
    ) -> FileView:
        if writer.length == 0:
            writer.abort()
            raise InvalidRequest("file: the file is empty", param="file")
        now = _now()
        with self.db.session() as s:
            s.add(
                FilePart(file_id=writer.file_id, start=0, length=writer.length, attempt=writer.attempt, first_chunk=0,
                         chunks=writer.chunks)
            )
            s.add(
                StoredFile(
                    id=writer.file_id, team_id=writer.team_id, key_id=key_id,
                    filename_sealed=self.keyring.seal(writer.team_id, filename, filename_place(writer.file_id)),
                    size=writer.length, mime_type=mime_type, purpose=purpose, surface=surface,
                    backend=self.chunks.name, status="processing", created_at=now,
                )
            )
        self.finalize(writer.team_id, writer.file_id)
        return self.get(writer.team_id, writer.file_id)

    # --- completion ---------------------------------------------------------------------------

    def finalize(self, team_id: int, file_id: str) -> None:
        """Hash the completed file and, for a dataset, check it: one streamed pass over
        the stored chunks (which also proves they open). Idempotent."""
        with self.db.session() as s:
            row = s.get(StoredFile, file_id)
        if row is None or row.team_id != team_id:
            return
        with self.db.session() as s:
            committed = set(s.scalars(select(FilePart.attempt).where(FilePart.file_id == file_id)))
        try:
            self.chunks.delete_other_attempts(team_id, file_id, committed)
        except Exception:  # only space is lost; the file's own chunks are untouched
            log.exception("could not delete the orphaned chunks of %s", file_id)
        digest = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for plaintext in self._plaintext(row):
                digest.update(plaintext)
                yield plaintext

        status, details = "processed", None
        sha: str | None = None
        try:
            stream = hashed()
            if row.purpose in DATASET_PURPOSES:
                report = check_dataset(stream, row.purpose, "compat" if row.surface == "compat" else "native")
                if not report.ok:
                    status, details = "error", report.details
            for _ in stream:  # the rest of the file, past a dataset's first error, still counts in the hash
                pass
            sha = digest.hexdigest()
        except (CryptoError, MissingChunk, IntegrityFailure) as exc:
            log.error("file %s does not read back: %s", file_id, exc)
            status, details = "error", f"the stored file does not read back: {exc}"
        with self.db.session() as s:
            s.execute(
                update(StoredFile)
                .where(StoredFile.id == file_id)
                .values(
                    status=status,
                    status_details=details,
                    sha256_sealed=self.keyring.seal(team_id, sha, sha256_place(file_id)) if sha else None,
                )
            )

    def _plaintext(self, row: StoredFile) -> Iterator[bytes]:
        """The file's bytes in order, chunk by chunk, each checked on opening."""
        with self.db.session() as s:
            parts = s.scalars(select(FilePart).where(FilePart.file_id == row.id).order_by(FilePart.start)).all()
        position = 0
        for part in parts:
            if part.start != position:
                raise IntegrityFailure(f"file {row.id}: a part starts at {part.start}, expected {position}")
            received = 0
            for seq in range(part.chunks):
                blob = self.chunks.get(ChunkRef(row.team_id, row.id, part.attempt, seq))
                plaintext = self._open_chunk(row.team_id, row.id, part.first_chunk + seq, blob)
                received += len(plaintext)
                yield plaintext
            if received != part.length:
                raise IntegrityFailure(f"file {row.id}: the part at {part.start} holds {received} bytes, not {part.length}")
            position += part.length
        if position != row.size:
            raise IntegrityFailure(f"file {row.id}: {position} bytes stored, not {row.size}")

    def _open_chunk(self, team_id: int, file_id: str, index: int, blob: bytes) -> bytes:
        key = self.keyring.data_key(team_id, key_version(blob))
        try:
            return open_sealed(key, blob, CHUNKS, file_id, index)
        except CryptoError as exc:
            raise CryptoError(f"file {file_id} chunk {index}: {exc}") from None

    # --- files -----------------------------------------------------------------------------------

    def _view(self, row: StoredFile) -> FileView:
        sha = None
        if row.sha256_sealed is not None:
            sha = self.keyring.open(row.team_id, row.sha256_sealed, sha256_place(row.id))
        return FileView(
            id=row.id, team_id=row.team_id, bytes=row.size, created_at=aware_utc(row.created_at),
            filename=self.keyring.open(row.team_id, row.filename_sealed, filename_place(row.id)),
            mime_type=row.mime_type, purpose=row.purpose, surface=row.surface, sha256=sha, status=row.status,
            status_details=row.status_details,
        )

    def _row(self, team_id: int, file_id: str) -> StoredFile:
        with self.db.session() as s:
            row = s.scalar(select(StoredFile).where(StoredFile.id == file_id, StoredFile.team_id == team_id))
        if row is None:
            raise NotFound(f"no file {file_id!r}", param="file_id")
        return row

    def get(self, team_id: int, file_id: str) -> FileView:
        return self._view(self._row(team_id, file_id))

    def list(
        self, team_id: int, *, purposes: tuple[str, ...] | None = None, limit: int = 100, after: str | None = None,
        order: str = "desc",
    ) -> tuple[list[FileView], bool]:
        """A page of the team's files, newest first (``order="asc"``: oldest first), and
        whether more follow; ``after`` is the last file id of the previous page."""
        conditions = [StoredFile.team_id == team_id]
        if purposes is not None:
            conditions.append(StoredFile.purpose.in_(purposes))
        newest_first = order == "desc"
        if after is not None:
            cursor = self._row(team_id, after)
            at = cursor.created_at
            if newest_first:
                conditions.append(or_(StoredFile.created_at < at, and_(StoredFile.created_at == at, StoredFile.id < after)))
            else:
                conditions.append(or_(StoredFile.created_at > at, and_(StoredFile.created_at == at, StoredFile.id > after)))
        ordering = (
            (StoredFile.created_at.desc(), StoredFile.id.desc()) if newest_first
            else (StoredFile.created_at.asc(), StoredFile.id.asc())
        )
        with self.db.session() as s:
            rows = s.scalars(select(StoredFile).where(*conditions).order_by(*ordering).limit(limit + 1)).all()
        return [self._view(row) for row in rows[:limit]], len(rows) > limit

    def content(self, team_id: int, file_id: str) -> tuple[FileView, Iterator[bytes]]:
        """The file and its bytes, decrypted chunk by chunk as they are sent; the stream
        fails (and the client's download is cut short) if they do not hash to the sha256
        recorded at completion."""
        row = self._row(team_id, file_id)
        view = self._view(row)

        def verified() -> Iterator[bytes]:
            digest = hashlib.sha256()
            for plaintext in self._plaintext(row):
                digest.update(plaintext)
                yield plaintext
            if view.sha256 is not None and digest.hexdigest() != view.sha256:
                raise IntegrityFailure(f"file {file_id}: content does not match its sha256")

        return view, verified()

    def head(self, team_id: int, file_id: str, limit_bytes: int) -> bytes:
        """The file's first ``limit_bytes`` (to show a dataset's first rows)."""
        row = self._row(team_id, file_id)
        out = bytearray()
        for plaintext in self._plaintext(row):
            out.extend(plaintext)
            if len(out) >= limit_bytes:
                break
        return bytes(out[:limit_bytes])

    def delete(self, team_id: int, file_id: str) -> None:
        row = self._row(team_id, file_id)
        with self.db.session() as s:
            s.execute(delete(StoredFile).where(StoredFile.id == file_id))
            s.execute(delete(FilePart).where(FilePart.file_id == file_id))
            s.execute(delete(UploadSession).where(UploadSession.file_id == file_id))
        self.chunks.delete_file(row.team_id, file_id)

    def stored_bytes(self, team_id: int) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.coalesce(func.sum(StoredFile.size), 0)).where(StoredFile.team_id == team_id)) or 0

    # --- internal blobs ---------------------------------------------------------------------------

    # Bytes other slices keep in the files backend without making them a team's file
    # (fine-tuning checkpoints and adapters): sealed in chunks like files, bound to (blob
    # id, chunk index), under the team's prefix, so team deletion frees them with the
    # team's files. The caller records the blob's id and chunk count.

    def put_blob(self, team_id: int, blob_id: str, data: Iterable[bytes]) -> tuple[int, int]:
        """Store the bytes ``data`` yields as blob ``blob_id``; returns (bytes, chunks)."""
        size = chunks = 0
        buffer = bytearray()

        def store(plaintext: bytes) -> None:
            nonlocal chunks
            sealed = self.keyring.seal(team_id, plaintext, Sealed(BLOBS, blob_id, str(chunks)))
            self.chunks.put(ChunkRef(team_id, blob_id, BLOB_ATTEMPT, chunks), sealed)
            chunks += 1

        try:
            for piece in data:
                size += len(piece)
                buffer.extend(piece)
                while len(buffer) >= CHUNK_BYTES:
                    store(bytes(buffer[:CHUNK_BYTES]))
                    del buffer[:CHUNK_BYTES]
            if buffer or chunks == 0:
                store(bytes(buffer))
        except BaseException:
            self.delete_blob(team_id, blob_id)
            raise
        return size, chunks

    def read_blob(self, team_id: int, blob_id: str, chunks: int) -> Iterator[bytes]:
        """The blob's bytes in order, each chunk checked on opening."""
        for seq in range(chunks):
            blob = self.chunks.get(ChunkRef(team_id, blob_id, BLOB_ATTEMPT, seq))
            key = self.keyring.data_key(team_id, key_version(blob))
            yield open_sealed(key, blob, BLOBS, blob_id, str(seq))

    def delete_blob(self, team_id: int, blob_id: str) -> None:
        self.chunks.delete_file(team_id, blob_id)

    # --- expiry, retention, team deletion --------------------------------------------------------

    def purge(self, now: datetime | None = None) -> dict[str, int]:
        """Delete upload sessions idle past ``session_ttl_hours`` (with the chunks of the
        unfinished ones), files past ``retention_days`` if set, and finish files whose
        completion pass was cut short. Idempotent: every replica may run it."""
        now = now or _now()
        idle_since = now - timedelta(hours=self.config.session_ttl_hours)
        counts = {"sessions": 0, "files": 0, "finalized": 0}
        with self.db.session() as s:
            stale = s.execute(
                select(UploadSession.id, UploadSession.team_id, UploadSession.file_id, UploadSession.completed_at).where(
                    UploadSession.updated_at < idle_since
                )
            ).all()
        for upload_id, team_id, file_id, completed_at in stale:
            with self.db.session() as s:
                s.execute(delete(UploadSession).where(UploadSession.id == upload_id))
                if completed_at is None:
                    s.execute(delete(FilePart).where(FilePart.file_id == file_id))
            if completed_at is None:
                self.chunks.delete_file(team_id, file_id)
            counts["sessions"] += 1
        if self.config.retention_days is not None:
            cutoff = now - timedelta(days=self.config.retention_days)
            with self.db.session() as s:
                old = s.execute(select(StoredFile.id, StoredFile.team_id).where(StoredFile.created_at < cutoff)).all()
            for file_id, team_id in old:
                self.delete(team_id, file_id)
                counts["files"] += 1
        # A team deleted while its files' removal failed midway: finish it.
        with self.db.session() as s:
            orphaned = s.scalars(
                select(Team.id).where(
                    Team.deleted_at.is_not(None),
                    or_(
                        Team.id.in_(select(StoredFile.team_id)),
                        Team.id.in_(select(UploadSession.team_id)),
                    ),
                )
            ).all()
        for team_id in orphaned:
            counts["files"] += self.delete_team(team_id)["files"]
        # A server stopped between a completing part's commit and its hashing leaves the
        # file "processing"; a minute on, no request is still working on it.
        with self.db.session() as s:
            unfinished = s.execute(
                select(StoredFile.id, StoredFile.team_id).where(
                    StoredFile.status == "processing", StoredFile.created_at < now - timedelta(minutes=1)
                )
            ).all()
        for file_id, team_id in unfinished:
            self.finalize(team_id, file_id)
            counts["finalized"] += 1
        return counts

    def delete_team(self, team_id: int) -> dict[str, int]:
        """Remove every file and upload of a team (a ``TeamStore.on_delete`` hook: the
        team's keys are already shredded, so this only frees the space)."""
        with self.db.session() as s:
            file_ids = list(s.scalars(select(StoredFile.id).where(StoredFile.team_id == team_id)))
            session_file_ids = list(s.scalars(select(UploadSession.file_id).where(UploadSession.team_id == team_id)))
            all_ids = set(file_ids) | set(session_file_ids)
            if all_ids:
                s.execute(delete(FilePart).where(FilePart.file_id.in_(all_ids)))
            s.execute(delete(StoredFile).where(StoredFile.team_id == team_id))
            s.execute(delete(UploadSession).where(UploadSession.team_id == team_id))
        self.chunks.delete_team(team_id)
        return {"files": len(file_ids)}


class IntegrityFailure(Exception):
    """Stored parts or chunks do not add up to the file (missing, reordered, truncated)."""


def open_files(
    config: Config, db: Database, keyring: Keyring, quota: Callable[[int], int | None] | None = None
) -> FileService:
    """The file service over the configured chunk store (``[files] backend``); ``quota``
    gives a team's storage quota (default: ``[files] team_quota_bytes`` for every team)."""
    files = config.files
    if files.backend == "s3":
        s3 = files.s3.resolved()
        access_key, secret_key = s3.credentials()
        assert s3.bucket is not None  # FilesConfig checked it
        chunks: ChunkStore = S3Chunks(
            S3Settings(s3.bucket, s3.prefix, s3.endpoint_url, s3.region, access_key, secret_key)
        )
    else:
        chunks = DatabaseChunks(db)
    return FileService(db, keyring, chunks, files, quota)
