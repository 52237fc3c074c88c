"""Replica selection for an upstream model: least outstanding requests over healthy
replicas, passive ejection (a circuit breaker per replica) and active health checks.

Hand-written because the pieces that exist do other jobs: httpx pools connections
but does not balance or eject, and a service mesh is not something llamahost can
assume. The state is per process; with several workers each keeps its own view.

A replica's circuit:
- closed (healthy): takes traffic. A refused connection opens it at once;
  ``failure_threshold`` consecutive other failures (a timeout, a 502/503/504, a stream
  cut short, a failed health check) open it.
- open (ejected): takes no traffic for ``ejection_seconds`` (doubling while trials keep
  failing, up to 8x).
- half-open: after that, exactly one trial request may go to it; success closes the
  circuit, failure opens it again. A passing active health check closes it at once.
- If every replica is open, requests are still tried on them (least outstanding
  first) instead of being refused without trying ("panic routing").
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from .. import observability as obs

log = logging.getLogger(__name__)

_MAX_BACKOFF = 8


class Replica:
    def __init__(self, model: str, url: str) -> None:
        self.model = model
        self.url = url.rstrip("/")
        self.completions_url = httpx.URL(self.url + "/chat/completions")
        self.outstanding = 0
        self.healthy = True
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.trial_in_flight = False
        self._outstanding_gauge = obs.REPLICA_OUTSTANDING.labels(model, self.url)
        self._healthy_gauge = obs.REPLICA_HEALTHY.labels(model, self.url)
        self._healthy_gauge.set(1)

    def __repr__(self) -> str:
        return f"Replica({self.url}, healthy={self.healthy}, outstanding={self.outstanding})"

    def begin(self) -> None:
        self.outstanding += 1
        self._outstanding_gauge.inc()

    def end(self) -> None:
        self.outstanding -= 1
        self._outstanding_gauge.dec()


class ReplicaPool:
    def __init__(
        self,
        model: str,
        urls: list[str],
        *,
        failure_threshold: int,
        ejection_seconds: float,
    ) -> None:
        self.model = model
        self.replicas = [Replica(model, url) for url in urls]
        self.failure_threshold = failure_threshold
        self.ejection_seconds = ejection_seconds
        self._next = 0

    def pick(self, exclude: set[Replica]) -> Replica | None:
        """The healthy replica with the fewest requests in flight (ties rotate), or a
        replica due for its half-open trial; None if there is none."""
        now = time.monotonic()
        best: Replica | None = None
        n = len(self.replicas)
        start = self._next
        self._next = (self._next + 1) % n
        for i in range(n):
            replica = self.replicas[(start + i) % n]
            if replica in exclude:
                continue
            if not replica.healthy:
                if now >= replica.ejected_until and not replica.trial_in_flight:
                    # Half-open: its one trial goes first, so recovery does not wait
                    # for the others to be busier than it.
                    replica.trial_in_flight = True
                    return replica
                continue
            if best is None or replica.outstanding < best.outstanding:
                best = replica
        if best is None:
            # Every replica is ejected and none is due for a trial: try them anyway
            # (least outstanding first) rather than refuse outright. A dead one refuses
            # the connection at once and the next is tried; a recovered one serves.
            candidates = [r for r in self.replicas if r not in exclude]
            best = min(candidates, key=lambda r: r.outstanding, default=None)
        return best

    def success(self, replica: Replica) -> None:
        replica.failures = 0
        replica.trial_in_flight = False
        if not replica.healthy:
            self._close(replica, "request succeeded")

    def failure(self, replica: Replica, reason: str, *, definite: bool = False) -> None:
        """``definite``: the replica refused the connection, so it is down for sure and
        is ejected at once; other failures (timeouts, resets, 502-504) count up to
        ``failure_threshold``."""
        replica.trial_in_flight = False
        replica.failures += 1
        if definite or not replica.healthy or replica.failures >= self.failure_threshold:
            self._open(replica, reason)

    def release_trial(self, replica: Replica) -> None:
        """A trial that ended without telling anything (the client left)."""
        replica.trial_in_flight = False

    def _open(self, replica: Replica, reason: str) -> None:
        backoff = min(2**replica.ejections, _MAX_BACKOFF)
        replica.ejections += 1
        replica.ejected_until = time.monotonic() + self.ejection_seconds * backoff
        if replica.healthy:
            log.warning("replica %s of %s ejected: %s", replica.url, self.model, reason)
        replica.healthy = False
        replica._healthy_gauge.set(0)

    def _close(self, replica: Replica, reason: str) -> None:
        replica.healthy = True
        replica.ejections = 0
        replica.failures = 0
        replica._healthy_gauge.set(1)
        log.info("replica %s of %s back in service: %s", replica.url, self.model, reason)

    async def check(self, client: httpx.AsyncClient, path: str, headers: dict[str, str], timeout: float) -> None:
        """One active health check of every replica, concurrently."""

        async def one(replica: Replica) -> None:
            try:
                response = await client.get(replica.url + path, headers=headers, timeout=timeout)
                ok, reason = response.status_code == 200, f"health check got HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                ok, reason = False, f"health check failed: {type(exc).__name__} {exc}".strip()
                if isinstance(exc, httpx.ConnectError):
                    self.failure(replica, reason, definite=True)
                    return
            if ok:
                replica.failures = 0
                if not replica.healthy:
                    replica.trial_in_flight = False
                    self._close(replica, "health check passed")
            else:
                self.failure(replica, reason)

        await asyncio.gather(*(one(r) for r in self.replicas))

    def status(self) -> list[dict]:
        return [{"url": r.url, "healthy": r.healthy, "outstanding": r.outstanding} for r in self.replicas]
