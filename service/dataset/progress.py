"""The job's progress bar (images/s and ETA on stderr) and its closing summary."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Summary:
    """What a run did; `images` counts rows written, `errors` images skipped with a reason."""

    images: int = 0
    errors: int = 0
    shards_written: int = 0
    shards_skipped: int = 0  # complete from an earlier run
    seconds: float = 0.0
    error_files: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        rows = [("images tokenized", f"{self.images}"), ("images skipped (errors)", f"{self.errors}"),
                ("shards written", f"{self.shards_written}"),
                ("shards skipped (already complete)", f"{self.shards_skipped}"),
                ("time", f"{self.seconds:.1f} s"), ("throughput", f"{self.images_per_s:.1f} images/s")]
        text = "\n".join(f"{k:<34} {v}" for k, v in rows) + "\n"
        if self.error_files:
            text += "errors are listed in: " + ", ".join(self.error_files) + "\n"
        return text


class Progress:
    """One status line: redrawn in place on a terminal, else printed every `every_s` seconds."""

    def __init__(self, total_bytes: int, shards: int, stream: TextIO | None = None, every_s: float = 10.0) -> None:
        self.total_bytes = max(total_bytes, 1)
        self.shards = shards
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = 0.25 if self.tty else every_s
        self.start = self.last = time.perf_counter()
        self.images = self.bytes = self.done_shards = 0

    def update(self, images: int = 0, nbytes: int = 0, shards: int = 0) -> None:
        self.images += images
        self.bytes += nbytes
        self.done_shards += shards
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        elapsed = now - self.start
        # Progress by input bytes: known up front for every kind of input (a tar's image count is not).
        frac = min(self.bytes / self.total_bytes, 1.0)
        eta = f"{_clock(elapsed * (1 - frac) / frac)}" if frac > 0 else "?"
        line = (f"tokenize: {self.images} images, {self.images / max(elapsed, 1e-9):.1f} images/s, "
                f"shards {self.done_shards}/{self.shards}, {100 * frac:.0f}%, ETA {eta}")
        self.stream.write(("\r" + line + "\x1b[K" + end) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """The last line, always drawn: where the job ended (100% when every shard is done)."""
        self._draw(time.perf_counter(), end="\n")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
