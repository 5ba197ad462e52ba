"""Similar items for product pages ("customers also bought"), from the fitted candidate models.

The item-KNN neighbours of an item first, topped up with its ALS neighbours (cosine of the item
factors) when it has too few: a rarely bought item still gets a list.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from training.recommend.candidate_models import CandidateModels

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: The source of a similar item: a co-purchase (item-KNN) or the factorisation (ALS).
CO_PURCHASE, MODEL = "co-purchase", "model"


def similar_items(models: CandidateModels, item: int, allowed: BoolArray,
                  n: int) -> tuple[IntArray, FloatArray, NDArray[np.object_]]:
    """The ``n`` items most like ``item``: its item-KNN neighbours by similarity (ties to the lower
    position), then, when they are fewer than ``n``, the allowed items of largest positive cosine
    between ALS item factors.

    Parameters
    ----------
    models
        The fitted candidate models.
    item
        The item's position (never in its own list).
    allowed
        Mask of the items that may be listed.
    n
        Most items.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]
        ``(item positions, scores, sources)``, best first; sources :data:`CO_PURCHASE` or :data:`MODEL`.
    """
    allowed = allowed.copy()
    allowed[item] = False
    sim = models.similarity
    neighbours = sim.indices[sim.indptr[item] : sim.indptr[item + 1]].astype(np.int64)
    values = sim.data[sim.indptr[item] : sim.indptr[item + 1]]
    keep = allowed[neighbours] & (values > 0)
    order = np.lexsort((neighbours[keep], -values[keep]))[:n]
    items, scores = list(neighbours[keep][order]), list(values[keep][order])
    sources = [CO_PURCHASE] * len(items)
    if len(items) < n:
        factors = models.item_factors.astype(np.float64)
        norms = np.linalg.norm(factors, axis=1)
        cosine = factors @ factors[item] / np.where(norms * norms[item] > 0, norms * norms[item], 1.0)
        cosine[~allowed] = -np.inf
        cosine[items] = -np.inf
        extra = np.argsort(-cosine, kind="stable")[: n - len(items)]
        extra = extra[np.isfinite(cosine[extra]) & (cosine[extra] > 0)]  # only items that are alike
        items += list(extra)
        scores += list(cosine[extra])
        sources += [MODEL] * len(extra)
    return (np.asarray(items, dtype=np.int64), np.asarray(scores, dtype=np.float64),
            np.asarray(sources, dtype=object))
