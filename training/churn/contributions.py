"""Path contributions of a LightGBM booster: each feature's share of each prediction, in raw score.

Saabas' decomposition ("treeinterpreter"; Saabas 2014, discussed in Lundberg et al. 2020, section
2): in every tree, a row walks from the root to a leaf; each step from a node to the child taken
changes the node value, and that change is credited to the node's split feature. Along a path the
changes telescope, so the contributions plus the bias add up to the raw score, as
``pred_contrib=True`` does. Unlike TreeSHAP, a feature's credit depends on where in the path it is
split, not on every order of the features, so it costs a walk down each tree, not a sum over
subsets. :class:`PathContributions` computes it; categorical splits are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
LeafArray = NDArray[np.int32]

#: LightGBM's kZeroThreshold (a float literal 1e-35f held in a double).
ZERO_THRESHOLD = float(np.float32(1e-35))
#: Rows walked together by :meth:`PathContributions.walk`: large enough to amortise numpy's per-call
#: cost, small enough to stay in cache.
CHUNK_ROWS = 65_536
#: Leaf entries (rows x trees) per chunk of :meth:`PathContributions.raw_score_and_contributions`:
#: LightGBM's leaf matrix of a chunk (8 bytes an entry, then 4 as leaf numbers) stays near 25 MB a
#: thread, and the chunk's sums (rows x features) fit in cache.
CHUNK_LEAVES = 1 << 21


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


def _leaf_table(tree: _Tree, n_features: int) -> FloatArray:
    """(leaves, n_features + 1): per leaf (LightGBM's ``leaf_index``), the credits of its path per
    feature (the changes of the node value, added from the root down), then the leaf value."""
    table = np.zeros((tree.n_splits + 1, n_features + 1), dtype=np.float64)
    stack = [(0, np.zeros(n_features, dtype=np.float64))]
    while stack:
        node, credits = stack.pop()
        if node >= tree.n_splits:  # a leaf (or the root of a tree without splits)
            leaf = node - tree.n_splits if tree.n_splits else 0
            table[leaf, :-1] = credits
            table[leaf, -1] = tree.value[node]
            continue
        for child in (tree.left[node], tree.right[node]):
            below = credits.copy()
            below[tree.feature[node]] += tree.value[child] - tree.value[node]
            stack.append((int(child), below))
    return table


class PathContributions:
    """Per-prediction path contributions (Saabas) of a LightGBM booster's raw score.

    Built once from a booster (its trees are read into per-leaf tables; the booster is kept to find
    the leaves); :meth:`contributions` has the layout of ``booster.predict(x, pred_contrib=True)``
    for a binary or regression model: one column per feature, then the bias (the sum of the trees'
    root values).

    A node value is LightGBM's ``internal_value`` of a split node, ``leaf_value`` of a leaf. A
    tree's credits depend only on the leaf a row reaches, so the trees are read once
    (``Booster.dump_model()``) into a table that holds, for every leaf of every tree, the credits
    of its path per feature (the changes along the path added from the root down) and the leaf
    value. Scoring asks LightGBM for the leaf of each row in each tree (``predict(x,
    pred_leaf=True)``, its C++ predictor) and adds up the table rows the row reaches, tree after
    tree: a product of the sparse one-hot matrix of the leaves (one entry per row and tree) with the
    dense table, by chunks of rows on ``num_threads`` threads. The leaf-value column of the sum is
    the raw score, added in LightGBM's order (from 0, tree after tree), so it is bit for bit
    ``predict(x, raw_score=True)``. Each row is summed on its own, in the same order whatever the
    chunks and threads: the result is deterministic.

    Raises
    ------
    ValueError
        A booster with more than one tree per iteration (multi-class).
    """

    def __init__(self, booster: lgb.Booster) -> None:
        model = booster.dump_model()
        if int(model.get("num_tree_per_iteration", 1)) != 1:
            raise ValueError("path contributions support one tree per iteration (binary or regression) only")
        self.booster = booster
        self.n_features = int(model["max_feature_idx"]) + 1
        self.trees = tuple(_read_tree(t["tree_structure"], int(t["num_leaves"])) for t in model["tree_info"])
        self.bias = float(sum(tree.value[0] for tree in self.trees))
        tables = [_leaf_table(tree, self.n_features) for tree in self.trees]
        sizes = np.array([len(table) for table in tables], dtype=np.int64)
        #: Row of each tree's first leaf in :attr:`leaf_table`.
        self.leaf_offsets = (np.cumsum(sizes) - sizes).astype(np.int32)
        #: (all leaves, n_features + 1): every tree's :func:`_leaf_table`, tree after tree.
        self.leaf_table = np.ascontiguousarray(
            np.vstack(tables) if tables else np.zeros((0, self.n_features + 1)), dtype=np.float64)

    def contributions(self, x: FloatArray, *, num_threads: int = 1) -> FloatArray:
        """(n, n_features + 1): each feature's contribution to each row's raw score, the bias last.
        A row's values add up to its raw score (``predict(x, raw_score=True)``), to rounding.

        Parameters
        ----------
        x
            (n, n_features) feature matrix, in the booster's column order (read as float64).
        num_threads
            Threads for LightGBM's leaf prediction and the chunks' products.

        Returns
        -------
        numpy.ndarray
            float64 of shape (n, n_features + 1).

        Raises
        ------
        ValueError
            ``x`` is not a matrix with ``n_features`` columns.
        """
        return self.raw_score_and_contributions(x, num_threads=num_threads)[1]

    def raw_score_and_contributions(self, x: FloatArray, *, num_threads: int = 1) -> tuple[FloatArray, FloatArray]:
        """The raw score of each row, bit for bit ``booster.predict(x, raw_score=True)``, and its
        :meth:`contributions`, from one pass of LightGBM's leaf prediction.

        Parameters
        ----------
        x, num_threads
            As in :meth:`contributions`.

        Returns
        -------
        tuple[numpy.ndarray, numpy.ndarray]
            ``(raw_score, contributions)``: float64 of shapes (n,) and (n, n_features + 1).

        Raises
        ------
        ValueError
            ``x`` is not a matrix with ``n_features`` columns.
        """
        x = self._checked(x)
        n, n_trees = x.shape[0], len(self.trees)
        out = np.empty((n, self.n_features + 1), dtype=np.float64)
        rows = max(1, CHUNK_LEAVES // max(n_trees, 1))
        ones = np.ones(min(n, rows) * n_trees, dtype=np.float64)

        def chunk(start: int) -> None:
            stop = min(start + rows, n)
            leaves = self.leaves(x[start:stop])
            leaves += self.leaf_offsets  # row of the leaf in the table
            m = stop - start
            one_hot = sp.csr_matrix(
                (ones[: m * n_trees], leaves.reshape(-1), np.arange(0, m * n_trees + 1, n_trees, dtype=np.int32)),
                shape=(m, self.leaf_table.shape[0]),
            )
            # Row by row, the table rows of the leaves reached are added in tree order, from zero.
            out[start:stop] = one_hot @ self.leaf_table

        starts = range(0, n, rows)
        if num_threads > 1 and len(starts) > 1:
            # LightGBM's prediction and scipy's sparse product release the GIL: chunks share the cores.
            with ThreadPoolExecutor(max_workers=num_threads) as pool:
                list(pool.map(chunk, starts))
        else:
            for start in starts:
                chunk(start)
        raw_score = out[:, -1].copy()
        out[:, -1] = self.bias
        return raw_score, out

    def leaves(self, x: FloatArray, *, num_threads: int = 1) -> LeafArray:
        """(n, n_trees): the leaf each row reaches in each tree, LightGBM's ``predict(x, pred_leaf=True)``.

        Parameters
        ----------
        x, num_threads
            As in :meth:`contributions`.

        Returns
        -------
        numpy.ndarray
            int32 leaf numbers within each tree, shape (n, n_trees), C-contiguous.

        Raises
        ------
        ValueError
            ``x`` has the wrong shape, or the booster predicts another number of trees than its dump.
        """
        x = self._checked(x)
        if x.shape[0] == 0:
            return np.zeros((0, len(self.trees)), dtype=np.int32)
        leaves = np.asarray(self.booster.predict(x, pred_leaf=True, num_threads=num_threads), dtype=np.int32)
        leaves = np.ascontiguousarray(leaves.reshape(x.shape[0], -1))
        if leaves.shape[1] != len(self.trees):
            raise ValueError(f"the booster predicts leaves of {leaves.shape[1]} trees, its dump holds "
                             f"{len(self.trees)}")
        return leaves

    def walk(self, x: FloatArray) -> tuple[FloatArray, IntArray]:
        """The reference: :meth:`contributions` and :meth:`leaves` of ``x`` computed by walking the rows
        down every tree in numpy, one depth level at a time, crediting each step as it goes (on one
        thread, several times the work of the tables it checks).

        It routes rows exactly as LightGBM does (``Tree::NumericalDecision`` in LightGBM's
        ``tree.h``): a value with ``|v| <= kZeroThreshold`` (1e-35) is zero (the predictor drops it
        as a sparse zero); NaN is treated as zero unless the split's ``missing_type`` is ``NaN``; a
        missing value (NaN under ``missing_type`` ``NaN``, zero under ``Zero``) follows
        ``default_left``; any other value goes left when ``v <= threshold``. So the leaves it reaches
        are those of ``pred_leaf=True``. The walk adds a feature's credits one step at a time, the
        tables add a tree's credits to a feature as one number: the two agree to rounding (a few
        units in the last place), not bit for bit.

        Parameters
        ----------
        x
            (n, n_features) feature matrix.

        Returns
        -------
        tuple[numpy.ndarray, numpy.ndarray]
            ``(contributions, leaves)``: float64 (n, n_features + 1) and int64 (n, n_trees).

        Raises
        ------
        ValueError
            ``x`` is not a matrix with ``n_features`` columns.
        """
        x = self._checked(x)
        out = np.zeros((x.shape[0], self.n_features + 1), dtype=np.float64)
        leaves = np.zeros((x.shape[0], len(self.trees)), dtype=np.int64)
        for start in range(0, x.shape[0], CHUNK_ROWS):
            stop = start + CHUNK_ROWS
            self._walk(x[start:stop], out[start:stop], leaves[start:stop])
        out[:, -1] = self.bias
        return out, leaves

    def _checked(self, x: FloatArray) -> FloatArray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix with {self.n_features} feature columns, got shape {x.shape}")
        return x

    def _walk(self, x: FloatArray, out: FloatArray, leaves: IntArray) -> None:
        """Walk the rows of ``x`` down every tree, one depth level at a time, adding each step's change
        of the node value to ``out`` (flat index row * width + feature) and recording the leaves."""
        n, width = x.shape[0], self.n_features + 1
        # LightGBM's predictor drops |v| <= kZeroThreshold as a sparse zero: route those as 0.
        x = np.where(np.abs(x) <= ZERO_THRESHOLD, 0.0, x).ravel()
        flat_out = out.reshape(-1)
        all_rows = np.arange(n, dtype=np.int64)
        x_base = all_rows * self.n_features
        for t, tree in enumerate(self.trees):
            if tree.n_splits == 0:
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
                flat_out[rows * width + feature] += tree.value[child] - tree.value[node]
                at_leaf = child >= tree.n_splits
                leaves[rows[at_leaf], t] = child[at_leaf] - tree.n_splits
                inner = ~at_leaf
                rows, node = rows[inner], child[inner]
