"""The built-in sales dashboard: figures read from the reporting views, rendered as one self-contained page.

A web route is one call: ``render_dashboard(engine, lang)``; the Dagster asset ``sales_dashboard``
writes the same page to ``$SALESPRED_HOME/dashboard/`` with the figures in its metadata.
"""

from salespred_assets.dashboard.figures import figures, from_snapshot, snapshot, summary
from salespred_assets.dashboard.render import (
    CSS,
    LANGUAGES,
    render_body,
    render_dashboard,
    render_html,
)

__all__ = ["CSS", "LANGUAGES", "figures", "from_snapshot", "render_body", "render_dashboard", "render_html", "snapshot",
           "summary"]
