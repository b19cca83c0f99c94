"""`Tokenizer`: the tokenizer in-process, for a training loop or a notebook; no server, no HTTP.

    from titok.core.tokenizer import Tokenizer
    tok = Tokenizer.load("yucornetto/tokenizer_titok_l32_imagenet")   # or a .pt artifact path
    tokens = tok.encode(["a.jpg", "b.png"])        # np.ndarray int64 (2, K)
    pixels = tok.decode(tokens)                    # np.ndarray uint8 (2, S, S, 3)

Images go through the service's own codec (titok.core.codec: decoding, EXIF, alpha, 16-bit, the resize
modes), and the model runs on the service's own Engine, so the tokens are those /encode answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from . import codec
from .arrays import as_token_ids, check_tokens
from .artifact import ModelInfo
from .budgets import Budget, TargetTokens, check_budget, encode_with_budget
from .engine import Engine
from .errors import ImageTooLarge, InvalidArray, InvalidImage

ImageInput = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray]  # noqa: UP007 (runtime alias)
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # the service's default TITOK_MAX_IMAGE_PIXELS


class Tokenizer:
    """Images <-> token ids with one model, in this process.

    encode: images of any size -> int64 (B, K); decode: ids (B, K) -> uint8 (B, S, S, 3). Long inputs are
    cut into batches of `batch_size`, so memory stays bounded by one batch of decoded images.
    """

    def __init__(self, engine: Engine, resize: codec.Resize = "crop", batch_size: int = DEFAULT_BATCH_SIZE,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        codec.check_resize(resize)
        self.engine = engine
        self.resize = resize
        self.batch_size = batch_size
        self.max_image_pixels = max_image_pixels

    @classmethod
    def load(cls, name_or_path: str | Path, device: str = "auto", dtype: str | None = None, *,
             resize: codec.Resize = "crop", batch_size: int = DEFAULT_BATCH_SIZE, torch_threads: int = 0,
             max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Tokenizer:
        """Load an artifact path, or a Hugging Face Hub name (`owner/name[@revision]`, see models.resolve_model).

        device: auto (CUDA when present), cpu or cuda; dtype: None (float32: the exact tokens, without a word about
        a faster dtype), float32, bfloat16, float16 or auto (the fastest the device runs well).
        Raises ModelLoadError with a one-line reason.
        """
        engine = Engine.load(name_or_path, device, dtype or "float32", torch_threads, warn_slower=dtype is not None)
        return cls(engine, resize, batch_size, max_image_pixels)

    @property
    def info(self) -> ModelInfo:
        """name, image_size S, num_tokens K, codebook_size, content_hash (and the whole meta.json)."""
        return self.engine.model_info

    def encode(self, images: ImageInput | Sequence[ImageInput], resize: codec.Resize | None = None, *,
               num_tokens: int | None = None, target_psnr: float | None = None) -> np.ndarray | TargetTokens:
        """Images -> token ids, int64 (B, K), row i for images[i].

        Each image is a path (str or Path), encoded bytes, a PIL image or a uint8 array (H, W), (H, W, 3),
        (H, W, 4) of any size; a single image is a batch of one. `resize` (crop, pad, stretch; default the
        tokenizer's) fits it to S x S as /encode's `resize` does. A 4-D uint8 array (B, S, S, 3) is taken as it is.
        A prefix-decodable model (info.prefix_decodable) also takes a budget, as /encode, the client and the
        dataset job do: `num_tokens=k` gives int64 (B, k), each image's first k tokens; `target_psnr=dB` gives a
        TargetTokens, each image's fewest tokens whose reconstruction reaches dB (the same search, so the same
        tokens as the other doors).
        Raises InvalidImage / ImageTooLarge (naming images[i]; InvalidImage for `images` that is neither an image
        nor a sequence, or for a path that cannot be read), ValueError for an unknown `resize`, InvalidBudget
        for a budget out of range (or both given), NotPrefixDecodable for a budget on a fixed-length model.
        """
        info = self.info
        budget = check_budget(num_tokens, target_psnr, info.num_tokens, self.prefix_decodable, info.name)
        mode = resize or self.resize
        codec.check_resize(mode)
        s = info.image_size
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.dtype != np.uint8 or images.shape[1:] != (s, s, 3):
                raise InvalidImage(f"a batch array must be uint8 (B, {s}, {s}, 3), not {images.dtype} {images.shape}")
            batches: Iterable[np.ndarray] = (images[i:i + self.batch_size] for i in range(0, len(images),
                                                                                           self.batch_size))
        else:
            items = [images] if _is_single(images) else _as_list(images)
            batches = self._pixel_batches(items, mode)
        if budget.target_psnr is not None:
            return TargetTokens.joined([self._target(np.ascontiguousarray(b), budget) for b in batches])
        out = [self.engine.run("encode", np.ascontiguousarray(b)) for b in batches]
        tokens = np.concatenate(out) if out else np.empty((0, info.num_tokens), np.int64)
        return np.ascontiguousarray(tokens[:, :budget.num_tokens]) if budget.num_tokens is not None else tokens

    @property
    def prefix_decodable(self) -> bool:
        """Whether the model decodes any first 1 <= k <= K of its tokens (meta.json `prefix_decodable`)."""
        return bool(getattr(self.engine, "prefix_decodable", False))

    def _target(self, batch: np.ndarray, budget: Budget) -> TargetTokens:
        done = encode_with_budget(self.engine.run, batch, budget)
        assert done.psnr is not None and done.reached is not None  # a target budget measures both
        return TargetTokens(done.tokens, np.array([len(t) for t in done.tokens], np.int64), done.psnr,
                            done.reached)

    def decode(self, tokens: np.ndarray | Sequence[Sequence[int]] | TargetTokens) -> np.ndarray:
        """Token ids (B, K) or (K,) of any integer type -> uint8 (B, S, S, 3) (B = 1 for a single sequence).

        A prefix-decodable model (info.prefix_decodable) takes (B, k) for any 1 <= k <= K too, and a list of
        sequences of different lengths (row i decoded from its own first k_i tokens), or the TargetTokens that
        encode(target_psnr=) gave (as the client's decode does). Raises InvalidArray naming the first id outside
        [0, codebook_size), or a wrong shape, length or dtype.
        """
        if isinstance(tokens, TargetTokens):
            tokens = tokens.tokens
        info = self.info
        prefix = self.prefix_decodable
        try:
            a = np.asarray(tokens)
        except ValueError:  # NumPy cannot make one array of sequences of different lengths
            if not prefix:
                raise InvalidArray(f"the token sequences have different lengths; send integer token ids of shape "
                                   f"(B, {info.num_tokens})") from None
            return self._decode_ragged(list(tokens))  # type: ignore[arg-type]
        if a.size == 0:
            raise InvalidArray(f"no token ids (shape {a.shape}); send integer token ids of shape "
                               f"(B, {'k' if prefix else info.num_tokens})")
        if not isinstance(tokens, np.ndarray):  # an array's dtype says enough (check_tokens); a list's values do
            a = as_token_ids(tokens)  # names the value that is no id (a float, a bool, None, 2**70) and where
        if a.ndim == 1:
            a = a[None]
        a = check_tokens(a, info.num_tokens, info.codebook_size, max(len(a) if a.ndim else 1, 1),
                         prefix=prefix).astype(np.int64)
        out = [self.engine.run("decode", a[i:i + self.batch_size]) for i in range(0, len(a), self.batch_size)]
        return np.concatenate(out)

    def _decode_ragged(self, sequences: list[Sequence[int]]) -> np.ndarray:
        """Sequences of different lengths (a prefix-decodable model): one decode per length, rows in order."""
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(sequences):
            try:
                row = np.asarray(seq)
            except ValueError:
                row = np.empty((0, 0))
            if row.ndim != 1:
                raise InvalidArray(f"tokens[{i}] is not a flat sequence of token ids")
            if row.shape[0] == 0:
                raise InvalidArray(f"tokens[{i}] is empty; a sequence holds 1 to {self.info.num_tokens} token ids")
            by_length.setdefault(row.shape[0], []).append(i)
        out: list[np.ndarray | None] = [None] * len(sequences)
        for rows in by_length.values():
            try:
                pixels = self.decode(np.asarray([sequences[i] for i in rows]))
            except InvalidArray as e:
                raise InvalidArray(_renumbered(e.message, rows)) from None
            for j, i in enumerate(rows):
                out[i] = pixels[j]
        return np.stack(out)  # type: ignore[arg-type]

    def _pixel_batches(self, items: list[ImageInput], mode: codec.Resize) -> Iterator[np.ndarray]:
        s = self.info.image_size
        for start in range(0, len(items), self.batch_size):
            batch = []
            for i, item in enumerate(items[start:start + self.batch_size], start):
                try:
                    batch.append(self._pixels(item, s, mode))
                except (InvalidImage, ImageTooLarge) as e:
                    e.message = f"images[{i}]: {e.message}"
                    raise
            yield np.stack(batch)

    def _pixels(self, item: ImageInput, size: int, mode: codec.Resize) -> np.ndarray:
        if isinstance(item, str | Path):
            try:
                item = Path(item).read_bytes()
            except OSError as e:  # missing, a folder, unreadable: named with the image's index by the caller
                raise InvalidImage(f"cannot read {item}: {e.strerror or e}") from None
        if isinstance(item, bytes | bytearray | memoryview):
            return codec.load_image(bytes(item), size, mode, self.max_image_pixels)
        if isinstance(item, Image.Image | np.ndarray):
            return codec.fit(item, size, mode)
        raise InvalidImage(f"an image must be a path, bytes, a PIL image or a uint8 array, not {type(item).__name__}")

    def close(self) -> None:
        """Stop the model thread; the tokenizer cannot be used afterwards (encode and decode raise RuntimeError)."""
        self.engine.close()

    def __enter__(self) -> Tokenizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (f"Tokenizer({i.name!r}, image_size={i.image_size}, num_tokens={i.num_tokens}, "
                f"codebook_size={i.codebook_size}, device={self.engine.device!r})")


def _renumbered(message: str, rows: list[int]) -> str:
    """An InvalidArray message about a group of rows, with `tokens[j]` named by its index in the caller's list."""
    found = re.match(r"tokens\[(\d+)\]", message)
    if found is None:
        return f"tokens[{rows[0]}]: {message}"
    return f"tokens[{rows[int(found[1])]}]" + message[found.end():]


def _as_list(images: object) -> list[ImageInput]:
    try:
        return list(images)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidImage(f"images must be one image (a path, bytes, a PIL image or a uint8 array) or a sequence "
                           f"of them, not {type(images).__name__}") from None


def _is_single(images: object) -> bool:
    return isinstance(images, str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray)

