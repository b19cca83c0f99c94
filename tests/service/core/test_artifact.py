"""The artifact format's one owner: meta.json, the content hash, the token dtype."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from titok.core.artifact import (
    ModelInfo,
    load_artifact,
    read_meta,
    resolve_device,
    save_artifact,
    to_compute_dtype,
    token_dtype,
)
from titok.core.engine import Engine
from titok.errors import ModelLoadError


@pytest.mark.parametrize(("codebook", "dtype"), [(2, np.uint8), (256, np.uint8), (257, np.uint16),
                                                 (4096, np.uint16), (65536, np.uint16), (65537, np.uint32)])
def test_token_dtype_is_the_smallest_that_holds_the_codebook(codebook: int, dtype: type) -> None:
    assert token_dtype(codebook) == np.dtype(dtype)
    assert np.iinfo(token_dtype(codebook)).max >= codebook - 1


def test_read_meta_names_the_model_and_its_hash(tiny_artifact: Path) -> None:
    info = ModelInfo.from_meta(read_meta(tiny_artifact))
    assert (info.name, info.image_size, info.num_tokens, info.codebook_size) == ("test-tiny", 32, 8, 64)
    assert len(info.content_hash) == 64 and info.short_hash == info.content_hash[:12]
    assert info.token_dtype == np.uint8


def test_a_meta_without_required_fields_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="lacks image_size, num_tokens, codebook_size"):
        save_artifact(object(), tmp_path / "x.pt", {"name": "x"})
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ModelLoadError, match="not found"):
        read_meta(tmp_path / "missing.pt")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_casts_the_transformer_and_keeps_the_quantizer_fp32(tiny_artifact: Path, dtype: str) -> None:
    module, meta = load_artifact(tiny_artifact)
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.inference_mode():
        fp32_tokens = module.encode(torch.from_numpy(images))
        fp32_pixels = module.decode(fp32_tokens).numpy()
    codebook = module.model.quantize.embedding.weight.clone()
    reduced = to_compute_dtype(module, dtype)
    assert {p.dtype for p in reduced.model.encoder.parameters()} == {getattr(torch, dtype)}
    assert {p.dtype for p in reduced.model.decoder.parameters()} == {getattr(torch, dtype)}
    assert reduced.dtype_probe.dtype == getattr(torch, dtype)  # the artifact casts its pixels to the transformer's
    assert torch.equal(reduced.model.quantize.embedding.weight, codebook)  # fp32, not rounded through dtype
    engine = Engine(reduced, meta, "cpu", dtype, torch_threads=1)
    try:
        tokens = engine.run("encode", images)
        assert tokens.shape == (3, 8) and tokens.dtype == np.int64 and 0 <= tokens.min() and tokens.max() < 64
        pixels = engine.run("decode", fp32_tokens.numpy())
    finally:
        engine.close()
    assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == np.uint8
    # Same tokens, reduced-precision weights: the picture barely moves (bf16 keeps 8 bits of mantissa).
    assert np.abs(pixels.astype(int) - fp32_pixels.astype(int)).mean() < 4


def test_a_plain_jit_load_of_an_fp16_stored_artifact_encodes_on_cpu(tmp_path: Path) -> None:
    from titok.model.config import get_preset
    from titok.model.export import export_model
    from titok.model.tokenizer import TiTok

    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=1, dec_heads=2, codebook_size=64, head_channels=8)
    export_model(TiTok(cfg), cfg, tmp_path / "fp16.pt", {"name": "half"}, fp16_storage=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        plain = torch.jit.load(str(tmp_path / "fp16.pt"))  # no map_location, no dtype handling
    assert {p.dtype for p in plain.model.decoder.parameters()} == {torch.float16}
    tokens = plain.encode(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    assert tokens.shape == (2, 8) and tokens.dtype == torch.int64
    assert plain.decode(tokens).shape == (2, 32, 32, 3)


def test_read_meta_refuses_what_is_not_an_artifact(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip archive at all")
    with pytest.raises(ModelLoadError, match="not a valid TorchScript artifact"):
        read_meta(junk)
    import zipfile

    bare = tmp_path / "bare.pt"
    with zipfile.ZipFile(bare, "w") as z:  # a zip, but no meta.json inside
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(ModelLoadError, match="no readable meta.json"):
        read_meta(bare)


def test_an_fp16_stored_artifact_keeps_its_codebook_in_fp32(tmp_path: Path) -> None:
    from titok.model.config import get_preset
    from titok.model.export import export_model
    from titok.model.tokenizer import TiTok

    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=1, dec_heads=2, codebook_size=64, head_channels=8)
    model = TiTok(cfg)
    export_model(model, cfg, tmp_path / "fp16.pt", {"name": "half"}, fp16_storage=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        plain = torch.jit.load(str(tmp_path / "fp16.pt"))
    assert torch.equal(plain.model.quantize.embedding.weight, model.quantize.embedding.weight)
    assert {p.dtype for p in plain.model.encoder.parameters()} == {torch.float16}


def test_a_cast_can_be_undone_exactly(tiny_artifact: Path) -> None:
    from titok.core.artifact import restore_weights, weights_snapshot

    module, _ = load_artifact(tiny_artifact)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    snapshot = weights_snapshot(module)
    to_compute_dtype(module, "bfloat16")
    restore_weights(snapshot)
    after = module.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("device", ["tpu", "", "cuda:x", "mps"])
def test_an_unknown_device_is_named_before_the_artifact_is_read(device: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^device .* is not one of auto, cpu, cuda \(or cuda:N\)$"):
        resolve_device(device)
    with pytest.raises(ModelLoadError, match="is not one of auto, cpu, cuda"):  # not "not a valid TorchScript artifact"
        Engine.load(tmp_path / "missing.pt", device)


def test_cpu_and_auto_resolve() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")


def _damaged_copy(src: Path, dst: Path) -> str:
    """A copy with 64 bytes flipped inside its largest stored member (the weights); that member's name."""
    import zipfile

    with zipfile.ZipFile(src) as z:
        biggest = max(z.infolist(), key=lambda i: i.compress_size)
        # the member's data follows its 30-byte local header, file name and extra field
        with open(src, "rb") as f:
            f.seek(biggest.header_offset + 26)
            name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        start = biggest.header_offset + 30 + int(name_len) + int(extra_len) + biggest.compress_size // 2
    data = bytearray(src.read_bytes())
    for i in range(start, start + 64):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    return biggest.filename


def test_a_damaged_copy_of_an_artifact_is_refused_naming_the_member(tiny_artifact: Path, tmp_path: Path) -> None:
    """torch.jit.load checks no CRC: flipped bytes in the weights loaded and were served under the true hash."""
    from titok.core.tokenizer import Tokenizer

    damaged = tmp_path / "damaged.pt"
    member = _damaged_copy(tiny_artifact, damaged)
    with warnings.catch_warnings():  # what torch itself does with it: loads it without a word
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        torch.jit.load(str(damaged))
    for load in (lambda: load_artifact(damaged), lambda: Engine.load(damaged, "cpu", "float32"),
                 lambda: Tokenizer.load(damaged)):
        with pytest.raises(ModelLoadError, match=rf"is damaged: its member {member} fails its CRC-32 check"):
            load()


def _scripted(tmp_path: Path, name: str, encode: str, decode: str) -> torch.jit.ScriptModule:
    """A TorchScript module whose encode(images) and decode(tokens) return the given expressions (source text)."""
    import importlib.util

    path = tmp_path / f"{name}.py"
    path.write_text(f"""
import torch
class Module(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
    @torch.jit.export
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return {encode}
    @torch.jit.export
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
{decode}
""")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        return torch.jit.script(mod.Module())


def _forged(tmp_path: Path, meta: dict, encode_len: int = 8, codebook: int = 64, size: int = 32,
            pixel_dtype: str = "uint8") -> Path:
    """A scripted module that answers with the given shapes, under a meta.json of our choosing."""
    name = f"forged_{encode_len}_{codebook}_{size}_{pixel_dtype}"
    scripted = _scripted(tmp_path, name, f"torch.full((images.shape[0], {encode_len}), {codebook - 1}, "
                                         "dtype=torch.int64)",
                         f"        return torch.zeros((tokens.shape[0], {size}, {size}, 3), dtype=torch.{pixel_dtype})")
    out = tmp_path / f"{name}.pt"
    save_artifact(scripted, out, meta)
    return out


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"encode_len": 7}, r"encode of 2 images gave \(2, 7\) int64, not \(2, 8\) int64 \(num_tokens 8\)"),
    ({"codebook": 65}, r"encode gave token ids in \[64, 64\], outside \[0, 64\) \(codebook_size 64\)"),
    ({"size": 16}, r"decode of 8 tokens gave \(2, 16, 16, 3\) uint8, not \(2, 32, 32, 3\) uint8 \(image_size 32\)"),
    ({"pixel_dtype": "float32"}, r"decode of 8 tokens gave \(2, 32, 32, 3\) float32, not"),
])
def test_an_artifact_that_breaks_its_meta_contract_is_refused_at_load(tmp_path: Path, kwargs: dict,
                                                                      message: str) -> None:
    meta = {"name": "forged", "image_size": 32, "num_tokens": 8, "codebook_size": 64, "content_hash": "ab" * 32}
    path = _forged(tmp_path, meta, **kwargs)
    with pytest.raises(ModelLoadError, match=r"does not keep the contract its meta.json states: " + message):
        load_artifact(path)


def test_an_artifact_that_keeps_its_contract_loads(tmp_path: Path) -> None:
    meta = {"name": "honest", "image_size": 32, "num_tokens": 8, "codebook_size": 64}
    module, got = load_artifact(_forged(tmp_path, meta))
    assert got["name"] == "honest" and module.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape == (1, 8)


def test_a_prefix_decodable_meta_is_held_to_prefixes_too(tmp_path: Path) -> None:
    scripted = _scripted(tmp_path, "fixed", "torch.zeros((images.shape[0], 8), dtype=torch.int64)",
                         "        if tokens.shape[1] != 8:\n"
                         "            raise ValueError('this model decodes exactly 8 tokens')\n"
                         "        return torch.zeros((tokens.shape[0], 32, 32, 3), dtype=torch.uint8)")
    meta = {"name": "claims-prefixes", "image_size": 32, "num_tokens": 8, "codebook_size": 64}
    save_artifact(scripted, tmp_path / "fixed.pt", meta)
    load_artifact(tmp_path / "fixed.pt")  # a fixed-length model that says so loads
    save_artifact(scripted, tmp_path / "claims.pt", {**meta, "prefix_decodable": True})
    with pytest.raises(ModelLoadError, match=r"decode of \(2, 1\) int64 \(a prefix\) failed \(.*decodes exactly 8"):
        load_artifact(tmp_path / "claims.pt")


def test_a_codebook_larger_than_the_modules_is_refused_at_load(tmp_path: Path) -> None:
    """meta.json said 8192 codes over a 4096-code model: it loaded, and a client's id 5000 was a 500 later."""
    scripted = _scripted(tmp_path, "small", "torch.zeros((images.shape[0], 8), dtype=torch.int64)",
                         "        codes = torch.zeros(48, 4)  # 48 codes, not the 64 the meta.json claims\n"
                         "        blank = torch.zeros((tokens.shape[0], 32, 32, 3))\n"
                         "        return (codes[tokens].sum() * blank).to(torch.uint8)")
    save_artifact(scripted, tmp_path / "small.pt", {"name": "s", "image_size": 32, "num_tokens": 8,
                                                    "codebook_size": 48})
    load_artifact(tmp_path / "small.pt")  # honest about its 48 codes: loads
    save_artifact(scripted, tmp_path / "lies.pt", {"name": "s", "image_size": 32, "num_tokens": 8,
                                                   "codebook_size": 64})
    with pytest.raises(ModelLoadError, match=r"decode of \(2, 8\) int64 \(every id 63, the last of codebook_size\) "
                                             r"failed \(.*index 63 is out of bounds"):
        load_artifact(tmp_path / "lies.pt")


@pytest.mark.parametrize(("field", "value", "words"), [
    ("image_size", 1_000_000, r"says image_size 1000000; it must be an integer in \[1, 4096\]"),
    ("image_size", 32.0, r"says image_size 32.0; it must be an integer"),
    ("num_tokens", 0, r"says num_tokens 0; it must be an integer in \[1, 65536\]"),
    ("num_tokens", True, r"says num_tokens True"),
    ("codebook_size", "64", r"says codebook_size '64'"),
    ("codebook_size", 1, r"says codebook_size 1; it must be an integer in \[2, "),
])
def test_a_meta_json_out_of_bounds_is_refused_before_anything_is_sized_by_it(
        tmp_path: Path, field: str, value: object, words: str) -> None:
    """A forged image_size of 10^6 would have had the load check allocate 2 x 10^12 x 3 bytes."""
    meta = {"name": "forged", "image_size": 32, "num_tokens": 8, "codebook_size": 64}
    path = _forged(tmp_path, meta)
    import zipfile

    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:  # meta.json rewritten inside the archive
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/extra/meta.json"):
                data = json.dumps({**meta, field: value}).encode()
            dst.writestr(item, data)
    for load in (load_artifact, read_meta):
        with pytest.raises(ModelLoadError, match=words):
            load(bad)
