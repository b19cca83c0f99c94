"""The artifact loader and the engine (no `model` import in the service itself)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from titok.core.artifact import load_artifact
from titok.core.engine import Engine
from titok.errors import ModelLoadError


def test_engine_runs_both_directions(tiny_artifact: Path) -> None:
    engine = Engine.load(tiny_artifact, device="cpu", torch_threads=1)
    try:
        assert (engine.name, engine.image_size, engine.num_tokens, engine.codebook_size) == ("test-tiny", 32, 8, 64)
        images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        tokens = engine.run("encode", images)
        assert tokens.shape == (3, 8) and tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() < 64
        pixels = engine.run("decode", tokens)
        assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == np.uint8
        engine.warmup(4)
        assert engine.info()["device"] == "cpu"
    finally:
        engine.close()


def test_fp16_stored_weights_are_computed_in_fp32_on_cpu(tmp_path: Path) -> None:
    from titok.model.config import get_preset
    from titok.model.export import export_model
    from titok.model.tokenizer import TiTok

    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=1, dec_heads=2, codebook_size=64, head_channels=8)
    path = tmp_path / "half.pt"
    export_model(TiTok(cfg), cfg, path, {"name": "half"}, fp16_storage=True)
    module, meta = load_artifact(path)
    assert meta["weights_dtype"] == "float16"
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert module.dtype_probe.dtype == torch.float32  # the pixels follow: fp32 arithmetic


def test_missing_corrupt_and_wrong_dtype_are_clear_errors(tmp_path: Path, tiny_artifact: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_artifact(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(ModelLoadError, match="not a valid TorchScript artifact"):
        load_artifact(junk)
    with pytest.raises(ModelLoadError, match="'float64' is not one of float32, float16, bfloat16"):
        load_artifact(tiny_artifact, "cpu", "float64")
    with pytest.raises(ModelLoadError, match=r"dtype 'fp8' \(TITOK_DTYPE, --dtype or dtype=\) is not one of auto"):
        Engine.load(tiny_artifact, "cpu", "fp8")


@pytest.mark.parametrize(("given", "words"), [
    ("", r"^no model given \(''\): give an exported artifact's path, a bundled model's name \(default, ordered\)"),
    ("   ", r"^no model given \('   '\)"),
    (None, r"^no model given \(None\)"),
    ("./ordered", r"^model file not found: \./ordered \(give"),  # a path, as written: not the bundled name
    ("https://huggingface.co/yucornetto/tokenizer_titok_l32_imagenet",
     r"is a URL; .*give its name, yucornetto/tokenizer_titok_l32_imagenet$"),
    ("http://example.com/m.pt", r"^http://example.com/m.pt is a URL; models load from a file path"),
])
def test_model_names_that_name_nothing_say_so_as_given(given: object, words: str) -> None:
    from titok.core.models import resolve_model

    with pytest.raises(ModelLoadError, match=words):
        resolve_model(given)  # type: ignore[arg-type]


def test_a_folder_is_no_model_and_does_not_hide_a_bundled_name(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from titok.core.models import BUNDLED, resolve_model

    with pytest.raises(ModelLoadError, match=rf"^{tmp_path} is a folder, not a model file: give"):
        resolve_model(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ordered").mkdir()
    assert resolve_model("ordered") == BUNDLED["ordered"]


def _fake_probe(figures: dict[str, dict[str, float]] | Exception):
    """An Engine._probe stand-in: fixed images/s per dtype (or a failure), so the choice itself is tested."""
    def probe(self: Engine, dtypes: tuple[str, ...], batch: int) -> dict[str, dict[str, float]]:
        if isinstance(figures, Exception):
            raise figures
        return {d: {**figures[d], "roundtrip": 1 / (1 / figures[d]["encode"] + 1 / figures[d]["decode"])}
                for d in dtypes}
    return probe


FAST_BF16 = {"float32": {"encode": 100.0, "decode": 100.0}, "bfloat16": {"encode": 300.0, "decode": 250.0},
             "float16": {"encode": 20.0, "decode": 20.0}}
SLOW_BF16 = {"float32": {"encode": 100.0, "decode": 100.0}, "bfloat16": {"encode": 60.0, "decode": 90.0}}


@pytest.mark.parametrize(("figures", "chosen"), [(FAST_BF16, "bfloat16"), (SLOW_BF16, "float32")])
def test_auto_picks_bf16_on_cpu_only_where_it_measured_faster(tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch,
                                                               figures: dict, chosen: str) -> None:
    monkeypatch.setattr(Engine, "_probe", _fake_probe(figures))
    engine = Engine.load(tiny_artifact, "cpu", "auto", torch_threads=1)
    try:
        assert engine.dtype == chosen
        assert {p.dtype for p in engine.module.model.encoder.parameters()} == {getattr(torch, chosen)}
        assert {p.dtype for p in engine.module.model.quantize.parameters()} == {torch.float32}
        info = engine.info()
        assert info["dtype"] == chosen and info["dtype_probe"]["requested"] == "auto"
        assert info["dtype_probe"]["images_per_s"]["bfloat16"]["encode"] == figures["bfloat16"]["encode"]
        tokens = engine.run("encode", np.zeros((2, 32, 32, 3), np.uint8))
        assert tokens.shape == (2, 8) and engine.run("decode", tokens).shape == (2, 32, 32, 3)
    finally:
        engine.close()


def test_an_explicit_dtype_is_honoured_with_a_warning_when_slower(tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(Engine, "_probe", _fake_probe(FAST_BF16))
    for requested, warned in (("float16", True), ("float32", True), ("bfloat16", False)):
        caplog.clear()
        engine = Engine.load(tiny_artifact, "cpu", requested, torch_threads=1)
        engine.close()
        assert engine.dtype == requested
        warnings_ = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(warnings_) == warned, warnings_
        if warned:
            assert f"dtype {requested}, as asked" in warnings_[0] and "slower" in warnings_[0]


def test_the_in_process_default_float32_notes_a_faster_dtype_without_a_warning(
        tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Tokenizer.load without a dtype (float32, its exact-tokens default) is not a choice the caller made: the
    slower-than-bf16 note is an info line; dtype="float32" given explicitly still warns (a new-user pass found
    "TITOK_DTYPE=float32 ... serving float32 as asked" from a Tokenizer that set nothing and served nothing)."""
    from titok.core.tokenizer import Tokenizer

    monkeypatch.setattr(Engine, "_probe", _fake_probe(FAST_BF16))
    for dtype, level in ((None, "INFO"), ("float32", "WARNING")):
        caplog.clear()
        with caplog.at_level("INFO", logger="titok.engine"):
            tok = Tokenizer.load(tiny_artifact, "cpu", dtype)
        tok.engine.close()
        assert tok.engine.dtype == "float32"
        notes = [r for r in caplog.records if "slower" in r.getMessage()]
        assert [r.levelname for r in notes] == [level], [(r.levelname, r.getMessage()) for r in caplog.records]


def test_a_failed_probe_falls_back_to_fp32_with_a_log_line(tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(Engine, "_probe", _fake_probe(RuntimeError("out of memory at batch 8")))
    engine = Engine.load(tiny_artifact, "cpu", "auto", torch_threads=1)
    engine.close()
    assert engine.dtype == "float32" and "out of memory" in engine.info()["dtype_probe"]["error"]
    assert any("dtype probe failed" in r.getMessage() and "falling back to float32" in r.getMessage()
               for r in caplog.records)


def test_the_real_probe_measures_both_dtypes_and_leaves_the_weights_as_chosen(tiny_artifact: Path) -> None:
    module, meta = load_artifact(tiny_artifact)
    reference = {k: v.clone() for k, v in module.state_dict().items()}
    engine = Engine(module, meta, "cpu", "float32", torch_threads=1)
    try:
        chosen = engine.choose_dtype("auto", batch=2)
        speeds = engine.dtype_probe["images_per_s"]
        assert set(speeds) == {"float32", "bfloat16"} and all(v["encode"] > 0 for v in speeds.values())
        faster = speeds["bfloat16"]["roundtrip"] >= 1.05 * speeds["float32"]["roundtrip"]
        assert chosen == ("bfloat16" if faster else "float32") == engine.dtype
        state = module.state_dict()
        for k, v in reference.items():  # the probe's bf16 trial left nothing behind but the chosen cast
            if not v.is_floating_point():
                assert torch.equal(state[k], v), k
                continue
            want = torch.float32 if "quantize" in k or chosen == "float32" else torch.bfloat16
            assert state[k].dtype == want and torch.equal(state[k].float(), v.to(want).float()), k
    finally:
        engine.close()


def test_two_workers_run_batches_side_by_side_with_the_same_results(tiny_artifact: Path) -> None:
    from concurrent.futures import wait

    one = Engine.load(tiny_artifact, "cpu", "float32", torch_threads=1, workers=1)
    two = Engine.load(tiny_artifact, "cpu", "float32", torch_threads=1, workers=2)
    try:
        assert (one.workers, two.workers) == (1, 2)
        assert two.info()["model_workers"] == 2 and two.info()["torch_threads"] == 1
        batches = [np.random.default_rng(i).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8) for i in range(6)]
        futures = [two.submit("encode", b) for b in batches]  # all queued at once: two run at a time
        wait(futures)
        assert {f.result().shape for f in futures} == {(3, 8)}
        for b, f in zip(batches, futures, strict=True):
            np.testing.assert_array_equal(f.result(), one.run("encode", b))
        names = {t.name for t in threading.enumerate() if t.name.startswith("titok-model")}
        assert len(names) >= 2  # the pool grew a second model thread
    finally:
        one.close()
        two.close()


def test_default_workers_one_on_a_gpu_and_up_to_two_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from titok.core import engine as engine_mod

    assert engine_mod.default_workers("cuda") == 1
    assert engine_mod.default_workers("cuda:1") == 1
    monkeypatch.setattr(engine_mod, "available_cpus", lambda: 1)
    assert engine_mod.default_workers("cpu") == 1
    monkeypatch.setattr(engine_mod, "available_cpus", lambda: 16)
    assert engine_mod.default_workers("cpu") == engine_mod.MAX_CPU_WORKERS == 2
