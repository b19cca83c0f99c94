"""Published tokenizers by name: a Hugging Face Hub repository -> a servable artifact, converted once and cached.

    titok pull yucornetto/tokenizer_titok_l32_imagenet[@REVISION]   fetch, recognise, convert, cache
    titok models                                                     the known names, their sizes and figures
    titok serve --model NAME / TITOK_MODEL=NAME / Tokenizer.load(NAME)   the same, then serve or load

The download is huggingface_hub's own (HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE and its cache, HF_HOME); the
checkpoint's preset is recognised from its config.json (titok.model.convert.check_reference_config) and
cross-checked against its tensors by the conversion itself. The artifact is cached under
TITOK_CACHE_DIR (default ~/.cache/titok) at a name made of the checkpoint's content and CONVERTER_VERSION:
a new revision with the same weights reuses it, a new converter converts again. It is written to a
temporary file and renamed into place under a file lock: a half-written artifact is never served, and of
two processes pulling at once one converts while the other waits, then reuses its result.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titok.core.artifact import read_meta
from titok.core.errors import ModelLoadError
from titok.core.models import cache_dir

CONVERTER_VERSION = "1"  # bump when the conversion's output changes: every cached artifact is then redone
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # tried in this order
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

log = logging.getLogger("titok.hub")


@dataclass(frozen=True)
class KnownModel:
    repo: str
    preset: str
    note: str  # what it was trained on


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("yucornetto/tokenizer_titok_l32_imagenet", "titok-l-32", "ImageNet-1k 256 px"),
    KnownModel("yucornetto/tokenizer_titok_b64_imagenet", "titok-b-64", "ImageNet-1k 256 px"),
    KnownModel("yucornetto/tokenizer_titok_s128_imagenet", "titok-s-128", "ImageNet-1k 256 px"),
    KnownModel("yucornetto/tokenizer_titok_bl64_vq8k_imagenet", "titok-bl-64-vq8k", "ImageNet-1k 256 px"),
    KnownModel("yucornetto/tokenizer_titok_bl128_vq8k_imagenet", "titok-bl-128-vq8k", "ImageNet-1k 256 px"),
    KnownModel("yucornetto/tokenizer_titok_sl256_vq8k_imagenet", "titok-sl-256-vq8k", "ImageNet-1k 256 px"),
)


def parse_name(spec: str) -> tuple[str, str | None]:
    """`owner/name[@revision]` -> (repo id, revision or None for the default branch); ModelLoadError if malformed."""
    repo, at, revision = spec.strip().partition("@")
    if not _REPO.fullmatch(repo) or (at and not revision):
        raise ModelLoadError(f"{spec!r} is neither an artifact file nor a Hugging Face Hub name "
                             "(owner/name, optionally @revision)")
    return repo, revision or None


def _hf_error(spec: str, file: str, e: Exception, host_unresolved: str | None = None) -> ModelLoadError:
    """huggingface_hub's exceptions -> one line a user can act on."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = parse_name(spec)
    if isinstance(e, LocalEntryNotFoundError):
        proxy = next((os.environ[v] for v in _PROXY_ENV if os.environ.get(v)), None)
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
               f"the Hub cannot be reached ({host_unresolved} does not resolve)" if host_unresolved else
               f"the Hub cannot be reached through the proxy {proxy} (HTTPS_PROXY/ALL_PROXY)" if proxy else
               "the Hub cannot be reached")
        return ModelLoadError(f"{spec}: {why} and no copy of its {file} is cached (Hugging Face cache "
                              f"{constants.HF_HUB_CACHE}, titok cache {cache_dir()}); pull it on a machine that "
                              f"reaches the Hub (`titok pull {spec}`) with the same HF_HOME and TITOK_CACHE_DIR, "
                              "or give an artifact path")
    if isinstance(e, GatedRepoError):
        return ModelLoadError(f"{repo} is gated: accept its terms on the Hub, then set HF_TOKEN")
    if isinstance(e, RepositoryNotFoundError):
        token = "HF_TOKEN is set: check that it may read it" if _token_set() else \
            "if it is private, set HF_TOKEN to a token that may read it"
        return ModelLoadError(f"no model repository {repo} on the Hub ({constants.ENDPOINT}); check the name; "
                              f"{token}")
    if isinstance(e, RevisionNotFoundError):
        return ModelLoadError(f"{repo} has no revision {revision!r} (a branch, tag or commit hash)")
    if isinstance(e, RemoteEntryNotFoundError):
        return ModelLoadError(f"{repo}{'@' + revision if revision else ''} has no {file}: not a published TiTok "
                              f"checkpoint (it needs {CONFIG_FILE} and one of {', '.join(WEIGHT_FILES)})")
    if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno == errno.ENOSPC):
        return ModelLoadError(f"{spec}: cannot write the Hugging Face cache {constants.HF_HUB_CACHE} "
                              f"({e.strerror or e}); free some space or set HF_HOME to a writable folder")
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ModelLoadError(f"{spec}: downloading {file} failed ({reason}); nothing was cached, try again")


def _token_set() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def unresolvable_hub() -> str | None:
    """The Hub's host name when it does not resolve here (no DNS: an offline machine), else None.

    huggingface_hub retries a failed connection five times with growing waits before it falls back to its cache:
    23-25 s for a name that can never load offline, with a retry warning each time (a hostile pass). One lookup
    answers it at once. Behind a proxy the proxy resolves the name, so nothing is looked up here (None)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in _PROXY_ENV):
        return None
    host = urllib.parse.urlsplit(constants.ENDPOINT).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError:  # socket.gaierror: no such name, or no resolver reachable
        return host
    return None


def _download(spec: str, file: str, host_unresolved: str | None = None) -> Path:
    """The file from the Hub or, when the Hub's host does not resolve (`host_unresolved`), from the HF cache only."""
    from huggingface_hub import hf_hub_download

    repo, revision = parse_name(spec)
    try:
        return Path(hf_hub_download(repo, file, revision=revision, local_files_only=host_unresolved is not None))
    except Exception as e:  # noqa: BLE001 - every failure of the download becomes one readable line
        raise _hf_error(spec, file, e, host_unresolved) from e


def _download_weights(spec: str, host_unresolved: str | None = None) -> Path:
    """The first of WEIGHT_FILES the repository has (offline: the first one cached)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    errors: list[ModelLoadError] = []
    for file in WEIGHT_FILES:
        try:
            return _download(spec, file, host_unresolved)
        except ModelLoadError as e:
            if not isinstance(e.__cause__, RemoteEntryNotFoundError | LocalEntryNotFoundError):
                raise
            errors.append(e)
    offline = [e for e in errors if isinstance(e.__cause__, LocalEntryNotFoundError)]
    if offline:
        raise offline[0]
    raise ModelLoadError(f"{spec} has none of {', '.join(WEIGHT_FILES)}: not a published TiTok checkpoint")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _verified_sha256(path: Path, spec: str) -> str:
    """The file's SHA-256, checked against the hub's (the name of its blob in the HF cache, for LFS files).

    A corrupted download is removed from the HF cache (blob and snapshot link) so the next pull fetches it anew.
    """
    digest = _sha256(path)
    blob = Path(os.path.realpath(path))
    if _SHA256.fullmatch(blob.name) and blob.name != digest:
        for p in (path, blob):
            p.unlink(missing_ok=True)
        raise ModelLoadError(f"{spec}: the downloaded {path.name} is corrupt (SHA-256 {digest[:12]}..., the Hub "
                             f"says {blob.name[:12]}...); it was removed from the cache, nothing was converted: "
                             "try again")
    return digest


def recognise_preset(config: dict[str, Any], spec: str) -> list[str]:
    """The reference presets whose model config.json describes (usually one); ModelLoadError if none does."""
    from .config import get_preset
    from .convert import _config_fits, reference_presets

    matching = [name for name in reference_presets() if _config_fits(config, get_preset(name))]
    if matching:
        return matching
    model = config.get("model") if isinstance(config, dict) else None
    vq = model.get("vq_model") if isinstance(model, dict) else None
    if not isinstance(vq, dict):
        raise ModelLoadError(f"{spec}: its {CONFIG_FILE} has no model.vq_model section: not a TiTok checkpoint "
                             "(bytedance/1d-tokenizer layout)")
    said = ", ".join(f"{k}={vq[k]!r}" for k in ("num_latent_tokens", "codebook_size", "token_size",
                                                  "vit_enc_model_size", "vit_dec_model_size", "quantize_mode")
                     if k in vq)
    raise ModelLoadError(f"{spec}: its {CONFIG_FILE} names a model no preset describes ({said}); known presets: "
                         f"{', '.join(reference_presets())}")


def pull(spec: str, progress: Callable[[str], None] = log.info) -> Path:
    """Fetch `owner/name[@revision]` from the Hub (or its cache), convert it once, and return the artifact's path.

    Raises ModelLoadError for every refusal: an unknown repository (404), a private one without a token
    (401), a missing file, a cut or corrupted download (nothing cached), offline without a cached copy
    (naming both caches and the `titok pull` to run), a config.json that names no known model, a
    checkpoint whose tensors do not fit its config, a cache folder that cannot be written.
    """
    parse_name(spec)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise ModelLoadError(f"loading {spec} by name needs huggingface_hub: pip install 'titok-service[serve]'") \
            from None
    host_unresolved = unresolvable_hub()  # no DNS: the HF cache only, at once (not after five retries)
    config_path = _download(spec, CONFIG_FILE, host_unresolved)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{spec}: its {CONFIG_FILE} is not readable JSON ({e})") from None
    presets = recognise_preset(config, spec)
    weights = _download_weights(spec, host_unresolved)
    key = hashlib.sha256("\n".join([CONVERTER_VERSION, _verified_sha256(weights, spec),
                                    _sha256(config_path)]).encode()).hexdigest()[:24]
    out = cache_dir() / "artifacts" / f"{key}.pt"
    if _complete(out):
        return out
    from filelock import FileLock, Timeout

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out.with_suffix(".lock")))
        with lock.acquire(timeout=3600):  # a conversion takes seconds to minutes; an hour is surely a dead lock
            if _complete(out):  # another process converted it while we waited
                progress(f"{spec}: converted by another process, reusing {out}")
                return out
            _convert(spec, weights, config_path, presets, out, progress)
    except Timeout:
        raise ModelLoadError(f"{spec}: another process has held the conversion lock {out.with_suffix('.lock')} for "
                             "an hour; if none is running, delete the lock file") from None
    except PermissionError as e:
        raise ModelLoadError(f"{spec}: cannot write the titok cache {out.parent} ({e.strerror}); set TITOK_CACHE_DIR "
                             "to a writable folder") from None
    except OSError as e:
        raise ModelLoadError(f"{spec}: cannot write the converted model to {out.parent} ({e.strerror or e}); free "
                             "some space or set TITOK_CACHE_DIR to another folder") from None
    return out


def _complete(path: Path) -> bool:
    """Only a renamed-into-place file exists under its final name; read_meta proves it is a whole artifact."""
    if not path.is_file():
        return False
    try:
        read_meta(path)
    except ModelLoadError:
        return False
    return True


def _convert(spec: str, weights: Path, config_path: Path, presets: list[str], out: Path,
             progress: Callable[[str], None]) -> None:
    from .config import get_preset
    from .convert import _fits, convert_checkpoint, load_tensors

    preset = presets[0]
    if len(presets) > 1:  # several presets share the config's numbers: the tensors decide
        tensors = load_tensors(weights)
        preset = next((p for p in presets if _fits(tensors, get_preset(p))), preset)
        del tensors
    repo, revision = parse_name(spec)
    commit = config_path.parent.name  # the HF cache's snapshots/<commit>/ folder
    tmp = out.with_name(f"{out.stem}.tmp-{os.getpid()}.pt")
    progress(f"{spec}: converting {weights.name} as preset {preset} (once; cached in {out.parent})")
    try:
        convert_checkpoint(weights, get_preset(preset), tmp, preset=preset, config=config_path, progress=progress,
                           extra_meta={"source_repo": repo, "source_revision": commit,
                                       "requested_revision": revision, "converter_version": CONVERTER_VERSION})
        os.replace(tmp, out)  # atomic: readers see no file or the whole file
    except ValueError as e:  # the converter's refusals: config or tensors that do not fit
        raise ModelLoadError(f"{spec}: the checkpoint cannot be converted: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    progress(f"{spec}: wrote {out}")


def _model_rows() -> list[dict[str, Any]]:
    """The published models known by name: repo, preset, sizes (numbers) and what they were trained on."""
    import torch

    from .config import get_preset
    from .tokenizer import build_model

    rows = []
    for m in KNOWN_MODELS:
        cfg = get_preset(m.preset)
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(cfg).parameters())
        rows.append({"name": m.repo, "source": "hub", "preset": m.preset, "image_size": cfg.image_size,
                     "num_tokens": cfg.num_tokens, "codebook_size": cfg.codebook_size,
                     "bits_per_image": cfg.num_tokens * (cfg.codebook_size - 1).bit_length(), "params": params,
                     "fp32_bytes": params * 4, "prefix_decodable": bool(cfg.tail_drop), "trained_on": m.note})
    return rows


def _bundled_rows() -> list[dict[str, Any]]:
    """One row per bundled model (titok.core.models.BUNDLED) present in this install, from its meta.json."""
    from titok.core.artifact import read_meta
    from titok.core.models import BUNDLED

    rows = []
    for name, path in BUNDLED.items():
        if path.is_file():
            meta = read_meta(path)
            rows.append({"name": name, "source": "bundled", "model": meta["name"], "image_size": meta["image_size"],
                         "num_tokens": meta["num_tokens"], "codebook_size": meta["codebook_size"],
                         "prefix_decodable": bool(meta.get("prefix_decodable")), "file_bytes": path.stat().st_size,
                         "path": str(path)})
    return rows


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME[@REVISION]",
                        help="a Hugging Face Hub repository (see `titok models`); a bundled model's name (default, "
                             "ordered) prints its path")


def run(args: argparse.Namespace) -> int:
    """`titok pull NAME`: 0 with the artifact's path on stdout, 2 with one line on stderr."""
    def progress(message: str) -> None:
        sys.stderr.write(f"pull: {message}\n")

    if not args.name:
        sys.stderr.write("titok pull: error: name a model, e.g. titok pull yucornetto/tokenizer_titok_l32_imagenet "
                         "(see titok models)\n")
        return 2
    from titok.core.models import BUNDLED

    if args.name in BUNDLED and not Path(args.name).exists():  # nothing to fetch: say where it is, as for a pull
        sys.stdout.write(f"{BUNDLED[args.name]}\n")
        sys.stderr.write(f"pull: {args.name} is bundled with the package (no download); serve it with: titok serve "
                         f"--model {args.name}\n")
        return 0
    try:
        path = pull(args.name, progress)
        meta = read_meta(path)
    except ModelLoadError as e:
        sys.stderr.write(f"titok pull: {e}\n")
        return 2
    sys.stdout.write(f"{path}\n")
    sys.stderr.write(f"pull: {meta['name']}: {meta['num_tokens']} tokens, codebook {meta['codebook_size']}, "
                     f"{meta['image_size']} px; serve it with: titok serve --model {args.name}\n")
    return 0


def models_main(argv: list[str] | None = None) -> int:
    """`titok models`: the known names, with the sizes of their models (computed from the presets)."""
    parser = argparse.ArgumentParser(prog="titok models", description="List the published tokenizers that "
                                     "`titok serve --model NAME` and `titok pull NAME` know by name.")
    parser.add_argument("--json", action="store_true", help="one JSON object per model instead of a table")
    args = parser.parse_args(argv)
    rows, bundled = _model_rows(), _bundled_rows()
    if args.json:  # one object a line, numbers as numbers: the Hub's models, then the bundled ones
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in (*rows, *bundled)))
        return 0
    head = ("name", "preset", "px", "tokens", "codebook", "bits/image", "params", "fp32 size", "trained on")
    table = [head, *((r["name"], r["preset"], str(r["image_size"]), str(r["num_tokens"]), str(r["codebook_size"]),
                      str(r["bits_per_image"]), f"{r['params'] / 1e6:.0f}M", f"{r['fp32_bytes'] / 1e6:.0f} MB",
                      r["trained_on"]) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    sys.stdout.write(f"\nAny repository with a TiTok config.json and weights loads too; converted models are cached in "
                     f"{cache_dir()}.\n")
    if bundled:
        sys.stdout.write("\nBundled with the package (no download; `titok serve --model NAME`):\n" + "".join(
            f"  {b['name']}: {b['model']}, {b['image_size']} px, {b['num_tokens']} tokens of {b['codebook_size']} "
            f"codes, {'prefix-decodable (any first k tokens decode)' if b['prefix_decodable'] else 'fixed length'}, "
            f"{b['file_bytes'] / 1e6:.1f} MB\n" for b in bundled))
    return 0
