"""The artifact format's one owner: meta.json, the content hash, the token dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.artifact import ModelInfo, read_meta, save_artifact, token_dtype
from service.errors import ModelLoadError


@pytest.mark.parametrize(("codebook", "dtype"), [(2, np.uint8), (256, np.uint8), (257, np.uint16),
                                                 (4096, np.uint16), (65536, np.uint16), (65537, np.uint32)])
def test_token_dtype_is_the_smallest_that_holds_the_codebook(codebook: int, dtype: type) -> None:
    assert token_dtype(codebook) == np.dtype(dtype)
    assert np.iinfo(token_dtype(codebook)).max >= codebook - 1


def test_read_meta_names_the_model_and_its_hash(tiny_artifact: Path) -> None:
    info = ModelInfo.from_meta(read_meta(tiny_artifact))
    assert (info.name, info.image_size, info.num_tokens, info.codebook_size) == ("test-tiny", 32, 8, 64)
    assert len(info.content_hash) == 64 and info.short_hash == info.content_hash[:12]
    assert info.token_dtype == np.uint8


def test_a_meta_without_required_fields_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="lacks image_size, num_tokens, codebook_size"):
        save_artifact(object(), tmp_path / "x.pt", {"name": "x"})
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ModelLoadError, match="not found"):
        read_meta(tmp_path / "missing.pt")
