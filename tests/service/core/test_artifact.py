"""The artifact format's one owner: meta.json, the content hash, the token dtype."""

from __future__ import annotations

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
