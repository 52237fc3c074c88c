"""Stored content: the request and response of chat and moderation calls, kept
encrypted under the team's data key for abuse review, while the team's
``store_content`` setting is on and until its ``retention_days`` pass.

Nothing here runs on a request's path: the meter (chat) and the moderation route
queue a pending record with the usage writer, whose thread checks the team's setting,
serializes, encrypts and inserts it in the same transaction as the batch's usage
records. Reading goes through a ``Scope`` (``tenancy/scope.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from ..errors import NotFound
from ..store.crypto import CryptoError
from ..store.db import Database, affected_rows, aware_utc
from ..store.keyring import Keyring, Sealed
from ..store.models import StoredRequest, Team
from .scope import Scope, user_filter
from .settings import SettingsStore
from .teams import TeamStore

if TYPE_CHECKING:
    from ..types.chat import ChatMessage, ChatRequest, Outcome, ToolCall

log = logging.getLogger(__name__)

TABLE = "stored_requests"


def _call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def _message(message: ChatMessage) -> dict[str, Any]:
    doc: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        doc["images"] = [image.url for image in message.images]
    if message.tool_calls:
        doc["tool_calls"] = [_call(call) for call in message.tool_calls]
    if message.tool_call_id is not None:
        doc["tool_call_id"] = message.tool_call_id
    return doc


@dataclass
class PendingContent:
    """One call's content, as queued; ``documents`` builds what is encrypted (in the writer's thread)."""

    record_id: str
    created_at: datetime
    team_id: int
    key_id: str | None
    user: str | None
    kind: str  # chat | moderation
    surface: str  # native | compat
    model: str
    status: str
    flagged: bool

    def documents(self) -> tuple[dict[str, Any], dict[str, Any]]:
        raise NotImplementedError


@dataclass
class ChatContent(PendingContent):
    request: ChatRequest | None = None
    outcome: Outcome | None = None
    request_id: str | None = None  # the HTTP request's x-request-id, to find it in the logs

    def documents(self) -> tuple[dict[str, Any], dict[str, Any]]:
        request, outcome = self.request, self.outcome
        assert request is not None and outcome is not None
        request_doc = {
            "request_id": self.request_id,
            "messages": [_message(m) for m in request.messages],
            "max_completion_tokens": request.max_tokens,
            "sampling": dict(vars(request.sampling)),
            "stop": request.stop,
            "stream": request.stream,
            "tools": [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in request.tools],
            "tool_choice": request.tool_choice,
            "json_schema": request.json_schema,
        }
        response_doc = {
            "text": outcome.text,
            "tool_calls": [_call(call) for call in outcome.tool_calls],
            "stop_reason": outcome.stop_reason,
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "moderation": request.moderation_flags,
        }
        return request_doc, response_doc


@dataclass
class ModerationContent(PendingContent):
    messages: Sequence[ChatMessage] = ()
    categories: Sequence[str] = field(default_factory=tuple)
    request_id: str | None = None

    def documents(self) -> tuple[dict[str, Any], dict[str, Any]]:
        request_doc = {"request_id": self.request_id, "messages": [_message(m) for m in self.messages]}
        return request_doc, {"flagged": self.flagged, "categories": list(self.categories)}


@dataclass(frozen=True)
class StoredEntry:
    id: str
    team: str
    created_at: datetime
    kind: str
    surface: str
    model: str
    key_id: str | None
    user: str | None
    status: str
    flagged: bool
    request: dict[str, Any] | None
    response: dict[str, Any] | None
    error: str | None = None  # why the content could not be opened (then request/response are None)


class ContentStore:
    def __init__(self, db: Database, keyring: Keyring, teams: TeamStore, settings: SettingsStore) -> None:
        self.db = db
        self.keyring = keyring
        self.teams = teams
        self.settings = settings

    # --- writing (the usage writer's thread) ---------------------------------------------

    def rows(self, pending: Sequence[PendingContent]) -> list[dict[str, Any]]:
        """Rows to insert for the records whose team keeps content, encrypted."""
        rows = []
        for item in pending:
            try:
                if not self.settings.effective(item.team_id).store_content:
                    continue
                rows.append(self._row(item))
            except CryptoError as exc:  # the team was deleted meanwhile: nothing to keep
                log.warning("stored content of team %d dropped: %s", item.team_id, exc)
        return rows

    def _row(self, item: PendingContent) -> dict[str, Any]:
        request_doc, response_doc = item.documents()
        team_id, record_id = item.team_id, item.record_id
        seal = self.keyring.seal
        return {
            "id": record_id,
            "team_id": team_id,
            "created_at": item.created_at,
            "kind": item.kind,
            "surface": item.surface,
            "model": item.model,
            "key_id": item.key_id,
            "status": item.status,
            "flagged": item.flagged,
            "user_index": self.keyring.user_index(team_id, item.user) if item.user is not None else None,
            "user_sealed": seal(team_id, item.user, Sealed(TABLE, record_id, "user")) if item.user is not None else None,
            "request_sealed": seal(team_id, json.dumps(request_doc), Sealed(TABLE, record_id, "request")),
            "response_sealed": seal(team_id, json.dumps(response_doc), Sealed(TABLE, record_id, "response")),
        }

    # --- reading (always through a scope) -------------------------------------------------

    def query(
        self,
        scope: Scope,
        team: str | None,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        flagged: bool | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[StoredEntry]:
        """The newest ``limit`` matching records the scope may see, oldest first."""
        team_id = scope.team_filter(self.teams, team)
        conditions = [StoredRequest.team_id == team_id] if team_id is not None else []
        if user is not None:
            team_ids = [team_id] if team_id is not None else [t.id for t in self.teams.list()]
            conditions.append(user_filter(self.keyring, team_ids, user, StoredRequest.team_id, StoredRequest.user_index))
        if since is not None:
            conditions.append(StoredRequest.created_at >= since)
        if until is not None:
            conditions.append(StoredRequest.created_at < until)
        if flagged is not None:
            conditions.append(StoredRequest.flagged.is_(flagged))
        if kind is not None:
            conditions.append(StoredRequest.kind == kind)
        with self.db.session() as s:
            rows = s.scalars(
                select(StoredRequest)
                .where(*conditions)
                .order_by(StoredRequest.created_at.desc(), StoredRequest.id.desc())
                .limit(limit)
            ).all()
        return [self._open(row) for row in reversed(rows)]

    def get(self, scope: Scope, team: str | None, record_id: str) -> StoredEntry:
        team_id = scope.team_filter(self.teams, team)
        conditions = [StoredRequest.id == record_id]
        if team_id is not None:
            conditions.append(StoredRequest.team_id == team_id)
        with self.db.session() as s:
            row = s.scalar(select(StoredRequest).where(*conditions))
        if row is None:
            raise NotFound(f"no stored request {record_id!r}" + (f" in team {team!r}" if team else ""), param="id")
        return self._open(row)

    def _open(self, row: StoredRequest) -> StoredEntry:
        """Decrypt a row; a field that does not open (tampered, moved from another row or
        team, shredded key) leaves the content out and says why, never other plaintext."""
        team_id, record_id = row.team_id, row.id
        request = response = user = None
        error = None
        try:
            if row.user_sealed is not None:
                user = self.keyring.open(team_id, row.user_sealed, Sealed(TABLE, record_id, "user"))
            request = json.loads(self.keyring.open(team_id, row.request_sealed, Sealed(TABLE, record_id, "request")))
            response = json.loads(self.keyring.open(team_id, row.response_sealed, Sealed(TABLE, record_id, "response")))
        except CryptoError as exc:
            request = response = user = None
            error = f"stored content does not decrypt: {exc}"
        return StoredEntry(
            id=record_id,
            team=self.teams.name(team_id),
            created_at=aware_utc(row.created_at),
            kind=row.kind,
            surface=row.surface,
            model=row.model,
            key_id=row.key_id,
            user=user,
            status=row.status,
            flagged=row.flagged,
            request=request,
            response=response,
            error=error,
        )

    # --- retention ---------------------------------------------------------------------------

    def purge(self, now: datetime | None = None) -> dict[str, int]:
        """Delete content older than its team's ``retention_days`` (and any left of deleted
        teams). Returns records deleted per team name."""
        now = now or datetime.now(UTC)
        with self.db.session() as s:
            teams = s.execute(
                select(Team.id, Team.deleted_at).where(Team.id.in_(select(StoredRequest.team_id).distinct()))
            ).all()
        purged: dict[str, int] = {}
        for team_id, deleted_at in teams:
            where = [StoredRequest.team_id == team_id]
            if deleted_at is None:
                days = self.settings.effective(team_id).retention_days
                where.append(StoredRequest.created_at < now - timedelta(days=days))
            with self.db.session() as s:
                count = affected_rows(s.execute(delete(StoredRequest).where(*where)))
            if count:
                purged[self.teams.name(team_id)] = count
        return purged
