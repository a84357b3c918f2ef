"""The sales dashboard as one self-contained HTML page: the five Power BI tiles and the model-quality trend.

``render_dashboard(engine, lang)`` is all a web route needs; ``render_html(figures, lang)`` renders
figures already read. The page has no script, font or image from the network: CSS and SVG are inline,
and the figures are embedded as JSON (``<script type="application/json" id="figures">``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from html import escape
from typing import Any

from sqlalchemy.engine import Engine

from salespred_assets import i18n
from salespred_assets.dashboard import svg
from salespred_assets.dashboard.figures import figures as read_figures
from salespred_assets.errors import SalespredError

LANGUAGES = tuple(i18n.LANGUAGES)
KEYS = ("title", "closed", "won", "lost", "pipeline", "headline", "pipeline_note", "rule", "as_of", "h0", "h1", "h2",
        "h3", "h4", "h5", "horizon", "by_month", "by_region", "matrix", "seller", "count", "tcv", "total", "quality",
        "version", "trained", "status", "roc_auc", "accuracy", "brier", "predictions", "unavailable", "empty",
        "current")


def texts(lang: str) -> dict[str, str]:
    """The dashboard's texts in ``lang``, from the one message catalog (keys ``dash.*``)."""
    return {key: i18n.translate(lang, f"dash.{key}") for key in KEYS}


WIDE = 1200  # viewBox width of full-width charts: about 1:1 on a desktop screen, so text keeps its size

CSS = """
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;
color:#222;background:#f4f4f4}header{background:#d6d6d6;text-align:center;padding:10px}
header h1{margin:0;font-size:24px}main{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));
gap:14px;padding:14px;max-width:1400px;margin:auto}section{background:#fff;border-radius:6px;padding:12px 14px;
box-shadow:0 1px 2px rgba(0,0,0,.08);min-width:0}section.wide{grid-column:1/-1}h2{font-size:15px;margin:0 0 8px;
font-weight:600}.kpi{font-size:44px;font-weight:600;color:#222}.headline{color:#6a8f10;font-size:22px}
.note{color:#555;font-size:12px}svg text{font-size:11px;fill:#444}svg text.v{font-size:12px;font-weight:600;
fill:#222}svg .grid{stroke:#e6e6e6}table{border-collapse:collapse;width:100%;font-size:12px}
th,td{padding:3px 6px;text-align:right;border-bottom:1px solid #eee;white-space:nowrap}
th:first-child,td:first-child{text-align:left}tfoot td,.tot{font-weight:700}.scroll{overflow-x:auto}
.legend span{display:inline-block;margin:2px 10px 2px 0}.sw{margin-right:4px;vertical-align:-1px}
.current{color:#2a6db5;font-weight:600}.donut{max-width:220px}nav.back{float:left;font-size:13px}
nav.back a{color:#333}
"""


def _value(figure: str, value: float, text: str) -> str:
    return f'<span data-figure="{escape(figure)}" data-value="{value!r}">{escape(text)}</span>'


def _tile(data: Any, t: dict[str, str], draw: Callable[[Any, dict[str, str]], str]) -> str:
    """A tile's body: a note when its view does not exist (the data lacks a field) or holds no row."""
    if data is None:
        return f"<p>{t['unavailable']}</p>"
    if not data or (isinstance(data, dict) and data.get("rows") == []):
        return f"<p>{t['empty']}</p>"
    return draw(data, t)


def _closed(f: dict[str, Any], t: dict[str, str]) -> str:
    items = [svg.Item(t[r], f[r]["tcv"], f"closed.{r}.tcv", svg.WON if r == "won" else svg.LOST)
             for r in ("won", "lost")]
    counts = " · ".join(f"{t[r]}: " + _value(f"closed.{r}.opportunities", f[r]["opportunities"],
                                               f"{f[r]['opportunities']:,}") for r in ("won", "lost"))
    return svg.bars(items, t["closed"]) + f'<p class="note">{t["count"]} {counts}</p>'


def _pipeline(p: dict[str, Any], t: dict[str, str]) -> str:
    rows = []
    for h in p["horizons"]:
        key, count = f"pipeline.horizon.{h['order']}", h["opportunities"]
        rows.append(f"<tr><td>{escape(t.get('h' + str(h['order']), h['horizon']))}</td>"
                    f"<td>{_value(key + '.opportunities', count, f'{count:,}')}</td>"
                    f"<td>{_value(key + '.expected_tcv', h['expected_tcv'], svg.compact(h['expected_tcv']))}</td></tr>")
    note = t["pipeline_note"].format(n=f"{p['opportunities']:,}", tcv=svg.compact(p["tcv"]))
    as_of = f'<p class="note">{escape(t["as_of"].format(when=p["as_of"][:10]))}</p>' if p["as_of"] else ""
    kpi = _value("pipeline.expected_tcv", p["expected_tcv"], svg.compact(p["expected_tcv"]))
    return (f'<div class="headline">{t["headline"]}</div>'
            f'<div class="kpi">{kpi}</div>'
            f'<p class="note">{escape(note)}</p><p class="note" data-rule="{escape(p["period_rule"])}">'
            f'{escape(t["rule"])}</p>{as_of}<table><thead><tr><th>{t["horizon"]}</th><th>{t["count"]}</th>'
            f'<th>{t["tcv"]} × p</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _by_month(months: list[dict[str, Any]], t: dict[str, str]) -> str:
    items = [svg.Item(m["month"], m["expected_tcv"], f"by_month.{m['month']}.expected_tcv", svg.LINE) for m in months]
    every = -(-len(items) // 12)
    ticks = [n for n in range(len(items)) if n % every == 0]
    return svg.lines([items], t["by_month"], [m["month"] for m in months], ticks=ticks, y_min=0.0, width=WIDE)


def _by_region(regions: list[dict[str, Any]], t: dict[str, str]) -> str:
    items = [svg.Item(r["region"], r["expected_tcv"], f"by_region.{r['region']}.expected_tcv",
                      svg.PALETTE[n % len(svg.PALETTE)]) for n, r in enumerate(regions)]
    total = sum(i.value for i in items) or 1.0
    legend = "".join(f'<span>{svg.swatch(i.color)}{escape(i.label)} {svg.compact(i.value)} ({i.value / total:.1%})'
                     f"</span>" for i in items)
    return f'<div class="donut">{svg.donut(items, t["by_region"])}</div><div class="legend">{legend}</div>'


def _matrix(m: dict[str, Any], t: dict[str, str]) -> str:
    stages = m["stages"]
    head1 = "".join(f'<th colspan="2">{escape(s)}</th>' for s in stages)
    head2 = "".join(f"<th>{t['count']}</th><th>{t['tcv']}</th>" for _ in stages)

    def cells(prefix: str, source: dict[str, dict[str, float]]) -> str:
        out = []
        for s in stages:
            c = source.get(s, {"opportunities": 0, "tcv": 0.0})
            out.append(f"<td>{_value(f'{prefix}.{s}.opportunities', c['opportunities'], str(c['opportunities']))}</td>"
                       f"<td>{_value(f'{prefix}.{s}.tcv', c['tcv'], svg.compact(c['tcv']))}</td>")
        return "".join(out)

    def seller_totals(r: dict[str, Any]) -> str:
        key = "matrix." + r["seller"]
        return (f"<td class='tot'>{_value(key + '.opportunities', r['opportunities'], str(r['opportunities']))}</td>"
                f"<td class='tot'>{_value(key + '.tcv', r['tcv'], svg.compact(r['tcv']))}</td>")

    body = "".join(
        f"<tr><td>{escape(r['seller_name'])}</td>{cells('matrix.' + r['seller'], r['cells'])}{seller_totals(r)}</tr>"
        for r in m["rows"])
    foot = (f"<tr><td>{t['total']}</td>{cells('matrix.total', m['totals'])}"
            f"<td>{_value('matrix.total.opportunities', m['opportunities'], str(m['opportunities']))}</td>"
            f"<td>{_value('matrix.total.tcv', m['tcv'], svg.compact(m['tcv']))}</td></tr>")
    return (f'<div class="scroll"><table><thead><tr><th rowspan="2">{t["seller"]}</th>{head1}'
            f'<th colspan="2">{t["total"]}</th></tr><tr>{head2}<th>{t["count"]}</th><th>{t["tcv"]}</th></tr></thead>'
            f"<tbody>{body}</tbody><tfoot>{foot}</tfoot></table></div>")


def _quality(versions: list[dict[str, Any]], t: dict[str, str]) -> str:
    labels = [v["model_version"][:15] for v in versions]
    series = [[svg.Item(f"{v['model_version']} {t[metric]}", v[metric] if v[metric] is not None else float("nan"),
                        f"quality.{v['model_version']}.{metric}", color) for v in versions]
              for metric, color in (("roc_auc", svg.ACCENT), ("accuracy", svg.LINE))]
    low = min([v[m] for v in versions for m in ("roc_auc", "accuracy") if v[m] is not None] or [0.5])
    chart = svg.lines(series, t["quality"], labels, y_min=max(0.0, min(0.5, low - 0.05)), y_max=1.0, width=WIDE,
                      fmt="{:.4f}".format)
    legend = (f'<div class="legend"><span>{svg.swatch(svg.ACCENT)}{t["roc_auc"]}</span>'
              f'<span>{svg.swatch(svg.LINE)}{t["accuracy"]}</span></div>')

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    rows = "".join(
        f"<tr{' class=current' if v['is_current'] else ''}><td>{escape(v['model_version'])}"
        f"{' (' + t['current'] + ')' if v['is_current'] else ''}</td><td>{escape((v['trained_at'] or '')[:16])}</td>"
        f"<td>{escape(v['status'])}</td><td>{fmt(v['roc_auc'])}</td><td>{fmt(v['accuracy'])}</td>"
        f"<td>{fmt(v['brier'])}</td><td>{v['predictions_recorded']:,}</td></tr>" for v in reversed(versions))
    table = (f"<div class='scroll'><table><thead><tr><th>{t['version']}</th><th>{t['trained']}</th>"
             f"<th>{t['status']}</th>"
             f"<th>{t['roc_auc']}</th><th>{t['accuracy']}</th><th>{t['brier']}</th><th>{t['predictions']}</th></tr>"
             f"</thead><tbody>{rows}</tbody></table></div>")
    return chart + legend + table


def render_html(figs: dict[str, Any], lang: str = "en", *, stylesheet: str | None = None,
                back: tuple[str, str] | None = None) -> str:
    """The page for figures already read (``figures.figures(engine)``).

    ``stylesheet``: link to this URL (serving ``CSS``) instead of an inline ``<style>``, for pages under a
    Content-Security-Policy without ``'unsafe-inline'``; the page has no inline ``style`` attribute
    either. ``back``: (href, text) of a link back to the app.
    """
    if lang not in LANGUAGES:
        raise SalespredError(f"unknown dashboard language {lang!r}; use one of {', '.join(LANGUAGES)}")
    t = texts(lang)
    # Inside <script>, no "<", ">" or "&" of the data may reach the HTML parser: JSON's \u escapes hide them.
    data = (json.dumps(figs, ensure_ascii=False, sort_keys=True)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    sections = [
        ("closed", t["closed"], _tile(figs.get("closed"), t, _closed), ""),
        ("pipeline", t["pipeline"], _tile(figs.get("pipeline"), t, _pipeline), ""),
        ("by_region", t["by_region"], _tile(figs.get("by_region"), t, _by_region), ""),
        ("by_month", t["by_month"], _tile(figs.get("by_month"), t, _by_month), "wide"),
        ("matrix", t["matrix"], _tile(figs.get("matrix"), t, _matrix), "wide"),
        ("quality", t["quality"], _tile(figs.get("model_quality"), t, _quality), "wide"),
    ]
    body = "".join(f'<section id="tile-{key}" class="{cls}"><h2>{escape(title)}</h2>{html}</section>'
                   for key, title, html, cls in sections)
    style = f'<link rel="stylesheet" href="{escape(stylesheet)}">' if stylesheet else f"<style>{CSS}</style>"
    nav = f'<nav class="back"><a href="{escape(back[0])}">{escape(back[1])}</a></nav>' if back else ""
    return (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(t['title'])}</title>{style}</head>"
            f"<body><header>{nav}<h1>{escape(t['title'])}</h1></header><main>{body}</main>"
            f'<script type="application/json" id="figures">{data}</script></body></html>')


def render_dashboard(engine: Engine, lang: str = "en", sellers: Collection[str] | None = None, **options: Any) -> str:
    """Read the reporting views through ``engine`` and return the dashboard page (one call per request).

    ``sellers`` narrows the seller x stage matrix (a manager's team); ``options`` go to ``render_html``
    (``stylesheet``, ``back``).
    """
    return render_html(read_figures(engine, sellers), lang, **options)
