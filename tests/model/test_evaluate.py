"""`titok eval` on small exported models: the full-length figures, and the by-length ones for ordered tokens."""

import json

import pytest
import torch
from PIL import Image

from titok.model.evaluate import main as eval_main
from titok.model.export import export_model
from titok.model.tokenizer import TiTok


@pytest.mark.parametrize("tail_drop", [False, True])
def test_eval_reports_each_prefix_length_for_a_prefix_decodable_model(tmp_path, micro_cfg, photo_dir, tail_drop):
    cfg = micro_cfg(tail_drop=tail_drop)
    torch.manual_seed(0)
    export_model(TiTok(cfg), cfg, tmp_path / "a.pt", {"name": "micro"})
    out = tmp_path / "eval"
    assert eval_main(["--artifact", str(tmp_path / "a.pt"), "--data", str(photo_dir), "--out", str(out)]) == 0
    figures = json.loads((out / "eval.json").read_text())
    assert figures["prefix_decodable"] is tail_drop and figures["images"] == 6
    if not tail_drop:
        assert "by_length" not in figures and not (out / "eval_by_length.png").exists()
        return
    rows = figures["by_length"]
    assert [r["k"] for r in rows] == [1, 2, 4, 8, 16]
    assert [r["bits"] for r in rows] == [8 * k for k in (1, 2, 4, 8, 16)]  # 256 codes: 8 bits a token
    # the thumbnail holds at most the same bits (at least one pixel): 1x1 up to 8 tokens, 2x2 at 16
    assert [r["baseline"]["side"] for r in rows] == [1, 1, 1, 1, 2]
    full = rows[-1]
    assert full["psnr"] == pytest.approx(figures["psnr"]) and full["ssim"] == pytest.approx(figures["ssim"])
    assert full["baseline"]["psnr"] == pytest.approx(figures["baseline"]["psnr"])
    assert len({round(r["psnr"], 6) for r in rows}) == len(rows)  # each length decodes its own picture
    grid = Image.open(out / "eval_lengths_grid.png")
    assert grid.size == (6 * 34 + 2, 3 * 34 + 2)  # 3 photos x (photo + 5 lengths) at 32 px, 2 px apart
    assert Image.open(out / "eval_by_length.png").size[0] > 300
