"""The same job on a local Ray instance writes the rows of the single-machine job, key by key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dataset_helpers import photo, record, rows, tokenize, write_folder, write_parquet, write_tar

from titok.core.engine import Engine
from titok.dataset.inputs import plan_shards
from titok.dataset.local import JobOptions
from titok.dataset.on_ray import run_ray
from titok.dataset.writer import job_meta, prepare_output

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'titok-service[ray]' (CI installs it)")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # The workers import this checkout's package, as the test does (not another installed copy); the variable
    # goes back afterwards, so later tests' subprocesses (a pip install into a fresh venv) do not see it.
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), before]))
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield
        ray.shutdown()
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


@pytest.mark.slow
def test_ray_data_writes_the_rows_of_the_local_job(tmp_path: Path, tiny_artifact: Path, engine: Engine,
                                                   local_ray: None) -> None:
    folder = write_folder(tmp_path / "pics", {f"{i}.png": photo(i) for i in range(7)} | {"bad.png": b"not a png"})
    tar = write_tar(tmp_path / "wds/000.tar", [(f"t{i}.jpg", photo(20 + i, fmt="JPEG")) for i in range(3)])
    empty = write_tar(tmp_path / "wds/001.tar", [("readme.txt", b"no images here")])
    pq = write_parquet(tmp_path / "p.parquet", {"key": ["a", "b"], "jpg": [photo(30), photo(31)]})
    inputs = [folder, tar, empty, pq]
    local = tokenize(inputs, tmp_path / "local", engine, shard_size=4)

    shards = plan_shards([str(p) for p in inputs], shard_size=4)
    meta = job_meta(engine.model_info, "crop")
    out = tmp_path / "ray"
    prepare_output(out, meta)
    summary = run_ray(shards, tiny_artifact, "cpu", "float32", meta, JobOptions(out, batch_size=3), concurrency=1)

    assert (summary.images, summary.errors, summary.shards_written) == (local.images, local.errors, 5) == (12, 2, 5)
    assert rows(out) == rows(tmp_path / "local")  # every key, token, size and source
    for path in (tmp_path / "local/.titok").iterdir():
        assert (out / ".titok" / path.name).read_bytes() == path.read_bytes(), path.name  # done records, errors
    assert json.loads(record(out, "000.done.json").read_text())["rows"] == 3
    again = run_ray(shards, tiny_artifact, "cpu", "float32", meta, JobOptions(out), concurrency=1)
    assert (again.shards_skipped, again.shards_written) == (5, 0)

    # Resume judged by content here too: the tar's image replaced by another of the same size.
    size = tar.stat().st_size
    write_tar(tar, [(f"t{i}.jpg", photo(20 + i, fmt="JPEG")) for i in (0, 1)] + [("t2.jpg", photo(20, fmt="JPEG"))])
    assert tar.stat().st_size == size
    changed = run_ray(shards, tiny_artifact, "cpu", "float32", meta, JobOptions(out), concurrency=1)
    assert (changed.shards_skipped, changed.shards_written) == (4, 1)
    got = rows(out)
    assert got[(str(tar.resolve()), "t2")]["tokens"] == got[(str(tar.resolve()), "t0")]["tokens"]


@pytest.mark.slow
def test_ray_with_a_target_psnr_writes_the_rows_of_the_local_job(tmp_path: Path, local_ray: None) -> None:
    from prefix_helpers import write_toy_prefix_artifact

    from titok.core.budgets import Budget
    from titok.dataset.local import run_local

    model = write_toy_prefix_artifact(tmp_path / "toy-prefix.pt")
    folder = write_folder(tmp_path / "pics", {f"{i}.png": photo(i) for i in range(7)} | {"bad.png": b"not a png"})
    shards = plan_shards([str(folder)], shard_size=4)
    budget = Budget(target_psnr=14.0)
    prefix_engine = Engine.load(model, "cpu", torch_threads=1)
    try:
        meta = job_meta(prefix_engine.model_info, "crop", budget)
        prepare_output(tmp_path / "local", meta)
        run_local(shards, prefix_engine, meta, JobOptions(tmp_path / "local", workers=0, budget=budget))
    finally:
        prefix_engine.close()
    prepare_output(tmp_path / "ray", meta)
    run_ray(shards, model, "cpu", "float32", meta, JobOptions(tmp_path / "ray", batch_size=3, budget=budget),
            concurrency=1)
    local, on_ray = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert on_ray.keys() == local.keys() and len(local) == 7
    for key, row in local.items():  # psnr is float32 in both; the lengths, tokens and flags are the same
        assert on_ray[key] == row
    assert len({len(r["tokens"]) for r in local.values()}) > 1


@pytest.mark.slow
def test_a_cluster_too_small_for_the_plan_is_refused_saying_what_it_lacks(tmp_path: Path, tiny_artifact: Path,
                                                                         engine: Engine, local_ray: None) -> None:
    from titok.dataset.inputs import DatasetError

    tar = write_tar(tmp_path / "a.tar", [("a.png", photo(1))])
    meta = job_meta(engine.model_info, "crop")
    prepare_output(tmp_path / "out", meta)
    with pytest.raises(DatasetError, match="the Ray cluster has 2 CPUs; --concurrency 2 tokenizer actors hold 2 and "
                                           "reading needs 1 more"):
        run_ray(plan_shards([str(tar)]), tiny_artifact, "cpu", "float32", meta, JobOptions(tmp_path / "out"),
                concurrency=2)
    with pytest.raises(DatasetError, match="the Ray cluster has 0 GPUs; --concurrency 1 actors with --num-gpus 1 "
                                           "need 1"):
        run_ray(plan_shards([str(tar)]), tiny_artifact, "cpu", "float32", meta, JobOptions(tmp_path / "out"),
                num_gpus=1)
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_the_ray_floor_in_pyproject_is_the_installed_ray_or_older() -> None:
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    (floor,) = [m for d in deps if (m := re.fullmatch(r"ray\[data\]>=(\d+)\.(\d+)", d))]
    assert floor, deps
    installed = tuple(int(x) for x in ray.__version__.split(".")[:2])
    assert installed >= (int(floor[1]), int(floor[2])) >= (2, 51)  # compute=ActorPoolStrategy without a warning


@pytest.mark.slow
def test_no_progress_for_the_stall_timeout_stops_the_run_with_a_message(tmp_path: Path, tiny_artifact: Path) -> None:
    # In a process of its own: the stalled run's Ray (started by the job) goes with it.
    tar = write_tar(tmp_path / "a.tar", [("a.png", photo(1))])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "titok.cli", "tokenize", str(tar), "--out", str(tmp_path / "out"),
                           "--model", str(tiny_artifact), "--ray", "--ray-stall-timeout", "0.2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert re.search(r"titok tokenize: error: no progress for 0.2 s \(0 of 1 shards written, kept\): the cluster "
                     r"now has [\d.]+ free CPUs of \d+; a node may be lost", done.stderr), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert time.monotonic() - t0 < 120


def test_a_read_task_refuses_an_input_its_node_cannot_see(tmp_path: Path) -> None:
    from dataclasses import asdict

    from titok.dataset.on_ray import _read_and_decode

    tar = write_tar(tmp_path / "a.tar", [("a.png", photo(1))])
    (shard,) = plan_shards([str(tar)])
    tar.unlink()
    item = {"shard": 0, "spec": json.dumps(asdict(shard))}
    with pytest.raises(FileNotFoundError, match=r"a.tar does not exist on node .*: every node needs the inputs at "
                                                "the same absolute path"):
        next(_read_and_decode(item, 32, "crop", 1000, 1000))
