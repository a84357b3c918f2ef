"""`salespred stack`: the docker-compose topology as local processes (up, status, restart, down)."""

from __future__ import annotations

import sys

import click


@click.group()
def stack() -> None:
    """The production topology on this machine: Dagster on PostgreSQL with its daemon and run queue, the
    code server, the webserver and the seller app, each a process (see docs/stack.md)."""


@stack.command("up")
@click.option("--ui-port", type=click.IntRange(1, 65535), default=None,
              help="The Dagster webserver's port. [default: the last one used, else 3000]")
@click.option("--code-port", type=click.IntRange(1, 65535), default=None,
              help="The code server's gRPC port. [default: the last one used, else 4000]")
@click.option("--app-port", type=click.IntRange(1, 65535), default=None,
              help="The seller app's port. [default: the last one used, else 8000]")
def stack_up(ui_port: int | None, code_port: int | None, app_port: int | None) -> None:
    """Start what is not running yet (running services are reused) and wait until every one answers."""
    from salespred_assets.stack import processes

    state = processes.up({"webserver": ui_port, "code-server": code_port, "app": app_port},
                         progress=lambda line: click.echo(f"stack: {line}"))
    services = state["services"]
    click.echo(f"Dagster UI   http://127.0.0.1:{services['webserver']['port']}")
    click.echo(f"seller app   http://127.0.0.1:{services['app']['port']}")
    click.echo(f"instance     {state['instance']} (DAGSTER_HOME={state['dagster_home']}, {state['postgres']})")
    click.echo(f"logs         {processes.log_path('x').parent}/<service>.log; stop with `salespred stack down`")


@stack.command("status")
def stack_status() -> None:
    """Each service, its pid, port and health; exit status 1 when one is not healthy."""
    from salespred_assets.stack import processes

    rows = processes.status()
    click.echo(f"{'service':12} {'compose':18} {'pid':>8} {'port':>6}  health")
    for row in rows:
        click.echo(f"{row['service']:12} {row['compose']:18} {row['pid'] or '-'!s:>8} {row['port'] or '-'!s:>6}  "
                   f"{row['health'] or 'healthy'}")
    if any(row["health"] is not None for row in rows):
        sys.exit(1)


@stack.command("restart")
@click.argument("service", type=click.Choice(["code-server", "webserver", "daemon", "app"]))
@click.option("--timeout", type=click.FloatRange(0), default=20.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL for the service's process group.")
def stack_restart(service: str, timeout: float) -> None:
    """Stop one service and start it again on the same port; wait until it answers."""
    from salespred_assets.stack import processes

    entry = processes.restart(service, timeout, progress=lambda line: click.echo(f"stack: {line}"))
    click.echo(f"{service} restarted: pid {entry['pid']}")


@stack.command("down")
@click.option("--timeout", type=click.FloatRange(0), default=20.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL for each service's process group.")
def stack_down(timeout: float) -> None:
    """Stop what `salespred stack up` started (nothing else)."""
    from salespred_assets.stack import processes

    for name, stopped in processes.down(timeout):
        idle = "none" if name == "runs in progress" else "was not running"
        click.echo(f"{name:22} {'stopped' if stopped else idle}")
