"""`titok convert` end to end on small random reference checkpoints (real sizes only on the meta device)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from titok.core.artifact import load_artifact
from titok.model import convert
from titok.model.config import PRESETS, get_preset
from titok.model.export import state_hash
from titok.model.tokenizer import build_model

# The published layouts at toy widths: same key names, 256 x 256 pixels, patch 16, K tokens.
SMALL = dict(enc_width=64, enc_depth=1, enc_heads=2, dec_width=64, dec_depth=1, dec_heads=2,
             pixel_channels=32, pixel_res_blocks=1, pixel_codebook_size=64, pixel_code_dim=32)
LEGACY, VQ8K = "test-small-l-32", "test-small-bl-64-vq8k"
ODP, S128 = "test-small-one-d-piece-256", "test-small-s-128"  # One-D-Piece and the TiTok of the same layout
ODP_TSV = Path(__file__).parent / "one-d-piece-s256-state-dict.tsv"  # the published S-256 keys and shapes


@pytest.fixture(autouse=True)
def small_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESETS, LEGACY, {**PRESETS["titok-l-32"], **SMALL})
    monkeypatch.setitem(PRESETS, VQ8K, {**PRESETS["titok-bl-64-vq8k"], **SMALL})
    monkeypatch.setitem(PRESETS, ODP, {**PRESETS["one-d-piece-s-256"], **SMALL})
    monkeypatch.setitem(PRESETS, S128, {**PRESETS["titok-s-128"], **SMALL})


def _random_state_dict(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_model(get_preset(preset)).state_dict().items()}


def _hf_config(preset: str, model_type: str | None = None, **overrides: object) -> dict:
    """The reference's config.json layout (OmegaConf dump) for a preset, without the size names.

    model_type: the `model.type` field (One-D-Piece's configs say "one_d_piece"; TiTok's name none).
    """
    cfg = get_preset(preset)
    vq = dict(codebook_size=cfg.codebook_size, token_size=cfg.code_dim, use_l2_norm=cfg.l2_norm_codes,
              commitment_cost=0.25, vit_enc_patch_size=16, vit_dec_patch_size=16,
              num_latent_tokens=cfg.num_tokens, finetune_decoder=cfg.pixel_head == "maskgit", is_legacy=cfg.legacy)
    vq.update(overrides)
    model: dict = {"vq_model": vq}
    if model_type is not None:
        model = {"type": model_type, **model}
    return {"experiment": {}, "model": model, "dataset": {"preprocessing": {"crop_size": 256}}}


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


def _hub_repo(tmp_path: Path, sd: dict[str, torch.Tensor], config: dict, name: str = "repo") -> Path:
    """A hub snapshot: model.safetensors and config.json side by side; returns the weights' path."""
    from safetensors.torch import save_file

    repo = tmp_path / name
    repo.mkdir()
    save_file(sd, str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps(config))
    return repo / "model.safetensors"


def _check_prefixes(path: Path, preset: str, sd: dict[str, torch.Tensor], lengths: list[int]) -> None:
    """The artifact decodes each prefix length as the eager model with these weights does, within 1/255."""
    module, meta = load_artifact(path)
    assert meta["prefix_decodable"] is True and meta["num_tokens"] == 256
    eager = build_model(get_preset(preset)).eval()
    eager.load_state_dict(sd, strict=True)
    images = torch.randint(0, 256, (1, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = module.encode(images)
        assert torch.equal(tokens, eager.encode_indices(images.permute(0, 3, 1, 2).float() / 255.0))
        for k in lengths:
            pixels = module.decode(tokens[:, :k]).permute(0, 3, 1, 2).float()
            expected = (eager.decode_indices(tokens[:, :k]).clamp(0, 1) * 255).round()
            assert (pixels - expected).abs().max() <= 1, k
        for k in (0, 257):
            with pytest.raises(Exception, match="a prefix of 1 to 256 tokens"):
                module.decode(torch.zeros(1, k, dtype=torch.long))


def test_one_d_piece_hub_files_convert_to_a_prefix_decodable_artifact(tmp_path: Path) -> None:
    sd = _random_state_dict(ODP, seed=3)
    src = _hub_repo(tmp_path, sd, _hf_config(ODP, model_type="one_d_piece", strict_length_assertion=False))
    out = tmp_path / "odp.pt"
    meta = convert.convert_checkpoint(src, get_preset(ODP), out, preset=ODP)
    assert meta["source"] == "turingmotors/One-D-Piece" and meta["prefix_decodable"] is True
    assert meta["export_check"]["prefix_lengths"] == [1, 128, 256]
    _check_prefixes(out, ODP, sd, [1, 32, 128, 256])


def test_one_d_piece_presets_are_the_published_layout_and_prefix_decodable() -> None:
    rows = [line.split("\t") for line in ODP_TSV.read_text().splitlines() if line.strip()]
    published = {key: tuple(int(n) for n in re.findall(r"\d+", shape)) for key, shape in rows}
    with torch.device("meta"):
        model = build_model(get_preset("one-d-piece-s-256"))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == published  # strict: same keys, shapes
    for name, millions in (("one-d-piece-s-256", 83.9), ("one-d-piece-b-256", 205.3), ("one-d-piece-l-256", 641.7)):
        cfg = get_preset(name)
        assert cfg.tail_drop and cfg.num_tokens == 256 and cfg.arch == "reference" and cfg.legacy
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(cfg).parameters())
        assert round(n / 1e6, 1) == millions
    with torch.no_grad():  # a prefix decodes on the published layout (shapes only, on the meta device)
        tokens = torch.zeros(2, 5, dtype=torch.long, device="meta")
        assert model.decode_indices(tokens).shape == (2, 3, 256, 256)


@pytest.mark.slow
def test_one_d_piece_s_256_from_the_published_key_list_converts(tmp_path: Path) -> None:
    """A synthetic state dict made from the TSV alone (every published key and shape) at full S-256 size."""
    rows = [line.split("\t") for line in ODP_TSV.read_text().splitlines() if line.strip()]
    g = torch.Generator().manual_seed(4)
    sd = {key: 0.02 * torch.randn(*(int(n) for n in re.findall(r"\d+", shape)), generator=g) for key, shape in rows}
    sd["quantize.embedding.weight"] = torch.randn(4096, 12, generator=g)
    src = _hub_repo(tmp_path, sd, _hf_config("one-d-piece-s-256", model_type="one_d_piece",
                                             vit_enc_model_size="small", vit_dec_model_size="small"))
    out = tmp_path / "s256.pt"
    assert _run_cli(tmp_path, "--from", str(src), "--preset", "one-d-piece-s-256", "--out", str(out)) == 0
    _check_prefixes(out, "one-d-piece-s-256", sd, [1, 32, 256])


def test_one_d_piece_config_with_titok_tensors_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # TiTok-S-128 tensors (128 latent tokens) behind a config that says One-D-Piece at 256
    src = _hub_repo(tmp_path, _random_state_dict(S128), _hf_config(ODP, model_type="one_d_piece"))
    code = _run_cli(tmp_path, "--from", str(src), "--preset", ODP, "--out", str(tmp_path / "x.pt"))
    err = capsys.readouterr().err
    assert code == 2 and "describes a One-D-Piece model (256 latent tokens" in err
    assert f"this checkpoint is preset {S128}" in err and "latent_tokens: checkpoint (128, 64), model (256, 64)" in err
    assert not (tmp_path / "x.pt").exists()


def test_titok_config_with_a_one_d_piece_preset_is_refused(tmp_path: Path) -> None:
    src = _hub_repo(tmp_path, _random_state_dict(ODP), _hf_config(ODP))  # no model.type: TiTok's config
    with pytest.raises(ValueError, match="expects model.type 'one_d_piece'"):
        convert.convert_checkpoint(src, get_preset(ODP), tmp_path / "x.pt", preset=ODP)
    assert not (tmp_path / "x.pt").exists()


def test_one_d_piece_config_with_a_titok_preset_is_refused(tmp_path: Path) -> None:
    src = _hub_repo(tmp_path, _random_state_dict(ODP), _hf_config(ODP, model_type="one_d_piece"))
    with pytest.raises(ValueError, match=r"a One-D-Piece checkpoint\), but the preset is a TiTok model: expected one "
                                         r"of one-d-piece-s-256, one-d-piece-b-256, one-d-piece-l-256"):
        convert.convert_checkpoint(src, get_preset(S128), tmp_path / "x.pt", preset=S128)


def test_pytorch_model_bin_reads_its_config_json(tmp_path: Path) -> None:
    sd = _random_state_dict(ODP, seed=5)
    repo = tmp_path / "repo"
    repo.mkdir()
    torch.save(sd, repo / "pytorch_model.bin")
    (repo / "config.json").write_text(json.dumps(_hf_config(ODP)))  # TiTok's config beside One-D-Piece weights
    with pytest.raises(ValueError, match="expects model.type 'one_d_piece'"):
        convert.convert_checkpoint(repo / "pytorch_model.bin", get_preset(ODP), tmp_path / "x.pt", preset=ODP)
