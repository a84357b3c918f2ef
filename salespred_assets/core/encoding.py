"""The fitted preprocessing as plain lookups, so one row costs microseconds, not milliseconds.

scikit-learn's ``ColumnTransformer.transform`` carries a fixed cost of several milliseconds per call
(validation, joblib dispatch, frame copies). :class:`LookupEncoder` reads the fitted encoders once and
applies the same mappings with dictionary lookups: identical numbers (a test compares them with the
pipeline's own ``transform``), at a cost that grows with the rows, not with the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder


@dataclass(frozen=True)
class _Step:
    column: str
    mapping: dict[Any, float] | None  # None: a number passed through
    default: float                    # for values the encoder never saw


class LookupEncoder:
    def __init__(self, pre: ColumnTransformer) -> None:
        steps: list[_Step] = []
        for name, transformer, columns in pre.transformers_:
            if name == "remainder" or (isinstance(transformer, str) and transformer == "drop"):
                continue
            if (isinstance(transformer, str) and transformer == "passthrough") or (
                    isinstance(transformer, FunctionTransformer) and transformer.func is None):  # fitted passthrough
                steps += [_Step(c, None, np.nan) for c in columns]
            elif isinstance(transformer, OrdinalEncoder):
                unknown = float(transformer.unknown_value)
                steps += [_Step(c, {v: float(i) for i, v in enumerate(cats)}, unknown)
                          for c, cats in zip(columns, transformer.categories_, strict=True)]
            else:
                raise TypeError(f"no lookup form for {type(transformer).__name__} ({name})")
        self.steps = steps
        self.columns = list(pre.get_feature_names_out())
        if [s.column for s in steps] != self.columns:
            raise ValueError("encoder steps do not follow the preprocessor's output order")

    def transform(self, columns: Mapping[str, np.ndarray] | pd.DataFrame) -> np.ndarray:
        """Encode a frame, or a mapping of column name to array (cheaper for a single row)."""
        arrays = {s.column: np.asarray(columns[s.column]) for s in self.steps}
        n = len(next(iter(arrays.values()))) if arrays else 0
        out = np.empty((n, len(self.steps)), dtype=np.float64)
        for j, step in enumerate(self.steps):
            values = arrays[step.column]
            if step.mapping is None:
                out[:, j] = values
            else:
                get, default = step.mapping.get, step.default
                out[:, j] = np.fromiter((get(v, default) for v in values), dtype=np.float64, count=n)
        return out
