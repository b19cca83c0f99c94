"""`titok convert`: a published TiTok checkpoint (bytedance/1d-tokenizer) or One-D-Piece checkpoint
(turingmotors/One-D-Piece) -> our served TorchScript artifact.

Accepted checkpoints hold tensors only and are read without unpickling arbitrary objects:
- a plain state dict `.bin` / `.pt` (fun-research/TiTok `tokenizer_titok_l32.bin`, ...), read with
  `torch.load(weights_only=True)`;
- a Hugging Face `model.safetensors` (yucornetto/tokenizer_titok_*, turing-motors/One-D-Piece-*-256), or a
  `pytorch_model.bin`, whose `config.json` beside it (or given by --config) is cross-checked against the preset.

One-D-Piece is TiTok's original layout trained with tail token drop: its config.json says
`model.type: one_d_piece`, its presets (`one-d-piece-*`) have `tail_drop`, and its artifacts are prefix-decodable
(`decode` takes the first k of the 256 tokens). A config of one family with a preset of the other is refused.

Every key and shape is checked against the preset's model before anything is loaded; all the
problems are reported at once in one ValueError.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .config import PRESETS, REFERENCE_VIT_SIZES, TiTokConfig, get_preset
from .export import export_model
from .tokenizer import build_model

SOURCE = "bytedance/1d-tokenizer"
ONE_D_PIECE_SOURCE = "turingmotors/One-D-Piece"
ONE_D_PIECE_TYPE = "one_d_piece"  # config.json's model.type for One-D-Piece checkpoints
MAX_LISTED = 25  # per category in the error message; the count is always given

log = logging.getLogger(__name__)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name; .safetensors via safetensors, anything else via weights_only torch.load."""
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or a legacy pickle
        raise ValueError(f"{path.name} is not a PyTorch state dict: its first bytes {head!r} are neither a zip "
                         "archive's nor a pickle's (give a .bin / pytorch_model.bin, or a model.safetensors)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors name the offending global: pass them on readably
        raise ValueError(f"{path.name} is not a tensors-only PyTorch state dict ({_load_failure(exc)})") from exc
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path.name} is not a state dict (a mapping of names to tensors)")
    return dict(obj)


def _load_failure(exc: Exception) -> str:
    """torch.load's reason in one line: the unpickler's own words (e.g. the global it refused) without torch's
    paragraphs about weights_only, which advise unpickling the file unrestricted: the converter never does."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n\s*Check the documentation|$)", text, re.S)
    reason = " ".join((found[1] if found else text).split())
    reason = re.sub(r" was not an allowed global by default.*", ", which is not a tensor", reason)
    return reason[:300] or type(exc).__name__


def find_config_json(checkpoint: Path, config: Path | None) -> Path | None:
    """--config if given; else the config.json beside a model.safetensors (HF layout); else none."""
    if config is not None:
        if not config.is_file():
            raise ValueError(f"config not found: {config}")
        return config
    if not checkpoint.is_file():  # said first: its missing config.json would be the lesser news
        raise ValueError(f"checkpoint not found: {checkpoint}")
    beside = checkpoint.with_name("config.json")
    if checkpoint.name == "pytorch_model.bin" and beside.is_file():  # the hub's other weights file name
        return beside
    if checkpoint.suffix == ".safetensors":
        if not beside.is_file():
            raise ValueError(f"{checkpoint.name} needs its config.json: none beside it; pass --config FILE")
        return beside
    return None


def check_reference_config(reference: Mapping[str, Any], cfg: TiTokConfig) -> None:
    """Refuse a checkpoint whose config.json describes another model than the preset."""
    model = reference.get("model") if isinstance(reference, Mapping) else None
    vq = model.get("vq_model") if isinstance(model, Mapping) else None
    if not isinstance(vq, Mapping) or "num_latent_tokens" not in vq:
        raise ValueError("config.json has no model.vq_model section: not a bytedance/1d-tokenizer TiTok config")
    family = model.get("type", "titok")  # TiTok's own configs name no type
    if family == ONE_D_PIECE_TYPE and not cfg.tail_drop:
        raise ValueError(f"config.json says model.type {ONE_D_PIECE_TYPE!r} (a One-D-Piece checkpoint), but the "
                         f"preset is a TiTok model: expected one of {', '.join(one_d_piece_presets())}")
    if family != ONE_D_PIECE_TYPE and cfg.tail_drop:
        raise ValueError(f"config.json says model.type {family!r} (a TiTok checkpoint), but the preset is a "
                         f"One-D-Piece model, which expects model.type {ONE_D_PIECE_TYPE!r}; choose a titok-* preset")
    mode = vq.get("quantize_mode", "vq")
    if mode != "vq":
        raise ValueError(f"config.json describes a {mode!r} tokenizer; only the VQ models can be converted "
                         "(the VAE variants are not supported)")
    legacy = bool(vq.get("is_legacy", True))  # the reference's defaults for missing keys
    finetune_decoder = bool(vq.get("finetune_decoder", True))
    expected: list[tuple[str, Any, Any]] = [
        ("num_latent_tokens (K)", vq["num_latent_tokens"], cfg.num_tokens),
        ("codebook_size", vq.get("codebook_size"), cfg.codebook_size),
        ("token_size", vq.get("token_size"), cfg.code_dim),
        ("use_l2_norm", bool(vq.get("use_l2_norm", False)), cfg.l2_norm_codes),
        ("is_legacy", legacy, cfg.legacy),
        ("finetune_decoder (MaskGIT pixel decoder)", finetune_decoder, cfg.pixel_head == "maskgit"),
    ]
    # Sizes are compared where the config names them (the published ones always do).
    for side, width in (("enc", cfg.enc_width), ("dec", cfg.dec_width)):
        size = vq.get(f"vit_{side}_model_size")
        if size is not None:
            expected.append((f"vit_{side}_model_size", size, _size_name(width)))
        if f"vit_{side}_patch_size" in vq:
            expected.append((f"vit_{side}_patch_size", vq[f"vit_{side}_patch_size"], cfg.patch_size))
    dataset = reference.get("dataset")
    preprocessing = dataset.get("preprocessing") if isinstance(dataset, Mapping) else None
    if isinstance(preprocessing, Mapping) and "crop_size" in preprocessing:
        expected.append(("crop_size", preprocessing["crop_size"], cfg.image_size))
    bad = [f"  {name}: config.json has {got!r}, the preset needs {want!r}" for name, got, want in expected
           if got != want]
    if bad:
        raise ValueError("config.json does not match the preset:\n" + "\n".join(bad)
                         + "\nchoose the preset of this checkpoint (--preset)")


def _size_name(width: int) -> str:
    names = [name for name, (w, _, _) in REFERENCE_VIT_SIZES.items() if w == width]
    return names[0] if names else f"width {width}"


def check_state_dict(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> None:
    """Strict key and shape check; every missing, unexpected and mis-shaped tensor in one ValueError."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    misshaped = [f"{k}: checkpoint {tuple(tensors[k].shape)}, model {tuple(expected[k])}"
                 for k in expected if k in tensors and tensors[k].shape != expected[k]]
    if not (missing or unexpected or misshaped):
        return
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            listed = "\n".join(f"  {item}" for item in items[:MAX_LISTED])
            more = f"\n  ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
            parts.append(f"{len(items)} {title} tensor(s):\n{listed}{more}")
    raise ValueError("the checkpoint does not fit the preset's model; " + "\n".join(parts)
                     + "\ncheck that --preset names this checkpoint's model")


def _layout(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def _fits(tensors: Mapping[str, torch.Tensor], cfg: TiTokConfig) -> bool:
    with torch.device("meta"):
        layout = _layout(build_model(cfg))
    return layout.keys() == tensors.keys() and all(tensors[k].shape == v for k, v in layout.items())


def _config_fits(reference: Mapping[str, Any], cfg: TiTokConfig) -> bool:
    try:
        check_reference_config(reference, cfg)
    except ValueError:
        return False
    return True


def _matching_preset_first(exc: ValueError, preset: str | None, fits: Callable[[TiTokConfig], bool]) -> str:
    """The refusal, led by the preset(s) the checkpoint does match: the long listing follows, not hides it."""
    matching = [name for name in reference_presets() if name != preset and fits(get_preset(name))]
    if not matching:
        return str(exc)
    return (f"this checkpoint is preset {' / '.join(matching)}, not {preset}: use --preset {matching[0]}\n"
            f"the details: {exc}")


def convert_checkpoint(checkpoint: str | Path, cfg: TiTokConfig, out: str | Path, preset: str | None = None,
                       config: str | Path | None = None, fp16_storage: bool = False,
                       progress: Callable[[str], None] = log.info,
                       extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check, load and export a reference checkpoint for `cfg` (arch="reference"); returns the artifact's meta.

    extra_meta: more fields for its meta.json (model.hub records the repository and revision it came from).
    """
    if cfg.arch != "reference":
        raise ValueError(f"preset {preset or ''} is not a published TiTok layout (arch={cfg.arch!r}); "
                         f"choose one of: {', '.join(reference_presets())}")
    checkpoint = Path(checkpoint)
    config_path = find_config_json(checkpoint, Path(config) if config is not None else None)
    if config_path is not None:
        progress(f"checking {config_path.name} against the preset")
        try:
            reference = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {config_path}: {exc}") from exc
        try:
            check_reference_config(reference, cfg)
        except ValueError as exc:
            raise ValueError(_matching_preset_first(exc, preset, lambda c: _config_fits(reference, c))) from None
    progress(f"reading {checkpoint.name}")
    tensors = load_tensors(checkpoint)
    # The layout on the meta device: keys and shapes without allocating or initialising the weights.
    with torch.device("meta"):
        model = build_model(cfg)
    try:
        check_state_dict(tensors, _layout(model))
    except ValueError as exc:
        message = _matching_preset_first(exc, preset, lambda c: _fits(tensors, c))
        if config_path is not None:  # the config fitted the preset: the tensors belong to another model
            family = "One-D-Piece" if cfg.tail_drop else "TiTok"
            message = (f"{config_path.name} describes a {family} model ({cfg.num_tokens} latent tokens, preset "
                       f"{preset}), but the tensors are not its: {message}")
        raise ValueError(message) from None
    progress(f"loading {len(tensors)} tensors ({sum(t.numel() for t in tensors.values()):,} parameters)")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True, assign=True)
    model.eval().requires_grad_(False)
    progress(f"exporting to {out} (scripting and checking against the eager model)")
    meta = {
        "name": preset or f"titok-reference-{cfg.num_tokens}tok",
        "preset": preset,
        "source": ONE_D_PIECE_SOURCE if cfg.tail_drop else SOURCE,
        "source_checkpoint": checkpoint.name,
        "source_config": config_path.name if config_path is not None else None,
        **(extra_meta or {}),
    }
    return export_model(model, cfg, out, meta, fp16_storage=fp16_storage)


def reference_presets() -> list[str]:
    """The presets `titok convert` loads checkpoints into (published TiTok and One-D-Piece layouts)."""
    return [name for name, fields in PRESETS.items() if fields.get("arch") == "reference"]


def one_d_piece_presets() -> list[str]:
    return [name for name in reference_presets() if PRESETS[name].get("tail_drop")]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert a published TiTok checkpoint (bytedance/1d-tokenizer) or One-D-Piece checkpoint "
                          "(turingmotors/One-D-Piece) into the TorchScript artifact the service loads.")
    parser.add_argument("--from", dest="source", required=True, metavar="CHECKPOINT",
                        help="a .bin state dict, or a model.safetensors (or pytorch_model.bin) with its config.json "
                             "beside it")
    parser.add_argument("--preset", required=True, choices=reference_presets(), help="the checkpoint's model")
    parser.add_argument("--config", default=None, metavar="CONFIG_JSON",
                        help="the checkpoint's config.json, if not beside it (cross-checked against the preset)")
    parser.add_argument("--out", required=True, metavar="FILE.pt", help="where to write the artifact")
    parser.add_argument("--fp16", action="store_true",
                        help="store the weights in fp16: half the file, compute stays fp32, but the outputs "
                             "drift slightly from the reference's")


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 done, 2 the checkpoint, its config or the preset were refused (message on stderr)."""
    def progress(message: str) -> None:
        sys.stderr.write(f"convert: {message}\n")

    try:
        meta = convert_checkpoint(args.source, get_preset(args.preset), args.out, preset=args.preset,
                                  config=args.config, fp16_storage=args.fp16, progress=progress)
    except ValueError as exc:
        sys.stderr.write(f"titok convert: error: {exc}\n")
        return 2
    sys.stdout.write(f"wrote {args.out}: {meta['name']}, {meta['num_tokens']} tokens, "
                     f"codebook {meta['codebook_size']}, {meta['image_size']}x{meta['image_size']} px\n")
    return 0
