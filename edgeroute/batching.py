"""Micro-batching: concurrent requests share one model call.

A worker takes the oldest waiting request and the requests queued behind it while they
fit in ``max_texts`` (a larger request goes alone; requests are never split), optionally
waiting ``max_wait_s`` for more, and routes them in one call on a thread. At low load a
request runs alone at once; under load, the requests that arrive while the model is busy
form the next batch, so throughput grows with load instead of queueing. With ``workers`` > 1,
that many batches run at once (one per core the model may use). A request's ``key`` (the model
that must answer it, when a service serves two) is passed to ``route``; requests of different
keys never share a batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from edgeroute.config import BatchingConfig

T = TypeVar("T")
Item = tuple[list[str], Any, "asyncio.Future"]

_DEFAULTS = BatchingConfig()


class MicroBatcher(Generic[T]):
    """Coalesces ``submit`` calls into calls of ``route`` over the concatenated texts."""

    def __init__(
        self,
        route: Callable[[list[str], Any], Sequence[T]],
        *,
        max_texts: int = _DEFAULTS.max_texts,
        max_wait_s: float = _DEFAULTS.wait_ms / 1000,
        workers: int = 1,
    ) -> None:
        for name, value, least in (
            ("max_texts", max_texts, 1),
            ("max_wait_s", max_wait_s, 0),
            ("workers", workers, 1),
        ):
            if value < least:
                raise ValueError(f"{name} must be at least {least}, not {value}")
        self.route = route
        self.max_texts = max_texts
        self.max_wait_s = max_wait_s
        self.workers = workers
        self._queue: asyncio.Queue[Item] | None = None
        self._tasks: list[asyncio.Task] = []
        # Requests taken from the queue that did not fit in their batch: first in the next one.
        self._carried: deque[Item] = deque()

    async def submit(self, texts: Sequence[str], key: Any = None) -> list[T]:
        """The decisions for ``texts``, in order, routed together with whatever else of the same
        ``key`` is waiting."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._tasks = [
                asyncio.create_task(self._run(self._queue), name=f"edgeroute-micro-batcher-{i}")
                for i in range(self.workers)
            ]
        future: asyncio.Future[list[T]] = asyncio.get_running_loop().create_future()
        await self._queue.put((list(texts), key, future))
        return await future

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queue, self._tasks = None, []
        self._carried.clear()

    async def _next(self, queue: asyncio.Queue, timeout: float | None) -> tuple | None:
        """A request carried over from a full batch, else the next queued one within ``timeout``."""
        if self._carried:
            return self._carried.popleft()
        if timeout is None:
            return await queue.get()
        if not queue.empty():
            return queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self, queue: asyncio.Queue) -> list[Item]:
        """The oldest request and those behind it of its key while they fit in ``max_texts`` (a
        larger request goes alone; requests are never split)."""
        batch = [await self._next(queue, None)]
        size, key = len(batch[0][0]), batch[0][1]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_texts:
            item = await self._next(queue, deadline - asyncio.get_running_loop().time())
            if item is None:
                break
            if size + len(item[0]) > self.max_texts or item[1] is not key:
                self._carried.append(item)
                break
            batch.append(item)
            size += len(item[0])
        return batch

    async def _run(self, queue: asyncio.Queue) -> None:
        while True:
            batch = [item for item in await self._collect(queue) if not item[2].done()]
            if not batch:
                continue
            texts = [text for request, _, _ in batch for text in request]
            try:
                decisions = await asyncio.to_thread(self.route, texts, batch[0][1])
            except Exception as exc:  # every waiting request gets the failure, the worker goes on
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for request, _, future in batch:
                if not future.done():
                    future.set_result(list(decisions[start : start + len(request)]))
                start += len(request)
