"""Training images: folders (recursive jpg/png/webp) and WebDataset-style tar shards.

Images are decoded once, downscaled so the shorter side is at most `max_side`, and kept in memory as
uint8; each draw takes a random multi-scale square crop and a random flip. Unreadable files are
skipped and counted, never fatal.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# The service's own codec (decoding, EXIF, RGB, resize modes) and tar reader: evaluation measures what it serves.
from titok.core import codec
from titok.core.errors import CoreError
from titok.dataset.inputs import iter_tar

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 200_000_000  # wallpapers are large; a bomb guard still applies past this


def portable_paths(paths: list[str | Path]) -> list[str]:
    """Data paths as a checkpoint or artifact records them: relative to the folder that holds them all
    (posix separators), so that meta.json names the data and says nothing about the machine that trained on it.

    ["/home/a/photos/train"] -> ["train"]; ["/d/photos/train", "/d/shards/0.tar"] -> ["photos/train",
    "shards/0.tar"]. Relative inputs are taken from the current folder; nothing is read from disk.
    """
    if not paths:
        return []
    full = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath(full))
    if root in full:  # one path (or a path holding the others): keep its own name
        root = root.parent
    return [p.relative_to(root).as_posix() for p in full]


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)


def iter_sources(paths: list[str | Path]) -> Iterator[tuple[str, bytes]]:
    """(name, encoded bytes) for every image under the given folders, files and .tar shards.

    A truncated tar yields what it holds, then (its name, b""): an empty image, skipped and counted.
    """
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"data path does not exist: {root}")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if f.suffix == ".tar":
                for record in iter_tar(f):
                    yield f"{f}:{record.key or record.error}", record.data or b""
            elif f.suffix[1:].lower() in codec.IMAGE_EXTS:
                yield str(f), f.read_bytes()


def decode_rgb(data: bytes) -> Image.Image:
    """Encoded bytes -> an RGB PIL image at full size, as the service decodes (EXIF, alpha on white, 16-bit)."""
    img = Image.open(io.BytesIO(data), formats=codec.FORMATS)
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"{w} x {h} pixels is over the limit of {MAX_IMAGE_PIXELS}")
    return codec.upright_rgb(img)


def load_images(paths: list[str | Path], max_side: int, min_side: int = 0) -> tuple[list[np.ndarray], LoadReport]:
    """Decode every image once, downscaled so its shorter side is at most max_side."""
    images: list[np.ndarray] = []
    report = LoadReport()
    for name, data in iter_sources(paths):
        try:
            img = decode_rgb(data)
        except Exception as e:  # noqa: BLE001 - any undecodable file is skipped and counted
            report.skipped.append(f"{name}: {type(e).__name__}")
            continue
        short = min(img.size)
        if short < min_side:
            report.skipped.append(f"{name}: smaller than {min_side}px")
            continue
        if short > max_side:
            s = max_side / short
            img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BICUBIC)
        images.append(np.asarray(img, dtype=np.uint8))
        report.loaded += 1
    if not images:
        where = ", ".join(str(p) for p in paths)
        raise ValueError(f"no readable images ({', '.join(codec.IMAGE_EXTS)} or .tar shards of them) found in {where}"
                         + (f"; {len(report.skipped)} files skipped" if report.skipped else ""))
    return images, report


def _chw01(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255.0  # a writable copy


def center_crop(img: np.ndarray, size: int) -> torch.Tensor:
    """The service's "crop" resize (titok.core.codec.fit): uint8 (H, W, 3) -> float (3, size, size) in [0, 1]."""
    return _chw01(codec.fit(img, size, "crop"))


def load_center_crops(paths: list[str | Path], size: int) -> tuple[torch.Tensor, LoadReport]:
    """Evaluation images, each exactly the service's model input for it (codec.load_image, resize "crop": what
    /encode and /ui/input use), as (N, 3, size, size) float in [0, 1]. Undecodable files are skipped and counted.
    """
    crops: list[torch.Tensor] = []
    report = LoadReport()
    for name, data in iter_sources(paths):
        try:
            crops.append(_chw01(codec.load_image(data, size, "crop", MAX_IMAGE_PIXELS)))
        except CoreError as e:
            report.skipped.append(f"{name}: {e}")
            continue
        report.loaded += 1
    if not crops:
        raise ValueError(f"no readable images ({', '.join(codec.IMAGE_EXTS)} or .tar shards of them) found in "
                         f"{', '.join(str(p) for p in paths)}")
    return torch.stack(crops), report


class RandomCrops:
    """Random multi-scale square crops with flips: a crop side between min_scale and 1 of the shorter side.

    On the CPU each crop is cut and resized with Pillow (bicubic). With `device` (a CUDA device) the images are
    kept there as uint8, every image's pixels in one flat tensor, and a batch is cut and resized in a few batched
    ops whatever its size (`_sample_on_device`), so that a fast accelerator is not left waiting on
    one CPU thread launching a resize per crop; the random draws (image, side, position, flip) are the same numbers
    in the same order either way, so a checkpoint's crop RNG state resumes on either.
    """

    def __init__(self, images: list[np.ndarray], size: int, min_scale: float = 0.35, seed: int = 0,
                 device: torch.device | None = None) -> None:
        self.images = images
        self.size = size
        self.min_scale = min_scale
        self.rng = np.random.default_rng(seed)
        self.device = device
        # On the device: every image's pixels in one flat uint8 (total pixels, 3) tensor, with each image's offset,
        # height and width; a window of side W = the largest crop side (the largest shorter side) is gathered from
        # it with coordinates clamped to the image (its edge pixels repeat past the border).
        self._on_device: torch.Tensor | None = None
        if device is not None:
            sizes = torch.tensor([im.shape[:2] for im in images], dtype=torch.int64)  # (N, 2): height, width
            counts = sizes[:, 0] * sizes[:, 1]
            self._on_device = torch.from_numpy(np.concatenate([im.reshape(-1, 3) for im in images])).to(device)
            self._offsets = (torch.cumsum(counts, 0) - counts).to(device)
            self._sizes = sizes.to(device)
            self._window = int(sizes.min(dim=1).values.max())

    def _draw(self) -> tuple[int, int, int, int, bool]:
        """(image index, crop side, top, left, flip) of one crop."""
        i = int(self.rng.integers(len(self.images)))
        h, w = self.images[i].shape[:2]
        short = min(h, w)
        side = int(self.rng.uniform(min(1.0, max(self.min_scale, self.size / short)), 1.0) * short)
        side = max(1, min(side, short))
        y, x = int(self.rng.integers(0, h - side + 1)), int(self.rng.integers(0, w - side + 1))
        return i, side, y, x, bool(self.rng.random() < 0.5)

    def sample(self, batch_size: int) -> torch.Tensor:
        """A batch (B, 3, size, size) float32 in [0, 1], on `device` when one was given (else on the CPU)."""
        if self._on_device is not None:
            return self._sample_on_device(batch_size)
        out = torch.empty(batch_size, 3, self.size, self.size)
        for n in range(batch_size):
            i, side, y, x, flip = self._draw()
            pil = Image.fromarray(self.images[i][y:y + side, x:x + side])
            if side != self.size:
                pil = pil.resize((self.size, self.size), Image.BICUBIC, reducing_gap=2.0)
            arr = np.asarray(pil, dtype=np.uint8)
            if flip:
                arr = arr[:, ::-1]
            out[n] = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
        return out

    def _sample_on_device(self, batch_size: int) -> torch.Tensor:
        """The batch cut and resized on the device: (B, 3, size, size) float32 in [0, 1].

        Each crop's window (the largest crop side square, at the crop's corner) is gathered in one indexing op;
        one `F.grid_sample` (bicubic) then samples each crop at twice the output size, flipped where drawn, and a
        2 x 2 average brings it to the output size: an antialiased resize (crops are 1 to 2.5 times the output
        size with the default --max-side) in three kernels for the whole batch.
        """
        assert self._on_device is not None
        draws = [self._draw() for _ in range(batch_size)]
        dev, w, s2 = self.device, self._window, 2 * self.size
        idx, side, top, left, flip = (torch.tensor(col, device=dev) for col in zip(*draws, strict=True))
        span = torch.arange(w, device=dev)
        h_img, w_img = self._sizes[idx, 0, None], self._sizes[idx, 1, None]  # (B, 1) each
        rows = torch.minimum(top[:, None] + span, h_img - 1)  # (B, W), clamped: the edge row repeats
        cols = torch.minimum(left[:, None] + span, w_img - 1)
        flat = self._offsets[idx, None, None] + rows[:, :, None] * w_img[:, :, None] + cols[:, None, :]  # (B, W, W)
        windows = self._on_device[flat]  # (B, W, W, 3) uint8
        windows = windows.permute(0, 3, 1, 2).float()  # (B, 3, W, W)
        # Output sample j of a crop of side s sits at (j + 0.5) * s / s2 pixels into the window; grid_sample's
        # normalised coordinates (align_corners=False) put pixel p's centre at (2p + 1) / W - 1.
        at = (torch.arange(s2, device=dev, dtype=torch.float32) + 0.5) / s2  # (s2,) in (0, 1)
        pos = at[None, :] * side[:, None].float() * (2.0 / w) - 1.0  # (B, s2) normalised, left to right
        xs = torch.where(flip[:, None], pos.flip(-1), pos)
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], pos[:, :, None]), dim=-1)  # (B, s2, s2, 2)
        out = F.grid_sample(windows, grid, mode="bicubic", padding_mode="border", align_corners=False)
        return F.avg_pool2d(out, 2).clamp_(0.0, 255.0).div_(255.0)
