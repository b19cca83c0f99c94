import json
import subprocess
import sys
import textwrap

import pytest
import torch

from titok.core.artifact import load_artifact
from titok.model.export import export_checkpoint, export_model
from titok.model.tokenizer import TiTok


def test_artifact_matches_eager_model_and_carries_meta(tmp_path, micro_cfg):
    cfg = micro_cfg()
    torch.manual_seed(0)
    model = TiTok(cfg).eval()
    meta = export_model(model, cfg, tmp_path / "a.pt", {"name": "micro", "eval": {"psnr": 1.0}})
    module, loaded = load_artifact(tmp_path / "a.pt")
    assert loaded == json.loads(json.dumps(meta, default=str))
    for key in ("name", "image_size", "num_tokens", "codebook_size", "config", "content_hash", "torch_version"):
        assert key in loaded
    assert loaded["name"] == "micro" and loaded["eval"] == {"psnr": 1.0}
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    tokens = module.encode(images)
    assert tokens.shape == (3, cfg.num_tokens) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < cfg.codebook_size
    pixels = module.decode(tokens)
    assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == torch.uint8
    with torch.no_grad():
        eager = model.encode_indices(images.permute(0, 3, 1, 2).float() / 255)
        eager_px = (model.decode_indices(eager).clamp(0, 1) * 255).round().permute(0, 2, 3, 1)
    assert torch.equal(tokens, eager)
    assert (pixels.float() - eager_px).abs().max() <= 1


def test_fp16_storage_halves_the_file_and_keeps_tokens(tmp_path, micro_cfg):
    cfg = micro_cfg(enc_width=128, dec_width=128)
    model = TiTok(cfg).eval()
    export_model(model, cfg, tmp_path / "fp32.pt")
    export_model(model, cfg, tmp_path / "fp16.pt", fp16_storage=True)
    ratio = (tmp_path / "fp16.pt").stat().st_size / (tmp_path / "fp32.pt").stat().st_size
    assert ratio < 0.6
    m16, meta = load_artifact(tmp_path / "fp16.pt")
    assert meta["weights_dtype"] == "float16"
    assert m16.decode(torch.zeros(1, cfg.num_tokens, dtype=torch.long)).shape == (1, 32, 32, 3)


def test_export_from_checkpoint_uses_ema_weights(tmp_path, micro_cfg):
    cfg = micro_cfg()
    model = TiTok(cfg)
    ema = {k: v.clone() for k, v in TiTok(cfg).state_dict().items()}
    torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "ema": ema, "step": 7,
                "preset": "tiny", "training": {"steps": 7}}, tmp_path / "checkpoint.pt")
    meta = export_checkpoint(tmp_path / "checkpoint.pt", tmp_path / "a.pt")
    assert meta["weights"] == "ema" and meta["step"] == 7 and meta["training"] == {"steps": 7}
    ref = TiTok(cfg)
    ref.load_state_dict(ema)
    from titok.model.export import state_hash

    assert meta["content_hash"] == state_hash(ref.float())


def test_export_records_data_paths_without_the_training_machines_folders(tmp_path, micro_cfg):
    # Checkpoints and eval.json files written before paths were kept relative hold absolute ones (issue 21, item 16).
    cfg = micro_cfg()
    model = TiTok(cfg)
    root = tmp_path / "home" / "alice" / "data"
    torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "step": 3,
                "training": {"data": [str(root / "photos/train"), str(root / "shards/00000.tar")], "steps": 3}},
               tmp_path / "checkpoint.pt")
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"psnr": 1.0, "data": [str(root / "photos/dev-eval")]}))
    import argparse

    from titok.model.export import add_args, run

    parser = argparse.ArgumentParser()
    add_args(parser)
    assert run(parser.parse_args(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path / "a.pt"),
                                  "--eval-json", str(eval_json)])) == 0
    _, meta = load_artifact(tmp_path / "a.pt")
    assert meta["training"]["data"] == ["photos/train", "shards/00000.tar"]
    assert meta["eval"]["data"] == ["dev-eval"] and meta["eval"]["psnr"] == 1.0
    assert str(tmp_path) not in json.dumps(meta)


@pytest.mark.slow
def test_artifact_runs_where_model_package_cannot_be_imported(tmp_path, micro_cfg):
    cfg = micro_cfg()
    export_model(TiTok(cfg), cfg, tmp_path / "a.pt", {"name": "standalone"})
    script = textwrap.dedent(f"""
        import sys, json, warnings
        sys.modules["titok.model"] = None  # any import of the training package now fails
        import torch
        try:
            import titok.model  # noqa: F401
            raise SystemExit("model should not be importable")
        except ImportError:
            pass
        extra = {{"meta.json": ""}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            m = torch.jit.load({str(tmp_path / "a.pt")!r}, _extra_files=extra)
        meta = json.loads(extra["meta.json"])
        t = m.encode(torch.zeros(2, meta["image_size"], meta["image_size"], 3, dtype=torch.uint8))
        px = m.decode(t)
        print(json.dumps({{"tokens": list(t.shape), "pixels": list(px.shape), "name": meta["name"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"tokens": [2, 16], "pixels": [2, 32, 32, 3],
                                                               "name": "standalone"}


def test_prefix_decodable_artifact_decodes_every_prefix_like_the_eager_model(tmp_path, micro_cfg):
    cfg = micro_cfg(tail_drop=True)
    torch.manual_seed(0)
    model = TiTok(cfg).eval()
    meta = export_model(model, cfg, tmp_path / "a.pt")
    assert meta["prefix_decodable"] is True
    assert meta["export_check"]["prefix_lengths"] == [1, cfg.num_tokens // 2, cfg.num_tokens]
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        plain = torch.jit.load(str(tmp_path / "a.pt"))  # a plain load, no project code
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    tokens = plain.encode(images)
    assert tokens.shape == (2, cfg.num_tokens)
    previous = None
    for k in range(1, cfg.num_tokens + 1):
        pixels = plain.decode(tokens[:, :k])
        assert pixels.shape == (2, 32, 32, 3) and pixels.dtype == torch.uint8
        with torch.no_grad():
            eager = (model.decode_indices(tokens[:, :k]).clamp(0, 1) * 255).round().permute(0, 2, 3, 1)
        assert (pixels.float() - eager).abs().max() <= 1
        if previous is not None:  # each further token changes the picture (no padding that hides it)
            assert not torch.equal(pixels, previous)
        previous = pixels


def test_decoding_a_prefix_differs_from_decoding_zero_padded_tokens(micro_cfg):
    # A prefix is decoded with k latents, not as K tokens padded with code 0.
    cfg = micro_cfg(tail_drop=True)
    torch.manual_seed(0)
    model = TiTok(cfg).eval()
    tokens = torch.randint(1, cfg.codebook_size, (1, cfg.num_tokens))
    k = cfg.num_tokens // 2
    padded = torch.cat([tokens[:, :k], torch.zeros(1, cfg.num_tokens - k, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert not torch.allclose(model.decode_indices(tokens[:, :k]), model.decode_indices(padded))


@pytest.mark.parametrize("tail_drop", [False, True])
def test_decode_refuses_bad_tokens_naming_what_it_expects(tmp_path, micro_cfg, tail_drop):
    cfg = micro_cfg(tail_drop=tail_drop)
    export_model(TiTok(cfg), cfg, tmp_path / "a.pt")
    module, meta = load_artifact(tmp_path / "a.pt")
    assert meta["prefix_decodable"] is tail_drop
    K = cfg.num_tokens
    ok = torch.zeros(1, K, dtype=torch.long)
    module.decode(ok)
    cases = [
        (torch.zeros(1, 0, dtype=torch.long), f"1 to {K} tokens" if tail_drop else f"exactly {K} tokens"),
        (torch.zeros(1, K + 1, dtype=torch.long), f"1 to {K} tokens" if tail_drop else f"exactly {K} tokens"),
        (torch.zeros(1, K), "integer token ids (int64), not floating-point ones"),  # was "not 6", an enum number
        (torch.zeros(1, K, dtype=torch.bool), "integer token ids (int64), not bool ones"),
        (torch.full((1, K), -1, dtype=torch.long), f"token ids in [0, {cfg.codebook_size})"),
        (torch.full((1, K), cfg.codebook_size, dtype=torch.long), f"token ids in [0, {cfg.codebook_size})"),
        (torch.zeros(K, dtype=torch.long), "shape (B, k)"),
    ]
    if not tail_drop:
        cases.append((ok[:, : K // 2], "not trained to decode prefixes"))
    for tokens, message in cases:
        with pytest.raises(Exception, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            module.decode(tokens)


def _scripted_code(path) -> str:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return "\n".join(z.read(n).decode() for n in z.namelist() if n.endswith(".py") and "/code/" in n)


@pytest.mark.parametrize("arch", ["titok", "reference"])
def test_artifact_code_inlines_no_interpolate_so_older_torch_loads_it(tmp_path, micro_cfg, arch):
    """Scripted, F.interpolate inlines its whole body, naming every mode's op: an artifact exported by torch 2.13
    (lanczos added) failed to load on torch 2.11 ("Unknown builtin op: aten::_upsample_lanczos2d_aa", seen on
    the GPU machine). The model calls the upsampling ops themselves; the bundled artifacts are re-exported so."""
    from titok.model.config import get_preset
    from titok.model.tokenizer import build_model

    cfg = micro_cfg() if arch == "titok" else get_preset(
        "titok-l-32", enc_width=64, enc_depth=1, enc_heads=2, dec_width=64, dec_depth=1, dec_heads=2,
        pixel_channels=32, pixel_res_blocks=1, pixel_codebook_size=64, pixel_code_dim=32)
    torch.manual_seed(0)
    export_model(build_model(cfg).eval(), cfg, tmp_path / "a.pt")
    code = _scripted_code(tmp_path / "a.pt")
    assert "upsample" in code  # the model does upsample (the check below is not vacuous)
    assert "def interpolate(" not in code and "lanczos" not in code


@pytest.mark.parametrize("name", ["default.pt", "ordered.pt"])
def test_bundled_artifacts_inline_no_interpolate(name):
    from pathlib import Path

    code = _scripted_code(Path(__file__).resolve().parents[2] / "service" / "models" / name)
    assert "def interpolate(" not in code and "lanczos" not in code
