"""`titok data photos`: the .rcc and .edj readers, licence parsing, the manifest and the list files (offline)."""

from __future__ import annotations

import argparse
import struct
import sys
import zlib
from pathlib import Path

import pytest

from titok.model import archives, photos
from titok.model.photos import ManifestRow

# --------------------------------------------------------------------------------------------------
# A tiny Qt .rcc writer (the layout rcc produces: header, tree, data, names; children contiguous)


def build_rcc(entries: dict[str, tuple[bytes, int]], version: int = 2) -> bytes:
    """entries: path -> (payload, flags) where flags is 0 (raw), 1 (zlib) or 4 (zstd, stored as is)."""
    tree: dict[str, dict | tuple[bytes, int]] = {}
    for path, value in entries.items():
        *dirs, leaf = path.split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = value

    names = bytearray()
    name_offsets: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(encoded) // 2, 0) + encoded)  # the hash is not read
        return name_offsets[name]

    # Breadth first, as rcc writes it: node 0 is the root and a directory's children are consecutive.
    order: list[tuple[str, dict | tuple[bytes, int]]] = [("", tree)]
    first_child: dict[int, int] = {}
    i = 0
    while i < len(order):
        value = order[i][1]
        if isinstance(value, dict):
            first_child[i] = len(order)
            order.extend(sorted(value.items()))
        i += 1

    data = bytearray()
    nodes = bytearray()
    extra = b"" if version == 1 else b"\0" * 8  # last-modified
    for index, (name, value) in enumerate(order):
        name_off = name_offset(name) if index else 0
        if isinstance(value, dict):
            nodes += struct.pack(">IHII", name_off, 2, len(value), first_child[index]) + extra
        else:
            payload, flags = value
            stored = struct.pack(">I", len(payload)) + zlib.compress(payload) if flags == 1 else payload
            nodes += struct.pack(">IHHHI", name_off, flags, 0, 0, len(data)) + extra
            data += struct.pack(">I", len(stored)) + stored
    tree_bytes = bytes(nodes)
    header_size = 20 if version < 3 else 24
    tree_off = header_size
    data_off = tree_off + len(tree_bytes)
    names_off = data_off + len(data)
    header = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + tree_bytes + bytes(data) + bytes(names)


JPEG_ISH = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
WEBP_ISH = b"RIFF\0\0\0\0WEBPVP8 " + b"x" * 300


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reader_reads_raw_and_zlib_entries(version: int) -> None:
    blob = build_rcc(
        {
            "gcompris/src/images/fish1.webp": (WEBP_ISH, 1),
            "gcompris/src/images/photo.jpg": (JPEG_ISH, 0),
            "gcompris/src/other/readme.txt": (b"hello", 0),
        },
        version,
    )
    got = archives.read_rcc(blob)
    assert got.files == {
        "gcompris/src/images/fish1.webp": WEBP_ISH,
        "gcompris/src/images/photo.jpg": JPEG_ISH,
        "gcompris/src/other/readme.txt": b"hello",
    }
    assert got.skipped_zstd == []
    only = archives.read_rcc(blob, wanted=["/gcompris/src/images/photo.jpg"])
    assert only.files == {"gcompris/src/images/photo.jpg": JPEG_ISH}


def test_rcc_reader_skips_zstd_entries_without_zstandard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` fail
    blob = build_rcc({"a/raw.png": (b"\x89PNG", 0), "a/packed.png": (b"not really zstd", 4)})
    got = archives.read_rcc(blob)
    assert got.files == {"a/raw.png": b"\x89PNG"}
    assert got.skipped_zstd == ["a/packed.png"]


def test_rcc_reader_rejects_other_files() -> None:
    with pytest.raises(archives.RccError, match="magic"):
        archives.read_rcc(b"PK\3\4" + b"\0" * 40)
    with pytest.raises(archives.RccError, match="version"):
        archives.read_rcc(b"qres" + struct.pack(">IIII", 9, 20, 20, 20))
    blob = build_rcc({"a/b.jpg": (JPEG_ISH, 1)})
    with pytest.raises(archives.RccError):
        archives.read_rcc(blob[:40])


# --------------------------------------------------------------------------------------------------
# Eet (.edj)


def build_eet(entries: list[tuple[str, bytes, bool]]) -> bytes:
    header_size = 12 + 24 * len(entries)
    body = bytearray()
    directory = bytearray()
    for name, payload, compress in entries:
        stored = zlib.compress(payload) if compress else payload
        data_off = header_size + len(body)
        body.extend(stored)
        name_off = header_size + len(body)
        body.extend(name.encode() + b"\0")
        directory.extend(struct.pack(">6I", data_off, len(stored), len(payload), name_off, len(name) + 1,
                                     1 if compress else 0))
    return struct.pack(">III", archives.EET_MAGIC_FILE, len(entries), 0) + bytes(directory) + bytes(body)


def test_edj_reader_returns_the_largest_jpeg_image() -> None:
    small, large = JPEG_ISH[:100], JPEG_ISH + b"\0" * 500
    blob = build_eet([
        ("edje/images/0", small, False),
        ("edje/images/1", large, True),
        ("edje/images/2", b"\x89PNG" + b"\0" * 5000, False),  # not a JPEG
        ("edje/data/big", b"\xff\xd8\xff" + b"\0" * 9000, False),  # not an image entry
    ])
    assert archives.largest_jpeg_in_edj(blob) == ("edje/images/1", large)
    assert archives.largest_jpeg_in_edj(build_eet([("edje/images/0", b"\x89PNG", False)])) is None
    with pytest.raises(archives.EetError):
        archives.largest_jpeg_in_edj(b"\0" * 16)


def test_edj_collector_writes_each_largest_jpeg_sorted_and_refuses_missing_files(tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "out"
    (root / "themes").mkdir(parents=True)
    (root / "themes/b.edj").write_bytes(build_eet([("edje/images/7", JPEG_ISH, True)]))
    (root / "themes/a.edj").write_bytes(build_eet([("edje/images/3", JPEG_ISH[:300], False)]))
    (root / "themes/none.edj").write_bytes(build_eet([("edje/images/0", b"\x89PNG", False)]))
    source = photos.DebSource("pkg", "pkg.edj.txt", kind="edj")
    rows = photos._collect_edj(source, ["themes/b.edj", "themes/none.edj", "themes/a.edj"], root, out,  # noqa: SLF001
                               "1.0", "GPL")
    assert rows == [ManifestRow("train", "pkg", "1.0", "GPL", "themes/a.edj#edje/images/3", "train/pkg/a.jpg"),
                    ManifestRow("train", "pkg", "1.0", "GPL", "themes/b.edj#edje/images/7", "train/pkg/b.jpg")]
    assert (out / "train/pkg/a.jpg").read_bytes() == JPEG_ISH[:300]
    assert (out / "train/pkg/b.jpg").read_bytes() == JPEG_ISH
    with pytest.raises(photos.PhotosError, match="1 listed file"):
        photos._collect_edj(source, ["themes/gone.edj"], root, out, "1.0", "GPL")  # noqa: SLF001


# --------------------------------------------------------------------------------------------------
# Licences

DEP5 = """
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: wallpapers
# a comment line: License: not-this

Files: *
Copyright: 2014 Someone
License: GPL-2+

Files: images/*.jpg
Copyright: 2019 A Photographer
License: CC-BY-SA-4.0
Comment: taken from
 License: not-a-field (a continuation line)

Files: debian/*
Copyright: 2020 Packager
License: GPL-2+

License: GPL-2+
 This package is free software ...
 .
 On Debian systems, see /usr/share/common-licenses/GPL-2.

License: CC-BY-SA-4.0
 Attribution-ShareAlike 4.0 International
"""


def test_dep5_licences_are_distinct_short_names_in_order() -> None:
    assert photos.dep5_licences(DEP5) == ["GPL-2+", "CC-BY-SA-4.0"]
    assert photos.dep5_licences("This package was debianized by ...\n\nLicense: GPL\n") is None
    assert photos.dep5_licences("") is None


def test_debian_licence_reads_the_unpacked_copyright_file(tmp_path: Path) -> None:
    doc = tmp_path / "usr/share/doc/wallpapers"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(DEP5)
    assert photos.debian_licence(tmp_path, "wallpapers") == "GPL-2+, CC-BY-SA-4.0"
    # A doc directory that links to another package's (absolute link, resolved inside the package).
    (tmp_path / "usr/share/doc/wallpapers-extra").symlink_to("/usr/share/doc/wallpapers")
    assert photos.debian_licence(tmp_path, "wallpapers-extra") == "GPL-2+, CC-BY-SA-4.0"
    (doc / "copyright").write_text("Copyright (c) 2004 Someone.\nPublic domain.\n")
    assert photos.debian_licence(tmp_path, "wallpapers") == "see /usr/share/doc/wallpapers/copyright"
    assert photos.debian_licence(tmp_path, "absent") == "see /usr/share/doc/absent/copyright"


def test_resolve_in_root_never_leaves_the_package(tmp_path: Path) -> None:
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr/a.jpg").write_bytes(b"x")
    (tmp_path / "usr/escape").symlink_to("../../../../etc/passwd")
    (tmp_path / "usr/abs").symlink_to("/usr/a.jpg")
    assert photos.resolve_in_root(tmp_path, "usr/a.jpg") == tmp_path / "usr/a.jpg"
    assert photos.resolve_in_root(tmp_path, "usr/abs") == tmp_path / "usr/a.jpg"
    assert photos.resolve_in_root(tmp_path, "usr/escape") is None
    assert photos.resolve_in_root(tmp_path, "usr") is None  # a directory


def test_wheel_licence_prefers_the_expression_then_a_short_field_then_classifiers() -> None:
    assert photos.wheel_licence("Metadata-Version: 2.4\nName: x\nLicense-Expression: BSD-3-Clause\n") == "BSD-3-Clause"
    assert photos.wheel_licence("Metadata-Version: 2.1\nName: x\nLicense: MIT\n") == "MIT"
    long_text = (
        "Metadata-Version: 2.1\nName: x\nLicense: Files: *\n        Copyright: ...\n        License: BSD\n"
        "Classifier: License :: OSI Approved :: BSD License\nClassifier: Programming Language :: Python\n"
    )
    assert photos.wheel_licence(long_text) == "BSD License"
    assert photos.wheel_licence("Metadata-Version: 2.1\nName: x\n").startswith("unknown")


# --------------------------------------------------------------------------------------------------
# Manifest and LICENSES.md


ROWS = [
    ManifestRow("train", "mate-backgrounds", "1.26.0-1", "GPL-2+, CC-BY-SA-4.0",
                "usr/share/backgrounds/mate/nature/Aqua.jpg",
                "train/mate-backgrounds/usr_share_backgrounds_mate_nature_Aqua.jpg"),
    ManifestRow("train", "mate-backgrounds", "1.26.0-1", "GPL-2+, CC-BY-SA-4.0",
                "usr/share/backgrounds/mate/nature/Dune.jpg",
                "train/mate-backgrounds/usr_share_backgrounds_mate_nature_Dune.jpg"),
    ManifestRow("dev-eval", "pypi-scikit-learn", "1.9.1", "BSD-3-Clause",
                "sklearn/datasets/images/china.jpg", "dev-eval/pypi-scikit-learn/sklearn_datasets_images_china.jpg"),
]


def test_manifest_is_a_headed_tsv_that_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "manifest.tsv"
    path.write_text("old contents\n")
    photos.write_manifest(path, ROWS)
    lines = path.read_text().splitlines()
    assert lines[0] == "split\tpackage\tversion\tlicence\tsource_path\tpath"
    assert lines[1].split("\t") == list(ROWS[0].fields())
    assert len(lines) == 1 + len(ROWS)
    assert photos.read_manifest(path) == ROWS
    assert not (tmp_path / "manifest.tsv.tmp").exists()
    with pytest.raises(ValueError, match="tab"):
        photos.write_manifest(path, [ManifestRow("train", "p", "1", "a\tb", "x", "y")])
    assert photos.read_manifest(path) == ROWS  # a refused write leaves the old manifest


def test_flatten_matches_build_sh() -> None:
    assert photos.flatten("usr/share/backgrounds/a b.jpg") == "usr_share_backgrounds_a b.jpg"
    assert ROWS[0].path.endswith(photos.flatten(ROWS[0].source_path))


def test_licences_markdown_has_one_row_per_package() -> None:
    text = photos.licences_markdown(ROWS)
    assert "| train | mate-backgrounds | Debian | 1.26.0-1 | 2 | GPL-2+, CC-BY-SA-4.0 |" in text
    assert "| dev-eval | pypi-scikit-learn | PyPI | 1.9.1 | 1 | BSD-3-Clause |" in text
    assert "never commit" in text


# --------------------------------------------------------------------------------------------------
# The list files shipped in the repo


def test_every_list_file_is_present_and_used() -> None:
    on_disk = {p.name for p in photos.LISTS_DIR.glob("*.txt")}
    used = {s.list_name for s in photos.DEB_SOURCES} | {photos.PYPI_LIST}
    assert on_disk == used
    for name in used:
        assert photos.read_list(name), f"{name} is empty"


def test_list_names_match_the_packages_downloaded() -> None:
    stems = {name.split(".txt")[0].removesuffix(".rcc").removesuffix(".edj")
             for name in (s.list_name for s in photos.DEB_SOURCES)}
    assert stems == {s.package for s in photos.DEB_SOURCES}
    assert set(photos.EXPECTED_VERSIONS) == {s.package for s in photos.DEB_SOURCES}
    assert [s.package for s in photos.DEB_SOURCES if s.big] == ["enlightenment-data"]
    kinds = {s.package: s.kind for s in photos.DEB_SOURCES}
    assert kinds["gcompris-qt-data"] == "rcc" and kinds["enlightenment-data"] == "edj"


def test_lists_hold_332_train_and_8_dev_eval_photos() -> None:
    assert sum(len(photos.read_list(s.list_name)) for s in photos.deb_sources(big=False)) == 332
    assert sum(len(photos.read_list(s.list_name)) for s in photos.deb_sources(big=True)) == 346
    pypi = photos.read_pypi_list()
    assert len(pypi) == 8
    assert {name for name, _, _ in pypi} == {"scikit-image", "scikit-learn", "matplotlib"}
    for source in photos.DEB_SOURCES:
        for rel in photos.read_list(source.list_name):
            assert not rel.startswith("/") and ".." not in rel.split("/"), rel
            if source.kind == "rcc":
                assert "/" in rel, rel  # <bundle>/<path inside the bundle>
    outs = [photos.flatten(rel) for s in photos.DEB_SOURCES for rel in photos.read_list(s.list_name)]
    assert len(outs) == len(set(outs)), "two listed files would land on the same name"


# --------------------------------------------------------------------------------------------------
# Command line (no download: build is replaced)


def test_command_line_parses_out_and_big(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from titok import cli

    seen = {}

    def fake_build(out: Path, big: bool = False, cache: Path | None = None) -> photos.BuildReport:
        seen.update(out=out, big=big, cache=cache)
        return photos.BuildReport(rows=ROWS)

    monkeypatch.setattr(photos, "build", fake_build)
    assert cli.main(["data", "photos", str(tmp_path / "out"), "--big"]) == 0
    assert seen == {"out": tmp_path / "out", "big": True, "cache": None}

    def failing_build(out: Path, big: bool = False, cache: Path | None = None) -> photos.BuildReport:
        raise photos.PhotosError("apt-get could not find the package x; run `apt-get update`")

    monkeypatch.setattr(photos, "build", failing_build)
    assert cli.main(["data", "photos", str(tmp_path / "out")]) == 1
    assert "apt-get update" in capsys.readouterr().err


def test_add_args_help_mentions_licences() -> None:
    parser = argparse.ArgumentParser(prog="titok data photos")
    photos.add_args(parser)
    args = parser.parse_args(["OUT"])
    assert args.out == Path("OUT") and not args.big and args.cache is None
    assert "never commit" in parser.format_help()
