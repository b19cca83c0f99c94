"""The engine: owns the TorchScript module and its device; one dedicated thread runs every model call.

The artifact itself (format, meta.json, dtype) is titok.core.artifact's; the engine only runs it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .artifact import (
    DTYPES,
    REQUIRED_META,
    ModelInfo,
    load_artifact,
    resolve_device,
    restore_weights,
    to_compute_dtype,
    weights_snapshot,
)
from .cpus import available_cpus
from .errors import ModelLoadError
from .models import resolve_model
from .quality import psnr

log = logging.getLogger("titok.engine")

Op = Literal["encode", "decode", "roundtrip"]
DTYPE_CHOICES = ("auto", *DTYPES)  # TITOK_DTYPE: auto picks by a timed probe at start-up (Engine.choose_dtype)
PROBE_BATCH = 8  # images per probe call: large enough for the matrix units, small enough for a short start-up
PROBE_REPEATS = 2  # timed calls per direction and dtype, after one untimed warm-up call
MAX_CPU_WORKERS = 2  # see default_workers
PROBE_MARGIN = 1.05  # on CPU, bf16 is chosen by auto only when it is at least 5% faster than fp32 (noise guard)


def roundtrip_dtype(num_tokens: int) -> np.dtype:
    """One record per image of a roundtrip batch: its tokens and the PSNR of its reconstruction."""
    return np.dtype([("tokens", np.int64, (num_tokens,)), ("psnr", np.float64)])


def cpu_flags() -> list[str]:
    """The CPU's flags that decide reduced-precision speed (amx_bf16, amx_tile, avx512_bf16, ...): [] if unknown."""
    wanted = ("amx_bf16", "amx_fp16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [w for w in wanted if w in flags]


def default_workers(device: str) -> int:
    """Model calls that run at once by default: one on a GPU; on a CPU, one per core it may use (available_cpus)
    up to MAX_CPU_WORKERS.

    Measured on 2 cores in bf16 (README, "Compute dtype and speed"): two calls of one thread each kept both cores
    busy where one call of two threads waited on its own barriers and on the codec and HTTP threads beside it.
    """
    if device.startswith("cuda"):
        return 1
    return max(1, min(MAX_CPU_WORKERS, available_cpus()))


class Engine:
    """Runs encode/decode batches on `workers` threads (one model call each); callers pass and get numpy arrays."""

    def __init__(self, module: Any, meta: dict[str, Any], device: str = "cpu", dtype: str = "float32",
                 torch_threads: int = 0, workers: int = 1) -> None:
        self.module = module
        self.meta = meta
        self.device = device
        self.dtype = dtype
        self.model_info = info = ModelInfo.from_meta(meta)  # meta.json read once, by its one owner
        self.name, self.image_size, self.num_tokens = info.name, info.image_size, info.num_tokens
        self.codebook_size, self.content_hash = info.codebook_size, info.content_hash
        self.prefix_decodable = info.prefix_decodable  # decode takes any first 1 <= k <= K tokens
        self.workers = max(1, workers)
        # Threads per model call: the cores shared out among the workers unless set.
        self.torch_threads = torch_threads or max(1, available_cpus() // self.workers)
        self.dtype_probe: dict[str, Any] = {"requested": dtype, "chosen": dtype, "images_per_s": {}}
        self._thread = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="titok-model",
                                          initializer=torch.set_num_threads, initargs=(self.torch_threads,))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str = "auto", torch_threads: int = 0,
             probe_batch: int = PROBE_BATCH, workers: int = 1, warn_slower: bool = True) -> Engine:
        """Load the artifact in fp32, then settle the compute dtype by choose_dtype() (a timed probe).

        path: an artifact path or a Hub name (owner/name[@revision], see models.resolve_model).
        dtype: auto (the fastest the device supports well), float32, bfloat16 or float16 (honoured on every
        device; a warning when the probe measured it slower). Raises ModelLoadError for an unknown dtype or a
        model that cannot be loaded. workers: model calls that may run at once (1 for a caller that waits for each
        call, as the dataset job and Tokenizer do; 0: default_workers(device), as the service does), each on
        torch_threads threads (0: the cores shared out among them). warn_slower: False makes the note that an
        explicit dtype measured slower an info line, not a warning (a default the caller did not choose).
        """
        if dtype not in DTYPE_CHOICES:
            raise ModelLoadError(f"dtype {dtype!r} (TITOK_DTYPE, --dtype or dtype=) is not one of "
                                 f"{', '.join(DTYPE_CHOICES)}")
        dev = resolve_device(device)
        module, meta = load_artifact(resolve_model(path), dev, "float32")
        engine = cls(module, meta, dev, "float32", torch_threads, workers or default_workers(dev))
        engine.choose_dtype(dtype, probe_batch, warn_slower)
        return engine

    def choose_dtype(self, requested: str, batch: int = PROBE_BATCH, warn_slower: bool = True) -> str:
        """Time encode and decode of `batch` random images in fp32 and in a reduced dtype; set the compute dtype.

        auto: on CUDA bfloat16 where supported (else float16); on CPU bfloat16 only where it measured at least
        PROBE_MARGIN faster than fp32 (images/s of an encode plus a decode), else float32. An explicit dtype is
        kept, with a warning when it measured slower than the other. A probe that fails (out of memory, no bf16
        kernels) is logged; auto then stays float32. The figures land in self.dtype_probe (/info, /metrics).
        Must be called before serving: it runs on the model thread and casts the weights in place.
        """
        if requested not in DTYPE_CHOICES:
            raise ModelLoadError(f"dtype {requested!r} (TITOK_DTYPE, --dtype or dtype=) is not one of "
                                 f"{', '.join(DTYPE_CHOICES)}")
        cuda = self.device.startswith("cuda")
        if requested in ("auto", "float32"):
            reduced = "float16" if cuda and not torch.cuda.is_bf16_supported() else "bfloat16"
        else:
            reduced = requested
        speeds: dict[str, float] = {}
        probe: dict[str, Any] = {"requested": requested, "batch": batch, "images_per_s": {}, "cpu_flags": cpu_flags()}
        try:
            probe["images_per_s"] = self._thread.submit(self._probe, ("float32", reduced), batch).result()
            speeds = {d: v["roundtrip"] for d, v in probe["images_per_s"].items()}
        except Exception as e:  # noqa: BLE001  (out of memory, a dtype without kernels: never fatal here)
            probe["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("dtype probe failed (%s); %s", probe["error"],
                        "falling back to float32" if requested == "auto" else f"keeping TITOK_DTYPE={requested}")
        if requested != "auto":
            chosen = requested
        elif not speeds:
            chosen = "float32"
        elif cuda:
            chosen = reduced
        else:
            chosen = reduced if speeds[reduced] >= PROBE_MARGIN * speeds["float32"] else "float32"
        self._thread.submit(to_compute_dtype, self.module, chosen).result()
        self.dtype = chosen
        probe["chosen"] = chosen
        self.dtype_probe = probe
        figures = ", ".join(f"{d} encode {v['encode']:.1f} decode {v['decode']:.1f} img/s"
                            for d, v in probe["images_per_s"].items())
        log.info("dtype %s (TITOK_DTYPE=%s) on %s; probe at batch %d: %s", chosen, requested, self.device, batch,
                 figures or "none")
        faster = [d for d in speeds if speeds[d] > speeds.get(chosen, 0.0)]
        if requested != "auto" and faster:
            log.log(logging.WARNING if warn_slower else logging.INFO,
                    "dtype %s, as asked (TITOK_DTYPE or dtype=), measured %.2fx slower than %s on this %s; keeping "
                    "it (auto picks the faster)", requested, speeds[faster[0]] / speeds[chosen], faster[0],
                    self.device)
        return chosen

    def _probe(self, dtypes: tuple[str, ...], batch: int) -> dict[str, dict[str, float]]:
        """On the model thread: dtype -> images/s of encode, decode and both; the fp32 weights are restored."""
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (batch, self.image_size, self.image_size, 3), dtype=np.uint8)
        tokens = rng.integers(0, self.codebook_size, (batch, self.num_tokens), dtype=np.int64)
        snapshot = weights_snapshot(self.module)
        out: dict[str, dict[str, float]] = {}
        try:
            for dtype in dtypes:
                to_compute_dtype(self.module, dtype)
                seconds = {}
                for op, x in (("encode", images), ("decode", tokens)):
                    self._call(op, x)  # warm-up: kernel selection, allocator
                    t0 = time.perf_counter()
                    for _ in range(PROBE_REPEATS):
                        self._call(op, x)
                    if self.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    seconds[op] = (time.perf_counter() - t0) / PROBE_REPEATS
                out[dtype] = {"encode": batch / seconds["encode"], "decode": batch / seconds["decode"],
                              "roundtrip": batch / (seconds["encode"] + seconds["decode"])}
        finally:
            restore_weights(snapshot)
        return out

    def submit(self, op: Op, batch: np.ndarray) -> Future[np.ndarray]:
        """Queue one batch on the model thread.

        encode: uint8 (B, H, W, 3) -> int64 (B, K); decode: int64 (B, K) -> uint8 (B, H, W, 3), or int64 (B, k)
        for any 1 <= k <= K when the model is prefix_decodable;
        roundtrip: uint8 (B, H, W, 3) -> (B,) records of roundtrip_dtype (encode, then decode in the same call).
        Raises RuntimeError once close() has been called.
        """
        try:
            return self._thread.submit(self._call, op, batch)
        except RuntimeError:  # the executor's "cannot schedule new futures after shutdown", in our words
            raise RuntimeError(f"{self.name} was closed (close() was called, or its `with` block ended); "
                               "load the model again to use it") from None

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
                "dtype": self.dtype, "dtype_probe": self.dtype_probe, "torch_threads": self.torch_threads,
                "model_workers": self.workers,
                "meta": {k: v for k, v in self.meta.items() if k not in (*REQUIRED_META, "content_hash")}}

    def close(self) -> None:
        self._thread.shutdown(wait=True)
