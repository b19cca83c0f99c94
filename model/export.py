"""Export a trained tokenizer to the served artifact: one TorchScript file with meta.json inside.

Contract (what the service relies on):
    encode(images: uint8[B, H, W, 3]) -> int64[B, K]
    decode(tokens: int64[B, k]) -> uint8[B, H, W, 3]
where k = K, or any 1 <= k <= K when meta.json says `prefix_decodable: true` (a model trained with tail
drop: the first k tokens of an encoding decode to a coarser picture; all rows of one call have the same k).
A model not trained for prefixes refuses k != K, saying so.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from titok.core.artifact import save_artifact, to_compute_dtype  # the artifact format has one owner

from .config import TiTokConfig
from .data import portable_paths
from .quality import to_uint8
from .tokenizer import build_model


class ExportedTokenizer(nn.Module):
    """uint8 pixels <-> int64 tokens around any model with encode_indices / decode_indices."""

    def __init__(self, model: nn.Module, image_size: int, num_tokens: int, codebook_size: int,
                 prefix_decodable: bool = False) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.num_tokens = num_tokens
        self.codebook_size = codebook_size
        self.prefix_decodable = prefix_decodable
        # The compute dtype for pixels: born in the weights' dtype, so that a plain torch.jit.load of an
        # fp16-stored artifact casts its inputs to fp16 by itself; follows the module through .float() / .to().
        weights_dtype = next(model.parameters()).dtype
        self.register_buffer("dtype_probe", torch.zeros((), dtype=weights_dtype), persistent=False)

    @torch.jit.export
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) at the model's resolution -> int64 (B, K)."""
        if images.dim() != 4 or images.shape[3] != 3:
            raise ValueError("encode expects uint8 images of shape (B, H, W, 3)")
        if images.shape[1] != self.image_size or images.shape[2] != self.image_size:
            raise ValueError("encode expects images at the model's image_size")
        x = images.permute(0, 3, 1, 2).to(self.dtype_probe.dtype) / 255.0  # (B, 3, H, W) in [0, 1]
        return self.model.encode_indices(x)

    @torch.jit.export
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 (B, k) with ids in [0, codebook_size) -> uint8 (B, H, W, 3).

        k = K; or, for a prefix-decodable model, any 1 <= k <= K (the first k tokens of an encoding).
        Raises ValueError for another shape, a k the model does not decode, float ids or ids out of range.
        """
        if tokens.dim() != 2:
            raise ValueError("decode expects int64 tokens of shape (B, k), not " + str(tokens.dim()) + " dimensions")
        # TorchScript's str() of a dtype is its enum number ("6" for float32): the kind is named instead
        if tokens.is_floating_point():
            raise ValueError("decode expects integer token ids (int64), not floating-point ones")
        if tokens.dtype == torch.bool or tokens.is_complex():
            raise ValueError("decode expects integer token ids (int64), not " + ("bool" if tokens.dtype == torch.bool
                                                                                 else "complex") + " ones")
        k = tokens.shape[1]
        if self.prefix_decodable:
            if k < 1 or k > self.num_tokens:
                raise ValueError("decode expects a prefix of 1 to " + str(self.num_tokens) + " tokens per row, not "
                                 + str(k))
        elif k != self.num_tokens:
            raise ValueError("this model was not trained to decode prefixes (no tail drop): decode expects exactly "
                             + str(self.num_tokens) + " tokens per row, not " + str(k))
        if tokens.numel() > 0:
            if bool(tokens.min() < 0) or bool(tokens.max() >= self.codebook_size):
                raise ValueError("decode expects token ids in [0, " + str(self.codebook_size) + "), got ids from "
                                 + str(int(tokens.min())) + " to " + str(int(tokens.max())))
        x = self.model.decode_indices(tokens.long())  # (B, 3, H, W) float
        return (x.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


def script(model: nn.Module, cfg: TiTokConfig) -> torch.jit.ScriptModule:
    wrapper = ExportedTokenizer(model.eval(), cfg.image_size, cfg.num_tokens, cfg.codebook_size, cfg.tail_drop)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        return torch.jit.script(wrapper)


def state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_artifact(scripted: torch.jit.ScriptModule, model: nn.Module, cfg: TiTokConfig,
                   images: torch.Tensor | None = None) -> dict[str, float]:
    """The scripted artifact must give the eager model's tokens and pixels within 1/255.

    For a prefix-decodable model (cfg.tail_drop) the pixels are checked at k = 1, K/2 and K; otherwise at K.
    Returns {"max_pixel_diff": largest difference over the lengths checked, "prefix_lengths": those lengths}.
    """
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (2, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        x = images.permute(0, 3, 1, 2).float() / 255.0
        eager_tokens = model.encode_indices(x)
        tokens = scripted.encode(images)
        if not torch.equal(tokens, eager_tokens):
            raise RuntimeError("export check failed: the artifact's tokens differ from the eager model's")
        k_full = cfg.num_tokens
        lengths = sorted({1, max(1, k_full // 2), k_full}) if cfg.tail_drop else [k_full]
        max_diff = 0.0
        for k in lengths:
            eager_pixels = to_uint8(model.decode_indices(eager_tokens[:, :k]))
            pixels = scripted.decode(tokens[:, :k]).permute(0, 3, 1, 2).float()
            diff = float((pixels - eager_pixels).abs().max())
            if diff > 1.0:
                raise RuntimeError(f"export check failed: pixels from the first {k} tokens differ by {diff:.0f}/255 "
                                   "(allowed 1/255)")
            max_diff = max(max_diff, diff)
    return {"max_pixel_diff": max_diff, "prefix_lengths": lengths}


def export_model(model: nn.Module, cfg: TiTokConfig, out: str | Path, meta: dict[str, Any] | None = None,
                 fp16_storage: bool = False) -> dict[str, Any]:
    """Script, check and save; returns the meta.json written into the artifact.

    fp16_storage halves the file by storing weights in fp16; they are cast back to fp32 on load
    by the loader (titok.core.artifact), so the arithmetic stays fp32 on CPU.
    """
    model = model.float().eval()
    scripted = script(model, cfg)
    check = check_artifact(scripted, model, cfg)
    full_meta: dict[str, Any] = {
        "name": (meta or {}).get("name")
        or f"titok-{'' if cfg.arch == 'titok' else cfg.arch + '-'}{cfg.image_size}px-{cfg.num_tokens}tok",
        "image_size": cfg.image_size,
        "num_tokens": cfg.num_tokens,
        "codebook_size": cfg.codebook_size,
        # decode takes any first k <= K tokens (trained with tail drop); false: exactly K
        "prefix_decodable": bool(cfg.tail_drop),
        "config": cfg.to_dict(),
        "content_hash": state_hash(model),
        "torch_version": torch.__version__,
        "weights_dtype": "float16" if fp16_storage else "float32",
        "export_check": check,
        **{k: v for k, v in (meta or {}).items() if k != "name"},
    }
    if fp16_storage:
        # Script a half copy (casting the scripted module would also cast the caller's model); the codebook
        # stays fp32, as in every compute dtype (titok.core.artifact.to_compute_dtype).
        scripted = script(to_compute_dtype(copy.deepcopy(model), "float16"), cfg)
    save_artifact(scripted, out, full_meta)
    return full_meta


def load_checkpoint_model(checkpoint: str | Path, use_ema: bool = True
                          ) -> tuple[nn.Module, TiTokConfig, dict[str, Any], bool]:
    """Rebuild the model from a checkpoint alone: (model, config, checkpoint dict, whether EMA weights).

    Raises FileNotFoundError for a missing file and SystemExit (a one-line message) for a file that is not a
    training checkpoint (an image, an exported artifact, another torch file).
    """
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(2, "no checkpoint file", str(checkpoint))
    try:
        with warnings.catch_warnings():  # torch warns before it fails on a TorchScript archive
            warnings.simplefilter("ignore")
            ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds for a file it cannot read
        hint = " (it is an exported artifact, not a checkpoint)" if is_torchscript_file(checkpoint) else ""
        raise SystemExit(f"cannot read {checkpoint} as a training checkpoint{hint}: "
                         f"{type(exc).__name__}") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or not (ckpt.get("ema") or ckpt.get("model")):
        raise SystemExit(f"{checkpoint} is a torch file but not a training checkpoint (no config and weights)")
    cfg = TiTokConfig.from_dict(ckpt["config"])
    model = build_model(cfg)
    ema = bool(use_ema and ckpt.get("ema"))
    model.load_state_dict(ckpt["ema"] if ema else ckpt["model"])
    return model, cfg, ckpt, ema


def is_torchscript_file(path: str | Path) -> bool:
    """Whether a file is a TorchScript archive (a zip holding code/), i.e. an exported artifact, rather than a
    torch.save checkpoint; False for anything unreadable."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def export_checkpoint(checkpoint: str | Path, out: str | Path, use_ema: bool = True,
                      fp16_storage: bool = False, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """`titok export`: rebuild the model from a checkpoint alone and export it."""
    model, cfg, ckpt, ema = load_checkpoint_model(checkpoint, use_ema)
    meta = {
        "preset": ckpt.get("preset"),
        "training": _portable(ckpt.get("training", {})),
        "step": ckpt.get("step"),
        "weights": "ema" if ema else "raw",
        **ckpt.get("meta", {}),
        **(extra_meta or {}),
    }
    return export_model(model, cfg, out, meta, fp16_storage=fp16_storage)


def _portable(section: dict[str, Any]) -> dict[str, Any]:
    """A training or eval record with its data paths made portable (checkpoints and eval.json files written
    before they were kept relative hold the training machine's absolute paths)."""
    data = section.get("data")
    if isinstance(data, list) and any(Path(str(p)).is_absolute() for p in data):
        return {**section, "data": portable_paths([str(p) for p in data])}
    return section


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (RUNDIR/checkpoint.pt)")
    p.add_argument("--out", required=True, help="the artifact to write (.pt)")
    p.add_argument("--name", help="model name recorded in meta.json")
    p.add_argument("--raw-weights", action="store_true", help="export the raw weights, not the EMA")
    p.add_argument("--fp16", action="store_true", help="store weights in fp16 (half the size; fp32 compute)")
    p.add_argument("--eval-json", help="an eval.json (from `titok eval`) to embed in meta.json")


def run(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.name:
        extra["name"] = args.name
    if args.eval_json:
        extra["eval"] = _portable(json.loads(Path(args.eval_json).read_text()))
    meta = export_checkpoint(args.checkpoint, args.out, use_ema=not args.raw_weights, fp16_storage=args.fp16,
                             extra_meta=extra)
    size_mb = Path(args.out).stat().st_size / 1e6
    sys.stdout.write(f"wrote {args.out} ({size_mb:.1f} MB): {meta['name']}, {meta['num_tokens']} tokens x "
                     f"{meta['codebook_size']} codes at {meta['image_size']}px; export check "
                     f"max pixel diff {meta['export_check']['max_pixel_diff']:.0f}/255\n")
    return 0
