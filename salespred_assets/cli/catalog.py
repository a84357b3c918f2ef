"""`salespred catalog`: the display names of the codes (load a CSV or YAML file, show what is stored)."""

from __future__ import annotations

import click

from salespred_assets.cli.common import connected_mongo
from salespred_assets.core.names import KINDS


@click.group("catalog")
def catalog() -> None:
    """Names for the codes sellers would otherwise read (industries, territories, lead sources, ...)."""


@catalog.command("load")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True,
              help="The catalog becomes exactly this file (swapped in whole); without it, the file's entries are "
                   "added or updated and the others kept.")
def load(path: str, replace: bool) -> None:
    """Load a catalog: CSV with columns kind,code,es,en (optional group), or YAML {kind: {code: {es, en}}}.

    The whole file is checked first; on any problem one line names the file, the row and the problem,
    nothing is written and the exit code is 2.
    """
    from salespred_assets.core import names
    from salespred_assets.mongo import catalogs

    entries = names.read_file(path)  # CatalogError -> exit code 2, before any connection or write
    result = catalogs.write(connected_mongo(), entries, replace=replace)
    kinds = sorted({e.kind for e in entries}, key=names.KINDS.index)
    action = "replaced the catalog with" if replace else "loaded"
    click.echo(f"{action} {len(entries)} names from {path} ({', '.join(kinds)}); the catalog holds {result['total']}. "
               f"The app shows them within {catalogs.TTL_S:.0f} s.")


@catalog.command("show")
@click.option("--kind", type=click.Choice(list(KINDS)),
              help="Only this kind.")
@click.option("--lang", type=click.Choice(["es", "en"]), help="Only the name in this language.")
def show(kind: str | None, lang: str | None) -> None:
    """The stored names, one per line: kind, code, names (tab-separated)."""
    from salespred_assets.core.names import Names
    from salespred_assets.mongo import catalogs

    entries = Names(catalogs.read(connected_mongo())).entries(kind)
    if not entries:
        click.echo("the catalog is empty: load one with `salespred catalog load FILE`", err=True)
        return
    for e in entries:
        names = [e.name(lang)] if lang else [e.es, e.en]
        click.echo("\t".join([e.kind, e.code, *names, *([e.group] if e.group else [])]))
