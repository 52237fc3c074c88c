"""Running the ASGI app under uvicorn, in one process or several."""

from __future__ import annotations

import ssl

import uvicorn
from uvicorn.supervisors import Multiprocess


class LlamahostUvicornConfig(uvicorn.Config):
    """uvicorn's configuration with TLS 1.2 as the floor: uvicorn builds the SSL
    context (in every worker process, when it loads), we only raise its minimum.
    A module-level class, so worker processes can unpickle it."""

    def load(self) -> None:
        super().load()
        if self.ssl is not None:
            self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2


def run(app, *, workers: int, **options) -> None:
    """``app`` is the app itself for one process, or an import string of an app factory
    for several (uvicorn starts workers from an import string)."""
    config = LlamahostUvicornConfig(app, workers=workers, factory=workers > 1, **options)
    if workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()
