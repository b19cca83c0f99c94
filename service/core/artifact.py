"""The served artifact's format, in one place: loading it, its meta.json, its content hash and its dtype.

The engine, the export, the converter, the evaluation and the dataset job all go through this module;
nothing else opens an artifact by hand. The service never imports the training code (`model/`).

Contract of the TorchScript module:
    encode(images: uint8[B, H, W, 3]) -> int64[B, K]
    decode(tokens: int64[B, K]) -> uint8[B, H, W, 3]
    (meta.json `prefix_decodable: true`: decode also takes int64[B, k] for any 1 <= k <= K, one k per call)
"""

from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ModelLoadError

META_FILE = "meta.json"
REQUIRED_META = ("name", "image_size", "num_tokens", "codebook_size")
# What a meta.json may say, checked before any image or token array is sized by it: the published TiTok and
# One-D-Piece models are 256 px, 32-256 tokens, 4096-8192 codes; the bounds leave room and stop a forged 10^6 px.
META_BOUNDS = {"image_size": (1, 4096), "num_tokens": (1, 65536), "codebook_size": (2, 2**31 - 1)}
DTYPES = ("float32", "float16", "bfloat16")
# The attribute name of the codebook module in every model layout (titok.model.tokenizer.TiTok, model.reference):
# its weights stay fp32 in every compute dtype, so that the nearest-code search and the looked-up codes are fp32.
QUANTIZER = "quantize"
_JIT_DEPRECATED = r".*torch\.jit.*deprecated.*"


def resolve_device(device: str) -> str:
    """auto -> cuda when present, else cpu; cpu, cuda and cuda:N are taken as they are.

    Raises ModelLoadError for another name, or for cuda without a CUDA device.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ModelLoadError(f"device {device!r} is not one of auto, cpu, cuda (or cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device} was asked for but no CUDA device is available (use auto or cpu)")
    return device


def token_dtype(codebook_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every token id in [0, codebook_size)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


@dataclass(frozen=True)
class ModelInfo:
    """The facts a caller needs from meta.json; `meta` keeps the whole document."""

    name: str
    image_size: int
    num_tokens: int
    codebook_size: int
    content_hash: str
    meta: dict[str, Any]

    @classmethod
    def from_meta(cls, meta: dict[str, Any], path: str | Path = "artifact") -> ModelInfo:
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ModelLoadError(f"model file {path}: {META_FILE} lacks {', '.join(missing)}")
        for key, (low, high) in META_BOUNDS.items():  # before anything is sized by them (check_contract's images)
            value = meta[key]
            if type(value) is not int or not low <= value <= high:
                raise ModelLoadError(f"model file {path}: {META_FILE} says {key} {value!r}; it must be an integer "
                                     f"in [{low}, {high}]")
        return cls(str(meta["name"]), meta["image_size"], meta["num_tokens"], meta["codebook_size"],
                   str(meta.get("content_hash") or ""), meta)

    @property
    def prefix_decodable(self) -> bool:
        """meta.json's `prefix_decodable`: decode takes any first 1 <= k <= K tokens (absent: false)."""
        return self.meta.get("prefix_decodable") is True

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]

    @property
    def token_dtype(self) -> np.dtype:
        return token_dtype(self.codebook_size)


def _jit_load(path: Path, device: str, extra: dict[str, str]) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATED)
            return torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as e:  # torch raises RuntimeError/ValueError/zipfile errors for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model file {path}: not a valid TorchScript artifact ({reason})") from e


def _parse_meta(text: str, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelLoadError(f"model file {path} has no readable {META_FILE}") from e
    if not isinstance(meta, dict):
        raise ModelLoadError(f"model file {path} has no readable {META_FILE}")
    return meta


def load_artifact(path: str | Path, device: str = "cpu", dtype: str = "float32") -> tuple[Any, dict[str, Any]]:
    """Load the artifact and its meta.json, computing in `dtype`; raises ModelLoadError with a one-line reason.

    The file may store fp16 weights to halve its size; they are cast to `dtype` (the quantizer to fp32) here.
    Every dtype is allowed on every device: whether bf16/fp16 pays on this CPU is the engine's probe to say.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path} (give an exported artifact, a bundled model's name "
                             "(default, ordered), or a Hugging Face Hub name such as "
                             "yucornetto/tokenizer_titok_l32_imagenet: see titok models)")
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    check_archive(path)
    extra = {META_FILE: ""}
    module = _jit_load(path, device, extra)
    meta = _parse_meta(extra[META_FILE], path)
    check_contract(module, ModelInfo.from_meta(meta, path), path, device)  # from_meta: the required fields
    return to_compute_dtype(module, dtype), meta


def check_archive(path: str | Path) -> None:
    """Check every member of the artifact's zip archive against its CRC-32; torch.jit.load checks none.

    A copy or download damaged on the way (a few flipped bytes in the codebook, say) loaded and was served under
    the content hash of weights it no longer held, its pictures up to 55 levels off (a hostile pass). Reads the
    whole file once (about 10 ms for the bundled 15 MB on one core). A file that is not a zip archive at all is
    left to torch.jit.load to refuse. Raises ModelLoadError naming the damaged member.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return  # not a zip archive: _jit_load says so, in torch's words
    try:
        with archive:
            bad = archive.testzip()  # the first member whose bytes fail their CRC-32, or None
            names = archive.namelist()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
        bad, names = f"? ({e})", []
    # torch.save writes ARCHIVE/data.pkl and no code/; torch.jit.save writes both ARCHIVE/code/ and constants.pkl
    if bad is None and any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names):
        raise ModelLoadError(f"{path} is a PyTorch checkpoint written by torch.save (a training run's checkpoint.pt, "
                             "a state dict), not an exported TorchScript artifact: export it with `titok export "
                             "--checkpoint FILE --out MODEL.pt`, or convert a published one with `titok convert`")
    if bad is not None:
        raise ModelLoadError(f"model file {path} is damaged: its member {bad} fails its CRC-32 check (a corrupted "
                             "copy or an interrupted download): copy or fetch it again")


def check_contract(module: Any, info: ModelInfo, path: str | Path = "artifact", device: str = "cpu") -> None:
    """One encode and a few decodes of two images: the module must keep the contract its meta.json states.

    encode: uint8 (2, S, S, 3) -> int64 (2, K), every id in [0, codebook_size); decode -> uint8 (2, S, S, 3) from
    those tokens, from a row of the codebook's last id (codebook_size - 1), and, when meta.json says
    prefix_decodable, from their first 1 and K/2. A file whose module answers otherwise (a forged or mislabelled
    artifact: 7 tokens under a meta.json that says 32, or 8192 codes claimed over 4096, once served as they were)
    is refused at load instead. Raises ModelLoadError saying which output broke which promise.
    """
    s, k = info.image_size, info.num_tokens
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, s, s, 3), dtype=np.uint8)).to(device)

    def broken(what: str) -> ModelLoadError:
        return ModelLoadError(f"model file {path} does not keep the contract its {META_FILE} states: {what}")

    def call(op: str, x: torch.Tensor, what: str = "") -> Any:
        try:
            with torch.inference_mode():
                return getattr(module, op)(x)
        except Exception as e:  # noqa: BLE001  (whatever the module raises, it cannot serve)
            lines = str(e).strip().splitlines() or [type(e).__name__]
            # TorchScript puts its own banner first and the module's error (e.g. "builtins.ValueError: ...") last
            reason = lines[-1].strip() if "TorchScript interpreter" in lines[0] else lines[0]
            raise broken(f"{op} of {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}{what} failed "
                         f"({reason})") from e

    tokens = call("encode", images)
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tuple(tokens.shape) != (2, k):
        got = (f"{tuple(tokens.shape)} {str(tokens.dtype).removeprefix('torch.')}" if isinstance(tokens, torch.Tensor)
               else type(tokens).__name__)
        raise broken(f"encode of 2 images gave {got}, not (2, {k}) int64 (num_tokens {k})")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= info.codebook_size:
        raise broken(f"encode gave token ids in [{low}, {high}], outside [0, {info.codebook_size}) "
                     f"(codebook_size {info.codebook_size})")
    # the encoded tokens; every id the codebook has, its last one included (a codebook_size larger than the
    # module's own was found only by a client's ids, as 500s); and prefixes at 1 and K/2 (the export check's)
    last = torch.full_like(tokens, info.codebook_size - 1)
    checks = [(tokens, ""), (last, f" (every id {info.codebook_size - 1}, the last of codebook_size)")]
    if info.prefix_decodable:
        checks += [(tokens[:, :n], " (a prefix)") for n in sorted({1, max(1, k // 2)})]
    for ids, what in checks:
        pixels = call("decode", ids, what)
        if (not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8
                or tuple(pixels.shape) != (2, s, s, 3)):
            got = (f"{tuple(pixels.shape)} {str(pixels.dtype).removeprefix('torch.')}"
                   if isinstance(pixels, torch.Tensor) else type(pixels).__name__)
            raise broken(f"decode of {ids.shape[1]} tokens gave {got}, not (2, {s}, {s}, 3) uint8 "
                         f"(image_size {s})")


def _in_quantizer(module_path: str) -> bool:
    return QUANTIZER in module_path.split(".")


def to_compute_dtype(module: Any, dtype: str) -> Any:
    """Cast a model's floating-point weights to `dtype` in place, except the quantizer's, which become fp32; eval mode.

    The one place the compute dtype is applied (the service's loader and the export's fp16 storage). Works on the
    loaded TorchScript module and on the eager model alike. The artifact's input dtype (its `dtype_probe` buffer)
    follows the transformer's; the codebook and the nearest-neighbour search stay fp32 in every dtype, so tokens
    move only where the reduced-precision transformer moves the latent itself.
    Raises ModelLoadError for a dtype outside DTYPES.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    target = getattr(torch, dtype)
    for name, sub in module.named_modules():
        want = torch.float32 if _in_quantizer(name) else target
        for t in (*sub.parameters(recurse=False), *sub.buffers(recurse=False)):
            if t.is_floating_point() and t.dtype != want:
                t.data = t.data.to(want)
    return module.eval()


def weights_snapshot(module: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(holder, its current data) for every floating-point weight: restore_weights() undoes a later cast exactly.

    Costs no copy: to_compute_dtype gives each cast weight new data and leaves the old tensors to this snapshot.
    """
    return [(t, t.data) for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]


def restore_weights(snapshot: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put back the weights recorded by weights_snapshot() (e.g. fp32 after a bf16 trial)."""
    for t, data in snapshot:
        t.data = data


def read_meta(path: str | Path) -> dict[str, Any]:
    """meta.json alone, read from the artifact's zip archive without loading its weights.

    A TorchScript file is a zip archive holding `ARCHIVE/extra/meta.json` beside the weights; a driver that
    only plans work (the Ray job's) need not load a model of hundreds of MB to learn its name and sizes.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{META_FILE}")), None)
            text = archive.read(name).decode("utf-8", "replace") if name else ""
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"cannot load model file {path}: not a valid TorchScript artifact ({e})") from e
    meta = _parse_meta(text, path)
    ModelInfo.from_meta(meta, path)
    return meta


def save_artifact(scripted: Any, path: str | Path, meta: dict[str, Any]) -> None:
    """Write a scripted tokenizer with its meta.json (which must name the required fields)."""
    ModelInfo.from_meta(meta, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path), _extra_files={META_FILE: json.dumps(meta, indent=1, default=str)})
