"""Background work: a durable job queue in the database, a job loop that runs it, and
the registry of job kinds (retention now; uploads expiry, fine-tuning and eval runs later).

- ``kinds.py``: ``JobKinds.register_kind(name, handler, timeout=..., max_attempts=...)``,
  and the ``JobContext`` a handler gets.
- ``queue.py``: the ``jobs`` table's transitions (enqueue, claim with a lease, renew,
  finish, fail, cancel, reap expired leases) and scoped listings.
- ``loop.py``: ``JobLoop``, run by ``llamahost serve`` (once, in its parent process) and
  by ``llamahost jobs work``.
- ``retention.py``: the periodic purge of expired stored content, as a job kind.
"""
