"""serving.batching.Gatherer: concurrent requests answered by one call, each getting its own answer."""

from __future__ import annotations

import asyncio

import pytest

from serving.batching import Gatherer


def test_concurrent_requests_are_answered_together_in_order():
    calls: list[list[int]] = []

    def answer(requests):
        calls.append(list(requests))
        return [r * 10 for r in requests]

    async def main():
        gatherer = Gatherer(answer)
        return await asyncio.gather(*(gatherer.submit(k) for k in range(5)))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert calls == [[0, 1, 2, 3, 4]]


def test_a_lone_request_is_answered_without_waiting_for_company():
    async def main():
        gatherer = Gatherer(lambda requests: [r + 1 for r in requests])
        return await asyncio.wait_for(gatherer.submit(41), timeout=1)

    assert asyncio.run(main()) == 42


def test_batches_are_capped():
    calls: list[int] = []

    def answer(requests):
        calls.append(len(requests))
        return list(requests)

    async def main():
        gatherer = Gatherer(answer, max_size=4)
        return await asyncio.gather(*(gatherer.submit(k) for k in range(10)))

    assert asyncio.run(main()) == list(range(10))
    assert max(calls) <= 4 and sum(calls) == 10


def test_a_failure_reaches_every_waiting_request_and_the_next_batch_still_works():
    state = {"fail": True}

    def answer(requests):
        if state["fail"]:
            raise RuntimeError("model exploded")
        return list(requests)

    async def main():
        gatherer = Gatherer(answer)
        first = await asyncio.gather(*(gatherer.submit(k) for k in range(3)), return_exceptions=True)
        state["fail"] = False
        second = await asyncio.gather(*(gatherer.submit(k) for k in range(3)))
        return first, second

    first, second = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) and "exploded" in str(e) for e in first)
    assert second == [0, 1, 2]


def test_a_wrong_number_of_answers_is_an_error_not_a_mismatch():
    async def main():
        gatherer = Gatherer(lambda requests: [1])
        return await asyncio.gather(*(gatherer.submit(k) for k in range(2)), return_exceptions=True)

    assert all(isinstance(e, RuntimeError) for e in asyncio.run(main()))


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="max_size"):
        Gatherer(lambda r: r, max_size=0)
