import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from titok.model.config import TiTokConfig
from titok.model.data import load_images
from titok.model.quality import psnr, thumbnail_baseline, to_uint8
from titok.model.tokenizer import TiTok
from titok.model.train import choose_precision, draw_prefix, draw_prefixes, fitted_steps, init_from
from titok.model.train import main as train_main

REPO = Path(__file__).resolve().parents[2]
MICRO_SET = ["--set", "image_size=32", "--set", "patch_size=8", "--set", "num_tokens=16", "--set", "enc_width=64",
             "--set", "enc_depth=2", "--set", "enc_heads=2", "--set", "dec_width=64", "--set", "dec_depth=2",
             "--set", "dec_heads=2", "--set", "codebook_size=256", "--set", "head_channels=8",
             "--set", "dead_code_steps=20", "--set", "lowfreq_size=8"]


def train(data, out, steps, *extra):
    args = ["--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-size", "4", "--no-progress",
            "--warmup", "10", "--save-every", "5", "--eval-every", "1000", *MICRO_SET, *extra]
    return train_main(args)


@pytest.mark.slow
def test_overfits_a_few_images_well_above_the_equal_bits_baseline(tmp_path, photo_dir):
    out = tmp_path / "run"
    assert train(photo_dir, out, 300, "--lr", "3e-3", "--ema", "0", "--eval-data", str(photo_dir),
                 "--eval-every", "300") == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    model = TiTok(__import__("titok.model.config", fromlist=["x"]).TiTokConfig.from_dict(ckpt["config"])).eval()
    model.load_state_dict(ckpt["model"])
    from titok.model.data import center_crop

    raw, _ = load_images([photo_dir], max_side=64)
    x = torch.stack([center_crop(im, 32) for im in raw])
    with torch.no_grad():
        recon = model.decode_indices(model.encode_indices(x))
    ours = float(psnr(to_uint8(recon), to_uint8(x)).mean())
    baseline = float(psnr(thumbnail_baseline(x, 16 * 8), to_uint8(x)).mean())
    assert ours > baseline + 3.0, (ours, baseline)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" for r in records) and any(r["kind"] == "train" for r in records)
    assert (out / "curves.png").stat().st_size > 0 and (out / "reconstructions.png").stat().st_size > 0


@pytest.mark.slow
def test_held_out_eval_runs_once_per_eval_step_and_at_the_last_step(tmp_path, photo_dir):
    out = tmp_path / "run"
    assert train(photo_dir, out, 7, "--eval-data", str(photo_dir), "--eval-every", "5") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [5, 7]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 7
    assert ckpt["training"]["data"] == [photo_dir.name]  # its name, not the machine's path to it (issue 21, item 16)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--tail-drop", "--prefix-dist", "mixed"],
                                   ["--tail-drop", "--prefix-dist", "mixed", "--prefix-per", "sample"]],
                         ids=["plain", "tail-drop", "tail-drop-per-image"])
def test_resume_continues_exactly_where_it_stopped(tmp_path, photo_dir, extra):
    # one precision for both runs: `auto` measures each run's speed, and on a busy machine the straight run and the
    # split one chose differently (bf16 and fp32), which no resume could make equal
    extra = [*extra, "--precision", "fp32"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(photo_dir, straight, 20, *extra)
    train(photo_dir, split, 20, "--max-minutes", "1e-9", *extra)  # stops (and saves) after its first step
    assert torch.load(split / "checkpoint.pt", weights_only=False)["step"] == 1
    train(photo_dir, split, 20, "--resume", *extra)  # the prefix lengths drawn after the stop are the same
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(split / "checkpoint.pt", weights_only=False)
    assert b["step"] == 20
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])


def test_empty_data_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable images"):
        train(tmp_path / "empty", tmp_path / "run", 2)


def test_unreadable_files_are_skipped_and_counted(tmp_path, photo_dir):
    (photo_dir / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photo_dir / "truncated.png").write_bytes((photo_dir / "photo0.png").read_bytes()[:60])
    images, report = load_images([photo_dir], max_side=64)
    assert report.loaded == 6 and len(images) == 6
    assert sorted(Path(s.split(":")[0]).name for s in report.skipped) == ["broken.jpg", "truncated.png"]


def test_reads_webdataset_tar_shards(tmp_path, photo_dir):
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, p in enumerate(sorted(photo_dir.glob("*.png"))):
            tar.add(p, arcname=f"{i:06d}.png")
            meta = tmp_path / f"{i}.json"
            meta.write_text("{}")
            tar.add(meta, arcname=f"{i:06d}.json")
    images, report = load_images([shard], max_side=64)
    assert report.loaded == 6 and not report.skipped
    assert train(shard, tmp_path / "run", 3) == 0


DDP_SCRIPT = ("import argparse, os, sys, torch\nfrom titok.model.train import add_args, fit\n"
              "out = os.environ['OUT_DIR']; rank = os.environ['RANK']\n"
              "open(f'{out}/pid{rank}', 'w').write(str(os.getpid()))\n"
              "p = argparse.ArgumentParser()\nadd_args(p)\nmodel = fit(p.parse_args(sys.argv[1:]))\n"
              "torch.save(dict(model.named_parameters()), f'{out}/rank{rank}.pt')\n")


def torchrun(tmp_path: Path, photo_dir: Path, run_dir: Path, steps: int, *extra: str) -> subprocess.Popen:
    """Two CPU processes (gloo) training the micro model; each writes its pid and, at the end, its weights."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OUT_DIR": str(tmp_path), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "--data", str(photo_dir), "--out", str(run_dir), "--steps", str(steps), "--batch-size", "2",
           "--no-progress", "--warmup", "2", "--save-every", "3", *MICRO_SET, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: a hang is killed whole


def kill_all(proc: subprocess.Popen, tmp_path: Path) -> str:
    """Kill torchrun and its workers (each in a session of its own, holding our pipes); its stderr."""
    for pid_file in tmp_path.glob("pid[0-9]*"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()[1][-3000:]


def finish(proc: subprocess.Popen, tmp_path: Path, timeout: float = 300) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"torchrun hung:\n{kill_all(proc, tmp_path)}") from None
    assert proc.returncode == 0, err[-3000:]


def rank_weights(tmp_path: Path) -> tuple[dict, dict]:
    return torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_weights(tmp_path, photo_dir):
    out = tmp_path / "ddp"
    finish(torchrun(tmp_path, photo_dir, out, 6), tmp_path)
    # Every weight is identical; per-rank usage counters may differ (ranks agree on re-seeding via MIN).
    assert_same(*rank_weights(tmp_path))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 6 and ckpt["training"]["batch_size"] == 4
    assert len(ckpt["rng"]["crops"]) == 2 and len(ckpt["rng"]["torch_ranks"]) == 2  # every rank's RNG state
    assert ckpt["rng"]["crops"][0] != ckpt["rng"]["crops"][1]


@pytest.mark.slow
def test_ddp_resume_continues_exactly_where_it_stopped(tmp_path, photo_dir):
    finish(torchrun(tmp_path, photo_dir, tmp_path / "straight", 6), tmp_path)
    straight, _ = rank_weights(tmp_path)
    split = tmp_path / "split"
    finish(torchrun(tmp_path, photo_dir, split, 6, "--max-minutes", "1e-9"), tmp_path)  # both ranks stop after step 1
    assert torch.load(split / "checkpoint.pt", weights_only=False)["step"] == 1
    finish(torchrun(tmp_path, photo_dir, split, 6, "--resume"), tmp_path)
    resumed, other_rank = rank_weights(tmp_path)
    assert_same(straight, resumed)  # rank 1's crop stream and torch RNG resumed too, not restarted from the seed
    assert_same(resumed, other_rank)


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, photo_dir):
    out = tmp_path / "ddp"
    proc = torchrun(tmp_path, photo_dir, out, 100_000)
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    def past_step_20() -> bool:  # in the loop (the file also holds the precision record of the start)
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        return any(r.get("kind") == "train" and r.get("step", 0) >= 20 for r in map(json.loads, lines[:-1]))

    while not past_step_20():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"training did not get going:\n{kill_all(proc, tmp_path)}")
        time.sleep(0.1)
    os.kill(int((tmp_path / "pid1").read_text()), signal.SIGTERM)  # rank 1 only, as a preempted worker would be
    finish(proc, tmp_path, timeout=120)
    assert_same(*rank_weights(tmp_path))  # both ranks ended after the same step
    step = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert 20 <= step < 100_000


def prefix_mse(ckpt: dict, photo_dir: Path, lengths: tuple[int, ...]) -> dict[int, float]:
    """MSE of the checkpoint's (raw) model on the photos' 32 px centre crops, decoded from the first k tokens."""
    from titok.model.data import center_crop

    model = TiTok(TiTokConfig.from_dict(ckpt["config"])).eval()
    model.load_state_dict(ckpt["model"])
    raw, _ = load_images([photo_dir], max_side=64)
    x = torch.stack([center_crop(im, 32) for im in raw])
    with torch.no_grad():
        tokens = model.encode_indices(x)
        return {k: float(F.mse_loss(model.decode_indices(tokens[:, :k]).clamp(0, 1), x)) for k in lengths}


@pytest.mark.slow
def test_tail_drop_training_orders_the_tokens(tmp_path, photo_dir):
    """150 steps with tail drop: the first k tokens reconstruct better the larger k is."""
    out = tmp_path / "run"
    assert train(photo_dir, out, 150, "--lr", "3e-3", "--ema", "0", "--tail-drop", "--prefix-dist", "mixed",
                 "--precision", "fp32") == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["tail_drop"] is True and ckpt["training"]["prefix_dist"] == "mixed"
    prefixes = [r["prefix"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]
    assert len(set(prefixes)) > 5 and min(prefixes) >= 1 and max(prefixes) <= 16  # one k per step, varied
    mse = prefix_mse(ckpt, photo_dir, (1, 2, 4, 8, 16))
    ks = sorted(mse)
    assert all(mse[a] > mse[b] for a, b in zip(ks, ks[1:], strict=False)), mse
    assert mse[1] > 2 * mse[16], mse


def test_prefix_draws_cover_one_to_k(micro_cfg):
    torch.manual_seed(0)
    uniform = [draw_prefix(16) for _ in range(2000)]
    assert min(uniform) == 1 and max(uniform) == 16 and len(set(uniform)) == 16
    mixed = [draw_prefix(16, "mixed") for _ in range(2000)]
    assert min(mixed) == 1 and max(mixed) == 16
    powers = sum(k in (1, 2, 4, 8, 16) for k in mixed) / len(mixed)
    assert 0.55 < powers < 0.7  # 1/2 from the powers of two, plus 5/16 of the uniform half


def test_per_image_prefix_draws_follow_the_same_distributions():
    torch.manual_seed(0)
    uniform = draw_prefixes(16, "uniform", 4000)
    assert uniform.shape == (4000,) and uniform.dtype == torch.int64
    assert int(uniform.min()) == 1 and int(uniform.max()) == 16 and len(set(uniform.tolist())) == 16
    assert abs(float(uniform.float().mean()) - 8.5) < 0.3
    mixed = draw_prefixes(16, "mixed", 4000)
    assert int(mixed.min()) == 1 and int(mixed.max()) == 16
    powers = float(sum((mixed == k).sum() for k in (1, 2, 4, 8, 16))) / len(mixed)
    assert 0.55 < powers < 0.7  # as draw_prefix: 1/2 from the powers of two, plus 5/16 of the uniform half
    assert len(set(draw_prefixes(16, "mixed", 64).tolist())) > 5  # one length per image, not one per call


@pytest.mark.slow
def test_per_image_tail_drop_trains_each_image_at_its_own_prefix(tmp_path, photo_dir):
    """--prefix-per sample: the logged prefix is the batch's mean length (not one of 1..K's integers every step),
    the checkpoint records the rule, and the first k tokens still reconstruct better the larger k is."""
    out = tmp_path / "run"
    assert train(photo_dir, out, 150, "--lr", "3e-3", "--ema", "0", "--tail-drop", "--prefix-dist", "mixed",
                 "--prefix-per", "sample", "--precision", "fp32", "--batch-size", "8") == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["training"]["prefix_per"] == "sample"
    prefixes = [r["prefix"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]
    assert any(p != int(p) for p in prefixes) and all(1 <= p <= 16 for p in prefixes)
    mse = prefix_mse(ckpt, photo_dir, (1, 4, 16))
    assert mse[1] > mse[4] > mse[16], mse


def test_precision_probe_measures_both_and_leaves_the_model_alone(micro_cfg):
    cfg = micro_cfg()
    torch.manual_seed(0)
    model = TiTok(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    chosen, speeds = choose_precision("auto", model, cfg, 2, torch.device("cpu"), steps=1)
    assert set(speeds) == {"fp32", "bf16"} and all(v > 0 for v in speeds.values())
    assert chosen == max(speeds, key=speeds.get)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert choose_precision("fp32", model, cfg, 2, torch.device("cpu")) == ("fp32", {})


def test_init_copies_a_shorter_models_tokens_first(tmp_path, micro_cfg):
    small, big = micro_cfg(num_tokens=8), micro_cfg(num_tokens=16)
    torch.manual_seed(0)
    source = TiTok(small)
    torch.save({"config": small.to_dict(), "model": source.state_dict(), "ema": None}, tmp_path / "c.pt")
    target = TiTok(big)
    fresh = target.decoder.latent_pos_embed.detach().clone()
    assert init_from(target, tmp_path / "c.pt") == len(target.state_dict())
    assert torch.equal(target.decoder.latent_pos_embed[:8], source.decoder.latent_pos_embed)
    assert torch.equal(target.decoder.latent_pos_embed[8:], fresh[8:])  # the new tokens keep their initialisation
    d = small.code_dim
    assert torch.equal(target.decoder.lowfreq.weight[:, :8 * d], source.decoder.lowfreq.weight)
    assert torch.equal(target.encoder.lowfreq.weight[:8 * d], source.encoder.lowfreq.weight)
    assert torch.equal(target.quantize.embedding.weight, source.quantize.embedding.weight)
    with pytest.raises(SystemExit, match="no file"):
        init_from(target, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot read"):
        init_from(target, tmp_path / "junk.pt")


def test_init_from_an_exported_artifact(tmp_path, micro_cfg):
    from titok.model.export import export_model

    cfg = micro_cfg()
    torch.manual_seed(0)
    source = TiTok(cfg)
    export_model(source, cfg, tmp_path / "a.pt")
    target = TiTok(micro_cfg(num_tokens=32, tail_drop=True))
    init_from(target, tmp_path / "a.pt")
    assert torch.equal(target.encoder.latent_tokens[:16], source.encoder.latent_tokens)
    assert torch.equal(target.quantize.embedding.weight, source.quantize.embedding.weight)


@pytest.mark.slow
def test_steps_zero_fits_the_schedule_to_max_minutes(tmp_path, photo_dir):
    """--steps 0 --max-minutes M: the number of steps is measured after the first ones and the run ends on its own
    schedule (not cut by the clock), recording the planned length."""
    with pytest.raises(SystemExit, match="needs --max-minutes"):
        train(photo_dir, tmp_path / "run2", 0)
    out = tmp_path / "run"
    assert train(photo_dir, out, 0, "--max-minutes", "0.15") == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    planned = ckpt["training"]["steps_planned"]
    if ckpt["step"] < 25:  # a machine so busy that the limit came before the measurement: no plan, said as 0
        assert planned == 0, planned  # (it recorded the placeholder, 2^40, which a resume took as its schedule)
        return
    assert 25 < planned < 10_000, planned
    # it ends on its schedule, or (on a machine whose load grew after the last fit) at the time limit; a step that
    # saves (every 5th here) saves just before the clock is read, so its elapsed_s may be a hair under the limit
    # (CI: step 530 of 531 saved at 8.993 s, then the clock said 9 s)
    assert ckpt["step"] == planned or ckpt["elapsed_s"] >= 0.15 * 60 * 0.95, (planned, ckpt["step"], ckpt["elapsed_s"])
    assert ckpt["elapsed_s"] < 0.15 * 60 * 1.5


def test_a_resume_with_steps_zero_does_not_restart_at_the_peak_rate(tmp_path, photo_dir):
    """--resume --steps 0 --max-minutes M: until the speed is measured (25 steps in), the run keeps the schedule it
    stopped on, here ended (the 5% floor); the H200 run that met this went back to the peak 2e-3 for 25 steps."""
    out = tmp_path / "run"
    assert train(photo_dir, out, 30, "--warmup", "5", "--lr", "1e-3") == 0
    assert train(photo_dir, out, 0, "--resume", "--max-minutes", "0.1", "--lr", "1e-3") == 0
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if r["kind"] == "train"}
    assert lrs[30] < 6e-5  # the first run ended near its floor, 5% of 1e-3
    # the records (every 10 steps) before the measurement at 25 steps into the resumed run; how many of them fit in
    # the time limit depends on the machine's load (a busy machine ended one before step 40), so not a fixed list
    before = {step: lr for step, lr in lrs.items() if 30 < step <= 30 + 25}
    assert before, lrs
    assert all(lr < 6e-5 for lr in before.values()), lrs  # not back at 1e-3 before the measurement


@pytest.mark.slow
def test_compiled_training_serves_every_prefix_from_one_graph(tmp_path, photo_dir):
    """--compile with tail drop: the step's forward goes through torch.compile with the prefix as a mask (static
    shapes), so prefixes of every length train without a recompile per length; the run records it."""
    import torch._dynamo

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    out = tmp_path / "run"
    assert train(photo_dir, out, 12, "--compile", "--tail-drop", "--precision", "fp32") == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["training"]["compile"] is True and ckpt["step"] == 12
    prefixes = {json.loads(line)["prefix"] for line in (out / "metrics.jsonl").read_text().splitlines()
                if '"train"' in line}
    assert prefixes and all(1 <= p <= 16 for p in prefixes)
    frames = counters["stats"]["unique_graphs"]
    assert 1 <= frames <= 4, dict(counters["stats"])  # not one graph per prefix length (12 steps, up to 12 lengths)


def test_fitted_steps_fill_the_time_left_at_the_measured_speed():
    # 100 steps in the 10 s since the probe: 10 steps/s; 60 s of a 2-minute budget left at t = 60 (started at 0)
    assert fitted_steps(step=105, measured=100, t_probe=50.0, t_start=0.0, max_minutes=2, now=60.0) == 105 + 570
    # slower now (the same 100 steps over 40 s): fewer steps; past the time: one more step, not fewer than done
    assert fitted_steps(step=105, measured=100, t_probe=20.0, t_start=0.0, max_minutes=2, now=60.0) == 105 + 142
    assert fitted_steps(step=105, measured=100, t_probe=50.0, t_start=0.0, max_minutes=0.5, now=60.0) == 106


class _NaNLoss:
    """torch.nn.functional, except that mse_loss gives NaN on the calls listed (the training loop calls it once a
    step for the reconstruction; the quantizer's own losses do not go through this module attribute)."""

    def __init__(self, bad_calls) -> None:
        self.calls, self.bad = 0, bad_calls

    def __getattr__(self, name):
        return getattr(F, name)

    def mse_loss(self, *args, **kwargs):
        self.calls += 1
        out = F.mse_loss(*args, **kwargs)
        return out * float("nan") if self.bad(self.calls) else out


def _all_finite(state) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_a_step_with_a_non_finite_loss_is_skipped_not_applied(tmp_path, photo_dir, monkeypatch):
    """One NaN loss mid-run (as two bf16 runs on an H200 met): that update is skipped, counted, and the run ends
    with finite weights; without the guard every weight would be NaN from that step on."""
    import titok.model.train as train_mod

    monkeypatch.setattr(train_mod, "F", _NaNLoss(lambda n: n == 4))
    out = tmp_path / "run"
    assert train(photo_dir, out, 8, "--precision", "fp32") == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 8 and ckpt["nonfinite_steps"] == 1
    assert _all_finite(ckpt["model"]) and _all_finite(ckpt["ema"])
    assert all(torch.isfinite(s["exp_avg"]).all() for s in ckpt["optimizer"]["state"].values())


def test_a_run_that_stays_non_finite_stops_with_a_clear_error_and_keeps_finite_weights(tmp_path, photo_dir,
                                                                                         monkeypatch):
    import titok.model.train as train_mod

    monkeypatch.setattr(train_mod, "F", _NaNLoss(lambda n: n >= 3))
    monkeypatch.setattr(train_mod, "MAX_NONFINITE_RUN", 4)
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"stopped at step 6: the loss or its gradients were not finite for 4 steps "
                                         r"in a row \(the weights were last updated at step 2"):
        train(photo_dir, out, 20, "--precision", "fp32")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 6 and ckpt["nonfinite_steps"] == 4 and _all_finite(ckpt["model"])
    monkeypatch.setattr(train_mod, "F", F)  # a sound loss again: the run resumes from the finite weights
    assert train(photo_dir, out, 8, "--resume", "--precision", "fp32") == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["nonfinite_steps"] == 4


def test_cuda_training_turns_cudnn_attention_off() -> None:
    """The flags that cuda_training_backends sets exist on every build (here a CPU one); the run on a GPU checks the
    rest: cuDNN's attention backward gave NaN gradients at 192 positions with a mask (pytorch/pytorch#196678)."""
    from titok.model.train import cuda_training_backends

    before = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.allow_tf32)
    try:
        cuda_training_backends()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1], before[2]
