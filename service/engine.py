"""The engine: owns the TorchScript module and its device; one dedicated thread runs every model call.

The service never imports the training code (`model/`): this loader reads the artifact alone.
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .errors import ModelLoadError

META_FILE = "meta.json"
REQUIRED_META = ("name", "image_size", "num_tokens", "codebook_size")
Op = Literal["encode", "decode"]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("TITOK_DEVICE=cuda but no CUDA device is available (use auto or cpu)")
    return device


def load_artifact(path: str | Path, device: str = "cpu", dtype: str = "float32") -> tuple[Any, dict[str, Any]]:
    """Load the artifact and its meta.json; raises ModelLoadError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path} (set TITOK_MODEL_PATH to an exported artifact)")
    if device == "cpu" and dtype != "float32":
        raise ModelLoadError(f"TITOK_DTYPE={dtype} is for CUDA only; on CPU use float32 (fp16/bf16 are slow there)")
    extra = {META_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as e:  # torch raises RuntimeError/ValueError/zipfile errors for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model file {path}: not a valid TorchScript artifact ({reason})") from e
    try:
        meta = json.loads(extra[META_FILE])
        missing = [k for k in REQUIRED_META if k not in meta]
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelLoadError(f"model file {path} has no readable {META_FILE}") from e
    if missing:
        raise ModelLoadError(f"model file {path}: {META_FILE} lacks {', '.join(missing)}")
    # The file may store fp16 weights to halve its size: compute in fp32 on CPU, in `dtype` on CUDA.
    module = module.float() if dtype == "float32" else module.to(getattr(torch, dtype))
    return module.eval(), meta


class Engine:
    """Runs encode/decode batches on one thread; callers pass and get numpy arrays."""

    def __init__(self, module: Any, meta: dict[str, Any], device: str = "cpu", dtype: str = "float32",
                 torch_threads: int = 0) -> None:
        self.module = module
        self.meta = meta
        self.device = device
        self.dtype = dtype
        self.name: str = str(meta["name"])
        self.image_size: int = int(meta["image_size"])
        self.num_tokens: int = int(meta["num_tokens"])
        self.codebook_size: int = int(meta["codebook_size"])
        self.torch_threads = torch_threads or os.cpu_count() or 1
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="titok-model",
                                          initializer=torch.set_num_threads, initargs=(self.torch_threads,))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str = "float32", torch_threads: int = 0) -> Engine:
        dev = resolve_device(device)
        module, meta = load_artifact(path, dev, dtype)
        return cls(module, meta, dev, dtype, torch_threads)

    def submit(self, op: Op, batch: np.ndarray) -> Future[np.ndarray]:
        """Queue one batch on the model thread.

        encode: uint8 (B, H, W, 3) -> int64 (B, K); decode: int64 (B, K) -> uint8 (B, H, W, 3).
        """
        return self._thread.submit(self._call, op, batch)

    def run(self, op: Op, batch: np.ndarray) -> np.ndarray:
        """submit() and wait for the result."""
        return self.submit(op, batch).result()

    def _call(self, op: Op, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            y = self.module.encode(x) if op == "encode" else self.module.decode(x)
            return y.cpu().numpy()

    def warmup(self, batch_size: int) -> None:
        """Run both directions at the largest batch (an out-of-memory shows now, not under load) and at 1."""
        s = self.image_size
        rng = np.random.default_rng(0)
        for b in (batch_size, batch_size, 1):
            images = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
            self.run("decode", self.run("encode", images))

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "image_size": self.image_size, "num_tokens": self.num_tokens,
                "codebook_size": self.codebook_size, "device": self.device, "dtype": self.dtype,
                "torch_threads": self.torch_threads,
                "meta": {k: v for k, v in self.meta.items() if k not in REQUIRED_META}}

    def close(self) -> None:
        self._thread.shutdown(wait=True)
