"""``llamahost serve``: the API server (and, unless disabled, the job loop beside it)."""

from __future__ import annotations

import argparse
import logging

from ..config import ENV_WORKER_CONFIG, ConfigError, load_config
from .common import add_common


def register(commands) -> None:
    serve = commands.add_parser("serve", help="run the API server")
    add_common(serve)
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) to serve HTTPS with")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    serve.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or one JSON object each")
    serve.add_argument("--workers", type=int, metavar="N", help="server processes sharing the port (default 1)")

    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os
    import shutil
    import tempfile

    config = load_config(
        args.config, data_dir=args.data_dir, host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key
    )
    if args.log_level:
        config.server.log_level = args.log_level
    if args.log_format:
        config.server.log_format = args.log_format
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError("--workers must be at least 1")
        config.server.workers = args.workers
    workers = config.server.workers
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus-client is first imported (by the app modules
        # below): each worker then writes its samples to files that /metrics sums.
        metrics_dir = tempfile.mkdtemp(prefix="llamahost-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    from ..api.app import create_app
    from ..api.server import run as run_server
    from ..api.services import build_services
    from ..observability import configure_logging

    level = config.server.log_level
    configure_logging(level, config.server.log_format)
    log = logging.getLogger("llamahost")
    log.info("data directory: %s", config.data_dir)
    services = build_services(config)
    if services.keys.count_keys() == 0:
        # The quickstart expects a key to exist; the first start makes one, shown once.
        key, info = services.keys.create_key("default", name="first key", role="operator")
        print(
            f"\nNo API keys existed, so an operator key (team 'default') was created.\n"
            f"It is shown only this once; store it now:\n\n    export LLAMA_API_KEY='{key}'\n",
            flush=True,
        )
    common = dict(host=config.server.host, port=config.server.port, log_level=level, log_config=None, access_log=False)
    if config.server.tls_cert is not None:
        common |= dict(ssl_certfile=str(config.server.tls_cert), ssl_keyfile=str(config.server.tls_key))
    job_loop = None
    if config.jobs.run_in_server:
        # One loop per `serve`, here in the parent: not in each --workers process.
        from ..jobs.loop import LoopThread

        job_loop = LoopThread(services.jobs.loop(services))
        job_loop.start()
    try:
        if workers == 1:
            run_server(create_app(config, services), workers=1, **common)
            return 0
        if job_loop is None:
            # Migrations ran and the first key exists; each worker opens its own connections.
            services.db.close()
        os.environ[ENV_WORKER_CONFIG] = config.model_dump_json(exclude_defaults=True)
        log.info("starting %d worker processes", workers)
        run_server("llamahost.api.app:worker_app", workers=workers, **common)
    finally:
        if job_loop is not None:
            job_loop.stop()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
