"""scripts/quantizer_ablation.py: the research runs of the model card's quantizer section, on a micro model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "quantizer_ablation.py"
MICRO = ["--set", "image_size=32", "--set", "patch_size=8", "--set", "num_tokens=8", "--set", "enc_width=32",
         "--set", "enc_depth=1", "--set", "enc_heads=2", "--set", "dec_width=32", "--set", "dec_depth=1",
         "--set", "dec_heads=2", "--set", "codebook_size=64", "--set", "head_channels=8"]


@pytest.fixture
def ablation(monkeypatch: pytest.MonkeyPatch):
    """The script as a module, with whatever it patches put back afterwards."""
    from titok.model import quantizer
    from titok.model import train as train_module

    monkeypatch.setattr(quantizer.VectorQuantizer, "forward", quantizer.VectorQuantizer.forward)
    monkeypatch.setattr(train_module, "evaluate_heldout", train_module.evaluate_heldout)
    spec = importlib.util.spec_from_file_location("quantizer_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["quantizer_ablation"] = module
    spec.loader.exec_module(module)
    return module


def test_the_rotation_trick_keeps_the_code_and_rotates_the_gradient(ablation) -> None:
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(64, 12, generator=g), dim=-1).requires_grad_()
    q = F.normalize(torch.randn(64, 12, generator=g), dim=-1)
    out = ablation.rotated_onto(z, q)
    assert torch.allclose(out, q, atol=1e-5)  # the forward value is the code
    upstream = torch.randn(64, 12, generator=g)
    (out * upstream).sum().backward()
    assert not torch.allclose(z.grad, upstream, atol=1e-3)  # straight-through would copy it unchanged
    assert torch.allclose(z.grad.norm(dim=-1), upstream.norm(dim=-1), atol=1e-4)  # a rotation: lengths kept


@pytest.mark.parametrize("mode", ["none", "rotation", "ste"])
def test_each_mode_trains_and_logs_held_out_psnr_by_prefix(ablation, mode: str, tmp_path: Path,
                                                         photo_dir: Path) -> None:
    out = tmp_path / mode
    assert ablation.main([mode, "--data", str(photo_dir), "--eval-data", str(photo_dir), "--out", str(out),
                          "--steps", "4", "--batch-size", "4", "--warmup", "2", "--eval-every", "4", "--no-progress",
                          "--tail-drop", "--precision", "fp32", *MICRO]) == 0
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert evals and set(evals[-1]["psnr_by_prefix"]) == {"1", "2", "4", "8"}
    assert all(v > 0 for v in evals[-1]["psnr_by_prefix"].values())


def test_a_mode_must_come_first(ablation, capsys) -> None:
    assert ablation.main(["--steps", "4"]) == 2
    assert "the first argument must be one of ste, none, rotation" in capsys.readouterr().err
