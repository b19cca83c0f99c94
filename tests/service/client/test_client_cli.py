"""`titok encode` / `titok decode` against a live server."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sample_images import all_formats
from service_helpers import make_settings, serving

from titok.client.cli import decode_main, encode_main
from titok.server.app import build_app


def test_encode_then_decode_round_trip(live_url: str, tmp_path: Path, capsys) -> None:
    files = []
    for name in ("png", "jpeg"):
        files.append(tmp_path / f"{name}.img")
        files[-1].write_bytes(all_formats()[name])
    assert encode_main([*map(str, files), "--url", live_url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["tokens"]) == 2 and len(out["tokens"][0]) == 8 and out["model"] == "test-tiny"
    served = httpx.get(f"{live_url}/info").json()["model"]["content_hash"]
    answer = httpx.post(f"{live_url}/encode", files=[("images", (f.name, f.read_bytes())) for f in files]).json()
    assert out == {**answer, "files": [str(f) for f in files]} and out["content_hash"] == served  # one format

    (tmp_path / "tokens.json").write_text(json.dumps(out))
    assert decode_main(["--tokens", f"@{tmp_path / 'tokens.json'}", "--out", str(tmp_path / "r.png"),
                        "--url", live_url]) == 0
    assert sorted(p.name for p in tmp_path.glob("r-*.png")) == ["r-0.png", "r-1.png"]
    assert decode_main(["--tokens", json.dumps(out["tokens"][0]), "--out", str(tmp_path / "one.png"),
                        "--url", live_url]) == 0
    assert Image.open(io.BytesIO((tmp_path / "one.png").read_bytes())).size == (32, 32)


def test_tokens_json_names_its_model_and_another_model_refuses_it(live_url: str, tmp_path: Path, capsys) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(all_formats()["png"])
    assert encode_main([str(image), "--url", live_url]) == 0
    doc = json.loads(capsys.readouterr().out)
    # /decode takes `titok encode`'s output as it is: a list of sequences, so JSON with one PNG per sequence.
    r = httpx.post(f"{live_url}/decode", json=doc)
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**doc, "content_hash": "0123456789abcdef" * 4}))
    assert decode_main(["--tokens", f"@{other}", "--out", str(tmp_path / "x.png"), "--url", live_url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 409 ") and "0123456789abcdef" in err and not (tmp_path / "x.png").exists()


def test_client_errors_are_one_line_and_exit_1(live_url: str, tmp_path: Path, capsys) -> None:
    assert decode_main(["--tokens", "[1, 2]", "--out", str(tmp_path / "x.png"), "--url", live_url]) == 1
    assert "422" in capsys.readouterr().err
    assert encode_main([str(tmp_path / "missing.png"), "--url", live_url]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert encode_main([str(Path(__file__)), "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_resize_has_help_text(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal width
    with pytest.raises(SystemExit):
        encode_main(["--help"])
    out = capsys.readouterr().out
    assert re.search(r"--resize \{crop,pad,stretch\}\s+fitting the image to the model's square: crop \(default\)", out)


@pytest.mark.parametrize("tokens, words", [("[[]]", "takes exactly 8"),  # not "tokens is an empty list"
                                           ("[[1, 2], [3]]", "tokens[0] has 2 tokens; the model takes exactly 8"),
                                           ('[[1, 2, 3, 4, 5, 6, 7, 8], [1]]', "tokens[1] has 1 tokens")])
def test_decode_names_what_is_wrong_with_the_tokens(live_url: str, tmp_path: Path, capsys, tokens: str,
                                                    words: str) -> None:
    assert decode_main(["--tokens", tokens, "--out", str(tmp_path / "x.png"), "--url", live_url]) == 1
    err = capsys.readouterr().err
    assert words in err and "empty list" not in err


def test_the_api_key_from_an_option_or_the_environment(tiny_artifact: Path, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    key = "cli-key-0123456789abcdef"
    image = tmp_path / "a.png"
    image.write_bytes(all_formats()["png"])
    monkeypatch.delenv("TITOK_API_KEY", raising=False)
    with serving(build_app(make_settings(tiny_artifact, api_keys=(key,)))) as url:
        assert encode_main([str(image), "--url", url]) == 1
        assert "401 this service needs an API key" in capsys.readouterr().err
        assert encode_main([str(image), "--url", url, "--api-key", key]) == 0
        tokens = json.loads(capsys.readouterr().out)["tokens"]
        monkeypatch.setenv("TITOK_API_KEY", key)
        assert decode_main(["--tokens", json.dumps(tokens), "--out", str(tmp_path / "r.png"), "--url", url]) == 0
        assert (tmp_path / "r.png").exists()


def test_an_unwritable_out_is_named_in_one_line(live_url: str, tmp_path: Path, capsys) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    assert encode_main([str(image), "--url", live_url]) == 0
    (tmp_path / "tokens.json").write_text(capsys.readouterr().out)
    (tmp_path / "file").write_text("")
    for out in (tmp_path, tmp_path / "file" / "x.png"):  # a folder; a path under a file
        assert decode_main(["--tokens", f"@{tmp_path / 'tokens.json'}", "--out", str(out), "--url", live_url]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot write {out}") and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_a_timeout_that_is_no_duration_is_refused_by_name(timeout: str, tmp_path: Path, capsys) -> None:
    for main, args in ((encode_main, [str(tmp_path / "a.png")]), (decode_main, ["--tokens", "[1]", "--out", "x.png"])):
        with pytest.raises(SystemExit) as stopped:
            main([*args, "--timeout", timeout, "--url", "http://127.0.0.1:9"])
        assert stopped.value.code == 2
        assert f"argument --timeout: '{timeout}' is not a number of seconds above 0" in capsys.readouterr().err
