"""The service's identity index (serving.lookup.IdentityIndex): a bundle's map written sorted
(training.bundle.sort_identity), the same map in any order and the map read back from the bundle's
columns (memory-mapped, no pandas) find the same customers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.runtime import IdentityIndex
from training.bundle import sort_identity
from training.frames import read_columns, write_frame

pytestmark = pytest.mark.unit


def test_a_sorted_and_a_shuffled_map_find_the_same_customers(tmp_path):
    rng = np.random.default_rng(3)
    n = 5_000
    frame = pd.DataFrame({
        "key_type": pd.Categorical(rng.choice(["email", "phone", "account"], n)),
        # Few distinct high words: the low word decides often.
        "hash_high": rng.integers(0, 40, n).astype(np.uint64) << np.uint64(58),
        "hash_low": rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64),
        "customer_id": np.arange(n, dtype=np.int64),
    })
    ordered = sort_identity(frame)
    assert ordered["key_type"].cat.codes.is_monotonic_increasing
    write_frame(ordered, tmp_path / "identity", index=False)
    indexes = [IdentityIndex(ordered), IdentityIndex(frame), IdentityIndex(frame.astype({"key_type": str})),
               IdentityIndex.from_columns(read_columns(tmp_path / "identity"))]
    for row in frame.sample(300, random_state=1).itertuples():
        key = f"{row.key_type}:{int(row.hash_high):016x}{int(row.hash_low):016x}"
        assert [index.customer(key) for index in indexes] == [row.customer_id] * 4
    missing = f"email:{0:016x}{12345:016x}"
    assert [index.customer(missing) for index in indexes] == [None] * 4
    assert indexes[0].customer(f"device:{0:016x}{0:016x}") is None
