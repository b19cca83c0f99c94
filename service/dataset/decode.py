"""Decoding in the worker processes: the service's own image codec, nothing else (no torch here).

Both runners call `decode_records`: the local one in its process pool, the Ray one in its read tasks.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ..core.codec import Resize, load_image_sized
from ..core.errors import CoreError
from .inputs import Record


class Decoded(NamedTuple):
    key: str
    pixels: np.ndarray | None  # uint8 (S, S, 3); None when the image failed
    width: int
    height: int
    nbytes: int  # input bytes, for the progress bar
    error: str


def decode_records(records: Sequence[Record], size: int, resize: Resize, max_pixels: int) -> list[Decoded]:
    """Each record's image at the model's size, exactly as /encode decodes it; failures carry their reason."""
    out = []
    for r in records:
        nbytes = len(r.data or b"")
        if r.data is None:
            out.append(Decoded(r.key, None, 0, 0, nbytes, r.error))
            continue
        try:
            pixels, w, h = load_image_sized(r.data, size, resize, max_pixels)
        except CoreError as e:
            out.append(Decoded(r.key, None, 0, 0, nbytes, e.message))
        else:
            out.append(Decoded(r.key, pixels, w, h, nbytes, ""))
    return out


def exit_with_parent() -> None:
    """Worker initializer: exit once the job's process is gone (a SIGKILL leaves it no time to stop its pool).

    Ctrl-C reaches the whole process group: the job's process handles it (and stops the pool), so the
    workers ignore it instead of each printing a KeyboardInterrupt traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
