"""`salespred serve`: the seller app."""

from __future__ import annotations

import click

from salespred_assets import settings
from salespred_assets.cli.common import APP_PORT


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=APP_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Server processes sharing the port. [default: one per usable core, within a container's "
                   "CPU quota]")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="A log line per request. Off: at thousands of cached lookups a second, writing them costs "
                   "more than answering; a proxy in front usually logs requests anyway.")
def serve(host: str, port: int, workers: int | None, access_log: bool) -> None:
    """Serve the seller app: pages for phones and the REST API (OpenAPI at /docs)."""
    import uvicorn

    from salespred_assets.app.main import create_app

    # Configuration errors (e.g. no secret key in production) stop here, before binding; this also starts
    # the embedded services, if used, once, before the workers look for them.
    create_app()
    workers = workers or settings.usable_cores()
    click.echo(f"seller app at http://{host}:{port}  (API docs at /docs; {workers} worker process(es))")
    uvicorn.run("salespred_assets.app.main:serve_app", factory=True, host=host, port=port, workers=workers,
                proxy_headers=True, log_level="info", access_log=access_log)
