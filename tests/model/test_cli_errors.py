"""Bad input to the model commands (train, export, eval): one line naming what was wrong, exit code 2, nothing
written; never a traceback (found by a new-user pass)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from titok.cli import main

REPO = Path(__file__).resolve().parents[2]
PNG = REPO / "model" / "assets" / "reconstructions.png"


@pytest.mark.parametrize(("extra", "message"), [
    (["--steps", "-5"], "--steps must be 0 (as many as fit in --max-minutes) or more, not -5"),
    (["--steps", "0"], "--steps 0 fits the schedule to the time: it needs --max-minutes above 0"),
    (["--steps", "0", "--max-minutes", "0"], "it needs --max-minutes above 0"),
    (["--max-minutes", "nan"], "--max-minutes must be a number of minutes, 0 (no limit) or more, not nan"),
    (["--max-minutes", "-1"], "--max-minutes must be a number of minutes, 0 (no limit) or more, not -1.0"),
    (["--batch-size", "0"], "--batch-size must be 1 or more, not 0"),
    (["--eval-every", "0"], "--eval-every must be 1 or more, not 0"),
    (["--crop-min-scale", "0"], "--crop-min-scale must be in (0, 1], not 0.0"),
    (["--crop-min-scale", "2"], "--crop-min-scale must be in (0, 1], not 2.0"),
    (["--lr", "-1"], "--lr must be above 0, not -1.0"),
    (["--eval-data", "/no/such/folder"], "no such file or folder: /no/such/folder"),
])
def test_train_refuses_bad_options_before_writing_anything(tmp_path, photo_dir, capsys, extra, message) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(photo_dir), "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_train_names_a_missing_data_folder(tmp_path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 1
    assert f"no such file or folder: {tmp_path / 'nope'}" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["export", "--checkpoint", str(PNG), "--out", "{tmp}/a.pt"], "as a training checkpoint: UnpicklingError"),
    (["export", "--checkpoint", str(REPO / "service/models/default.pt"), "--out", "{tmp}/a.pt"],
     "it is an exported artifact, not a checkpoint"),
    (["export", "--checkpoint", "{tmp}/none.pt", "--out", "{tmp}/a.pt"], "no checkpoint file: {tmp}/none.pt"),
    (["eval", "--artifact", str(PNG), "--data", "{tmp}", "--out", "{tmp}/e"], "not a valid TorchScript artifact"),
    (["eval", "--checkpoint", str(PNG), "--data", "{tmp}", "--out", "{tmp}/e"], "as a training checkpoint"),
    (["eval", "--artifact", "{tmp}/state.pt", "--data", "{tmp}", "--out", "{tmp}/e"],
     "{tmp}/state.pt is a PyTorch checkpoint written by torch.save"),
    (["convert", "--from", str(PNG), "--preset", "titok-l-32", "--out", "{tmp}/a.pt"],
     "reconstructions.png is not a PyTorch state dict: its first bytes b'\\x89PNG' are neither"),
    (["convert", "--from", "{tmp}/hub/model.safetensors", "--preset", "titok-l-32", "--out", "{tmp}/a.pt"],
     "checkpoint not found: {tmp}/hub/model.safetensors"),
    (["convert", "--from", "{tmp}/set.pt", "--preset", "titok-l-32", "--out", "{tmp}/a.pt"],
     "set.pt is not a tensors-only PyTorch state dict (Unsupported global: GLOBAL pathlib.PurePosixPath, which is "
     "not a tensor)"),
])
def test_export_and_eval_name_a_file_that_is_not_what_they_read(tmp_path, capsys, argv, message) -> None:
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")  # torch.save's zip archive
    torch.save({"w": torch.zeros(2), "p": PurePosixPath("a")}, tmp_path / "set.pt")  # a global weights_only refuses
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code in (1, 2) and message.replace("{tmp}", str(tmp_path)) in err and "Traceback" not in err, err
    assert "weights_only` set to `False`" not in err  # torch's advice to unpickle it unrestricted is not ours
    assert not (tmp_path / "a.pt").exists()


def test_train_without_the_training_extra_says_which_to_install(tmp_path, photo_dir, capsys, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["train", "--data", str(photo_dir), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "titok train needs matplotlib" in err and "pip install 'titok-service[train]'" in err, err


@pytest.mark.parametrize(("setting", "message"), [
    ("num_tokens=abc", "--set 'num_tokens=abc': num_tokens takes an integer, not 'abc'"),
    ("num_tokens=0", "num_tokens must be a positive integer, not 0"),
    ("codebook_size=1", "codebook_size must be an integer of at least 2, not 1"),
    ("l2_norm_codes=maybe", "--set 'l2_norm_codes=maybe': l2_norm_codes takes true or false, not 'maybe'"),
    ("mlp_ratio=-1", "mlp_ratio must be positive, not -1.0"),
    ("pixel_channel_mult=1,x", "pixel_channel_mult takes comma-separated integers, not '1,x'"),
    ("extra=1", "extra cannot be set from the command line"),
])
def test_train_names_a_set_value_no_model_can_be_built_from(tmp_path, photo_dir, capsys, setting, message) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(photo_dir), "--out", str(out), "--steps", "1", "--set", setting]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_set_parses_booleans_and_tuples_to_their_fields_types() -> None:
    from titok.model.train import parse_overrides

    assert parse_overrides(["l2_norm_codes=false", "tail_drop=YES", "pixel_channel_mult=1,2,4", "beta=0.5"]) == {
        "l2_norm_codes": False, "tail_drop": True, "pixel_channel_mult": (1, 2, 4), "beta": 0.5}
