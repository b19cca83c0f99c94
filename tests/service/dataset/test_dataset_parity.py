"""An image gives exactly the same tokens through POST /encode and through `titok tokenize`, in every resize mode."""

from __future__ import annotations

import typing
import warnings
from pathlib import Path

import pytest
from dataset_helpers import photo, rows, tokenize, write_folder
from sample_images import all_formats, save, two_halves
from service_helpers import make_settings

from titok.core.codec import Resize
from titok.core.engine import Engine
from titok.server.app import build_app

with warnings.catch_warnings():  # this starlette warns that httpx is deprecated for its TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.mark.parametrize("resize", typing.get_args(Resize))
def test_encode_and_the_job_agree_for_every_format_and_shape(tmp_path: Path, tiny_artifact: Path, engine: Engine,
                                                             resize: str) -> None:
    images = {f"{name}.img": data for name, data in all_formats().items()}
    images |= {"wide.png": save(two_halves(96, 24), "PNG"), "tall.jpg": photo(3, size=(30, 90), fmt="JPEG"),
               "big.png": photo(4, size=(400, 300))}
    folder = write_folder(tmp_path / "pics", {k.replace(".img", ".png"): v for k, v in images.items()})
    tokenize([folder], tmp_path / "out", engine, resize=resize, workers=2, batch_size=5)
    job = {key: r["tokens"] for (_, key), r in rows(tmp_path / "out").items()}

    settings = make_settings(tiny_artifact, max_images_per_request=len(images), max_upload_bytes=4 * 1024 * 1024)
    with TestClient(build_app(settings)) as client:
        files = [("images", (name, data)) for name, data in images.items()]
        r = client.post(f"/encode?resize={resize}", files=files)
    assert r.status_code == 200, r.text
    served = dict(zip((k.replace(".img", ".png") for k in images), r.json()["tokens"], strict=True))
    assert job == served
