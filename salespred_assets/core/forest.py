"""Exact per-tree path contributions for a fitted random forest (Saabas' method).

In a decision tree every step from a node to its child moves the predicted probability by
``p(child) - p(node)``; crediting that move to the feature the node split on gives, for each leaf, a
vector of contributions that sums to ``p(leaf) - p(root)``. Averaging over the trees explains the
forest's probability exactly: ``bias + contributions.sum(axis=1) == forest.predict_proba(X)[:, 1]``.

Leaves are found with each tree's compiled ``apply`` (a few microseconds for one row), and each tree's
leaf table is computed once and kept, so one code path serves a single opportunity and a million.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.ensemble import RandomForestClassifier

CHUNK_ROWS = 20_000


class PathExplainer:
    def __init__(self, forest: RandomForestClassifier, n_threads: int = 2) -> None:
        self.trees = [est.tree_ for est in forest.estimators_]
        self.n_features = int(forest.n_features_in_)
        self.n_threads = max(1, n_threads)
        self.positive = int(np.flatnonzero(forest.classes_ == 1)[0]) if 1 in forest.classes_ else 1
        self._tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [self._leaf_table(t) for t in self.trees]
        self.bias = float(np.mean([self._node_p1(t)[0] for t in self.trees]))

    def _node_p1(self, tree) -> np.ndarray:
        v = tree.value[:, 0, :]
        return v[:, self.positive] / v.sum(axis=1)

    def _leaf_table(self, tree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p1 per node, row of each node in the leaf table, contributions per leaf as float32 [n_leaves, n_features])."""
        p1 = self._node_p1(tree)
        left, right, feature = tree.children_left, tree.children_right, tree.feature
        n = tree.node_count
        contrib = np.zeros((n, self.n_features), dtype=np.float32)
        # Node ids are in depth-first pre-order, so a parent always precedes its children:
        # walk level by level, vectorised.
        frontier = np.array([0])
        while frontier.size:
            inner = frontier[left[frontier] != -1]
            if not inner.size:
                break
            for kids in (left[inner], right[inner]):
                contrib[kids] = contrib[inner]
                contrib[kids, feature[inner]] += (p1[kids] - p1[inner]).astype(np.float32)
            frontier = np.concatenate([left[inner], right[inner]])
        # Keep only the leaves' rows: a row's path always ends in a leaf, and this halves the memory.
        leaves = np.flatnonzero(left == -1)
        row = np.full(n, -1, dtype=np.int32)
        row[leaves] = np.arange(leaves.size, dtype=np.int32)
        return p1, row, np.ascontiguousarray(contrib[leaves])

    def leaves(self, X: np.ndarray) -> np.ndarray:
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        return np.column_stack([t.apply(X32) for t in self.trees])

    def explain(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(forest probability [n], contributions [n, n_features]) for the positive class."""
        n = X.shape[0]
        if n <= CHUNK_ROWS or self.n_threads == 1:
            return self._explain_chunk(X)
        bounds = [(lo, min(n, lo + CHUNK_ROWS)) for lo in range(0, n, CHUNK_ROWS)]
        prob = np.empty(n)
        contrib = np.empty((n, self.n_features), dtype=np.float64)
        with ThreadPoolExecutor(self.n_threads) as pool:  # the compiled apply releases the GIL
            for (lo, hi), (p, c) in zip(bounds, pool.map(lambda b: self._explain_chunk(X[b[0]:b[1]]), bounds)):
                prob[lo:hi], contrib[lo:hi] = p, c
        return prob, contrib

    def _explain_chunk(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        leaves = self.leaves(X)
        n = X.shape[0]
        prob = np.zeros(n)
        contrib = np.zeros((n, self.n_features), dtype=np.float64)
        for t, (p1, row, table) in enumerate(self._tables):
            idx = leaves[:, t]
            prob += p1[idx]
            contrib += table[row[idx]]
        k = len(self._tables)
        return prob / k, contrib / k
