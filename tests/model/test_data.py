"""Training data paths as checkpoints and artifacts record them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from titok.model.data import portable_paths


@pytest.mark.parametrize(("paths", "recorded"), [
    (["/home/alice/photos/train"], ["train"]),
    (["/data/photos/train", "/data/shards/00000.tar"], ["photos/train", "shards/00000.tar"]),
    (["/data/photos", "/data/photos/extra"], ["photos", "photos/extra"]),
    (["/srv/a/00000.tar", "/srv/a/00001.tar"], ["00000.tar", "00001.tar"]),
    ([], []),
])
def test_paths_are_kept_relative_to_the_folder_that_holds_them_all(paths: list[str], recorded: list[str]) -> None:
    assert portable_paths(paths) == recorded


def test_relative_paths_are_taken_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert portable_paths(["photos/train", Path("photos/dev-eval")]) == ["train", "dev-eval"]
    assert not any(str(tmp_path) in p or os.path.isabs(p) for p in portable_paths(["x/a.tar", "y"]))
