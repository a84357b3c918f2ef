"""The sales dashboard as one self-contained HTML page: the five Power BI tiles and the model-quality trend.

``render_dashboard(engine, lang)`` is all a web route needs; ``render_html(figures, lang)`` renders
figures already read. The page has no script, font or image from the network: CSS and SVG are inline,
and the figures are embedded as JSON (``<script type="application/json" id="figures">``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Collection
from html import escape
from typing import Any

from babel.dates import format_skeleton
from sqlalchemy.engine import Engine

from salespred_assets import i18n
from salespred_assets.dashboard import svg
from salespred_assets.dashboard.figures import figures as read_figures
from salespred_assets.errors import SalespredError

LANGUAGES = tuple(i18n.LANGUAGES)
KEYS = ("title", "closed", "won", "lost", "pipeline", "headline", "pipeline_note", "rule", "as_of", "h0", "h1", "h2",
        "h3", "h4", "h5", "horizon", "by_month", "by_region", "matrix", "seller", "count", "tcv", "total", "quality",
        "version", "trained", "status", "roc_auc", "accuracy", "brier", "predictions", "unavailable", "empty",
        "current", "explain", "explain_expected", "explain_forecast", "explain_brier", "explain_auc", "scroll_hint",
        "scroll_hint_quality", "h_unknown", "expected")


def texts(lang: str) -> dict[str, str]:
    """The dashboard's texts in ``lang``, from the one message catalog (keys ``dash.*``)."""
    return {key: i18n.translate(lang, f"dash.{key}") for key in KEYS}


WIDE = 760  # viewBox width of full-width charts; the CSS keeps them at least this wide (see svg._svg)

# Scoped under .dash, so that the same rules style the standalone page and the app's page (whose header,
# menu and main column come from the app's stylesheet). Chart text is 12 px or more at any screen width.
CSS = """
.dash *{box-sizing:border-box}body.dash-page{margin:0;font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,
sans-serif;color:#222;background:#f4f4f4}.dash-head{background:#d6d6d6;text-align:center;padding:10px}
.dash-head h1{margin:0;font-size:24px}main.wide{max-width:1400px}
.dash .tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(300px,100%),1fr));gap:14px;
padding:14px 0;margin:auto}.dash-page .tiles{padding:14px;max-width:1400px}
.dash section{background:#fff;border-radius:6px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08);min-width:0;
border:1px solid #e4e4e4}.dash section.wide{grid-column:1/-1}.dash h2{font-size:15px;margin:0 0 8px;font-weight:600;
color:#222}.dash .kpi{font-size:40px;font-weight:600;color:#222}.dash .headline{color:#4f6b0c;font-size:20px}
.dash .note{color:#555;font-size:13px}.dash svg text{font-size:13px;fill:#444}
.dash svg text.v{font-size:14px;font-weight:600;fill:#222}.dash svg .grid{stroke:#e6e6e6}
.dash svg.chart{display:block;height:auto}.dash svg.w760{min-width:760px;max-width:1100px}
.dash svg.w260{min-width:260px;max-width:380px}.dash svg.w200{min-width:200px;max-width:240px}
.dash table{border-collapse:collapse;width:100%;font-size:13px}
.dash th,.dash td{padding:4px 8px;text-align:right;border-bottom:1px solid #eee;white-space:nowrap}
.dash th:first-child,.dash td:first-child{text-align:left}.dash tfoot td,.dash .tot{font-weight:700}
.dash .scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;
background:linear-gradient(90deg,#fff 30%,rgba(255,255,255,0)) left/40px 100% no-repeat local,
linear-gradient(270deg,#fff 30%,rgba(255,255,255,0)) right/40px 100% no-repeat local,
radial-gradient(farthest-side at 0 50%,rgba(0,0,0,.22),transparent) left/14px 100% no-repeat scroll,
radial-gradient(farthest-side at 100% 50%,rgba(0,0,0,.22),transparent) right/14px 100% no-repeat scroll}
.dash .scroll-hint{font-size:13px;color:#555;margin:0 0 6px}
@media (min-width:1000px){.dash .scroll-hint{display:none}}
.dash .legend span{display:inline-block;margin:2px 10px 2px 0}.dash .sw{margin-right:4px;vertical-align:-1px}
.dash .current{color:#2a6db5;font-weight:600}.dash .donut{max-width:240px}
.dash details{background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:10px 14px;margin:14px 0 0}
.dash details summary{cursor:pointer;font-weight:600;min-height:32px;line-height:32px}
.dash details p{margin:6px 0;font-size:14px}.dash-page details{margin:14px 14px 0}
.dash-page nav.back{float:left;font-size:14px}.dash-page nav.back a{color:#333}
"""


class Fmt:
    """The dashboard's numbers in the page's locale (Babel, through ``i18n``), and its codes by name."""

    def __init__(self, lang: str, names: i18n.CodeNames | None = None) -> None:
        self.lang = lang
        self._names = names

    def code(self, kind: str, code: Any) -> str:
        """A code's display name (the code catalogs'); the code itself when unknown."""
        return self._names.display(kind, code, self.lang) if self._names is not None else str(code)

    def stage(self, stage: str) -> str:
        return i18n.stage_name(self.lang, stage, self._names)

    def count(self, value: float) -> str:
        return i18n.number(self.lang, value)

    def money(self, value: float) -> str:
        return i18n.compact(self.lang, value)

    def share(self, fraction: float) -> str:
        return i18n.percent(self.lang, fraction, 1)

    def metric(self, value: float | None) -> str:
        return "" if value is None else i18n.number(self.lang, value, 4)

    def month(self, key: str) -> str:
        """'2026-11' as the locale writes a month ('nov 2026' / 'Nov 2026')."""
        try:
            year, month = (int(part) for part in key.split("-")[:2])
            return format_skeleton("yMMM", dt.date(year, month, 1), locale=self.lang)
        except (ValueError, TypeError):
            return key


def _value(figure: str, value: float, text: str) -> str:
    return f'<span data-figure="{escape(figure)}" data-value="{value!r}">{escape(text)}</span>'


def _tile(data: Any, t: dict[str, str], draw: Callable[[Any, dict[str, str], Fmt], str], f: Fmt) -> str:
    """A tile's body: a note when its view does not exist (the data lacks a field) or holds no row."""
    if data is None:
        return f"<p>{escape(t['unavailable'])}</p>"
    if not data or (isinstance(data, dict) and data.get("rows") == []):
        return f"<p>{escape(t['empty'])}</p>"
    return draw(data, t, f)


def _closed(c: dict[str, Any], t: dict[str, str], f: Fmt) -> str:
    items = [svg.Item(t[r], c[r]["tcv"], f"closed.{r}.tcv", svg.WON if r == "won" else svg.LOST)
             for r in ("won", "lost")]
    counts = " · ".join(f"{escape(t[r])}: " + _value(f"closed.{r}.opportunities", c[r]["opportunities"],
                                                       f.count(c[r]["opportunities"])) for r in ("won", "lost"))
    return (f'<div class="chart">{svg.bars(items, t["closed"], fmt=f.money)}</div>'
            f'<p class="note">{escape(t["count"])} {counts}</p>')


def _pipeline(p: dict[str, Any], t: dict[str, str], f: Fmt) -> str:
    rows = []
    for h in p["horizons"]:
        key, count = f"pipeline.horizon.{h['order']}", h["opportunities"]
        rows.append(f"<tr><td>{escape(t.get('h' + str(h['order']), t['h_unknown']))}</td>"
                    f"<td>{_value(key + '.opportunities', count, f.count(count))}</td>"
                    f"<td>{_value(key + '.expected_tcv', h['expected_tcv'], f.money(h['expected_tcv']))}</td></tr>")
    note = t["pipeline_note"].format(n=f.count(p["opportunities"]), tcv=f.money(p["tcv"]))
    as_of = (f'<p class="note">{escape(t["as_of"].format(when=i18n.date(f.lang, p["as_of"])))}</p>'
             if p["as_of"] else "")
    kpi = _value("pipeline.expected_tcv", p["expected_tcv"], f.money(p["expected_tcv"]))
    return (f'<div class="headline">{escape(t["headline"])}</div>'
            f'<div class="kpi">{kpi}</div>'
            f'<p class="note">{escape(note)}</p><p class="note" data-rule="{escape(p["period_rule"])}">'
            f'{escape(t["rule"])}</p>{as_of}<table><thead><tr><th>{escape(t["horizon"])}</th>'
            f'<th>{escape(t["count"])}</th><th>{escape(t["expected"])}</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _by_month(months: list[dict[str, Any]], t: dict[str, str], f: Fmt) -> str:
    items = [svg.Item(f.month(m["month"]), m["expected_tcv"], f"by_month.{m['month']}.expected_tcv", svg.LINE)
             for m in months]
    every = -(-len(items) // 8)  # at most 8 month labels: each needs room at 13 px
    ticks = [n for n in range(len(items)) if n % every == 0]
    chart = svg.lines([items], t["by_month"], [f.month(m["month"]) for m in months], ticks=ticks, y_min=0.0,
                      width=WIDE, fmt=f.money)
    return f'<div class="scroll chart">{chart}</div>'


def _by_region(regions: list[dict[str, Any]], t: dict[str, str], f: Fmt) -> str:
    items = [svg.Item(str(r.get("name") or f.code("regiones", r["region"])), r["expected_tcv"],
                      f"by_region.{r['region']}.expected_tcv",
                      svg.PALETTE[n % len(svg.PALETTE)]) for n, r in enumerate(regions)]
    total = sum(i.value for i in items) or 1.0
    legend = "".join(f"<span>{svg.swatch(i.color)}{escape(i.label)} {escape(f.money(i.value))} "
                     f"({escape(f.share(i.value / total))})</span>" for i in items)
    return (f'<div class="donut">{svg.donut(items, t["by_region"], fmt=f.money, share_fmt=f.share)}</div>'
            f'<div class="legend">{legend}</div>')


def _matrix(m: dict[str, Any], t: dict[str, str], f: Fmt) -> str:
    stages = m["stages"]
    head1 = "".join(f'<th colspan="2">{escape(f.stage(s))}</th>' for s in stages)
    head2 = "".join(f"<th>{escape(t['count'])}</th><th>{escape(t['tcv'])}</th>" for _ in stages)

    def cells(prefix: str, source: dict[str, dict[str, float]]) -> str:
        out = []
        for s in stages:
            c = source.get(s, {"opportunities": 0, "tcv": 0.0})
            out.append(f"<td>{_value(f'{prefix}.{s}.opportunities', c['opportunities'], f.count(c['opportunities']))}"
                       f"</td><td>{_value(f'{prefix}.{s}.tcv', c['tcv'], f.money(c['tcv']))}</td>")
        return "".join(out)

    def seller_totals(r: dict[str, Any]) -> str:
        key = "matrix." + r["seller"]
        return (f"<td class='tot'>{_value(key + '.opportunities', r['opportunities'], f.count(r['opportunities']))}"
                f"</td><td class='tot'>{_value(key + '.tcv', r['tcv'], f.money(r['tcv']))}</td>")

    body = "".join(
        f"<tr><td>{escape(str(r.get('name') or r.get('seller_name') or r['seller']))}</td>"
        f"{cells('matrix.' + r['seller'], r['cells'])}{seller_totals(r)}</tr>"
        for r in m["rows"])
    foot = (f"<tr><td>{escape(t['total'])}</td>{cells('matrix.total', m['totals'])}"
            f"<td>{_value('matrix.total.opportunities', m['opportunities'], f.count(m['opportunities']))}</td>"
            f"<td>{_value('matrix.total.tcv', m['tcv'], f.money(m['tcv']))}</td></tr>")
    return (f'<p class="scroll-hint" data-testid="scroll-hint">{escape(t["scroll_hint"])} →</p>'
            f'<div class="scroll" tabindex="0" role="region" aria-label="{escape(t["matrix"])}"><table><thead><tr>'
            f'<th rowspan="2">{escape(t["seller"])}</th>{head1}'
            f'<th colspan="2">{escape(t["total"])}</th></tr><tr>{head2}<th>{escape(t["count"])}</th>'
            f'<th>{escape(t["tcv"])}</th></tr></thead>'
            f"<tbody>{body}</tbody><tfoot>{foot}</tfoot></table></div>")


def _state(lang: str, status: str) -> str:
    key = f"dash.state.{status}"
    # An unknown status reads as a word of the page's language, never as the stored English one.
    return i18n.translate(lang, key if i18n.has(lang, key) else "dash.state.unknown")


def _quality(versions: list[dict[str, Any]], t: dict[str, str], f: Fmt) -> str:
    labels = [i18n.date(f.lang, v["trained_at"]) if v["trained_at"] else v["model_version"][:15] for v in versions]
    series = [[svg.Item(f"{v['model_version']} {t[metric]}", v[metric] if v[metric] is not None else float("nan"),
                        f"quality.{v['model_version']}.{metric}", color) for v in versions]
              for metric, color in (("roc_auc", svg.ACCENT), ("accuracy", svg.LINE))]
    low = min([v[m] for v in versions for m in ("roc_auc", "accuracy") if v[m] is not None] or [0.5])
    every = -(-len(labels) // 6)
    chart = svg.lines(series, t["quality"], labels, y_min=max(0.0, min(0.5, low - 0.05)), y_max=1.0, width=WIDE,
                      ticks=[n for n in range(len(labels)) if n % every == 0],
                      fmt=lambda x: i18n.number(f.lang, x, 2))
    legend = (f'<div class="legend"><span>{svg.swatch(svg.ACCENT)}{escape(t["roc_auc"])}</span>'
              f'<span>{svg.swatch(svg.LINE)}{escape(t["accuracy"])}</span></div>')
    rows = "".join(
        f"<tr{' class=current' if v['is_current'] else ''}><td>{escape(v['model_version'])}"
        f"{' (' + escape(t['current']) + ')' if v['is_current'] else ''}</td>"
        f"<td>{escape(i18n.datetime(f.lang, v['trained_at']) if v['trained_at'] else '')}</td>"
        f"<td>{escape(_state(f.lang, v['status']))}</td><td>{f.metric(v['roc_auc'])}</td>"
        f"<td>{f.metric(v['accuracy'])}</td><td>{f.metric(v['brier'])}</td>"
        f"<td>{f.count(v['predictions_recorded'])}</td></tr>" for v in reversed(versions))
    table = (f'<p class="scroll-hint">{escape(t["scroll_hint_quality"])} →</p>'
             f"<div class='scroll' tabindex='0'><table><thead><tr><th>{escape(t['version'])}</th>"
             f"<th>{escape(t['trained'])}</th><th>{escape(t['status'])}</th><th>{escape(t['roc_auc'])}</th>"
             f"<th>{escape(t['accuracy'])}</th><th>{escape(t['brier'])}</th><th>{escape(t['predictions'])}</th></tr>"
             f"</thead><tbody>{rows}</tbody></table></div>")
    return f'<div class="scroll chart">{chart}</div>' + legend + table


def _explain(t: dict[str, str]) -> str:
    """The terms in words, in a disclosure that opens with a tap (no script, no hover)."""
    items = "".join(f'<p data-term="{key}">{escape(t["explain_" + key])}</p>'
                    for key in ("expected", "forecast", "brier", "auc"))
    return f'<details class="explain" data-testid="explain"><summary>{escape(t["explain"])}</summary>{items}</details>'


def render_body(figs: dict[str, Any], lang: str = "en", names: i18n.CodeNames | None = None) -> str:
    """The dashboard itself (explanations, tiles and the figures as JSON), for a page to place under its header.
    ``names`` (the code catalogs) names regions and stages; without, codes show as themselves."""
    if lang not in LANGUAGES:
        raise SalespredError(f"unknown dashboard language {lang!r}; use one of {', '.join(LANGUAGES)}")
    t, f = texts(lang), Fmt(lang, names)
    # Inside <script>, no "<", ">" or "&" of the data may reach the HTML parser: JSON's \u escapes hide them.
    data = (json.dumps(figs, ensure_ascii=False, sort_keys=True)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    sections = [
        ("closed", t["closed"], _tile(figs.get("closed"), t, _closed, f), ""),
        ("pipeline", t["pipeline"], _tile(figs.get("pipeline"), t, _pipeline, f), ""),
        ("by_region", t["by_region"], _tile(figs.get("by_region"), t, _by_region, f), ""),
        ("by_month", t["by_month"], _tile(figs.get("by_month"), t, _by_month, f), "wide"),
        ("matrix", t["matrix"], _tile(figs.get("matrix"), t, _matrix, f), "wide"),
        ("quality", t["quality"], _tile(figs.get("model_quality"), t, _quality, f), "wide"),
    ]
    body = "".join(f'<section id="tile-{key}" class="{cls}"><h2>{escape(title)}</h2>{html}</section>'
                   for key, title, html, cls in sections)
    return (f'<div class="dash">{_explain(t)}<div class="tiles">{body}</div></div>'
            f'<script type="application/json" id="figures">{data}</script>')


def render_html(figs: dict[str, Any], lang: str = "en", *, stylesheet: str | None = None,
                back: tuple[str, str] | None = None, names: i18n.CodeNames | None = None) -> str:
    """The standalone page for figures already read (``figures.figures(engine)``): what the asset writes.

    ``stylesheet``: link to this URL (serving ``CSS``) instead of an inline ``<style>``, for pages under a
    Content-Security-Policy without ``'unsafe-inline'``; the page has no inline ``style`` attribute
    either. ``back``: (href, text) of a link back to the app.
    """
    body = render_body(figs, lang, names)
    title = texts(lang)["title"]
    style = f'<link rel="stylesheet" href="{escape(stylesheet)}">' if stylesheet else f"<style>{CSS}</style>"
    nav = f'<nav class="back"><a href="{escape(back[0])}">{escape(back[1])}</a></nav>' if back else ""
    return (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title>{style}</head>"
            f'<body class="dash-page"><header class="dash-head">{nav}<h1>{escape(title)}</h1></header>'
            f"<main>{body}</main></body></html>")


def render_dashboard(engine: Engine, lang: str = "en", sellers: Collection[str] | None = None, **options: Any) -> str:
    """Read the reporting views through ``engine`` and return the standalone dashboard page.

    ``sellers`` narrows the seller x stage matrix (a manager's team); ``options`` go to ``render_html``
    (``stylesheet``, ``back``).
    """
    return render_html(read_figures(engine, sellers), lang, **options)
