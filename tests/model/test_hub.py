"""Models by name: huggingface_hub's real download path against a local stand-in of the Hub (hub_server.py).

The checkpoint is a random one of a published layout at toy widths (as in test_convert.py); the config.json
says nothing of the widths, so it fits both the real preset and the toy one, and the tensors decide.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import FakeHub

from titok.core.artifact import read_meta
from titok.core.errors import ModelLoadError
from titok.core.tokenizer import Tokenizer
from titok.model import convert, hub
from titok.model.config import PRESETS, get_preset
from titok.model.tokenizer import build_model

SMALL = dict(enc_width=64, enc_depth=1, enc_heads=2, dec_width=64, dec_depth=1, dec_heads=2,
             pixel_channels=32, pixel_res_blocks=1, pixel_codebook_size=64, pixel_code_dim=32)
TOY = "test-small-bl-64-vq8k"
REPO = "someone/tokenizer_toy_bl64"
TOKEN = "hf_secret"


def _toy() -> object:
    return get_preset("titok-bl-64-vq8k", **SMALL)


def _checkpoint(seed: int) -> bytes:
    from safetensors.torch import save

    torch.manual_seed(seed)
    return save({k: v.clone().contiguous() for k, v in build_model(_toy()).state_dict().items()})


def _config(**overrides: object) -> bytes:
    cfg = _toy()
    vq = dict(codebook_size=cfg.codebook_size, token_size=cfg.code_dim, use_l2_norm=cfg.l2_norm_codes,
              vit_enc_patch_size=16, vit_dec_patch_size=16, num_latent_tokens=cfg.num_tokens,
              finetune_decoder=False, is_legacy=False, quantize_mode="vq")
    vq.update(overrides)
    return json.dumps({"experiment": {}, "model": {"vq_model": vq}, "dataset": {"preprocessing": {"crop_size": 256}}}
                      ).encode()


@pytest.fixture(scope="module")
def weights() -> dict[str, bytes]:
    return {"main": _checkpoint(0), "v1": _checkpoint(1)}


@pytest.fixture
def fake_hub(weights: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The Hub at HF_ENDPOINT, empty caches under tmp_path, the toy preset known."""
    from huggingface_hub import constants

    monkeypatch.setitem(PRESETS, TOY, {**PRESETS["titok-bl-64-vq8k"], **SMALL})
    fake = FakeHub()
    fake.add(REPO, {"config.json": _config(), "model.safetensors": weights["main"]},
             refs={"v1": {"config.json": _config(), "model.safetensors": weights["v1"]}})
    fake.add("someone/private_toy", {"config.json": _config(), "model.safetensors": weights["main"]}, token=TOKEN)
    fake.add("someone/not_titok", {"config.json": _config(num_latent_tokens=48), "model.safetensors": b"x"})
    fake.add("someone/no_weights", {"config.json": _config()})
    server = fake.start()
    # huggingface_hub reads these once, at import: the same values its environment variables would give.
    _point_at(monkeypatch, fake.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("TITOK_CACHE_DIR", str(tmp_path / "titok"))
    yield fake
    server.shutdown()
    server.server_close()


def _point_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """HF_ENDPOINT=url, as huggingface_hub.constants derives it at import."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def _artifacts(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "titok" / "artifacts").glob("*.pt")) if (tmp_path / "titok").exists() else []


def _count_conversions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = convert.convert_checkpoint

    def counting(*args: object, **kwargs: object) -> dict:
        calls.append(str(kwargs.get("preset")))
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "convert_checkpoint", counting)
    return calls


@pytest.mark.slow
def test_first_pull_converts_and_serves_then_the_cache_serves_without_the_network(
        fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient
    from huggingface_hub import constants
    from PIL import Image

    from titok.server.app import build_app
    from titok.settings import Settings

    conversions = _count_conversions(monkeypatch)
    path = hub.pull(REPO)
    meta = read_meta(path)
    assert conversions == [TOY]  # config.json fits the real and the toy preset: the tensors chose
    assert meta["preset"] == TOY and meta["source_repo"] == REPO and meta["converter_version"] == hub.CONVERTER_VERSION
    assert meta["source_revision"] == fake_hub.repos[REPO].refs["main"]
    assert _artifacts(tmp_path) == [path]  # no temporary file left beside it
    # Served by name: TITOK_MODEL -> Engine.load -> the cached artifact.
    settings = Settings(model=REPO, model_path=tmp_path / "unused.pt", device="cpu", torch_threads=1, codec_threads=1)
    with TestClient(build_app(settings)) as client:
        png = io.BytesIO()
        Image.fromarray(np.full((300, 200, 3), 90, np.uint8)).save(png, format="PNG")
        answer = client.post("/encode", files={"images": ("a.png", png.getvalue(), "image/png")})
        assert answer.status_code == 200, answer.text
        assert np.asarray(answer.json()["tokens"]).shape == (1, _toy().num_tokens)
        assert client.get("/info").json()["model"]["name"] == TOY
    # The network gone (the server stopped): huggingface_hub falls back to its cache, nothing is converted again.
    before = sum(fake_hub.requests.values())
    _point_at(monkeypatch, "http://127.0.0.1:9")  # nothing listens on the discard port
    assert hub.pull(REPO) == path
    _point_at(monkeypatch, "https://hub.invalid")  # no DNS either: the cache at once, no retries
    _no_dns(monkeypatch, "hub.invalid")
    assert hub.pull(REPO) == path
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with Tokenizer.load(REPO, device="cpu") as tok:
        assert tok.info.content_hash == meta["content_hash"]
    assert conversions == [TOY] and sum(fake_hub.requests.values()) == before


@pytest.mark.slow
def test_a_pinned_revision_gets_its_own_weights(fake_hub: FakeHub, tmp_path: Path) -> None:
    main, v1 = read_meta(hub.pull(REPO)), read_meta(hub.pull(f"{REPO}@v1"))
    assert main["content_hash"] != v1["content_hash"]
    assert v1["source_revision"] == fake_hub.repos[REPO].refs["v1"] and v1["requested_revision"] == "v1"
    commit = fake_hub.repos[REPO].refs["v1"]
    assert read_meta(hub.pull(f"{REPO}@{commit}"))["content_hash"] == v1["content_hash"]  # same content: reused
    assert len(_artifacts(tmp_path)) == 2


def test_offline_without_a_cached_copy_names_the_caches_and_the_pull_to_run(
        fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        hub.pull(REPO)
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and f"titok pull {REPO}" in message
    assert str(tmp_path / "hf") in message and str(tmp_path / "titok") in message
    assert sum(fake_hub.requests.values()) == 0


def _no_dns(monkeypatch: pytest.MonkeyPatch, host: str) -> list[str]:
    """The resolver knows no `host` (an offline machine); the names looked up."""
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(name: str, *args: object, **kwargs: object) -> object:
        looked_up.append(name)
        if name == host:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


def test_a_hub_name_that_does_not_resolve_fails_at_once_from_the_cache_alone(
        fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No DNS: the HF cache only, without huggingface_hub's five retries (23-25 s offline, a hostile pass)."""
    _point_at(monkeypatch, "https://hub.invalid")
    looked_up = _no_dns(monkeypatch, "hub.invalid")
    with pytest.raises(ModelLoadError) as info:
        hub.pull(REPO)
    message = str(info.value)
    assert message.startswith(f"{REPO}: the Hub cannot be reached (hub.invalid does not resolve) and no copy of "
                              "its config.json is cached"), message
    assert f"`titok pull {REPO}`" in message and str(tmp_path / "hf") in message
    assert looked_up.count("hub.invalid") == 1  # one lookup, no connection tried (huggingface_hub resolves none)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # a proxy resolves names for us: not checked
    assert hub.unresolvable_hub() is None
    monkeypatch.delenv("HTTPS_PROXY")
    assert hub.unresolvable_hub() == "hub.invalid"
    assert sum(fake_hub.requests.values()) == 0


@pytest.mark.parametrize(("name", "expected"), [
    ("someone/nothing_here", "no model repository someone/nothing_here"),  # 404
    ("someone/private_toy", "if it is private, set HF_TOKEN"),  # 401 without a token
    (f"{REPO}@v9", "has no revision 'v9'"),
    ("someone/no_weights", "has none of model.safetensors, pytorch_model.bin"),
    ("someone/not_titok", "names a model no preset describes (num_latent_tokens=48"),
    ("not a name", "neither an artifact file nor a Hugging Face Hub name"),
])
def test_refusals_are_one_clear_line_and_cache_nothing(fake_hub: FakeHub, tmp_path: Path, name: str,
                                                       expected: str) -> None:
    with pytest.raises(ModelLoadError, match="^[^\n]*$") as info:
        hub.pull(name)
    assert expected in str(info.value)
    assert _artifacts(tmp_path) == []


@pytest.mark.slow
def test_a_private_repository_with_hf_token(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert read_meta(hub.pull("someone/private_toy"))["source_repo"] == "someone/private_toy"


@pytest.mark.parametrize("fault", ["truncate", "corrupt"])
def test_a_cut_or_corrupted_download_is_refused_and_nothing_is_cached(
        fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    conversions = _count_conversions(monkeypatch)
    getattr(fake_hub, fault).add("model.safetensors")
    with pytest.raises(ModelLoadError, match="nothing was" if fault == "truncate" else "corrupt") as info:
        hub.pull(REPO)
    assert "\n" not in str(info.value)
    assert conversions == [] and _artifacts(tmp_path) == []
    hf_files = [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert hf_files == []  # the bad weights are not kept in huggingface_hub's cache either


@pytest.mark.slow
def test_a_corrupted_download_is_fetched_anew_on_the_next_pull(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.corrupt.add("model.safetensors")
    with pytest.raises(ModelLoadError, match="corrupt"):
        hub.pull(REPO)
    fake_hub.corrupt.clear()
    assert read_meta(hub.pull(REPO))["source_repo"] == REPO


def test_an_unwritable_cache_folder_is_named(fake_hub: FakeHub, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder that cannot be made (under a file: refused even for root, unlike a chmod'ed folder)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TITOK_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(ModelLoadError, match=f"cannot write .*{blocker}"):
        hub.pull(REPO)


@pytest.mark.slow
def test_two_concurrent_pulls_convert_once(fake_hub: FakeHub, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    conversions = _count_conversions(monkeypatch)
    results: list[Path | BaseException] = []

    def pull() -> None:
        try:
            results.append(hub.pull(REPO, progress=lambda m: None))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            results.append(e)

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(conversions) == 1
    assert len(results) == 2 and results[0] == results[1] and isinstance(results[0], Path)
    assert _artifacts(tmp_path) == [results[0]]


def test_a_half_written_artifact_is_never_served(fake_hub: FakeHub, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion that dies half-way leaves no file under the final name (and removes its temporary one)."""
    def dies(checkpoint: object, cfg: object, out: Path, **kwargs: object) -> dict:
        Path(out).write_bytes(b"PK\x03\x04 half an artifact")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert, "convert_checkpoint", dies)
    with pytest.raises(ModelLoadError, match="No space left on device.*TITOK_CACHE_DIR"):
        hub.pull(REPO)
    assert list((tmp_path / "titok" / "artifacts").glob("*.pt*")) == []


def test_titok_models_lists_the_known_names_with_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    from titok.cli import main
    from titok.core.models import BUNDLED

    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # the Hub's models by name, then the bundled ones the text listing shows too (they were left out of the JSON)
    assert [r["name"] for r in rows] == [m.repo for m in hub.KNOWN_MODELS] + list(BUNDLED)
    l32 = rows[0]
    assert (l32["source"], l32["preset"], l32["num_tokens"], l32["codebook_size"], l32["bits_per_image"]) == (
        "hub", "titok-l-32", 32, 4096, 384)  # numbers as numbers (they were strings)
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(get_preset("titok-l-32")).parameters())
    assert l32["params"] == params and l32["fp32_bytes"] == 4 * params
    ordered = rows[-1]
    assert (ordered["source"], ordered["num_tokens"], ordered["prefix_decodable"]) == ("bundled", 128, True)
    assert ordered["file_bytes"] == BUNDLED["ordered"].stat().st_size
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[1].split()[:6] == ["yucornetto/tokenizer_titok_l32_imagenet", "titok-l-32", "256", "32", "4096", "384"]
    assert "  ordered: titok-p8-128px-128tok-ordered" in text


def test_titok_pull_of_a_bundled_name_prints_its_path(capsys: pytest.CaptureFixture[str]) -> None:
    from titok.cli import main
    from titok.core.models import BUNDLED

    assert main(["pull", "ordered"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{BUNDLED['ordered']}\n" and "ordered is bundled with the package (no download)" in err


def test_titok_pull_cli_answers_a_refusal_in_one_line(fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    from titok.cli import main

    assert main(["pull", "someone/nothing_here"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("titok pull: no model repository someone/nothing_here") and err.count("\n") == 1


@pytest.mark.slow
def test_titok_tokenize_and_serve_take_a_name(fake_hub: FakeHub, tmp_path: Path) -> None:
    from PIL import Image

    from titok.__main__ import serve
    from titok.dataset import load_tokens, read_dir_meta
    from titok.dataset.cli import tokenize_main

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 60, 3), 60 * i, np.uint8)).save(photos / f"{i}.png")
    assert tokenize_main([str(photos), "--out", str(tmp_path / "tokens"), "--model", REPO, "--device", "cpu"]) == 0
    keys, tokens = load_tokens(tmp_path / "tokens")
    assert keys == ["0.png", "1.png"] and tokens.shape == (2, _toy().num_tokens)
    assert read_dir_meta(tmp_path / "tokens")["model"] == TOY
    assert serve(model="someone/nothing_here") == 2  # refused before anything listens


@pytest.mark.slow
def test_two_processes_pulling_at_once_convert_once(fake_hub: FakeHub, tmp_path: Path) -> None:
    """Real processes, configured only by the environment (HF_ENDPOINT, HF_HUB_CACHE, TITOK_CACHE_DIR)."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        from titok.model.config import PRESETS
        PRESETS[{TOY!r}] = {{**PRESETS["titok-bl-64-vq8k"], **{SMALL!r}}}
        from titok.model import hub
        print(hub.pull({REPO!r}, progress=lambda m: print(m, file=sys.stderr)))
    """)
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HUB_CACHE": str(tmp_path / "hf"),
           "TITOK_CACHE_DIR": str(tmp_path / "titok")}
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1 and _artifacts(tmp_path) == [Path(paths.pop())]
    assert sum("converting model.safetensors" in err for _, err in outs) == 1  # the other waited, then reused


def test_a_failure_through_a_proxy_names_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    message = str(hub._hf_error(REPO, "config.json", LocalEntryNotFoundError("no connection")))
    assert message.startswith(f"{REPO}: the Hub cannot be reached through the proxy http://proxy.example:3128")
    monkeypatch.delenv("HTTPS_PROXY")
    for name in ("https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert "proxy" not in str(hub._hf_error(REPO, "config.json", LocalEntryNotFoundError("no connection")))
