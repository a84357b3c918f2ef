"""Hypothesis strategies for bad input at the seller app's write endpoints.

Every case is wrong by construction: a valid payload with one to three defects, or a body that is not
an object at all. Each defect names the field the server must blame (``Case.expected``) and the fields
it may also blame (``Case.allowed``: a bad ACV also silences or triggers the TCV rule). The rules are
written here from the documented capture rules, not imported from the app, so the tests check the app
against them rather than against itself. Cases where two readings are defensible (``" CL-42 "`` after
trimming, ``"1_000"`` as a number in a form) are left out instead of guessed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st

from salespred_assets.core.schema import CODE_SETS

# The capture rules (docs/seller-app.md, "Capture rules").
MAX_AMOUNT = 1e12
MAX_YEARS = 50
CLIENT = re.compile(r"CL-[0-9]{1,12}")
CODE_FIELDS = tuple(CODE_SETS)
TEXT_FIELDS = ("cliente", *CODE_FIELDS)
AMOUNTS = ("acv", "tcv")
REQUIRED = (*TEXT_FIELDS, "acv", "margen_ganancia", "fecha_cierre_oportunidad")
CAPTURE_FIELDS = (*REQUIRED, "tcv", "contract_years")
LOGIN_FIELDS = ("username", "password")
BODY = "body"
MAX_CONTENT = 60_000  # under the app's 64 KiB body limit, so that each case reaches validation
OPERATORS = ["$gt", "$gte", "$ne", "$nin", "$in", "$regex", "$where", "$expr", "$function", "$set", "$unset",
             "$or", "$and", "$exists", "$elemMatch", "$lookup", "$accumulator", "$jsonSchema", "$text"]
SERVER_FIELDS = ["numero_vendedor", "numero_opportunidad", "etapas", "fecha_creacion_oportunidad", "edad_oferta",
                 "fecha_cierre_planificada", "_historial", "_id", "password_hash", "role", "team", "__proto__",
                 "csrf_token"]


class Raw(str):
    """JSON text written as it is: ``NaN``, ``Infinity``, ``1e999``, ``"\\ud800"``."""


@dataclass(frozen=True)
class Case:
    content: bytes
    content_type: str
    expected: frozenset[str]   # the server must name at least one of these (all of them when one defect)
    allowed: frozenset[str]    # and no field outside these
    kinds: tuple[str, ...]     # the defects, for the tally
    values: dict[str, Any] | None = None  # the decoded payload, for the operator monitoring


@dataclass(frozen=True)
class Defect:
    field: str
    kind: str
    value: Any = None          # ``MISSING`` removes the field
    also: frozenset[str] = frozenset()
    extra_key: bool = False    # the field itself is an unknown key added to the body
    file_part: bool = False    # forms: sent as a file part, which a text field ignores
    blame: str | None = None   # the name the server must blame, when not the field's own


MISSING = object()


# ---- JSON ---------------------------------------------------------------------------------------------
def dumps(value: Any) -> str:
    """JSON text with :class:`Raw` pieces and duplicate keys (a body is a list of pairs)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{dumps(k)}: {dumps(v)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dumps(k)}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


class Pairs(list):
    """A JSON object as (key, value) pairs: the same key may appear twice."""


def strip_ok(value: str, valid: Any) -> bool:
    """True when ``value`` could pass once trimmed (left out of the cases: trimming rules differ)."""
    return valid(value.strip()) or valid(value)


def is_code(field: str):
    return lambda s: s in CODE_SETS[field]


def is_client(s: str) -> bool:
    return CLIENT.fullmatch(s) is not None and len(s) <= 16


# text: any unicode (no lone surrogates, which UTF-8 cannot carry), a few near-misses, and huge strings
any_text = st.text(max_size=24)


@st.composite
def huge_text(draw: st.DrawFn) -> str:
    chunk = draw(st.text(min_size=1, max_size=6))
    size = draw(st.integers(2_000, 12_000))
    return (chunk * (size // len(chunk) + 1))[:size]


def code_garbage(field: str) -> st.SearchStrategy[str]:
    codes = CODE_SETS[field]
    near = st.sampled_from([c.lower() for c in codes] + [c + "x" for c in codes] + [c.replace("-", "") for c in codes]
                           + [c.replace("-", "－") for c in codes] + [f"{codes[0][:3]}99", f"{codes[0][:3]}-1", ""])
    return st.one_of(near, any_text, huge_text()).filter(lambda s: not strip_ok(s, is_code(field)))


client_garbage = st.one_of(
    st.sampled_from(["42", "CL-", "cl-42", "CL-42x", "CL--1", "CL-1.5", "CL-1e3", "CL-" + "9" * 13, "CL-４２",
                     "ＣＬ-42", "CL 42", "CL_42", "CL-+1", "CL-٤٢", ""]),
    any_text, huge_text(),
).filter(lambda s: not strip_ok(s, is_client))

SPECIAL_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400"]
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), any_text)
operator_object = st.dictionaries(st.one_of(st.sampled_from(OPERATORS), any_text.map(lambda s: "$" + s)),
                                  st.one_of(json_scalar, st.lists(json_scalar, max_size=3)), min_size=1, max_size=2)
containers = st.one_of(st.lists(json_scalar, max_size=4), st.dictionaries(any_text, json_scalar, max_size=3),
                       operator_object)
specials = st.sampled_from(SPECIAL_NUMBERS).map(Raw)
lone_surrogate = st.sampled_from(["\\ud800", "\\udfff", "a\\ud83d", "\\ude00b"]).map(lambda s: Raw(f'"{s}"'))


def not_text() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                     specials, containers)


def not_number(optional: bool) -> st.SearchStrategy[Any]:
    """Anything a strict JSON reader must not take as a number (``"48000"`` included)."""
    base = [st.booleans(), any_text, st.sampled_from(["48000", "1e5", "NaN", "0"]), containers]
    if not optional:
        base.append(st.none())
    return st.one_of(*base)


negative = st.one_of(st.floats(max_value=-1e-9, allow_infinity=False), st.integers(max_value=-1))
too_big = st.one_of(st.floats(min_value=MAX_AMOUNT * (1 + 1e-9), allow_infinity=False),
                    st.integers(min_value=int(MAX_AMOUNT) + 1, max_value=10**30))
bad_margin = st.one_of(negative, st.floats(min_value=1 + 1e-9, allow_infinity=False), st.integers(min_value=2))
bad_years = st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_YEARS + 1, max_value=10**9),
                      st.floats(allow_nan=False, allow_infinity=False), any_text, st.booleans(), containers, specials)


def bad_dates(today: dt.date) -> st.SearchStrategy[Any]:
    latest = today.replace(year=today.year + 10) if not (today.month == 2 and today.day == 29) \
        else today.replace(year=today.year + 10, day=28)
    past = st.dates(max_value=today - dt.timedelta(days=1)).map(dt.date.isoformat)
    far = st.dates(min_value=latest + dt.timedelta(days=1)).map(dt.date.isoformat)
    # text that cannot be a date: an "@" in it (digits alone could be read as a Unix time)
    garbage = st.one_of(any_text.map(lambda s: s + "@"), st.sampled_from(
        ["31/12/2030", "2030-13-01", "2030-02-30", "30-06-2030", "2030/06/30", "２０３０-０６-３０", "tomorrow",
         "mañana", "", "2030-6-3"]))
    return st.one_of(past, far, garbage)


def field_defect(today: dt.date, form: bool = False) -> st.SearchStrategy[Defect]:
    """One defect on one of the capture's own fields."""
    options: list[st.SearchStrategy[Defect]] = []
    for name in REQUIRED:
        options.append(st.just(Defect(name, "missing", MISSING)))
        if form:
            options.append(st.sampled_from(["", "   "]).map(lambda v, n=name: Defect(n, "empty", v)))
            options.append(st.just(Defect(name, "file part", "x", file_part=True)))
    for name in CODE_FIELDS:
        options.append(code_garbage(name).map(lambda v, n=name: Defect(n, "unknown code / huge / unicode", v)))
    options.append(client_garbage.map(lambda v: Defect("cliente", "bad client code / huge / unicode", v)))
    also = frozenset({"tcv"})
    for name in (*AMOUNTS, "margen_ganancia"):
        options.append(negative.map(lambda v, n=name: Defect(n, "negative", _num(v, form), also)))
        options.append(specials.map(lambda v, n=name: Defect(n, "NaN/inf", v, also)))
    options.append(too_big.map(lambda v: Defect("acv", "above 1e12", _num(v, form), frozenset({"tcv"}))))
    options.append(too_big.map(lambda v: Defect("tcv", "above 1e12", _num(v, form))))
    options.append(bad_margin.map(lambda v: Defect("margen_ganancia", "outside [0, 1]", _num(v, form))))
    options.append(st.floats(min_value=0, max_value=47_999.99).map(
        lambda v: Defect("tcv", "TCV below ACV", _num(v, form))))
    options.append(st.just(Defect("tcv", "TCV missing without years", MISSING)))
    options.append(bad_dates(today).map(lambda v: Defect("fecha_cierre_oportunidad", "bad close date", v)))
    options.append(bad_years.filter(lambda v: not _int_ok(v, form)).map(
        lambda v: Defect("contract_years", "bad contract years", _num(v, form) if form else v, frozenset({"tcv"}))))
    if form:
        garbage_number = st.one_of(any_text.map(lambda s: s + "x"),
                                   st.sampled_from(["NaN", "nan", "inf", "-inf", "Infinity", "1e999", "-1e999",
                                                    "0x10", "1,5", "12 000", "48000$"]))
        for name in (*AMOUNTS, "margen_ganancia"):
            options.append(garbage_number.map(lambda v, n=name: Defect(n, "not a number", v, frozenset({"tcv"}))))
    else:
        for name in TEXT_FIELDS:
            options.append(not_text().map(lambda v, n=name: Defect(n, "wrong type", v)))
        options.append(not_text().filter(lambda v: not isinstance(v, str)).map(
            lambda v: Defect("fecha_cierre_oportunidad", "wrong type", v)))
        for name in ("acv", "margen_ganancia"):
            options.append(not_number(False).map(lambda v, n=name: Defect(n, "wrong type", v, frozenset({"tcv"}))))
        options.append(not_number(True).map(lambda v: Defect("tcv", "wrong type", v)))
        options.append(operator_object.map(lambda v: Defect("cliente", "operator object", v)))
        options.append(operator_object.map(lambda v: Defect("acv", "operator object", v, frozenset({"tcv"}))))
        # JSON cannot carry a lone surrogate: the whole body is refused
        options.append(st.tuples(st.sampled_from(CAPTURE_FIELDS), lone_surrogate).map(
            lambda p: Defect(p[0], "lone surrogate", p[1], blame=BODY)))
    return st.one_of(*options)


def _num(value: Any, form: bool) -> Any:
    if not form:
        return value
    if isinstance(value, Raw):
        return str(value)
    return repr(value) if isinstance(value, float) else str(value)


def _int_ok(value: Any, form: bool) -> bool:
    """A contract_years value that is in fact fine (left out)."""
    if isinstance(value, (bool, Raw)):
        return False
    if isinstance(value, int):
        return 1 <= value <= MAX_YEARS
    if form and isinstance(value, float):
        return value.is_integer() and 1 <= value <= MAX_YEARS
    if form and isinstance(value, str):
        try:
            return 1 <= int(value.strip()) <= MAX_YEARS
        except ValueError:
            return True  # "2.0" and friends: two readings, left out
    return False


def extra_key(taken: tuple[str, ...], form: bool) -> st.SearchStrategy[Defect]:
    """An unknown key: ``$`` operators, dotted paths, the fields the server sets, anything else."""
    keys = st.one_of(
        st.sampled_from(OPERATORS + SERVER_FIELDS),
        any_text.map(lambda s: "$" + s),
        st.tuples(any_text, any_text).map(lambda p: f"{p[0]}.{p[1]}"),
        st.sampled_from(["acv.$gt", "cliente.0", "a.b", "username[$ne]", "password[$regex]", "ACV", "acv "]),
        st.text(min_size=1, max_size=20),
    ).filter(lambda k: k not in taken and k != "" and (not form or k not in ("csrf", "next")))
    values = st.one_of(json_scalar, operator_object, st.just("NV-3")) if not form else any_text
    unknown = st.builds(lambda k, v: Defect(k, "unknown / $ / dotted key", v, extra_key=True), keys, values)
    if form:
        return unknown
    surrogate_key = st.builds(lambda k, v: Defect(k, "lone surrogate key", v, extra_key=True, blame=BODY),
                              lone_surrogate, values)
    return st.one_of(unknown, surrogate_key)


def _reported(d: Defect) -> str:
    return d.blame or d.field[:64] or BODY


def _apply(base: dict[str, Any], defects: list[Defect]) -> tuple[Pairs, dict[str, Any]]:
    pairs = Pairs((k, v) for k, v in base.items())
    for d in defects:
        if d.extra_key:
            pairs.append((d.field, d.value))
            continue
        if d.value is MISSING:
            pairs = Pairs((k, v) for k, v in pairs if k != d.field)
        elif any(k == d.field for k, _ in pairs):
            pairs = Pairs((k, d.value if k == d.field else v) for k, v in pairs)
        else:
            pairs.append((d.field, d.value))
        if d.field == "tcv" and d.kind == "TCV missing without years":
            pairs = Pairs((k, v) for k, v in pairs if k != "contract_years")
    return pairs, dict(pairs)


def _oracle(defects: list[Defect]) -> tuple[frozenset[str], frozenset[str]]:
    expected = frozenset(_reported(d) for d in defects)
    allowed = expected | frozenset().union(*(d.also for d in defects))
    return expected, allowed


def _fit(content: bytes) -> bool:
    return len(content) <= MAX_CONTENT


# ---- cases ----------------------------------------------------------------------------------------
def defect_lists(*options: st.SearchStrategy[Defect]) -> st.SearchStrategy[list[Defect]]:
    """One to three defects, on different fields."""
    return st.lists(st.one_of(*options), min_size=1, max_size=3, unique_by=lambda d: d.field)


def mostly(usual: st.SearchStrategy[Case], rare: st.SearchStrategy[Case]) -> st.SearchStrategy[Case]:
    """``usual`` about six times in seven."""
    return st.one_of(rare, *[usual] * 6)


def capture_json(base: dict[str, Any], today: dt.date) -> st.SearchStrategy[Case]:
    """POST /api/opportunities bodies."""
    defects = defect_lists(field_defect(today), extra_key(CAPTURE_FIELDS, False))
    return mostly(json_cases(st.just(base), defects), whole_body(base))


def login_json() -> st.SearchStrategy[Case]:
    """POST /api/auth/token bodies."""
    bases = st.fixed_dictionaries({"username": st.text(min_size=1, max_size=64),
                                   "password": st.text(min_size=1, max_size=256)})
    defects = defect_lists(login_defect(False), extra_key(LOGIN_FIELDS, False))
    return mostly(json_cases(bases, defects), bases.flatmap(whole_body))


def login_defect(form: bool) -> st.SearchStrategy[Defect]:
    options = []
    for name, limit in (("username", 64), ("password", 256)):
        options += [st.just(Defect(name, "missing", MISSING)), st.just(Defect(name, "empty", "")),
                    st.integers(limit + 1, 4 * limit).flatmap(
                        lambda n, f=name: st.text(min_size=1, max_size=3).map(
                            lambda c, n=n, f=f: Defect(f, "too long / unicode", (c * n)[:n])))]
        if form:
            options.append(st.just(Defect(name, "file part", "x", file_part=True)))
        else:
            options.append(not_text().map(lambda v, f=name: Defect(f, "wrong type / operator object", v)))
            options.append(operator_object.map(lambda v, f=name: Defect(f, "operator object", v)))
    return st.one_of(*options)


@st.composite
def json_cases(draw: st.DrawFn, bases: st.SearchStrategy[dict[str, Any]],
               defect_list: st.SearchStrategy[list[Defect]]) -> Case:
    base, defects = draw(bases), draw(defect_list)
    pairs, values = _apply(base, defects)
    if draw(st.booleans()) and pairs and not any(d.extra_key for d in defects):
        # the same key twice: the last one counts, so the defect comes last
        key = pairs[0][0]
        if not any(d.field == key for d in defects):
            pairs.insert(0, (key, draw(st.one_of(json_scalar, operator_object))))
    content = _shrink(pairs, lambda p: dumps(p).encode())
    expected, allowed = _oracle(defects)
    return Case(content, "application/json", expected, allowed, tuple(d.kind for d in defects), values)


def _shrink(pairs: Pairs, encode: Callable[[Pairs], bytes]) -> bytes:
    """Halve the longest (huge, so still wrong) string until the body fits under the limit."""
    while True:
        content = encode(pairs)
        if _fit(content):
            return content
        longest = max(range(len(pairs)), key=lambda i: len(pairs[i][1]) if _plain_text(pairs[i][1]) else 0)
        key, value = pairs[longest]
        if not _plain_text(value) or len(value) < 1000:
            raise AssertionError(f"cannot fit the case under {MAX_CONTENT} bytes")
        pairs[longest] = (key, value[: len(value) // 2])


def _plain_text(value: Any) -> bool:
    return isinstance(value, str) and not isinstance(value, Raw)


def whole_body(base: dict[str, Any]) -> st.SearchStrategy[Case]:
    """Bodies that are not a JSON object of fields at all."""
    text = dumps(base)
    return st.one_of(
        st.tuples(st.just("not an object"), st.one_of(st.lists(json_scalar, max_size=4), json_scalar)
                  .map(lambda v: dumps(v).encode())),
        st.tuples(st.just("truncated JSON"), st.integers(1, len(text) - 1).map(lambda n: text[:n].encode())),
        st.tuples(st.just("invalid JSON"), st.sampled_from([
            "", "{", "}", "{'acv': 1}", text[:-1] + ",}", "/* c */" + text, text + " x", "\ufeff" + text,
            "{acv: 1}", "-NaN", "+1", "[" * 300 + "]" * 300]).map(str.encode)),
        st.tuples(st.just("invalid UTF-8"), st.binary(max_size=40).map(lambda b: b"\xff" + b)),
        st.tuples(st.just("deep nesting"), st.integers(300, 3000).map(lambda n: ("[" * n + "]" * n).encode())),
    ).map(lambda kc: Case(kc[1], "application/json", frozenset({BODY}), frozenset({BODY}), (kc[0],)))


# ---- forms ----------------------------------------------------------------------------------------
def capture_form(base: dict[str, Any], today: dt.date, csrf: str) -> st.SearchStrategy[Case]:
    """POST /opportunities/new forms (with the session's CSRF token)."""
    text_base = {k: (repr(v) if isinstance(v, float) else str(v)) for k, v in base.items()}
    defects = defect_lists(field_defect(today, form=True), extra_key(CAPTURE_FIELDS, True))
    return form_cases(st.just(text_base), defects, st.just({"csrf": csrf}))


def login_form() -> st.SearchStrategy[Case]:
    """POST /login forms."""
    bases = st.fixed_dictionaries({"username": st.text(min_size=1, max_size=64),
                                   "password": st.text(min_size=1, max_size=256)})
    defects = defect_lists(login_defect(True), extra_key(LOGIN_FIELDS, True))
    return form_cases(bases, defects, st.sampled_from(["/opportunities/new", "//evil.test", ""]).map(
        lambda n: {"next": n}))


@st.composite
def form_cases(draw: st.DrawFn, bases: st.SearchStrategy[dict[str, str]], defect_list: st.SearchStrategy[list[Defect]],
               fixed_values: st.SearchStrategy[dict[str, str]]) -> Case:
    base, defects, fixed = draw(bases), draw(defect_list), draw(fixed_values)
    multipart = any(d.file_part for d in defects) or draw(st.integers(0, 4)) == 0
    if multipart:  # the name the server reads: browsers percent-encode newlines and quotes in part names
        defects = [replace(d, field=_part_name(d.field)) if d.extra_key else d for d in defects]
    files = [d.field for d in defects if d.file_part]
    pairs, values = _apply(base, [d for d in defects if not d.file_part])
    pairs = Pairs((k, v) for k, v in pairs if k not in files)
    pairs.extend(fixed.items())
    if multipart:
        boundary = "salespredfuzz" + draw(st.text("0123456789abcdef", min_size=8, max_size=8))
        content = _shrink(pairs, lambda p: _multipart(p, files, boundary))
        content_type = f"multipart/form-data; boundary={boundary}"
    else:
        content = _shrink(pairs, lambda p: urllib.parse.urlencode(list(p)).encode())
        content_type = "application/x-www-form-urlencoded"
    expected, allowed = _oracle(defects)
    return Case(content, content_type, expected, allowed, tuple(d.kind for d in defects), values)


def _part_name(key: str) -> str:
    return key.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


def _multipart(pairs: Pairs, file_fields: list[str], boundary: str) -> bytes:
    name = _part_name
    parts = []
    for key, value in pairs:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name(key)}"\r\n\r\n{value}\r\n'.encode())
    for key in file_fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name(key)}"; filename="x.txt"\r\n'
                     f"Content-Type: text/plain\r\n\r\nCL-00042\r\n".encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode()
