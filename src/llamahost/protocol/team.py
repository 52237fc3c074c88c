"""Wire models of the team API (``/team/v1``): what any key may see and do within its
own team. Responses reuse the admin API's shapes (``protocol/admin.py``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..config import MAX_KEY_EXPIRY_DAYS


class Me(BaseModel):
    team: str
    role: str  # "admin" keys may also use /admin/v1
    key_id: str
    prefix: str


class TeamKeyCreate(BaseModel):
    """A key for the caller's own team, always a member key: no ``team`` or ``role``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, max_length=256)
    expires_in_days: float | None = Field(default=None, gt=0, le=MAX_KEY_EXPIRY_DAYS)
