"""`titok encode` / `titok decode` against a live server."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image
from sample_images import all_formats

from service.client import decode_main, encode_main


def test_encode_then_decode_round_trip(live_url: str, tmp_path: Path, capsys) -> None:
    files = []
    for name in ("png", "jpeg"):
        files.append(tmp_path / f"{name}.img")
        files[-1].write_bytes(all_formats()[name])
    assert encode_main([*map(str, files), "--url", live_url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["tokens"]) == 2 and len(out["tokens"][0]) == 8 and out["model"] == "test-tiny"

    (tmp_path / "tokens.json").write_text(json.dumps(out))
    assert decode_main(["--tokens", f"@{tmp_path / 'tokens.json'}", "--out", str(tmp_path / "r.png"),
                        "--url", live_url]) == 0
    assert sorted(p.name for p in tmp_path.glob("r-*.png")) == ["r-0.png", "r-1.png"]
    assert decode_main(["--tokens", json.dumps(out["tokens"][0]), "--out", str(tmp_path / "one.png"),
                        "--url", live_url]) == 0
    assert Image.open(io.BytesIO((tmp_path / "one.png").read_bytes())).size == (32, 32)


def test_client_errors_are_one_line_and_exit_1(live_url: str, tmp_path: Path, capsys) -> None:
    assert decode_main(["--tokens", "[1, 2]", "--out", str(tmp_path / "x.png"), "--url", live_url]) == 1
    assert "422" in capsys.readouterr().err
    assert encode_main([str(tmp_path / "missing.png"), "--url", live_url]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert encode_main([str(Path(__file__)), "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err
