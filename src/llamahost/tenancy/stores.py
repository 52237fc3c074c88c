"""Every store over the database, opened once per process (server or CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..store.db import Database
from ..store.keyring import Keyring, open_store
from .content import ContentStore
from .keys import KeyStore
from .limits import Limits, LimitStore
from .settings import SettingsStore, TeamSettings
from .teams import TeamStore
from .usage import UsageStore


@dataclass
class Stores:
    """What the database holds, for the server and the CLI alike."""

    config: Config
    db: Database
    keyring: Keyring
    teams: TeamStore
    keys: KeyStore
    settings: SettingsStore
    content: ContentStore
    limits: LimitStore
    usage: UsageStore


def open_stores(config: Config) -> Stores:
    db, keyring = open_store(config.data_dir)
    teams = TeamStore(db, keyring)
    settings = SettingsStore(db, TeamSettings.defaults(config))
    return Stores(
        config=config,
        db=db,
        keyring=keyring,
        teams=teams,
        keys=KeyStore(db, keyring, teams),
        settings=settings,
        content=ContentStore(db, keyring, teams, settings),
        limits=LimitStore(db, Limits(rpm=config.limits.rpm, tpm=config.limits.tpm), teams),
        usage=UsageStore(db, keyring, teams),
    )
