"""Display names for the codes people would otherwise read (BU-04, IN-23, NV-1): the catalogs.

A catalog maps each code of a kind (``industrias``, ``territorios``, ...) to a name in Spanish and
English. It is read from a CSV (``kind,code,es,en`` and an optional ``group``) or a YAML file
(``{kind: {code: {es: ..., en: ..., group: ...}}}``), validated whole before anything is written.
``group`` places a code under a code of its parent kind (a territory under its region), which lets a
long list be grouped. An unknown code always displays as itself: names help, they never hide data.
"""

from __future__ import annotations

import csv
import io
import math
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from salespred_assets.core.schema import CODE_SETS, OPEN_STAGES
from salespred_assets.errors import SalespredError

# The kinds a catalog may name: the capture form's code fields, and the stages.
KINDS: tuple[str, ...] = (*CODE_SETS, "etapas")
LANGS: tuple[str, ...] = ("es", "en")
SELLER = "numero_vendedor"  # not in a catalog file: sellers are named by their own first and last names
# A kind whose codes may be grouped under a code of another kind (its ``group``).
PARENT: dict[str, str] = {"territorios": "regiones"}
STAGE_CODES: tuple[str, ...] = (*OPEN_STAGES, "Won", "Lost")
LETTERS_OVER = 20  # a list longer than this (without groups of its own) is grouped by first letter
DEMO_CATALOG = Path(__file__).with_name("demo_catalog.yaml")


class CatalogError(SalespredError):
    """A catalog file that cannot be loaded; the message names the file, the row and the problem."""


@dataclass(frozen=True)
class Entry:
    kind: str
    code: str
    es: str
    en: str
    group: str | None = None

    def name(self, lang: str) -> str:
        return self.es if lang == "es" else self.en

    def as_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "code": self.code, "es": self.es, "en": self.en}
        if self.group:
            doc["group"] = self.group
        return doc


def sort_key(text: str) -> tuple[str, str]:
    """Alphabetical as a reader expects: accents and case do not move a name (Álava sorts with A)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return plain.casefold(), text


def initial(name: str) -> str:
    """The letter a name is listed under: its first letter without accents (Álava under A), "#" for a digit
    or anything else."""
    for char in sort_key(name)[0]:
        if char.isalpha():
            return char.upper()
        if char.isalnum():
            break
    return "#"


class Names:
    """The catalogs (and the sellers' names) in memory: a pure lookup, with the code as the last resort."""

    def __init__(self, entries: Iterable[Entry] = (), sellers: Mapping[str, str] | None = None) -> None:
        self._entries: dict[tuple[str, str], Entry] = {(e.kind, e.code): e for e in entries}
        self._sellers = {str(k): v for k, v in (sellers or {}).items() if v}

    def __len__(self) -> int:
        return len(self._entries)

    def same_as(self, other: Names | None) -> bool:
        """Whether ``other`` holds exactly these names (a refresh that changed nothing keeps the old object)."""
        return other is not None and self._entries == other._entries and self._sellers == other._sellers

    def entry(self, kind: str, code: str) -> Entry | None:
        return self._entries.get((kind, str(code)))

    def display(self, kind: str, code: Any, lang: str = "es") -> str:
        """``code``'s name in ``lang``; else its name in the other language; else the code itself."""
        if code is None:
            return ""
        text = str(code)
        if kind == SELLER:
            return self._sellers.get(text) or text
        entry = self._entries.get((kind, text))
        if entry is None:
            return text
        return entry.name(lang) or entry.name("en" if lang == "es" else "es") or text

    def known(self, kind: str, code: Any) -> bool:
        return (kind, str(code)) in self._entries or (kind == SELLER and str(code) in self._sellers)

    def options(self, kind: str, codes: Iterable[str], lang: str,
                display: Callable[[str], str] | None = None) -> list[dict[str, str]]:
        """``codes`` as a form offers them: ``{"code", "name", "group"}``, sorted by name in ``lang``
        (named by ``display(code)`` when given, as the stages are)."""
        out = []
        for code in codes:
            entry = self._entries.get((kind, code))
            group = entry.group if entry and entry.group else ""
            parent = PARENT.get(kind)
            out.append({"code": code, "name": display(code) if display else self.display(kind, code, lang),
                        "group": self.display(parent, group, lang) if parent and group else ""})
        return sorted(out, key=lambda o: (sort_key(o["group"]), sort_key(o["name"]), o["code"]))

    def grouped(self, kind: str, codes: Iterable[str], lang: str,
                letters_over: int = LETTERS_OVER) -> list[tuple[str, list[dict[str, str]]]]:
        """:meth:`options` in runs of the same group (``""``: not grouped), for ``<optgroup>``s. A kind without
        a parent kind and more than ``letters_over`` codes is grouped by its names' first letters (A, B, ...),
        so a long list can be scanned on a phone."""
        options = self.options(kind, codes, lang)
        if kind not in PARENT and len(options) > letters_over:
            options = [{**o, "group": initial(o["name"])} for o in options]
        out: list[tuple[str, list[dict[str, str]]]] = []
        for option in options:
            if not out or out[-1][0] != option["group"]:
                out.append((option["group"], []))
            out[-1][1].append(option)
        return out

    def entries(self, kind: str | None = None) -> list[Entry]:
        return sorted((e for e in self._entries.values() if kind is None or e.kind == kind),
                      key=lambda e: (KINDS.index(e.kind) if e.kind in KINDS else len(KINDS), e.kind, e.code))


# ---- reading a catalog file -----------------------------------------------------------------------
def read_file(path: str | Path) -> list[Entry]:
    """Every entry of a CSV or YAML catalog, checked; :class:`CatalogError` on the first problem."""
    p = Path(path)
    if not p.is_file():
        raise CatalogError(f"{p}: no such file")
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a BOM, as spreadsheet programs write it
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{p}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from exc
    if p.suffix.lower() in (".yaml", ".yml"):
        return parse_yaml(text, str(p))
    if p.suffix.lower() == ".csv":
        return parse_csv(text, str(p))
    raise CatalogError(f"{p}: a catalog is a .csv (kind,code,es,en) or a .yaml file, not {p.suffix or 'no suffix'}")


def parse_csv(text: str, source: str = "catalog") -> list[Entry]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    if not header:
        raise CatalogError(f"{source}: the file is empty; a catalog needs the header kind,code,es,en and rows")
    reader.fieldnames = header
    missing = [c for c in ("kind", "code", *LANGS) if c not in header]
    if missing:
        raise CatalogError(f"{source} row 1: the header lacks the column(s) {', '.join(missing)}; "
                           f"expected kind,code,es,en (and optionally group)")
    unknown = [c for c in header if c not in ("kind", "code", *LANGS, "group")]
    if unknown:
        raise CatalogError(f"{source} row 1: unknown column(s) {', '.join(unknown)}; "
                           f"expected kind,code,es,en (and optionally group)")
    rows = []
    for number, row in enumerate(reader, start=2):
        if None in row:  # more cells than the header has columns
            raise CatalogError(f"{source} row {number}: more cells than the header's {len(header)} columns")
        rows.append((f"{source} row {number}", {k: (v or "") for k, v in row.items()}))
    return _checked(rows, source)


def parse_yaml(text: str, source: str = "catalog") -> list[Entry]:
    try:
        # BaseLoader: every scalar stays the text written. YAML 1.1 typing would turn the code NO into
        # False, 010 into 8 and a name "yes" into True, silently.
        data = yaml.load(text, Loader=yaml.BaseLoader)  # builds only str, list and dict
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None or data == "":
        raise CatalogError(f"{source}: the file is empty; a catalog maps kind -> code -> {{es, en}}")
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: expected a mapping kind -> code -> {{es: ..., en: ...}} at the top")
    rows = []
    for kind, codes in data.items():
        if not isinstance(codes, dict):
            raise CatalogError(f"{source} kind {kind}: expected a mapping code -> {{es: ..., en: ...}}")
        for code, names in codes.items():
            where = f"{source} {kind}.{code}"
            if not isinstance(names, dict):
                raise CatalogError(f"{where}: expected {{es: ..., en: ...}}, not {type(names).__name__}")
            extra = [k for k in names if k not in (*LANGS, "group")]
            if extra:
                raise CatalogError(f"{where}: unknown key(s) {', '.join(map(str, extra))}; expected es, en, group")
            bad = [k for k, v in names.items() if not isinstance(v, str)]
            if bad:
                raise CatalogError(f"{where}: {', '.join(bad)} must be text, not a {type(names[bad[0]]).__name__}")
            rows.append((where, {"kind": kind, "code": code, **names}))
    return _checked(rows, source)


def _checked(rows: list[tuple[str, dict[str, str]]], source: str) -> list[Entry]:
    if not rows:
        raise CatalogError(f"{source}: no entries; nothing to load")
    seen: dict[tuple[str, str], str] = {}
    out = []
    for where, row in rows:
        kind, code = row.get("kind", "").strip(), row.get("code", "").strip()
        if kind not in KINDS:
            raise CatalogError(f"{where}: unknown kind {kind!r}; the kinds are {', '.join(KINDS)}")
        if not code:
            raise CatalogError(f"{where}: empty code")
        if len(code) > CODE_MAX:
            raise CatalogError(f"{where}: the code {code[:20]!r}... is longer than {CODE_MAX} characters")
        names = {lang: " ".join(row.get(lang, "").split()) for lang in LANGS}
        for lang in LANGS:
            if not names[lang]:
                raise CatalogError(f"{where}: {kind} {code} has no name in {lang!r}")
            if len(names[lang]) > NAME_MAX:
                raise CatalogError(f"{where}: {kind} {code}'s name in {lang!r} is longer than {NAME_MAX} characters")
        if (kind, code) in seen:
            raise CatalogError(f"{where}: {kind} {code} is given twice (first at {seen[kind, code]})")
        seen[kind, code] = where
        group = row.get("group", "").strip() or None
        if group and kind not in PARENT:
            raise CatalogError(f"{where}: only {', '.join(PARENT)} may have a group, not {kind}")
        if group and len(group) > CODE_MAX:
            raise CatalogError(f"{where}: the group {group[:20]!r}... is longer than {CODE_MAX} characters")
        out.append(Entry(kind, code, names["es"], names["en"], group))
    return out


# The dimension tables' column sizes (sql/tables.py ``dim_code``); a catalog is checked against them.
CODE_MAX, NAME_MAX = 64, 200


@dataclass
class Dimension:
    """A reporting dimension's rows, and what was done to the data's codes to make them fit a key."""

    rows: list[dict[str, Any]]
    merged: int = 0  # codes dropped as the same key as one kept (case, accents or spaces apart)
    truncated: int = 0  # codes or names cut to the columns' sizes
    notes: list[str] = field(default_factory=list)  # a few examples, for the log


def code_text(value: Any) -> str | None:
    """A code as the text a dimension keys it by: None for a missing value (None, NaN), a whole float as the
    integer's text (3.0 is 3, as 3 is), the rest stripped (SQL Server and MariaDB ignore trailing spaces)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            value = int(value)
    text = str(value).strip()
    return text or None


def _same_key(code: str) -> str:
    # MariaDB's and SQL Server's default collations compare without case (MariaDB without accents too):
    # codes equal under them would be one primary key there.
    return sort_key(code)[0]


def dimension_table(names: Names, kind: str, used: Iterable[Any] = (),
                    display: Callable[[str, str], str] | None = None) -> Dimension:
    """A reporting dimension: every catalog entry of ``kind``, then each code the data uses without a
    name (named as itself, so a report never shows a blank where the data has a code).

    ``display(code, lang)``, when given, names every code (the stages' rule: catalog, else the message
    catalog). Codes are normalised (:func:`code_text`); the first of codes that only case, accents or
    spaces tell apart is kept; codes and names are cut to the columns' sizes, and both are counted."""
    out = Dimension(rows=[])
    kept: dict[str, str] = {}  # the key -> the code kept for it

    def cut(text: str, limit: int, what: str) -> str:
        if len(text) <= limit:
            return text
        out.truncated += 1
        if len(out.notes) < 5:
            out.notes.append(f"{kind} {what} {text[:20]!r}... cut to {limit} characters")
        return text[:limit]

    def add(code: str, es: str, en: str, group: str | None) -> None:
        code = cut(code, CODE_MAX, "code")
        key = _same_key(code)
        if key in kept:
            if kept[key] != code:  # the same code again (named by the catalog, say) is no merge
                out.merged += 1
                if len(out.notes) < 5:
                    out.notes.append(f"{kind} code {code!r} merged into {kept[key]!r}")
            return
        kept[key] = code
        if display is not None:
            es, en = display(code, "es"), display(code, "en")
        row: dict[str, Any] = {"code": code, "name_es": cut(es, NAME_MAX, "name"), "name_en": cut(en, NAME_MAX, "name")}
        if kind in PARENT:
            row["region"] = cut(group, CODE_MAX, "group") if group else None
        out.rows.append(row)

    for e in names.entries(kind):
        add(e.code, e.es or e.en, e.en or e.es, e.group)
    seen: set[str] = set()
    for value in used:
        code = code_text(value)
        if code is None or code in seen:
            continue
        seen.add(code)
        add(code, code, code, None)
    out.rows.sort(key=lambda r: r["code"])
    return out


def dimension(names: Names, kind: str, used: Iterable[Any] = (),
              display: Callable[[str, str], str] | None = None) -> list[dict[str, Any]]:
    """:func:`dimension_table`'s rows."""
    return dimension_table(names, kind, used, display).rows


def demo_entries() -> list[Entry]:
    """The catalog shipped for the synthetic data (every code :data:`CODE_SETS` holds, and the stages)."""
    return read_file(DEMO_CATALOG)
