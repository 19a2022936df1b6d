"""Micro-batching: concurrent requests share model calls, each gets its own answers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edgeroute.batching import MicroBatcher


class SlowModel:
    """Answers each text with its upper case after ``delay_s``, recording every call."""

    def __init__(self, delay_s: float = 0.05, fail_on: str | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.calls: list[list[str]] = []
        self.keys: list[object] = []
        self.lock = threading.Lock()
        self.running = self.most_at_once = 0

    def __call__(self, texts: list[str], key: object = None) -> list[str]:
        with self.lock:
            self.calls.append(list(texts))
            self.keys.append(key)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.delay_s)
        with self.lock:
            self.running -= 1
        if self.fail_on in texts:
            raise RuntimeError(f"cannot route {self.fail_on!r}")
        return [text.upper() for text in texts]


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_calls_and_get_their_own_answers():
    model = SlowModel()

    async def main():
        batcher = MicroBatcher(model, max_texts=64)
        requests = [[f"r{i}-a", f"r{i}-b"] if i % 3 == 0 else [f"r{i}"] for i in range(20)]
        first = asyncio.create_task(batcher.submit(requests[0]))
        await asyncio.sleep(0.01)  # the first request is on the model: the others queue meanwhile
        answers = await asyncio.gather(first, *(batcher.submit(texts) for texts in requests[1:]))
        await batcher.close()
        return requests, answers

    requests, answers = run(main())
    assert answers == [[text.upper() for text in texts] for texts in requests]
    assert model.calls == [requests[0], [text for texts in requests[1:] for text in texts]]


def test_a_batch_holds_at_most_max_texts_but_never_splits_a_request():
    model = SlowModel(delay_s=0.02)

    async def main():
        batcher = MicroBatcher(model, max_texts=4)
        requests = [[f"{i}-{j}" for j in range(3)] for i in range(6)] + [[f"big-{j}" for j in range(9)]]
        answers = await asyncio.gather(*(batcher.submit(texts) for texts in requests))
        await batcher.close()
        return requests, answers

    requests, answers = run(main())
    assert answers == [[text.upper() for text in texts] for texts in requests]
    # Two 3-text requests do not fit in 4: each goes alone; the 9-text one goes alone, whole.
    assert model.calls == [texts for texts in requests]


def test_requests_for_different_models_never_share_a_batch():
    model = SlowModel()

    async def main():
        batcher = MicroBatcher(model, max_texts=64)
        first = asyncio.create_task(batcher.submit(["warm"], "champion"))
        await asyncio.sleep(0.01)
        keys = ["champion", "canary", "champion", "champion", "canary"]
        answers = await asyncio.gather(first, *(batcher.submit([f"{k}-{i}"], k) for i, k in enumerate(keys)))
        await batcher.close()
        return answers

    answers = run(main())
    assert answers[1:] == [
        [f"{k}-{i}".upper()] for i, k in enumerate(["champion", "canary", "champion", "champion", "canary"])
    ]
    for texts, key in zip(model.calls, model.keys, strict=True):
        assert all(text.startswith(key) or text == "warm" for text in texts), (texts, key)
    assert ["champion-2", "champion-3"] in model.calls, "same-model requests queued together still share"


def test_a_failure_reaches_every_request_of_its_batch_and_the_next_batch_still_runs():
    model = SlowModel(fail_on="poison")

    async def main():
        batcher = MicroBatcher(model)
        first = asyncio.create_task(batcher.submit(["warm-up"]))
        await asyncio.sleep(0.01)  # the warm-up call is running: the next three queue together
        same_batch = [batcher.submit(["ok"]), batcher.submit(["poison"]), batcher.submit(["fine"])]
        results = await asyncio.gather(first, *same_batch, return_exceptions=True)
        after = await batcher.submit(["later"])
        await batcher.close()
        return results, after

    results, after = run(main())
    assert results[0] == ["WARM-UP"]
    assert all(isinstance(r, RuntimeError) and "poison" in str(r) for r in results[1:])
    assert after == ["LATER"]


def test_a_request_given_up_on_does_not_disturb_the_others():
    model = SlowModel(delay_s=0.1)

    async def main():
        batcher = MicroBatcher(model)
        running = asyncio.create_task(batcher.submit(["first"]))
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(["abandoned"]), 0.02)
        kept = await batcher.submit(["kept"])
        answers = await running, kept
        await batcher.close()
        return answers

    assert run(main()) == (["FIRST"], ["KEPT"])
    assert ["abandoned"] not in model.calls  # cancelled before its batch ran: never routed


def test_waiting_gathers_requests_that_arrive_within_max_wait():
    model = SlowModel(delay_s=0.0)

    async def main(wait_s):
        batcher = MicroBatcher(model, max_wait_s=wait_s)

        async def later(text, delay):
            await asyncio.sleep(delay)
            return await batcher.submit([text])

        await asyncio.gather(later("a", 0), later("b", 0.02), later("c", 0.04))
        await batcher.close()

    run(main(0.2))
    assert model.calls == [["a", "b", "c"]]
    model.calls.clear()
    run(main(0.0))
    assert model.calls == [["a"], ["b"], ["c"]]


def test_two_workers_run_two_batches_at_once():
    model = SlowModel(delay_s=0.2)

    async def main():
        batcher = MicroBatcher(model, max_texts=2, workers=2)
        answers = await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(4)))
        await batcher.close()
        return answers

    assert run(main()) == [[f"T{i}"] for i in range(4)]
    assert sorted(map(sorted, model.calls)) == [["t0", "t1"], ["t2", "t3"]]
    assert model.most_at_once == 2  # the two batches ran side by side


@pytest.mark.parametrize("kwargs", [{"max_texts": 0}, {"max_wait_s": -1}, {"workers": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MicroBatcher(SlowModel(), **kwargs)
