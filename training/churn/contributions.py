"""Path contributions of a LightGBM booster: each feature's share of each prediction, in raw score.

Saabas' decomposition ("treeinterpreter"; Saabas 2014, discussed in Lundberg et al. 2020, section
2): in every tree, a row walks from the root to a leaf; each step from a node to the child taken
changes the node value (LightGBM's ``internal_value`` of a split node, ``leaf_value`` of a leaf),
and that change is credited to the node's split feature. Along a path the changes telescope, so a
tree's credits plus its root value are its leaf value, and over all trees the contributions plus
the sum of the root values (the bias) are the raw score, exactly as ``pred_contrib=True`` adds up.
Unlike TreeSHAP, the credit a feature gets depends on where in the path it is split, not on every
order of the features; it costs a walk down each tree, not a sum over subsets.

:class:`PathContributions` reads the trees once (``Booster.dump_model()``) into flat per-tree arrays
and walks all rows together with numpy, one tree and one depth level at a time. Rows go down a split
exactly as LightGBM sends them (``Tree::NumericalDecision`` in LightGBM's ``tree.h``): a value with
``|v| <= kZeroThreshold`` (1e-35) is zero (the predictor drops it as a sparse zero); NaN is treated
as zero unless the split's ``missing_type`` is ``NaN``; a missing value (NaN under ``missing_type``
``NaN``, zero under ``Zero``) follows ``default_left``; any other value goes left when
``v <= threshold``. So the leaf a row reaches is the leaf of ``predict(x, pred_leaf=True)``.
Categorical splits are not supported (the churn model has numeric features only).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: LightGBM's kZeroThreshold (a float literal 1e-35f held in a double).
ZERO_THRESHOLD = float(np.float32(1e-35))
#: Rows walked together: large enough to amortise numpy's per-call cost, small enough to stay in cache.
CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class _Tree:
    """One tree as flat arrays over its nodes: split nodes 0..L-2 (LightGBM's ``split_index``), then
    leaves L-1..2L-2 (``leaf_index`` + L - 1). Leaves have no feature and no children."""

    feature: IntArray  # split feature per split node
    threshold: FloatArray
    nan_left: NDArray[np.bool_]  # where a NaN goes (after LightGBM's NaN -> 0 for non-NaN splits)
    zero_left: NDArray[np.bool_]  # where a zero goes
    left: IntArray
    right: IntArray
    value: FloatArray  # internal_value of split nodes, leaf_value of leaves (every node)
    n_splits: int


def _read_tree(structure: Mapping[str, Any], n_leaves: int) -> _Tree:
    n_splits = n_leaves - 1
    feature = np.zeros(n_splits, dtype=np.int64)
    threshold = np.zeros(n_splits, dtype=np.float64)
    nan_left = np.zeros(n_splits, dtype=bool)
    zero_left = np.zeros(n_splits, dtype=bool)
    left = np.zeros(n_splits, dtype=np.int64)
    right = np.zeros(n_splits, dtype=np.int64)
    value = np.zeros(n_splits + n_leaves, dtype=np.float64)

    def index(node: Mapping[str, Any]) -> int:
        return int(node["split_index"]) if "split_index" in node else n_splits + int(node.get("leaf_index", 0))

    stack = [structure]
    while stack:
        node = stack.pop()
        i = index(node)
        if "split_index" not in node:
            value[i] = float(node["leaf_value"])
            continue
        if node["decision_type"] != "<=":
            raise ValueError(f"path contributions support numeric splits only, got decision_type "
                             f"{node['decision_type']!r}")
        value[i] = float(node["internal_value"])
        feature[i] = int(node["split_feature"])
        thr = float(node["threshold"])
        threshold[i] = thr
        missing, default_left = node["missing_type"], bool(node["default_left"])
        nan_left[i] = default_left if missing in ("NaN", "Zero") else 0.0 <= thr
        zero_left[i] = default_left if missing == "Zero" else 0.0 <= thr
        left[i], right[i] = index(node["left_child"]), index(node["right_child"])
        stack += [node["left_child"], node["right_child"]]
    return _Tree(feature, threshold, nan_left, zero_left, left, right, value, n_splits)


class PathContributions:
    """Per-prediction path contributions (Saabas) of a LightGBM booster's raw score.

    Built once from a booster (its trees are read into arrays; the booster is not kept);
    :meth:`contributions` has the layout of ``booster.predict(x, pred_contrib=True)`` for a binary
    or regression model: one column per feature, then the bias (the sum of the trees' root values).
    """

    def __init__(self, booster: lgb.Booster) -> None:
        model = booster.dump_model()
        if int(model.get("num_tree_per_iteration", 1)) != 1:
            raise ValueError("path contributions support one tree per iteration (binary or regression) only")
        self.n_features = int(model["max_feature_idx"]) + 1
        self.trees = tuple(_read_tree(t["tree_structure"], int(t["num_leaves"])) for t in model["tree_info"])
        self.bias = float(sum(tree.value[0] for tree in self.trees))

    def contributions(self, x: FloatArray, *, num_threads: int = 1) -> FloatArray:
        """(n, n_features + 1): each feature's contribution to each row's raw score, the bias last.
        A row's values add up to its raw score (``predict(x, raw_score=True)``)."""
        x = self._checked(x)
        out = np.zeros((x.shape[0], self.n_features + 1), dtype=np.float64)
        self._run(x, out, None, num_threads)
        out[:, -1] = self.bias
        return out

    def leaves(self, x: FloatArray) -> IntArray:
        """(n, n_trees): the leaf each row reaches in each tree (``predict(x, pred_leaf=True)``)."""
        x = self._checked(x)
        leaves = np.zeros((x.shape[0], len(self.trees)), dtype=np.int64)
        self._run(x, None, leaves, 1)
        return leaves

    def _checked(self, x: FloatArray) -> FloatArray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix with {self.n_features} feature columns, got shape {x.shape}")
        return x

    def _run(self, x: FloatArray, out: FloatArray | None, leaves: IntArray | None, num_threads: int) -> None:
        starts = range(0, x.shape[0], CHUNK_ROWS)

        def chunk(start: int) -> None:
            stop = start + CHUNK_ROWS
            self._walk(x[start:stop], None if out is None else out[start:stop],
                       None if leaves is None else leaves[start:stop])

        if num_threads > 1 and len(starts) > 1:
            # numpy's element loops release the GIL: chunks on threads share the cores.
            with ThreadPoolExecutor(max_workers=num_threads) as pool:
                list(pool.map(chunk, starts))
        else:
            for start in starts:
                chunk(start)

    def _walk(self, x: FloatArray, out: FloatArray | None, leaves: IntArray | None) -> None:
        """Walk the rows of ``x`` down every tree, one depth level at a time, adding each step's change
        of the node value to ``out`` (flat index row * width + feature) and recording the leaves."""
        n, width = x.shape[0], self.n_features + 1
        # LightGBM's predictor drops |v| <= kZeroThreshold as a sparse zero: route those as 0.
        x = np.where(np.abs(x) <= ZERO_THRESHOLD, 0.0, x).ravel()
        flat_out = None if out is None else out.reshape(-1)
        all_rows = np.arange(n, dtype=np.int64)
        x_base = all_rows * self.n_features
        for t, tree in enumerate(self.trees):
            if tree.n_splits == 0:
                if leaves is not None:
                    leaves[:, t] = 0
                continue
            rows = all_rows
            node = np.zeros(n, dtype=np.int64)
            while rows.size:
                feature = tree.feature[node]
                v = x[x_base[rows] + feature]
                go_left = np.where(np.isnan(v), tree.nan_left[node],
                                   np.where(v == 0.0, tree.zero_left[node], v <= tree.threshold[node]))
                child = np.where(go_left, tree.left[node], tree.right[node])
                if flat_out is not None:
                    flat_out[rows * width + feature] += tree.value[child] - tree.value[node]
                at_leaf = child >= tree.n_splits
                if leaves is not None:
                    leaves[rows[at_leaf], t] = child[at_leaf] - tree.n_splits
                inner = ~at_leaf
                rows, node = rows[inner], child[inner]
