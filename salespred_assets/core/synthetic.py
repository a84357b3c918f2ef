"""Synthetic opportunities in the capture app's document shape, with a real, learnable signal.

Distributions follow the reference data (see ../shared/data/README.md): about 8% open opportunities,
about 65% of closed ones won, same-day deals almost always won, some opportunity types and regions
far weaker than others, and every client with a propensity of its own. The same ``seed`` and
``as_of`` date give the same documents, whatever the batch size.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator

import numpy as np

from salespred_assets.core.schema import CODE_SETS, OPEN_STAGES

CHUNK = 10_000  # generation unit; fixed so that output does not depend on the caller's batch size
OPEN_STAGE_WEIGHTS = np.array([130, 256, 179, 300, 80, 162], dtype=float)
TYPE_WEIGHTS = np.array([5583, 2, 172, 222, 1767, 4938], dtype=float)
TYPE_EFFECT = np.array([0.55, -3.0, 0.35, 0.1, -1.7, 0.0])
# How often a type is a same-day deal (created and closed at once, nearly always won), as in the reference
# data: renewals and add-ons often are, new logos rarely. The seller can see the type at capture.
TYPE_QUICK = np.array([0.6, 0.02, 0.35, 0.3, 0.03, 0.35])
REGION_WEIGHTS = np.array([165, 1488, 8742, 2289], dtype=float)
REGION_EFFECT = np.array([-1.3, -0.35, 0.3, -0.3])
BU_WEIGHTS = np.array([62, 300, 700, 900, 4584, 1200, 1500, 2294, 800, 70, 480], dtype=float)
N_SELLERS = 5

DEMO_SELLERS = [
    ("NV-0", "amartinez", "Ana", "Martínez", "Sales Manager"),
    ("NV-1", "lgomez", "Luis", "Gómez", "Sales Executive"),
    ("NV-2", "mrios", "Marta", "Ríos", "VP Sales"),
    ("NV-3", "jdiaz", "Jorge", "Díaz", "Sales Executive"),
    ("NV-4", "sherrera", "Sofía", "Herrera", "Sales Assistant"),
]


def id_width(n: int) -> int:
    return max(5, len(str(max(n - 1, 0))))


def _norm(w: np.ndarray) -> np.ndarray:
    return w / w.sum()


class _Clients:
    def __init__(self, n_clients: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 7])
        self.n = n_clients
        self.region = rng.choice(4, size=n_clients, p=_norm(REGION_WEIGHTS))
        self.territory = self.region * 4 + rng.integers(0, 4, size=n_clients)
        self.industry = rng.integers(0, 65, size=n_clients)
        self.bu = rng.choice(11, size=n_clients, p=_norm(BU_WEIGHTS))
        self.propensity = rng.normal(0.0, 1.0, size=n_clients)
        # Some clients buy often, most rarely: a Zipf-like weight for picking clients.
        weight = rng.pareto(1.5, size=n_clients) + 1.0
        self.p = weight / weight.sum()


def generate(n: int, *, seed: int = 42, as_of: dt.date | None = None, start: int = 0) -> Iterator[list[dict]]:
    """Yield lists of opportunity documents (chunks of up to 10,000) for numbers start..start+n-1."""
    as_of = as_of or dt.date.today()
    total = start + n
    width = id_width(total)
    clients = _Clients(max(20, total // 10), seed)
    bu_effect = np.random.default_rng([seed, 11]).normal(0, 0.45, size=11)
    lead_effect = np.random.default_rng([seed, 13]).normal(0, 0.15, size=36)
    seller_effect = np.random.default_rng([seed, 17]).normal(0, 0.1, size=N_SELLERS)
    as_of_days = (as_of - dt.date(1970, 1, 1)).days

    first_chunk, last_chunk = start // CHUNK, (total - 1) // CHUNK
    for chunk in range(first_chunk, last_chunk + 1):
        lo, hi = max(start, chunk * CHUNK), min(total, (chunk + 1) * CHUNK)
        if lo >= hi:
            continue
        rng = np.random.default_rng([seed, 1000 + chunk])
        m = CHUNK
        client = rng.choice(clients.n, size=m, p=clients.p)
        region = clients.region[client]
        territory = np.where(rng.random(m) < 0.9, clients.territory[client], rng.integers(0, 16, size=m))
        industry = clients.industry[client]
        bu = np.where(rng.random(m) < 0.7, clients.bu[client], rng.choice(11, size=m, p=_norm(BU_WEIGHTS)))
        typ = rng.choice(6, size=m, p=_norm(TYPE_WEIGHTS))
        lead = rng.integers(0, 36, size=m)
        seller = rng.integers(0, N_SELLERS, size=m)
        quick = rng.random(m) < TYPE_QUICK[typ] * np.where(lead < 12, 1.5, 0.7)
        age = np.where(quick, 0, np.minimum(np.round(rng.lognormal(np.log(140), 0.9, size=m)), 3953)).astype(int)
        acv = np.where(rng.random(m) < 0.02, 0.0, np.round(rng.lognormal(np.log(44000), 1.9, size=m), 2))
        acv = np.minimum(acv, 121_500_000.0)
        years = rng.choice([1, 1, 1, 1, 2, 3, 5], size=m)
        tcv = np.round(acv * np.where((rng.random(m) < 0.6) | quick, 1, years), 2)  # a same-day deal is one year
        margin = rng.integers(5, 31, size=m) / 100.0
        is_open = rng.random(m) < 0.08

        close_days = np.where(
            is_open,
            as_of_days + rng.integers(1, 420, size=m),
            as_of_days - rng.integers(1, 6 * 365, size=m),
        )
        created_days = close_days - age
        close_year = (close_days - as_of_days) / 365.0

        logit = (0.25 + 3.2 * quick + TYPE_EFFECT[typ] + REGION_EFFECT[region] + bu_effect[bu]
                 + lead_effect[lead] + seller_effect[seller] + 0.9 * clients.propensity[client]
                 - 0.22 * (np.log1p(acv) - np.log(44000)) + 2.0 * (margin - 0.17) + 0.08 * close_year
                 - 0.0015 * np.minimum(age, 1000))
        won = rng.random(m) < 1.0 / (1.0 + np.exp(-logit))
        open_stage = rng.choice(6, size=m, p=_norm(OPEN_STAGE_WEIGHTS))

        docs = []
        offset = lo - chunk * CHUNK
        for i in range(hi - lo):
            j = offset + i
            number = lo + i
            stage = OPEN_STAGES[open_stage[j]] if is_open[j] else ("Won" if won[j] else "Lost")
            docs.append({
                "numero_opportunidad": f"OP-{number:0{width}d}",
                "cliente": f"CL-{int(client[j]):05d}",
                "unidad_negocio": CODE_SETS["unidad_negocio"][bu[j]],
                "etapas": stage,
                "tipos": CODE_SETS["tipos"][typ[j]],
                "acv": float(acv[j]),
                "tcv": float(tcv[j]),
                "margen_ganancia": float(margin[j]),
                "regiones": CODE_SETS["regiones"][region[j]],
                "territorios": CODE_SETS["territorios"][territory[j]],
                "industrias": CODE_SETS["industrias"][industry[j]],
                "fecha_creacion_oportunidad": _date(created_days[j]),
                "fecha_cierre_oportunidad": _date(close_days[j]),
                "edad_oferta": float(age[j]),
                "lead_source": CODE_SETS["lead_source"][lead[j]],
                "numero_vendedor": f"NV-{int(seller[j])}",
            })
        yield docs


_EPOCH = dt.date(1970, 1, 1)


def _date(days: int) -> str:
    return (_EPOCH + dt.timedelta(days=int(days))).isoformat()


def demo_sellers() -> list[dict]:
    """The five demo sellers, each with a fresh random password (shown once, stored only hashed)."""
    return [
        {"numero_vendedor": nv, "username": user, "password": secrets.token_urlsafe(9),
         "first_name": first, "last_name": last, "title": title}
        for nv, user, first, last, title in DEMO_SELLERS
    ]
