"""The GPU run's helper scripts, on the CPU: slimming a checkpoint, re-exporting an artifact, timing calls."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from titok.core.artifact import load_artifact
from titok.model.config import get_preset
from titok.model.export import export_checkpoint, export_model
from titok.model.tokenizer import TiTok

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
MICRO = dict(image_size=32, patch_size=8, num_tokens=16, enc_width=64, enc_depth=1, enc_heads=2, dec_width=64,
             dec_depth=1, dec_heads=2, codebook_size=256, lowfreq_size=8, tail_drop=True)


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def images(n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_a_slimmed_checkpoint_exports_the_same_tokens_at_a_fraction_of_the_size(tmp_path: Path) -> None:
    cfg = get_preset("tiny", **MICRO)
    torch.manual_seed(0)
    model = TiTok(cfg)
    ema = {k: v.detach().clone().float() + (0.01 if v.is_floating_point() else 0) for k, v in
           model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters())
    model(torch.rand(2, 3, 32, 32))[0].mean().backward()
    opt.step()
    full = tmp_path / "checkpoint.pt"
    torch.save({"config": cfg.to_dict(), "preset": "tiny", "model": model.state_dict(), "ema": ema,
                "optimizer": opt.state_dict(), "step": 7, "training": {"steps": 7}}, full)
    slim = tmp_path / "slim.pt"
    script("slim_checkpoint").main([str(full), str(slim)])
    assert slim.stat().st_size < full.stat().st_size / 2.5
    saved = torch.load(slim, weights_only=True)
    assert "optimizer" not in saved and saved["step"] == 7 and saved["training"]["slimmed"] is True
    assert all(v.dtype == (torch.float32 if k.startswith("quantize.") else torch.float16)
               for k, v in saved["ema"].items() if ema[k].is_floating_point())
    for src, out in ((full, tmp_path / "a.pt"), (slim, tmp_path / "b.pt")):
        export_checkpoint(src, out, fp16_storage=True)
    (a, _), (b, _) = load_artifact(tmp_path / "a.pt"), load_artifact(tmp_path / "b.pt")
    assert torch.equal(a.encode(images()), b.encode(images()))  # the EMA weights, both rounded to fp16


def test_reexport_keeps_weights_hash_and_record(tmp_path: Path) -> None:
    cfg = get_preset("tiny", **MICRO)
    torch.manual_seed(0)
    export_model(TiTok(cfg).eval(), cfg, tmp_path / "a.pt", {"name": "micro", "eval": {"psnr": 12.5}},
                 fp16_storage=True)
    script("reexport_artifact").main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt")])
    (a, meta_a), (b, meta_b) = load_artifact(tmp_path / "a.pt"), load_artifact(tmp_path / "b.pt")
    assert meta_b["content_hash"] == meta_a["content_hash"] and meta_b["eval"] == {"psnr": 12.5}
    assert meta_b["name"] == "micro" and meta_b["weights_dtype"] == "float16" and meta_b["prefix_decodable"]
    tokens = a.encode(images())
    assert torch.equal(tokens, b.encode(images()))
    assert torch.equal(a.decode(tokens[:, :3]), b.decode(tokens[:, :3]))


def test_call_times_print_a_row_per_mode_op_and_batch(tmp_path: Path, capsys) -> None:
    cfg = get_preset("tiny", **MICRO)
    export_model(TiTok(cfg).eval(), cfg, tmp_path / "a.pt")
    assert script("cuda_calls").main([str(tmp_path / "a.pt"), "--device", "cpu", "--dtype", "float32",
                                      "--batches", "1,3", "--calls", "4", "--modes", "default,no-fusion"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| default")
            or line.startswith("| no-fusion")]
    assert len(rows) == 2 * 2 * 2, rows
    assert all(float(row.split("|")[7]) > 0 for row in rows)


def test_artifact_speed_prints_a_row_per_artifact_and_dtype(tmp_path: Path, capsys) -> None:
    cfg = get_preset("tiny", **MICRO)
    export_model(TiTok(cfg).eval(), cfg, tmp_path / "a.pt")
    deeper = get_preset("tiny", **{**MICRO, "dec_depth": 2})
    export_model(TiTok(deeper).eval(), deeper, tmp_path / "b.pt")
    assert script("artifact_speed").main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--batch", "2",
                                          "--threads", "1", "--repeats", "1", "--dtypes", "float32,bfloat16"]) == 0
    rows = [line.split("|")[1:5] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [(r[0].strip().rsplit("/", 1)[-1], r[1].strip()) for r in rows[1:]] == [
        ("a.pt", "float32"), ("b.pt", "float32"), ("a.pt", "bfloat16"), ("b.pt", "bfloat16")]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows[1:])
    assert script("artifact_speed").main([str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: model file not found" in capsys.readouterr().err
