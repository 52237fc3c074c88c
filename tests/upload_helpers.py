"""What the upload tests share: datasets with a canary, the SDK's resumable upload, scans."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from llama_api_client import LlamaAPIClient

MiB = 1024 * 1024


def canary() -> str:
    return f"CANARY-upload-{uuid.uuid4().hex[:12]}"


def example(i: int, text: str = "", dialect: str = "native") -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": f"Question {i}: {text}"},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
    }


def dataset(size: int, mark: str) -> bytes:
    """A valid messages_finetune JSONL file of about ``size`` bytes, ``mark`` on every line."""
    lines = []
    total = 0
    i = 0
    while total < size:
        line = json.dumps(example(i, f"{mark} " + "x" * 200)) + "\n"
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines).encode()


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload(client: LlamaAPIClient, data: bytes, *, purpose="messages_finetune", mime="application/jsonl",
           filename="train.jsonl", part_bytes: int = MiB) -> str:
    """Create a session and send every part; returns the file id."""
    session = client.uploads.create(bytes=len(data), filename=filename, mime_type=mime, purpose=purpose)
    return send_parts(client, session.id, data, 0, part_bytes)


def send_parts(client: LlamaAPIClient, upload_id: str, data: bytes, offset: int, part_bytes: int, stop_after: int | None = None):
    sent = 0
    file_id = None
    while offset < len(data):
        part = data[offset : offset + part_bytes]
        result = client.uploads.part(upload_id, data=("part", part), x_upload_offset=offset)
        assert result.offset == offset + len(part), result
        offset = result.offset
        file_id = result.file_id
        sent += 1
        if stop_after is not None and sent == stop_after:
            return None
    return file_id


def forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.hex().encode(), value.encode("utf-16-le")]


def assert_absent_in(blob: bytes, value: str, where: str) -> None:
    for form in forms(value):
        assert form not in blob, f"{value} found in {where}"


def assert_absent_under(directory: Path, value: str) -> list[Path]:
    scanned = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            assert_absent_in(path.read_bytes(), value, str(path))
            scanned.append(path)
    return scanned
