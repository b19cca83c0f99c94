"""Planning and reading the job's inputs: braces, globs, folders, WebDataset tars, Parquet, and bad inputs."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from dataset_helpers import photo, plain, write_folder, write_parquet, write_tar

from titok.dataset.inputs import DatasetError, expand_braces, iter_records, plan_shards, resolve_inputs


def test_brace_ranges_keep_zero_padding_and_lists_expand() -> None:
    assert expand_braces("s/train-{000008..000011}.tar") == [f"s/train-{i:06d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("x-{3..1}") == ["x-3", "x-2", "x-1"]
    assert expand_braces("{tmp}/x-{0..1}") == ["{tmp}/x-0", "{tmp}/x-1"]  # no .. nor , : literal


def test_globs_and_braces_resolve_in_order_without_repeats(tmp_path: Path) -> None:
    for i in range(3):
        write_tar(tmp_path / f"s-{i:03d}.tar", [(f"k{i}.png", photo(i))])
    got = resolve_inputs([str(tmp_path / "s-{000..001}.tar"), str(tmp_path / "s-*.tar")])
    assert [p.name for p in got] == ["s-000.tar", "s-001.tar", "s-002.tar"]


@pytest.mark.parametrize("arg, words", [("missing-dir", "no such file or folder"), ("nope-*.tar", "nothing matches"),
                                        ("s-{000..002}.tar", "s-002.tar")])
def test_a_missing_input_is_named(tmp_path: Path, arg: str, words: str) -> None:
    write_tar(tmp_path / "s-000.tar", [("a.png", photo(0))])
    write_tar(tmp_path / "s-001.tar", [("b.png", photo(1))])
    with pytest.raises(DatasetError, match=words):
        plan_shards([str(tmp_path / arg)])


def test_a_file_that_is_neither_tar_nor_parquet_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.tar").write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(DatasetError, match="neither a folder, a tar archive .* nor a Parquet file"):
        plan_shards([str(tmp_path / "notes.tar")])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 and then nothing a Parquet reader wants")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        plan_shards([str(tmp_path / "bad.parquet")])


def test_a_folder_is_searched_recursively_and_cut_into_shards(tmp_path: Path) -> None:
    files = {f"sub/{i}.png": photo(i) for i in range(5)} | {"top.JPG": photo(9, fmt="JPEG"), "notes.txt": b"hi",
                                                            ".hidden/x.png": photo(10)}
    root = write_folder(tmp_path / "pics", files)
    shards = plan_shards([str(root)], shard_size=4)
    assert [plain(s.name) for s in shards] == ["pics-000000", "pics-000001"]
    assert [k for s in shards for k in s.files] == ["sub/0.png", "sub/1.png", "sub/2.png", "sub/3.png", "sub/4.png",
                                                     "top.JPG"]
    assert all(s.source == str(root.resolve()) for s in shards)
    records = list(iter_records(shards[1]))
    assert [r.key for r in records] == ["sub/4.png", "top.JPG"]
    assert records[1].data == files["top.JPG"]
    with pytest.raises(DatasetError, match="holds no images"):
        plan_shards([str(write_folder(tmp_path / "empty", {"a.txt": b"x"}))])


def test_tar_samples_are_grouped_by_webdataset_key(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "shard.tar", [
        ("a/001.jpg", photo(1, fmt="JPEG")), ("a/001.txt", b"a caption"), ("a/001.cls", b"3"),
        ("./a/002.png", photo(2)), ("a/002.seg.png", photo(3)), ("a/003.json", b"{}"),
    ])
    (shard,) = plan_shards([str(tar)])
    assert (shard.kind, plain(shard.name)) == ("tar", "shard")
    records = list(iter_records(shard))
    assert [(r.key, bool(r.data)) for r in records] == [("a/001", True), ("a/002", True), ("a/003", False)]
    assert records[1].data == photo(2)  # .seg.png is another field of sample 002
    assert records[2].error == "the sample has no image (its files: .json)"
    (seg,) = plan_shards([str(tar)], image_column="seg.png")
    assert [(r.key, r.data, r.error) for r in iter_records(seg)] == [
        ("a/001", None, "the sample has no .seg.png file (its files: .jpg, .txt, .cls)"), ("a/002", photo(3), ""),
        ("a/003", None, "the sample has no .seg.png file (its files: .json)")]


def test_a_truncated_tar_gives_its_images_then_an_error(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "t.tar", [(f"{i}.png", photo(i, size=(64, 64))) for i in range(4)])
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    records = list(iter_records(plan_shards([str(tar)])[0]))
    assert [r.key for r in records if not r.error] == ["0", "1"]
    assert records[-1].key == "" and "truncated or corrupt after 2 samples" in records[-1].error


def test_parquet_image_column_is_found_by_default_or_chosen(tmp_path: Path) -> None:
    img2dataset = write_parquet(tmp_path / "00000.parquet", {
        "key": ["000000000", "000000001", "000000002"], "caption": ["x", "y", "z"],
        "jpg": [photo(0, fmt="JPEG"), None, photo(2, fmt="JPEG")]})
    (shard,) = plan_shards([str(img2dataset)])
    assert shard.column == "jpg"
    records = list(iter_records(shard))
    assert [r.key for r in records] == ["000000000", "000000001", "000000002"]
    assert records[1].data is None and "null" in records[1].error
    hf = write_parquet(tmp_path / "hf.parquet", {"image": [{"bytes": photo(5), "path": "5.png"}], "label": [1]})
    (shard,) = plan_shards([str(hf)])
    assert [(r.key, r.data) for r in iter_records(shard)] == [("0", photo(5))]
    with pytest.raises(DatasetError, match=r"no image-bytes column 'png'; its columns: key, caption, jpg"):
        plan_shards([str(img2dataset)], image_column="png")
    with pytest.raises(DatasetError, match="none of the columns .* holds image bytes.*--image-column"):
        plan_shards([str(write_parquet(tmp_path / "x.parquet", {"caption": ["a"]}))])


def test_inputs_with_the_same_name_get_distinct_shards(tmp_path: Path) -> None:
    a = write_tar(tmp_path / "a" / "x.tar", [("1.png", photo(1))])
    b = write_tar(tmp_path / "b" / "x.tar", [("1.png", photo(2))])
    names = [s.name for s in plan_shards([str(a), str(b)])]
    assert len(set(names)) == 2 and all(n.startswith("x-") for n in names)
    assert [s.name for s in plan_shards([str(b)])] == names[1:]  # a name does not depend on the other inputs


@pytest.mark.parametrize("cut", [100, 300, 511])
def test_a_tar_cut_inside_a_member_header_is_an_error_not_a_short_archive(tmp_path: Path, cut: int) -> None:
    tar = write_tar(tmp_path / "t.tar", [(f"{i}.png", photo(i, size=(8, 8))) for i in range(3)])
    members = tarfile.open(tar).getmembers()
    data = tar.read_bytes()
    tar.write_bytes(data[: members[1].offset + cut])  # member 0 whole, member 1's header block cut short
    records = list(iter_records(plan_shards([str(tar)])[0]))
    assert [r.key for r in records if not r.error] == ["0"]
    assert records[-1].key == "" and "truncated or corrupt after 1 samples" in records[-1].error


def test_junk_after_a_member_is_an_error_not_the_end(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "t.tar", [(f"{i}.png", photo(i, size=(8, 8))) for i in range(2)])
    members = tarfile.open(tar).getmembers()
    data = bytearray(tar.read_bytes())
    data[members[1].offset:members[1].offset + 512] = b"\x07" * 512  # member 1's header: no header at all
    tar.write_bytes(bytes(data))
    records = list(iter_records(plan_shards([str(tar)])[0]))
    assert [r.key for r in records if not r.error] == ["0"] and "truncated or corrupt" in records[-1].error


def test_a_file_repeated_in_one_sample_is_an_error_line_and_the_first_is_kept(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "t.tar", [("a.png", photo(1)), ("a.png", photo(2)), ("b.png", photo(3))])
    records = list(iter_records(plan_shards([str(tar)])[0]))
    assert [(r.key, r.data, r.error) for r in records] == [
        ("a", None, "member a.png repeats 'png' of sample 'a'; the first is kept"), ("a", photo(1), ""),
        ("b", photo(3), "")]
