"""Real users' files (issue 21): nothing vanishes, nothing oversized is read, no hang, no traceback, no duplicate."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_helpers import done_names, photo, plain, record, rows, tokenize, write_folder, write_parquet, write_tar

from titok.core.engine import Engine
from titok.dataset import load_tokens
from titok.dataset.inputs import DatasetError, iter_records, plan_shards
from titok.dataset.local import JobOptions, run_local
from titok.dataset.parquet_pages import oversized_row_groups
from titok.dataset.progress import Progress
from titok.dataset.writer import ShardRows, job_meta, prepare_output


def _errors(out: Path, name: str) -> dict[str, str]:
    return {e["key"]: e["reason"] for e in map(json.loads, record(out, name).read_text().splitlines())}


def _tar_with(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data[info.name]) if info.name in data else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size
    return info


# 3. Nothing vanishes without a record.

def test_links_devices_and_fifos_in_a_tar_are_listed_never_dropped(tmp_path: Path, engine: Engine) -> None:
    good = photo(1)
    tar = _tar_with(tmp_path / "odd.tar", [
        _info("ok.png", size=len(good)), _info("sym.png", tarfile.SYMTYPE, "ok.png"),
        _info("hard.png", tarfile.LNKTYPE, "ok.png"), _info("dev.png", tarfile.CHRTYPE),
        _info("pipe.png", tarfile.FIFOTYPE), _info("dir", tarfile.DIRTYPE)], {"ok.png": good})
    summary = tokenize([tar], tmp_path / "out", engine)
    assert (summary.images, summary.errors) == (1, 4)
    reasons = _errors(tmp_path / "out", "odd.errors.jsonl")
    assert reasons == {"sym.png": "a symbolic link (to ok.png), not an image file; not followed",
                       "hard.png": "a hard link (to ok.png), not an image file; not followed",
                       "dev.png": "a device, not an image file", "pipe.png": "a FIFO, not an image file"}


def test_samples_without_an_image_names_with_dots_and_a_missed_column_are_all_accounted(
        tmp_path: Path, engine: Engine) -> None:
    tar = write_tar(tmp_path / "s.tar", [
        ("22.05.png", photo(1)), ("clip.v2.jpg", photo(2, fmt="JPEG")), ("clip.v2.txt", b"caption"),
        ("meta.json", b"{}"), ("two.a.png", photo(3)), ("two.b.png", photo(4)), ("plain.png", photo(5))])
    summary = tokenize([tar], tmp_path / "out", engine)
    assert [k for _, k in rows(tmp_path / "out")] == ["22", "clip", "plain"]  # key: up to the first dot
    assert (summary.images, summary.errors) == (3, 2)
    reasons = _errors(tmp_path / "out", "s.errors.jsonl")
    assert reasons == {"meta": "the sample has no image (its files: .json)",
                       "two": "the sample holds 2 images (.a.png, .b.png) and none has a plain image extension "
                              "(.jpg, .png, ...): choose one with --image-column"}
    # A shard whose samples all miss --image-column: every sample says which files it has.
    missed = tokenize([tar], tmp_path / "webp", engine, image_column="webp")
    assert (missed.images, missed.errors) == (0, 5)
    assert _errors(tmp_path / "webp", "s.errors.jsonl")["clip"] == "the sample has no .webp file (its files: " \
                                                                   ".v2.jpg, .v2.txt)"


def test_a_key_repeated_later_in_a_tar_is_an_error_not_a_second_row(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "r.tar", [("a.png", photo(1)), ("b.png", photo(2)), ("a.txt", b"late caption")])
    records = list(iter_records(plan_shards([str(tar)])[0]))
    assert [(r.key, r.error[:33]) for r in records] == [
        ("a", ""), ("b", ""), ("a", "member a.txt repeats key 'a' of a")]


# 2. A bound per image, checked before reading it.

def test_oversized_folder_files_and_tar_members_are_skipped_by_their_declared_size(tmp_path: Path,
                                                                                  engine: Engine) -> None:
    big, small = photo(1, size=(200, 200)), photo(2)
    assert len(big) > 20_000 > len(small)
    folder = write_folder(tmp_path / "pics", {"big.png": big, "small.png": small})
    raw = write_tar(tmp_path / "t.tar", [("big.png", big), ("small.png", small)])
    gz = tmp_path / "u.tar.gz"
    gz.write_bytes(gzip.compress(raw.read_bytes()))
    summary = tokenize([folder, raw, gz], tmp_path / "out", engine, max_bytes=20_000)
    assert (summary.images, summary.errors) == (3, 3)
    for name in ("pics-000000.errors.jsonl", "t.errors.jsonl", "u.errors.jsonl"):
        assert _errors(tmp_path / "out", name) == {
            "big.png" if name.startswith("pics") else "big":
            f"the image is {len(big)} bytes; the limit is 20000 bytes (--max-image-bytes); not read"}


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar writes the sparse member")
def test_a_sparse_tar_member_declaring_2_gb_is_never_read(tmp_path: Path) -> None:
    huge = tmp_path / "src" / "huge.png"
    huge.parent.mkdir()
    with open(huge, "wb") as f:
        f.truncate(2 * 1024**3)  # a hole: no disk, no bytes
    (tmp_path / "src/ok.png").write_bytes(photo(1))
    tar = tmp_path / "sparse.tar"
    subprocess.run(["tar", "-S", "-cf", str(tar), "-C", str(tmp_path / "src"), "huge.png", "ok.png"], check=True)
    assert tar.stat().st_size < 100_000
    records = list(iter_records(plan_shards([str(tar)])[0]))
    assert [(r.key, r.data is not None) for r in records] == [("huge", False), ("ok", True)]
    assert records[0].error.startswith(f"the image is {2 * 1024**3} bytes; the limit is {32 * 1024 * 1024} bytes")


def test_a_parquet_page_holding_a_value_over_the_limit_is_never_decompressed(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    huge = bytes(8_000_000)  # zstd makes it a few hundred bytes on disk
    path = tmp_path / "z.parquet"
    pq.write_table(pa.table({"key": ["a", "b", "c"], "jpg": [photo(1), huge, photo(2)]}), path,
                   compression="zstd", row_group_size=1)
    assert path.stat().st_size < 50_000
    meta = pq.ParquetFile(path).metadata
    assert list(oversized_row_groups(str(path), meta, "jpg", 1_000_000)) == [1]
    assert oversized_row_groups(str(path), meta, "jpg", 10_000_000) == {}
    read_groups: list[int] = []
    real = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: object, row_groups: list[int], **kw: object) -> object:
        read_groups.extend(row_groups)
        return real(self, *args, row_groups=row_groups, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    records = list(iter_records(plan_shards([str(path)])[0], max_bytes=1_000_000))
    assert read_groups == [0, 2]  # the image column of row group 1 was never read
    assert [(r.key, r.data is not None) for r in records] == [("a", True), ("b", False), ("c", True)]
    assert "row group 1 of column jpg holds a page of 8000004 bytes" in records[1].error
    assert "not read" in records[1].error


def test_a_parquet_cell_over_the_limit_within_a_normal_page_is_skipped(tmp_path: Path) -> None:
    small, big = photo(1), photo(2, size=(70, 60))  # one page of both: under 4 x the limit, so it is read
    path = write_parquet(tmp_path / "p.parquet", {"key": ["a", "b"], "png": [small, big]})
    assert oversized_row_groups(str(path), pq.ParquetFile(path).metadata, "png", len(small) + 10) == {}
    records = list(iter_records(plan_shards([str(path)])[0], max_bytes=len(small) + 10))
    assert records[0].data == photo(1) and records[1].data is None and "bytes (--max-image-bytes)" in records[1].error


# 4. No hang, no traceback.

def test_a_fifo_input_is_refused_up_front_and_a_fifo_in_a_folder_is_an_error_line(tmp_path: Path,
                                                                                   engine: Engine) -> None:
    os.mkfifo(tmp_path / "f")
    with pytest.raises(DatasetError, match=r"input .*/f is a FIFO \(named pipe\), not a regular file or folder"):
        plan_shards([str(tmp_path / "f")])
    with pytest.raises(DatasetError, match="is a FIFO"):
        plan_shards([str(tmp_path / "*")])  # a glob that matches it
    folder = write_folder(tmp_path / "pics", {"ok.png": photo(1)})
    os.mkfifo(folder / "pipe.png")
    summary = tokenize([folder], tmp_path / "out", engine)
    assert (summary.images, summary.errors) == (1, 1)
    assert _errors(tmp_path / "out", "pics-000000.errors.jsonl") == {
        "pipe.png": "a FIFO (named pipe), not an image file; not read"}


@pytest.mark.parametrize("value, type_words", [("a string", "string"), ([1, 2], r"list<\w+: int64>"), (7, "int64")])
def test_a_parquet_image_struct_with_a_wrong_bytes_type_says_the_column_type_is_wrong(
        tmp_path: Path, value: object, type_words: str) -> None:
    path = write_parquet(tmp_path / "hf.parquet", {"image": [{"bytes": value, "path": "x.png"}]})
    for column in ("auto", "image"):
        with pytest.raises(DatasetError, match=rf"column 'image' has the wrong type: its 'bytes' field is "
                                               rf"{type_words}, not binary image bytes"):
            plan_shards([str(path)], image_column=column)


def test_hugging_face_rows_holding_only_a_path_are_read_beside_the_parquet_file(tmp_path: Path) -> None:
    write_folder(tmp_path / "data/images", {"5.png": photo(5)})
    path = write_parquet(tmp_path / "data/hf.parquet", {"image": pa.array(
        [{"bytes": None, "path": "images/5.png"}, {"bytes": None, "path": "images/gone.png"},
         {"bytes": photo(6), "path": None}],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    records = list(iter_records(plan_shards([str(path)])[0]))
    assert [(r.key, r.data) for r in records if not r.error] == [("0", photo(5)), ("2", photo(6))]
    assert records[1].error == (f"column image holds only a path, 'images/gone.png', and "
                                f"{tmp_path / 'data/images/gone.png'} does not exist")


# 5. Never duplicated, readable by the ecosystem.

def test_a_rerun_with_another_00000_input_skips_exactly_what_is_done(tmp_path: Path, engine: Engine) -> None:
    a = write_tar(tmp_path / "a/00000.tar", [(f"a{i}.png", photo(i)) for i in range(3)])
    b = write_tar(tmp_path / "b/00000.tar", [(f"b{i}.png", photo(10 + i)) for i in range(2)])
    first = tokenize([a], tmp_path / "out", engine)
    second = tokenize([a, b], tmp_path / "out", engine)
    assert (first.shards_written, second.shards_written, second.shards_skipped) == (1, 1, 1)
    keys, _ = load_tokens(tmp_path / "out")
    assert sorted(keys) == ["a0", "a1", "a2", "b0", "b1"]
    assert done_names(tmp_path / "out") == ["00000", "00000"] and len(list((tmp_path / "out").glob("*.parquet"))) == 2


def test_load_tokens_refuses_a_key_found_in_two_shards_naming_it(tmp_path: Path, engine: Engine) -> None:
    one = write_folder(tmp_path / "one", {"x.png": photo(1), "y.png": photo(2)})
    two = write_folder(tmp_path / "two", {"x.png": photo(3)})
    tokenize([one, two], tmp_path / "out", engine)
    with pytest.raises(DatasetError, match=r"holds 1 key\(s\) twice, e.g. 'x.png' in one-\w+-000000.parquet and "
                                           r"two-\w+-000000.parquet"):
        load_tokens(tmp_path / "out")


def test_pyarrow_and_hugging_face_datasets_read_the_output_directory_as_it_is(tmp_path: Path, engine: Engine,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_folder(tmp_path / "pics", {f"{i}.png": photo(i) for i in range(5)} | {"bad.png": b"no"})
    tokenize([folder], tmp_path / "out", engine, shard_size=2)
    assert len(list((tmp_path / "out/.titok").glob("*.errors.jsonl"))) == 1  # the directory holds records too
    expected = sorted(k for _, k in rows(tmp_path / "out"))

    import pyarrow.dataset as pds

    table = pds.dataset(tmp_path / "out").to_table()
    assert sorted(table.column("key").to_pylist()) == expected
    assert table.schema.field("tokens").type.list_size == engine.num_tokens

    datasets = pytest.importorskip("datasets", reason="the dev extra installs it")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(ds["key"]) == expected
    assert len(ds[0]["tokens"]) == engine.num_tokens


# 1. Memory flat in the number of images; 6. the progress bar ends at 100%.

def test_shard_rows_hold_compact_copies_not_views_of_the_models_batches(engine: Engine, tmp_path: Path) -> None:
    (shard,) = plan_shards([str(write_tar(tmp_path / "t.tar", [("a.png", photo(1))]))])
    rows_ = ShardRows(shard, 8, "uint8")
    batch = np.arange(32 * 8, dtype=np.int64).reshape(32, 8) % 64  # a model output batch (B, K)
    for i in range(40):  # past the first growth
        rows_.set_tokens(rows_.add(f"k{i}", 1, 1, ""), batch[i % 32])
    assert not np.shares_memory(rows_.tokens, batch)
    assert rows_.tokens.dtype == np.uint8 and rows_.tokens.nbytes <= 64 * 8
    np.testing.assert_array_equal(rows_.tokens[33], batch[1])


def test_the_progress_bar_on_a_tar_ends_at_100_percent(tmp_path: Path, engine: Engine) -> None:
    tar = write_tar(tmp_path / "t.tar", [m for i in range(6) for m in ((f"{i}.png", photo(i)),
                                                                        (f"{i}.json", b"{" + b" " * 3000 + b"}"))])
    shards = plan_shards([str(tar)])
    meta = job_meta(engine.model_info, "crop")
    prepare_output(tmp_path / "out", meta)
    stream = io.StringIO()
    progress = Progress(sum(s.size_bytes for s in shards), len(shards), stream=stream, every_s=0.0)
    run_local(shards, engine, meta, JobOptions(tmp_path / "out", workers=0, batch_size=4), progress)
    last = stream.getvalue().splitlines()[-1]
    assert "6 images" in last and "shards 1/1" in last and "100%" in last, last
    assert plain(next((tmp_path / "out").glob("*.parquet")).name) == "t.parquet"
