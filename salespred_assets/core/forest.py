"""Exact per-tree path contributions for a fitted random forest (Saabas' method).

In a decision tree every step from a node to its child moves the predicted probability by
``p(child) - p(node)``; crediting that move to the feature the node split on gives, for each leaf, a
vector of contributions that sums to ``p(leaf) - p(root)``. Averaging over the trees explains the
forest's probability exactly: ``bias + contributions.sum(axis=1) == forest.predict_proba(X)[:, 1]``.

Each leaf's contributions are computed once, when the explainer is built, into one table for the whole
forest. Finding the rows' leaves is then the only per-row work: for a batch, each tree's compiled
``apply`` (it releases the GIL, so chunks run on every core); for a handful of rows, where calling 500
compiled functions would cost more than the walk itself, all trees are walked at once in NumPy. Both
give the same leaves (a test checks it against scikit-learn).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.ensemble import RandomForestClassifier

CHUNK_ROWS = 20_000
SMALL = 32  # up to this many rows, walk all trees at once


class PathExplainer:
    def __init__(self, forest: RandomForestClassifier, n_threads: int = 2) -> None:
        self.trees = [est.tree_ for est in forest.estimators_]
        self.n_features = int(forest.n_features_in_)
        self.n_threads = max(1, n_threads)
        self.positive = int(np.flatnonzero(forest.classes_ == 1)[0]) if 1 in forest.classes_ else 1
        p1s, rows, tables = zip(*(self._leaf_table(t) for t in self.trees), strict=True)
        counts = np.array([t.node_count for t in self.trees])
        node_offset = np.r_[0, np.cumsum(counts)[:-1]]
        leaf_offset = np.r_[0, np.cumsum([tab.shape[0] for tab in tables])[:-1]]
        # The whole forest as flat arrays: global node ids, and one table of leaf contributions.
        self.roots = node_offset.astype(np.int64)
        # Children of node i at 2i (right) and 2i + 1 (left, taken when the value is <= the threshold);
        # a leaf is its own child, so a walk can take one more step from any node without a test.
        own = np.arange(int(counts.sum()), dtype=np.int64)
        with_offsets = list(zip(self.trees, node_offset, strict=True))
        left = np.concatenate([t.children_left + o for t, o in with_offsets]).astype(np.int64)
        right = np.concatenate([t.children_right + o for t, o in with_offsets]).astype(np.int64)
        leaf = np.concatenate([t.children_left < 0 for t in self.trees])
        self.children = np.stack([np.where(leaf, own, right), np.where(leaf, own, left)], axis=1).ravel()
        self.feature = np.concatenate([np.maximum(t.feature, 0) for t in self.trees]).astype(np.int64)
        self.threshold = np.concatenate([t.threshold for t in self.trees]).astype(np.float64)
        # Where a missing value (NaN) goes at each split, as the fitted tree decided.
        self.missing_left = np.concatenate([np.asarray(t.missing_go_to_left, dtype=bool) for t in self.trees])
        self.p1 = np.concatenate(p1s)
        self.leaf_row = np.concatenate([np.where(r >= 0, r + o, -1)
                                        for r, o in zip(rows, leaf_offset, strict=True)]).astype(np.int64)
        self.table = np.concatenate(tables)
        self.node_offset = self.roots
        self.max_depth = max(int(t.max_depth) for t in self.trees)
        self.bias = float(np.mean(self.p1[self.roots]))

    def _node_p1(self, tree) -> np.ndarray:
        v = tree.value[:, 0, :]
        return v[:, self.positive] / v.sum(axis=1)

    def _leaf_table(self, tree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p1 per node, row of each node in the leaf table, contributions per leaf as float32)."""
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
        """Global node id of each row's leaf in each tree, shape (rows, trees)."""
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        if X32.shape[0] <= SMALL:
            return self._walk(X32)
        return np.column_stack([t.apply(X32) for t in self.trees]) + self.node_offset

    def _walk(self, X32: np.ndarray) -> np.ndarray:
        # scikit-learn compares the float32 input with the float64 threshold: do the same.
        X = X32.astype(np.float64)
        node = np.broadcast_to(self.roots, (X.shape[0], self.roots.size)).copy()
        flat, row = X.ravel(), np.arange(X.shape[0])[:, None] * X.shape[1]
        missing = bool(np.isnan(X).any())
        for depth in range(self.max_depth):
            x = flat[row + self.feature[node]]
            left = x <= self.threshold[node]
            if missing:
                left |= np.isnan(x) & self.missing_left[node]
            step = self.children[2 * node + left]
            if depth % 4 == 3 and np.array_equal(step, node):  # every row has reached a leaf in every tree
                break
            node = step
        return node

    def explain(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(forest probability [n], contributions [n, n_features]) for the positive class."""
        n = X.shape[0]
        if n <= CHUNK_ROWS or self.n_threads == 1:
            return self._explain_chunk(X)
        bounds = [(lo, min(n, lo + CHUNK_ROWS)) for lo in range(0, n, CHUNK_ROWS)]
        prob = np.empty(n)
        contrib = np.empty((n, self.n_features), dtype=np.float64)
        with ThreadPoolExecutor(self.n_threads) as pool:  # the compiled apply releases the GIL
            chunks = pool.map(lambda b: self._explain_chunk(X[b[0]:b[1]]), bounds)
            for (lo, hi), (p, c) in zip(bounds, chunks, strict=True):
                prob[lo:hi], contrib[lo:hi] = p, c
        return prob, contrib

    def _explain_chunk(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        leaves = self.leaves(X)
        k = leaves.shape[1]
        prob = self.p1[leaves].sum(axis=1) / k
        rows = self.leaf_row[leaves]
        if leaves.shape[0] <= SMALL:
            contrib = self.table[rows].sum(axis=1, dtype=np.float64) / k
        else:
            contrib = np.zeros((leaves.shape[0], self.n_features), dtype=np.float64)
            for t in range(k):  # one tree at a time keeps the gather small
                contrib += self.table[rows[:, t]]
            contrib /= k
        return prob, contrib
