"""``rpm-cloud api``: serve the clinician API with uvicorn."""

from __future__ import annotations

import argparse

from cloud.logging_setup import logging_config
from cloud.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings = get_settings()
    parser.add_argument("--host", default=settings.api_host, help="listen address (RPM_API_HOST)")
    parser.add_argument("--port", type=int, default=settings.api_port, help="listen port (RPM_API_PORT)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--log-level", default="info")


def main(args: argparse.Namespace) -> int:
    import uvicorn

    # uvicorn applies this in every worker process: its access and error logs look like every cloud log.
    log_config = logging_config("api")
    if args.workers > 1:
        # Each worker process builds its own app (and pool) from the environment.
        uvicorn.run("cloud.api.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                    log_level=args.log_level, log_config=log_config, proxy_headers=True)
    else:
        from cloud.api.app import create_app

        uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level, log_config=log_config,
                    proxy_headers=True)
    return 0
