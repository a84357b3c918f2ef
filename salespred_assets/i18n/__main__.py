"""Maintain the message catalog: ``python -m salespred_assets.i18n set KEY --es TEXT --en TEXT`` adds or
changes a message in both languages (entries stay sorted, so parallel edits merge cleanly);
``python -m salespred_assets.i18n delete KEY`` removes a message no longer used from every language;
``python -m salespred_assets.i18n check`` lists what is wrong with the catalog (exit 1 if anything is).
Run ``make locale`` afterwards to compile the ``.mo`` files the app reads.
"""

from __future__ import annotations

import argparse
import re
import sys

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

from salespred_assets.i18n import LANGUAGES, catalog_path

PLACEHOLDER = re.compile(r"\{(\w+)\}")


def load(lang: str) -> Catalog:
    with catalog_path(lang).open("rb") as fp:
        return read_po(fp, locale=lang)


def save(lang: str, catalog: Catalog) -> None:
    with catalog_path(lang).open("wb") as fp:
        write_po(fp, catalog, sort_output=True, width=116)


def problems() -> list[str]:
    """Keys missing from a language, empty or fuzzy translations, and placeholders that differ by language."""
    catalogs = {lang: load(lang) for lang in LANGUAGES}
    keys = {lang: {m.id for m in c if m.id} for lang, c in catalogs.items()}
    everything = set().union(*keys.values())
    out = [f"{lang}: no translation of {key!r}" for lang in LANGUAGES for key in sorted(everything - keys[lang])]
    for lang, catalog in catalogs.items():
        for message in catalog:
            if not message.id:
                continue
            if not message.string:
                out.append(f"{lang}: {message.id!r} is empty")
            if message.fuzzy:
                out.append(f"{lang}: {message.id!r} is marked fuzzy (not reviewed)")
    reference = catalogs["en"]
    for lang, catalog in catalogs.items():
        for message in catalog:
            other = reference.get(message.id) if message.id else None
            if other is not None and set(PLACEHOLDER.findall(str(message.string))) != set(
                    PLACEHOLDER.findall(str(other.string))):
                out.append(f"{lang}: {message.id!r} has placeholders {sorted(PLACEHOLDER.findall(str(message.string)))}"
                           f", English has {sorted(PLACEHOLDER.findall(str(other.string)))}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m salespred_assets.i18n", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    setter = commands.add_parser("set", help="add or change one message in every language")
    setter.add_argument("key")
    for lang in LANGUAGES:
        setter.add_argument(f"--{lang}", required=True, help=f"the text in {LANGUAGES[lang]}")
    deleter = commands.add_parser("delete", help="remove one message (no longer used) from every language")
    deleter.add_argument("key")
    commands.add_parser("check", help="list missing, empty, fuzzy or inconsistent messages")
    args = parser.parse_args(argv)
    if args.command == "set":
        for lang in LANGUAGES:
            catalog = load(lang)
            catalog.delete(args.key)
            catalog.add(args.key, getattr(args, lang))
            save(lang, catalog)
        return 0
    if args.command == "delete":
        catalogs = {lang: load(lang) for lang in LANGUAGES}
        if not any(args.key in catalog for catalog in catalogs.values()):
            print(f"no message {args.key!r}", file=sys.stderr)
            return 1
        for lang, catalog in catalogs.items():
            catalog.delete(args.key)
            save(lang, catalog)
        return 0
    found = problems()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
