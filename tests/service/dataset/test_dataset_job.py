"""The single-machine job: output layout and metadata, bad images, resume, refusals, interrupted writes."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from dataset_helpers import done_names, photo, plain, record, rows, tokenize, write_folder, write_parquet, write_tar
from sample_images import exif_rotated_jpeg, header_only_png

from titok.core.codec import load_image
from titok.core.engine import Engine
from titok.dataset import load_tokens, read_dir_meta
from titok.dataset import writer as writer_module
from titok.dataset.inputs import DatasetError


def _mixed_inputs(tmp: Path) -> list[Path]:
    folder = write_folder(tmp / "pics", {f"d/{i}.png": photo(i, size=(40 + i, 30)) for i in range(6)}
                          | {"rotated.jpg": exif_rotated_jpeg()})
    for s in range(2):
        write_tar(tmp / f"wds/train-{s:04d}.tar",
                  [m for i in range(3) for m in ((f"s{s}_{i}.jpg", photo(10 * s + i, fmt="JPEG")),
                                                 (f"s{s}_{i}.txt", b"caption"))])
    write_parquet(tmp / "laion/00000.parquet", {"key": ["p0", "p1"], "jpg": [photo(20), photo(21)]})
    return [folder, tmp / "wds/train-{0000..0001}.tar", tmp / "laion/*.parquet"]


def test_mixed_inputs_give_one_row_per_image_with_the_models_metadata(tmp_path: Path, engine: Engine) -> None:
    inputs = _mixed_inputs(tmp_path)
    summary = tokenize(inputs, tmp_path / "out", engine, shard_size=4, workers=2)
    out = tmp_path / "out"
    assert sorted(plain(p.name) for p in out.glob("*.parquet")) == [
        "00000.parquet", "pics-000000.parquet", "pics-000001.parquet", "train-0000.parquet", "train-0001.parquet"]
    assert sorted(p.name for p in out.glob(".titok/*.done.json")) == sorted(
        p.name.replace(".parquet", ".done.json") for p in out.glob("*.parquet"))
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in out.glob("*.parquet")] + [".titok"])
    assert (summary.images, summary.errors, summary.shards_written, summary.shards_skipped) == (15, 0, 5, 0)

    table = pq.read_table(record(out, "train-0001.parquet"))
    assert table.schema.field("tokens").type.list_size == engine.num_tokens
    assert str(table.schema.field("tokens").type.value_type) == "uint8"  # codebook 64 fits a byte
    meta = json.loads(table.schema.metadata[b"titok"])
    assert {k: meta[k] for k in ("model", "image_size", "num_tokens", "codebook_size", "resize", "token_dtype")} == {
        "model": "test-tiny", "image_size": 32, "num_tokens": 8, "codebook_size": 64, "resize": "crop",
        "token_dtype": "uint8"}
    assert meta["content_hash"] == engine.meta["content_hash"] and len(meta["content_hash"]) >= 12

    got = rows(out)
    pics, wds = str((tmp_path / "pics").resolve()), str((tmp_path / "wds/train-0001.tar").resolve())
    assert got[(pics, "d/3.png")]["width"] == 43 and got[(pics, "d/3.png")]["height"] == 30
    assert (got[(pics, "rotated.jpg")]["width"], got[(pics, "rotated.jpg")]["height"]) == (32, 64)  # as displayed
    assert [k for s, k in got if s == wds] == ["s1_0", "s1_1", "s1_2"]
    # Each row's tokens are the engine's on the codec's pixels: the same thing /encode computes.
    data = (tmp_path / "pics/d/3.png").read_bytes()
    expected = engine.run("encode", np.stack([load_image(data, engine.image_size)]))[0]
    assert got[(pics, "d/3.png")]["tokens"] == expected.tolist()


def test_worker_processes_and_inline_decoding_write_the_same_rows(tmp_path: Path, engine: Engine) -> None:
    inputs = _mixed_inputs(tmp_path)
    tokenize(inputs, tmp_path / "a", engine, workers=0, batch_size=3)
    tokenize(inputs, tmp_path / "b", engine, workers=2, batch_size=5)
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_bad_images_are_skipped_listed_and_counted_and_the_run_goes_on(tmp_path: Path, engine: Engine) -> None:
    good = photo(1, size=(256, 256), fmt="JPEG")
    tar = write_tar(tmp_path / "mixed.tar", [
        ("ok1.jpg", good), ("corrupt.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"),
        ("cut.jpg", good[: 2 * len(good) // 3]),
        ("bomb.png", header_only_png(5_000, 5_000)), ("empty.png", b""), ("ok2.png", photo(2))])
    summary = tokenize([tar], tmp_path / "out", engine, max_pixels=10_000_000)
    assert (summary.images, summary.errors) == (2, 4)
    assert [k for _, k in rows(tmp_path / "out")] == ["ok1", "ok2"]
    errors = [json.loads(line) for line in record(tmp_path / "out", "mixed.errors.jsonl").read_text().splitlines()]
    reasons = {e["key"]: e["reason"] for e in errors}
    assert list(reasons) == ["corrupt", "cut", "bomb", "empty"]
    assert "starts like a JPEG image but cannot be read" in reasons["corrupt"]
    assert "truncated or corrupt" in reasons["cut"]
    assert "5000 x 5000 = 25000000 pixels; the limit is 10000000" in reasons["bomb"]
    assert "empty" in reasons["empty"]
    assert summary.error_files == [str(record(tmp_path / "out", "mixed.errors.jsonl"))]
    assert json.loads(record(tmp_path / "out", "mixed.done.json").read_text())["errors"] == 4


def test_a_truncated_tar_keeps_its_readable_images_and_records_the_truncation(tmp_path: Path, engine: Engine) -> None:
    tar = write_tar(tmp_path / "t.tar", [(f"{i}.png", photo(i, size=(64, 64))) for i in range(4)])
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    summary = tokenize([tar], tmp_path / "out", engine)
    assert (summary.images, summary.errors, summary.shards_written) == (2, 1, 1)
    (error,) = [json.loads(line) for line in record(tmp_path / "out", "t.errors.jsonl").read_text().splitlines()]
    assert error["key"] == "" and "truncated" in error["reason"]


def test_a_rerun_skips_complete_shards_and_redoes_changed_input(tmp_path: Path, engine: Engine) -> None:
    folder = write_folder(tmp_path / "pics", {f"{i}.png": photo(i) for i in range(6)})
    first = tokenize([folder], tmp_path / "out", engine, shard_size=4)
    before = rows(tmp_path / "out")
    again = tokenize([folder], tmp_path / "out", engine, shard_size=4)
    assert (first.shards_written, again.shards_written, again.shards_skipped, again.images) == (2, 0, 2, 0)
    (folder / "5.png").write_bytes(photo(55, size=(50, 50)))  # the second shard's input changed
    third = tokenize([folder], tmp_path / "out", engine, shard_size=4)
    assert (third.shards_written, third.shards_skipped) == (1, 1)
    after = rows(tmp_path / "out")
    assert after[(str(folder.resolve()), "5.png")]["width"] == 50
    assert {k: v for k, v in after.items() if k[1] != "5.png"} == {k: v for k, v in before.items() if k[1] != "5.png"}


def test_an_output_dir_of_another_model_is_refused_unless_overwrite(tmp_path: Path, engine: Engine,
                                                                       other_artifact: Path) -> None:
    folder = write_folder(tmp_path / "pics", {f"{i}.png": photo(i) for i in range(3)})
    other = Engine.load(other_artifact, "cpu", "float32", torch_threads=1)
    try:
        tokenize([folder], tmp_path / "out", other)
        with pytest.raises(DatasetError, match="holds shards of model test-other .* this run is model test-tiny"):
            tokenize([folder], tmp_path / "out", engine)
        with pytest.raises(DatasetError, match="resize crop.* this run is model test-other .* resize pad"):
            tokenize([folder], tmp_path / "out", other, resize="pad")
        summary = tokenize([folder], tmp_path / "out", engine, overwrite=True)
    finally:
        other.close()
    assert (summary.shards_written, summary.shards_skipped) == (1, 0)
    assert read_dir_meta(tmp_path / "out")["model"] == "test-tiny"


def test_an_interrupted_write_is_never_recorded_complete(tmp_path: Path, engine: Engine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_folder(tmp_path / "pics", {f"{i}.png": photo(i) for i in range(6)})
    real = writer_module._write_atomic

    def dies_half_way(path: Path, data: bytes) -> None:
        if plain(path.name) == "pics-000001.parquet":
            tmp = path.parent / ".titok" / (path.name + ".123.tmp")
            tmp.write_bytes(data[: len(data) // 2])  # the process dies with half the bytes written
            raise OSError("no space left on device")
        real(path, data)

    monkeypatch.setattr(writer_module, "_write_atomic", dies_half_way)
    with pytest.raises(OSError, match="no space"):
        tokenize([folder], tmp_path / "out", engine, shard_size=4)
    out = tmp_path / "out"
    assert sorted(plain(p.name) for p in out.rglob("*") if p.is_file()) == [
        "pics-000000.done.json", "pics-000000.parquet", "pics-000001.parquet.123.tmp"]
    assert done_names(out) == ["pics-000000"]
    monkeypatch.setattr(writer_module, "_write_atomic", real)
    resumed = tokenize([folder], out, engine, shard_size=4)
    assert (resumed.shards_written, resumed.shards_skipped) == (1, 1)
    assert not list(out.rglob("*.tmp"))
    tokenize([folder], tmp_path / "clean", engine, shard_size=4)
    assert {k[1]: v["tokens"] for k, v in rows(out).items()} == {k[1]: v["tokens"] for k, v in
                                                                rows(tmp_path / "clean").items()}


def test_load_tokens_reads_complete_shards_and_refuses_a_mix_of_models(tmp_path: Path, engine: Engine,
                                                                         other_artifact: Path) -> None:
    folder = write_folder(tmp_path / "pics", {f"{i}.png": photo(i) for i in range(6)})
    tokenize([folder], tmp_path / "out", engine, shard_size=4)
    keys, tokens = load_tokens(tmp_path / "out")
    assert keys == [f"{i}.png" for i in range(6)]
    assert tokens.shape == (6, engine.num_tokens) and tokens.dtype == np.uint8
    expected = engine.run("encode", np.stack([load_image((folder / k).read_bytes(), 32) for k in keys]))
    np.testing.assert_array_equal(tokens, expected)

    other = Engine.load(other_artifact, "cpu", "float32", torch_threads=1)
    try:
        tokenize([folder], tmp_path / "other", other, shard_size=4)
    finally:
        other.close()
    record(tmp_path / "other", "pics-000001.parquet").rename(tmp_path / "out/zz.parquet")
    record(tmp_path / "other", "pics-000001.done.json").rename(tmp_path / "out/.titok/zz.done.json")
    with pytest.raises(DatasetError, match="mixes shards of different jobs: .* test-tiny .* zz.parquet is model "
                                           "test-other"):
        load_tokens(tmp_path / "out")
    with pytest.raises(DatasetError, match="no complete tokenized shard"):
        load_tokens(tmp_path / "pics")


def _mirror_tar(path: Path, mirrored: bool) -> None:
    from PIL import Image, ImageOps

    a = Image.open(io.BytesIO(photo(1, size=(40, 40))))
    b = ImageOps.mirror(a) if mirrored else a
    buf = io.BytesIO()
    b.save(buf, format="PNG")
    write_tar(path, [("a.png", buf.getvalue()), ("b.png", photo(2))])


def test_resume_is_judged_by_content_not_by_size(tmp_path: Path, engine: Engine) -> None:
    tar = tmp_path / "s.tar"
    _mirror_tar(tar, mirrored=False)
    size = tar.stat().st_size
    tokenize([tar], tmp_path / "out", engine)
    before = rows(tmp_path / "out")
    record_path = record(tmp_path / "out", "s.done.json")
    first = json.loads(record_path.read_text())
    assert len(first["sha256"]) == 64 and first["stat"]

    stat = tar.stat()
    os.utime(tar, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, not changed: the digest says so
    touched = tokenize([tar], tmp_path / "out", engine)
    assert (touched.shards_written, touched.shards_skipped) == (0, 1)
    refreshed = json.loads(record_path.read_text())
    assert refreshed["sha256"] == first["sha256"] and refreshed["stat"] != first["stat"]  # next time: the cheap path

    _mirror_tar(tar, mirrored=True)  # one image replaced by its mirror: the tar keeps its size (10 KiB blocks)
    assert tar.stat().st_size == size
    changed = tokenize([tar], tmp_path / "out", engine)
    assert (changed.shards_written, changed.shards_skipped) == (1, 0)
    after = rows(tmp_path / "out")
    key = (str(tar.resolve()), "a")
    assert after[key]["tokens"] != before[key]["tokens"]
    tokenize([tar], tmp_path / "fresh", engine)
    assert after == rows(tmp_path / "fresh")
