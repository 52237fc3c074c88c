"""Wire models of the jobs admin API (``/admin/v1/jobs``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Job(BaseModel):
    """One background job, in the vocabulary every job kind shares."""

    id: str
    kind: str
    status: JobStatus
    team: str | None  # the team it works for; null for the server's own work (retention)
    attempts: int
    max_attempts: int
    error: str | None  # the last failed attempt's, kept while it is retried
    result: dict[str, Any] | None
    cancel_requested: bool
    worker: str | None  # host:pid:tag of the loop holding it (running) or that last ran it
    created_at: datetime
    started_at: datetime | None  # of the latest attempt
    finished_at: datetime | None
    updated_at: datetime
    leased_until: datetime | None


class JobList(BaseModel):
    data: list[Job]
