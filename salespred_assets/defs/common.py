"""Small things every asset group shares: retry policy and metadata formatting."""

from typing import Any

import dagster as dg
import pandas as pd

# Steps that touch a database retry transient faults with exponential backoff (2 s, 4 s, 8 s).
IO_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def markdown_table(frame: pd.DataFrame, max_rows: int = 20, floatfmt: str = "{:.4f}") -> str:
    frame = frame.head(max_rows)
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(floatfmt.format(v))
            else:
                cells.append(str(v).replace("|", "\\|").replace("\n", " ")[:80])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def md(frame: pd.DataFrame, **kwargs: Any) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(frame, **kwargs))


def counts_md(series: pd.Series, name: str) -> dg.MetadataValue:
    counts = series.value_counts().rename_axis(name).reset_index(name="rows")
    return md(counts, max_rows=50)
