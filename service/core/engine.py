"""The engine: owns the TorchScript module and its device; one dedicated thread runs every model call.

The artifact itself (format, meta.json, dtype) is service.core.artifact's; the engine only runs it.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .artifact import REQUIRED_META, ModelInfo, load_artifact, resolve_device
from .models import resolve_model
from .quality import psnr

Op = Literal["encode", "decode", "roundtrip"]


def roundtrip_dtype(num_tokens: int) -> np.dtype:
    """One record per image of a roundtrip batch: its tokens and the PSNR of its reconstruction."""
    return np.dtype([("tokens", np.int64, (num_tokens,)), ("psnr", np.float64)])


class Engine:
    """Runs encode/decode batches on one thread; callers pass and get numpy arrays."""

    def __init__(self, module: Any, meta: dict[str, Any], device: str = "cpu", dtype: str = "float32",
                 torch_threads: int = 0) -> None:
        self.module = module
        self.meta = meta
        self.device = device
        self.dtype = dtype
        self.model_info = info = ModelInfo.from_meta(meta)  # meta.json read once, by its one owner
        self.name, self.image_size, self.num_tokens = info.name, info.image_size, info.num_tokens
        self.codebook_size, self.content_hash = info.codebook_size, info.content_hash
        self.prefix_decodable = info.prefix_decodable  # decode takes any first 1 <= k <= K tokens
        self.torch_threads = torch_threads or os.cpu_count() or 1
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="titok-model",
                                          initializer=torch.set_num_threads, initargs=(self.torch_threads,))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str = "float32", torch_threads: int = 0) -> Engine:
        """An artifact path or a Hub name (owner/name[@revision], see models.resolve_model); ModelLoadError if not."""
        dev = resolve_device(device)
        module, meta = load_artifact(resolve_model(path), dev, dtype)
        return cls(module, meta, dev, dtype, torch_threads)

    def submit(self, op: Op, batch: np.ndarray) -> Future[np.ndarray]:
        """Queue one batch on the model thread.

        encode: uint8 (B, H, W, 3) -> int64 (B, K); decode: int64 (B, K) -> uint8 (B, H, W, 3), or int64 (B, k)
        for any 1 <= k <= K when the model is prefix_decodable;
        roundtrip: uint8 (B, H, W, 3) -> (B,) records of roundtrip_dtype (encode, then decode in the same call).
        """
        return self._thread.submit(self._call, op, batch)

    def run(self, op: Op, batch: np.ndarray) -> np.ndarray:
        """submit() and wait for the result."""
        return self.submit(op, batch).result()

    def _call(self, op: Op, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if op == "decode":
                return self.module.decode(x).cpu().numpy()
            tokens = self.module.encode(x)  # (B, K)
            if op == "encode":
                return tokens.cpu().numpy()
            out = np.empty(len(batch), roundtrip_dtype(self.num_tokens))
            out["tokens"] = tokens.cpu().numpy()
            out["psnr"] = psnr(self.module.decode(tokens).cpu().numpy(), batch)
            return out

    def warmup(self, batch_size: int) -> None:
        """Run both directions at the largest batch (an out-of-memory shows now, not under load) and at 1."""
        s = self.image_size
        rng = np.random.default_rng(0)
        for b in (batch_size, batch_size, 1):
            images = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
            self.run("decode", self.run("encode", images))

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "image_size": self.image_size, "num_tokens": self.num_tokens,
                "codebook_size": self.codebook_size, "content_hash": self.content_hash,
                "prefix_decodable": self.prefix_decodable, "device": self.device,
                "dtype": self.dtype, "torch_threads": self.torch_threads,
                "meta": {k: v for k, v in self.meta.items() if k not in (*REQUIRED_META, "content_hash")}}

    def close(self) -> None:
        self._thread.shutdown(wait=True)
