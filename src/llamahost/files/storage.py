"""Where the encrypted chunks of uploaded files live: one small interface, two backends.

Only ciphertext reaches a backend (chunks are sealed before ``put``), so neither the
database nor the object store ever holds a file's plaintext. A chunk is addressed by
(team, file, attempt, seq): ``attempt`` names one try at writing one part, so two
parts racing for the same offset never overwrite each other's chunks; the winner's
attempt is recorded with the part (``file_parts``) and the loser's chunks are deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, select

from ..config import ConfigError
from ..store.db import Database
from ..store.models import FileChunk


@dataclass(frozen=True)
class ChunkRef:
    team_id: int
    file_id: str
    attempt: str
    seq: int


class ChunkStore(Protocol):
    name: str

    def put(self, ref: ChunkRef, blob: bytes) -> None: ...

    def get(self, ref: ChunkRef) -> bytes: ...

    def delete_attempt(self, team_id: int, file_id: str, attempt: str) -> None: ...

    def delete_file(self, team_id: int, file_id: str) -> None: ...

    def delete_other_attempts(self, team_id: int, file_id: str, keep: set[str]) -> None:
        """Delete the file's chunks written by attempts not in ``keep`` (parts cut off by a
        crash or a lost race before they could clean up)."""
        ...

    def delete_team(self, team_id: int) -> None: ...

    def stored_bytes(self) -> int | None:
        """What the backend holds in all (for tests and benches); None if unknown."""
        ...


class MissingChunk(Exception):
    pass


class DatabaseChunks:
    """Chunks as rows of ``file_chunks`` in the server's database (SQLite or PostgreSQL)."""

    name = "database"

    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, ref: ChunkRef, blob: bytes) -> None:
        with self.db.session() as s:
            s.add(FileChunk(file_id=ref.file_id, attempt=ref.attempt, seq=ref.seq, team_id=ref.team_id, data=blob))

    def get(self, ref: ChunkRef) -> bytes:
        with self.db.session() as s:
            blob = s.scalar(
                select(FileChunk.data).where(
                    FileChunk.file_id == ref.file_id,
                    FileChunk.attempt == ref.attempt,
                    FileChunk.seq == ref.seq,
                    FileChunk.team_id == ref.team_id,
                )
            )
        if blob is None:
            raise MissingChunk(f"chunk {ref.seq} of {ref.file_id} is missing from the database")
        return blob

    def delete_attempt(self, team_id: int, file_id: str, attempt: str) -> None:
        with self.db.session() as s:
            s.execute(delete(FileChunk).where(FileChunk.file_id == file_id, FileChunk.attempt == attempt))

    def delete_file(self, team_id: int, file_id: str) -> None:
        with self.db.session() as s:
            s.execute(delete(FileChunk).where(FileChunk.file_id == file_id))

    def delete_other_attempts(self, team_id: int, file_id: str, keep: set[str]) -> None:
        with self.db.session() as s:
            s.execute(delete(FileChunk).where(FileChunk.file_id == file_id, FileChunk.attempt.not_in(keep)))

    def delete_team(self, team_id: int) -> None:
        with self.db.session() as s:
            s.execute(delete(FileChunk).where(FileChunk.team_id == team_id))

    def stored_bytes(self) -> int | None:
        return None


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None


class S3Chunks:
    """Chunks as objects ``<prefix><team>/<file>/<attempt>/<seq>`` in an S3-compatible
    bucket (AWS S3, MinIO, Ceph, R2, ...), through boto3: replicas on many hosts share them."""

    name = "s3"

    def __init__(self, settings: S3Settings) -> None:
        try:  # the optional `s3` extra: imported only when configured
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigError('[files] backend = "s3" needs boto3: pip install \'llamahost[s3]\'') from None

        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def _key(self, ref: ChunkRef) -> str:
        return f"{self.prefix}{ref.team_id}/{ref.file_id}/{ref.attempt}/{ref.seq:08d}"

    def put(self, ref: ChunkRef, blob: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(ref), Body=blob)

    def get(self, ref: ChunkRef) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(ref))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise MissingChunk(f"chunk {ref.seq} of {ref.file_id} is missing from bucket {self.bucket}") from None

    def _delete_prefix(self, prefix: str, keep=lambda key: False) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", []) if not keep(item["Key"])]
            if objects:  # a page holds at most 1000 keys, delete_objects' own limit
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def delete_attempt(self, team_id: int, file_id: str, attempt: str) -> None:
        self._delete_prefix(f"{self.prefix}{team_id}/{file_id}/{attempt}/")

    def delete_file(self, team_id: int, file_id: str) -> None:
        self._delete_prefix(f"{self.prefix}{team_id}/{file_id}/")

    def delete_other_attempts(self, team_id: int, file_id: str, keep: set[str]) -> None:
        prefix = f"{self.prefix}{team_id}/{file_id}/"
        self._delete_prefix(prefix, keep=lambda key: key[len(prefix):].split("/", 1)[0] in keep)

    def delete_team(self, team_id: int) -> None:
        self._delete_prefix(f"{self.prefix}{team_id}/")

    def stored_bytes(self) -> int | None:
        total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            total += sum(item["Size"] for item in page.get("Contents", []))
        return total
