"""Rows that wait for their database: an append-only JSON-lines file with a bound on its size.

A trail whose database is away (`edgeroute.pgtrail`) appends each row here, as it would have
been written (text hashed and masked, never raw), and a flusher takes them from the head, in
order, once the database is back. Rows taken are only forgotten when the file is emptied, so a
process killed mid-flush writes them again at its next start; the database skips those it holds.

Past ``max_bytes`` the spool refuses (`SpoolFull`), or drops its oldest rows (``drop_oldest``),
counting them in ``dropped``. A row torn by a crash mid-write is cut off when the file is opened.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Literal

OnFull = Literal["refuse", "drop_oldest"]


class SpoolFull(RuntimeError):
    """The spool is at its bound and refuses rows."""


class Spool:
    """The waiting rows of one trail (each a tuple whose first field is its request id)."""

    def __init__(self, path: Path, max_bytes: int, on_full: OnFull = "refuse") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_bytes, self.on_full = path, max_bytes, on_full
        self.dropped = 0
        self._lock = threading.Lock()
        self._file = open(path, "a+b")  # noqa: SIM115 (open for the spool's life, closed by close())
        data = path.read_bytes()
        whole = data.rfind(b"\n") + 1
        if whole < len(data):  # a row torn by a crash: its request was never answered
            os.truncate(path, whole)
        self._offset, self._size = 0, whole
        self._ids = {json.loads(line)[0] for line in data[:whole].splitlines()}

    @property
    def rows(self) -> int:
        return len(self._ids)

    @property
    def bytes(self) -> int:
        return self._size - self._offset

    def holds(self, request_id: str) -> bool:
        return request_id in self._ids

    def append(self, rows: list[tuple]) -> None:
        """Append ``rows`` after every row waiting; `SpoolFull` past the bound with ``refuse``."""
        lines = [json.dumps(row).encode() + b"\n" for row in rows]
        size = sum(map(len, lines))
        with self._lock:
            if self.bytes + size > self.max_bytes:
                if self.on_full == "refuse" or size > self.max_bytes:
                    raise SpoolFull(
                        f"{self.path}: the spool holds {self.rows} rows ({self.bytes} bytes) and is at "
                        f"audit.spool_max_mb; the trail must come back before more rows can be kept"
                    )
                self._drop(self.bytes + size - self.max_bytes)
            self._file.write(b"".join(lines))
            self._file.flush()
            self._size += size
            self._ids.update(row[0] for row in rows)

    def head(self, limit: int) -> tuple[int, list[tuple]]:
        """The oldest ``limit`` rows waiting, and where they end in the file (for `advance`)."""
        with self._lock:
            end, rows = self._offset, []
            while len(rows) < limit and end < self._size:
                chunk = os.pread(self._file.fileno(), min(1 << 20, self._size - end), end)
                for line in chunk.splitlines(keepends=True):
                    if not line.endswith(b"\n") or len(rows) == limit:
                        break
                    rows.append(tuple(json.loads(line)))
                    end += len(line)
            return end, rows

    def advance(self, end: int, rows: list[tuple]) -> None:
        """``rows``, which end at ``end``, are in the database: forget them (the file is emptied
        once nothing waits)."""
        with self._lock:
            self._offset = max(self._offset, end)
            self._ids.difference_update(row[0] for row in rows)
            if self._offset >= self._size:
                self._file.truncate(0)
                self._offset = self._size = 0
                self._ids.clear()

    def _drop(self, needed: int) -> None:
        """Forget the oldest rows until ``needed`` bytes are free; the file is rewritten once
        the forgotten part is as large as the bound."""
        freed = 0
        while freed < needed and self._offset < self._size:
            chunk = os.pread(self._file.fileno(), min(1 << 20, self._size - self._offset), self._offset)
            for line in chunk.splitlines(keepends=True):
                if freed >= needed or not line.endswith(b"\n"):
                    break
                self._ids.discard(json.loads(line)[0])
                self._offset += len(line)
                freed += len(line)
                self.dropped += 1
        if self._offset >= self.max_bytes:
            rest = os.pread(self._file.fileno(), self._size - self._offset, self._offset)
            replacement = self.path.with_suffix(".compacting")
            replacement.write_bytes(rest)
            os.replace(replacement, self.path)
            self._file.close()
            self._file = open(self.path, "a+b")  # noqa: SIM115
            self._offset, self._size = 0, len(rest)

    def close(self) -> None:
        with self._lock:
            self._file.close()
