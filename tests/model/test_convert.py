"""`titok convert` end to end on small random reference checkpoints (real sizes only on the meta device)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from model import convert
from model.config import PRESETS, get_preset
from model.export import state_hash
from model.tokenizer import build_model
from service.core.artifact import load_artifact

# The published layouts at toy widths: same key names, 256 x 256 pixels, patch 16, K tokens.
SMALL = dict(enc_width=64, enc_depth=1, enc_heads=2, dec_width=64, dec_depth=1, dec_heads=2,
             pixel_channels=32, pixel_res_blocks=1, pixel_codebook_size=64, pixel_code_dim=32)
LEGACY, VQ8K = "test-small-l-32", "test-small-bl-64-vq8k"


@pytest.fixture(autouse=True)
def small_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESETS, LEGACY, {**PRESETS["titok-l-32"], **SMALL})
    monkeypatch.setitem(PRESETS, VQ8K, {**PRESETS["titok-bl-64-vq8k"], **SMALL})


def _random_state_dict(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_model(get_preset(preset)).state_dict().items()}


def _hf_config(preset: str, **overrides: object) -> dict:
    """The reference's config.json layout (OmegaConf dump) for a preset, without the size names."""
    cfg = get_preset(preset)
    vq = dict(codebook_size=cfg.codebook_size, token_size=cfg.code_dim, use_l2_norm=cfg.l2_norm_codes,
              commitment_cost=0.25, vit_enc_patch_size=16, vit_dec_patch_size=16,
              num_latent_tokens=cfg.num_tokens, finetune_decoder=cfg.pixel_head == "maskgit", is_legacy=cfg.legacy)
    vq.update(overrides)
    return {"experiment": {}, "model": {"vq_model": vq}, "dataset": {"preprocessing": {"crop_size": 256}}}


def _run_cli(tmp_path: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="titok convert")
    convert.add_args(parser)
    return convert.run(parser.parse_args(list(argv)))


def _check_artifact(path: Path, preset: str, sd: dict[str, torch.Tensor]) -> dict:
    cfg = get_preset(preset)
    module, meta = load_artifact(path)
    images = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = module.encode(images)
        pixels = module.decode(tokens)
        # the artifact is the eager reference model with exactly these weights
        eager = build_model(cfg).eval()
        eager.load_state_dict(sd, strict=True)
        expected = eager.encode_indices(images.permute(0, 3, 1, 2).float() / 255.0)
    assert tokens.shape == (2, cfg.num_tokens) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < cfg.codebook_size
    assert torch.equal(tokens, expected)
    assert pixels.shape == (2, 256, 256, 3) and pixels.dtype == torch.uint8
    assert meta["content_hash"] == state_hash(eager)  # the fingerprint /encode and /decode check
    return meta


@pytest.mark.slow
def test_bin_state_dict_converts_and_serves_at_256(tmp_path: Path) -> None:
    sd = _random_state_dict(LEGACY)
    src = tmp_path / "tokenizer_titok_l32.bin"
    torch.save(sd, src)
    out = tmp_path / "l32.pt"
    assert _run_cli(tmp_path, "--from", str(src), "--preset", LEGACY, "--out", str(out)) == 0
    meta = _check_artifact(out, LEGACY, sd)
    assert meta["source"] == "bytedance/1d-tokenizer"
    assert meta["source_checkpoint"] == "tokenizer_titok_l32.bin" and meta["preset"] == LEGACY
    assert meta["config"]["arch"] == "reference" and meta["num_tokens"] == 32


def test_safetensors_with_config_json_converts(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = _random_state_dict(VQ8K, seed=1)
    repo = tmp_path / "tokenizer_titok_bl64_vq8k_imagenet"
    repo.mkdir()
    save_file(sd, str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps(_hf_config(VQ8K)))
    out = tmp_path / "bl64.pt"
    meta = convert.convert_checkpoint(repo / "model.safetensors", get_preset(VQ8K), out, preset=VQ8K)
    assert meta["source_config"] == "config.json" and meta["source_checkpoint"] == "model.safetensors"
    _check_artifact(out, VQ8K, sd)


def test_config_json_mismatch_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    save_file(_random_state_dict(LEGACY), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(LEGACY, codebook_size=8192, is_legacy=False)))
    code = _run_cli(tmp_path, "--from", str(tmp_path / "model.safetensors"), "--preset", LEGACY,
                    "--out", str(tmp_path / "x.pt"))
    err = capsys.readouterr().err
    assert code == 2 and "codebook_size" in err and "8192" in err and "is_legacy" in err
    assert not (tmp_path / "x.pt").exists()


def test_safetensors_without_config_json_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(_random_state_dict(LEGACY), str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="config.json"):
        convert.convert_checkpoint(tmp_path / "model.safetensors", get_preset(LEGACY), tmp_path / "x.pt")


def test_vae_config_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(_random_state_dict(VQ8K), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(VQ8K, quantize_mode="vae")))
    with pytest.raises(ValueError, match="VAE"):
        convert.convert_checkpoint(tmp_path / "model.safetensors", get_preset(VQ8K), tmp_path / "x.pt")


def test_missing_extra_and_misshaped_tensors_in_one_error(tmp_path: Path) -> None:
    sd = _random_state_dict(LEGACY)
    del sd["pixel_decoder.up.1.block.0.nin_shortcut.weight"]
    sd["quantize.embed_prob"] = torch.zeros(4096)
    sd["quantize.embedding.weight"] = torch.zeros(8192, 12)
    src = tmp_path / "bad.bin"
    torch.save(sd, src)
    with pytest.raises(ValueError) as info:
        convert.convert_checkpoint(src, get_preset(LEGACY), tmp_path / "x.pt", preset=LEGACY)
    message = str(info.value)
    assert "1 missing" in message and "pixel_decoder.up.1.block.0.nin_shortcut.weight" in message
    assert "1 unexpected" in message and "quantize.embed_prob" in message
    assert re.search(r"quantize\.embedding\.weight: checkpoint \(8192, 12\), model \(4096, 12\)", message)
    assert not (tmp_path / "x.pt").exists()


def test_wrong_preset_lists_every_problem(tmp_path: Path) -> None:
    """A VQ-8k checkpoint offered as legacy: no pixel decoder, other head and codebook (capped listing)."""
    src = tmp_path / "bl64.bin"
    torch.save(_random_state_dict(VQ8K), src)
    with pytest.raises(ValueError, match=r"missing tensor\(s\)(.|\n)*\.\.\. and \d+ more") as info:
        convert.convert_checkpoint(src, get_preset(LEGACY), tmp_path / "x.pt", preset=LEGACY)
    first_line = str(info.value).splitlines()[0]
    assert first_line == f"this checkpoint is preset {VQ8K}, not {LEGACY}: use --preset {VQ8K}"


def test_config_json_of_another_preset_names_that_preset_first(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    save_file(_random_state_dict(VQ8K), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(VQ8K)))
    code = _run_cli(tmp_path, "--from", str(tmp_path / "model.safetensors"), "--preset", LEGACY,
                    "--out", str(tmp_path / "x.pt"))
    err = capsys.readouterr().err
    error = next(line for line in err.splitlines() if line.startswith("titok convert: error:"))
    # The config names no ViT sizes here, so every preset with this quantizer matches; the test's one among them.
    assert code == 2 and error.startswith("titok convert: error: this checkpoint is preset ") and VQ8K in error
    assert "codebook_size" in err and not (tmp_path / "x.pt").exists()


def test_only_tensors_are_loaded(tmp_path: Path) -> None:
    src = tmp_path / "pickled.bin"
    torch.save({"latent_tokens": torch.zeros(1), "note": argparse.Namespace(a=1)}, src)
    with pytest.raises(ValueError, match="tensors-only"):
        convert.load_tensors(src)
    torch.save({"step": 3}, src)
    with pytest.raises(ValueError, match="not a state dict"):
        convert.load_tensors(src)


def test_our_own_presets_are_not_convertible(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="titok-l-32"):
        convert.convert_checkpoint(tmp_path / "x.bin", get_preset("tiny"), tmp_path / "x.pt", preset="tiny")
