"""The in-process Tokenizer: the tokens /encode gives, for every kind of input; decode; batching; refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prefix_helpers import banded_images, prefix_artifact  # noqa: F401  (prefix_artifact: fixture)
from sample_images import all_formats, save

from titok.core.arrays import NPY
from titok.core.errors import InvalidArray, InvalidImage, ModelLoadError
from titok.core.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_artifact: Path) -> Tokenizer:
    t = Tokenizer.load(tiny_artifact, device="cpu", batch_size=3)
    yield t
    t.close()


def _structured(w: int, h: int, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // w + seed * 40) % 256, y * 255 // h, (x * y + seed) % 256], -1).astype(np.uint8)


def _served(client: TestClient, blobs: list[bytes], resize: str) -> np.ndarray:
    """/encode's tokens, one request per image (the test service takes at most 4 a request)."""
    rows = []
    for b in blobs:
        r = client.post(f"/encode?resize={resize}", files=[("images", ("x", b, "application/octet-stream"))])
        assert r.status_code == 200, r.text
        rows += r.json()["tokens"]
    return np.asarray(rows)


@pytest.mark.parametrize("resize", ["crop", "pad", "stretch"])
def test_tokens_equal_encodes_for_paths_bytes_pil_and_arrays(tok: Tokenizer, client: TestClient, tmp_path: Path,
                                                            resize: str) -> None:
    formats = all_formats()
    blobs = [formats["exif_rotated"], formats["sixteen_bit"], formats["rgba"], save(Image.fromarray(
        _structured(97, 41)), "PNG"), save(Image.fromarray(_structured(30, 70, 1)), "JPEG")]
    served = _served(client, blobs, resize)
    path = tmp_path / "x.jpg"
    path.write_bytes(blobs[0])
    assert np.array_equal(tok.encode(blobs, resize=resize), served)
    assert np.array_equal(tok.encode([str(path), *blobs[1:]], resize=resize), served)
    assert np.array_equal(tok.encode(path, resize=resize), served[:1])
    arrays = [_structured(97, 41), _structured(30, 70, 1), _structured(32, 32, 2)]  # any size, one at the model's
    pngs = [save(Image.fromarray(a), "PNG") for a in arrays]
    served = _served(client, pngs, resize)
    assert np.array_equal(tok.encode(arrays, resize=resize), served)
    assert np.array_equal(tok.encode([Image.open(io.BytesIO(p)) for p in pngs], resize=resize), served)
    assert np.array_equal(tok.encode(arrays[0], resize=resize), served[:1])  # one image: a batch of one


def test_encode_decode_shapes_dtypes_and_info(tok: Tokenizer, client: TestClient) -> None:
    info = tok.info
    assert (info.image_size, info.num_tokens, info.codebook_size) == (32, 8, 64) and info.name == "test-tiny"
    batch = np.stack([_structured(32, 32, s) for s in range(4)])  # (B, S, S, 3) as it is
    tokens = tok.encode(batch)
    assert tokens.shape == (4, 8) and tokens.dtype == np.int64
    pixels = tok.decode(tokens)
    assert pixels.shape == (4, 32, 32, 3) and pixels.dtype == np.uint8
    assert np.array_equal(tok.decode(tokens[0]), pixels[:1])
    assert np.array_equal(tok.decode(tokens.astype(np.uint8)), pixels)  # any integer dtype
    r = client.post("/decode", json={"tokens": tokens[1].tolist()})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), pixels[1])


def test_long_inputs_are_cut_into_batches(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    images = [_structured(40 + i, 36, i) for i in range(7)]
    sizes: list[int] = []
    real = tok.engine.run
    monkeypatch.setattr(tok.engine, "run", lambda op, batch: sizes.append(len(batch)) or real(op, batch))
    tokens = tok.encode(images)
    assert sizes == [3, 3, 1]
    whole = Tokenizer(tok.engine, batch_size=32).encode(images)
    assert np.array_equal(tokens, whole) and sizes[3:] == [7]
    sizes.clear()
    tok.decode(tokens)
    assert sizes == [3, 3, 1]


def test_bad_input_is_named(tok: Tokenizer, tmp_path: Path) -> None:
    good = _structured(40, 40)
    with pytest.raises(InvalidImage, match=r"^images\[1\]: the data is not an image in a supported format"):
        tok.encode([good, b"not an image"])
    with pytest.raises(InvalidImage, match=r"images\[0\]: samples of dtype complex64 are not pixel values"):
        tok.encode([good.astype(np.complex64)])
    with pytest.raises(InvalidImage, match=r"images\[0\]: an image array must be \(H, W\), \(H, W, 1\)"):
        tok.encode([good[..., None, :]])
    # samples of another numeric dtype follow the codec's one rule (issue 21, item 9): 0..255 floats as uint8
    assert np.array_equal(tok.encode([good.astype(np.float32)]), tok.encode([good]))
    with pytest.raises(InvalidImage, match="must be a path, bytes, a PIL image or a uint8 array, not int"):
        tok.encode([3])
    with pytest.raises(InvalidImage, match=r"a batch array must be uint8 \(B, 32, 32, 3\)"):
        tok.encode(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(InvalidImage, match=r"^images\[1\]: cannot read .*missing.png: No such file"):
        tok.encode([good, tmp_path / "missing.png"])  # the documented error, naming which image, not an OSError
    with pytest.raises(InvalidImage, match=r"^images\[0\]: cannot read .*: Is a directory"):
        tok.encode([str(tmp_path)])
    with pytest.raises(InvalidArray, match=r"tokens\[0\]\[2\] is 64; token ids must be in \[0, 64\)"):
        tok.decode([[0, 1, 64, 0, 0, 0, 0, 0]])
    with pytest.raises(InvalidArray, match="exactly 8 tokens"):
        tok.decode(np.zeros((1, 7), np.int64))
    with pytest.raises(InvalidArray, match="dtype float64"):
        tok.decode(np.zeros((1, 8)))


def test_a_closed_tokenizer_says_so(tiny_artifact: Path) -> None:
    tok = Tokenizer.load(tiny_artifact, device="cpu")
    with tok:
        tokens = tok.encode([_structured(40, 40)])
    for call in (lambda: tok.encode([_structured(40, 40)]), lambda: tok.decode(tokens)):
        with pytest.raises(RuntimeError, match=r"was closed \(close\(\) was called, or its `with` block ended\)"):
            call()


def test_load_refuses_a_missing_file_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=f"model file not found: {tmp_path / 'nope.pt'}"):
        Tokenizer.load(tmp_path / "nope.pt", device="cpu")


def test_wrong_kinds_of_input_raise_the_documented_errors(tok: Tokenizer, tiny_artifact: Path) -> None:
    with pytest.raises(InvalidArray, match=r"different lengths; send integer token ids of shape \(B, 8\)"):
        tok.decode([[1, 2], [3]])
    with pytest.raises(InvalidArray, match=r"tokens must be an integer token id; None \(NoneType\) is not one"):
        tok.decode(None)  # type: ignore[arg-type]
    for junk in (None, 5):
        with pytest.raises(InvalidImage, match=f"images must be one image .* or a sequence of them, not "
                                               f"{type(junk).__name__}"):
            tok.encode(junk)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resize must be one of crop, pad, stretch, not 'bogus'"):
        tok.encode(_structured(40, 40), resize="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resize must be one of"):
        Tokenizer(tok.engine, resize="bogus")  # type: ignore[arg-type]


def test_a_prefix_decodable_model_decodes_prefixes_and_ragged_lists(prefix_artifact: Path) -> None:  # noqa: F811
    with Tokenizer.load(prefix_artifact, device="cpu", dtype="float32", batch_size=2) as tk:
        images = banded_images(3, seed=2)
        full = tk.encode(images)
        assert np.array_equal(tk.decode(full[:, :3]), tk.engine.run("decode", full[:, :3]))
        ragged = [full[0, :2].tolist(), full[1].tolist(), full[2, :2].tolist()]
        got = tk.decode(ragged)
        for i, row in enumerate(ragged):
            assert np.array_equal(got[i], tk.engine.run("decode", np.array([row]))[0])
        with pytest.raises(InvalidArray, match=r"^tokens\[2\]\[1\] is 99; token ids must be in \[0, 64\)"):
            tk.decode([full[0, :2].tolist(), full[1].tolist(), [1, 99]])
        with pytest.raises(InvalidArray, match=r"^tokens\[1\] is not a flat sequence"):
            tk.decode([[1, 2], 3])
        with pytest.raises(InvalidArray, match=r"^tokens\[1\]: .*shape \(1, 9\)"):
            tk.decode([[1, 2], list(range(9))])


def test_the_in_process_tokenizer_takes_the_budgets_every_door_takes(prefix_artifact: Path,  # noqa: F811
                                                                     tiny_artifact: Path) -> None:
    """num_tokens and target_psnr as /encode takes them: the same tokens, lengths and PSNR as the service's."""
    from service_helpers import make_settings

    from titok.core.budgets import TargetTokens
    from titok.core.errors import InvalidBudget, NotPrefixDecodable
    from titok.server.app import build_app

    images = banded_images(4, seed=3)  # the test service takes at most 4 images a request
    for j in range(3):  # image j grey (what an absent token decodes to) below band 2 + 2j: it needs 2 + 2j tokens
        images[j, (2 + 2 * j) * 4:] = 128
    with Tokenizer.load(prefix_artifact, device="cpu", dtype="float32", batch_size=2) as tk, \
            TestClient(build_app(make_settings(prefix_artifact, max_batch_size=4))) as client:
        full = tk.encode(images)
        short = tk.encode(images, num_tokens=3)
        assert short.dtype == np.int64 and np.array_equal(short, full[:, :3])
        served = client.post("/encode?num_tokens=3", content=_npy(images), headers={"Content-Type": NPY}).json()
        assert served["tokens"] == short.tolist()
        target = tk.encode(list(images), target_psnr=30.0)  # a list of arrays: the codec path, in batches of 2
        assert isinstance(target, TargetTokens) and len(target) == 4
        answer = client.post("/encode?target_psnr=30", content=_npy(images), headers={"Content-Type": NPY}).json()
        assert [t.tolist() for t in target.tokens] == answer["tokens"]
        assert target.num_tokens.tolist() == answer["num_tokens"] and target.reached.tolist() == answer["reached"]
        assert np.allclose(target.psnr, answer["psnr"], atol=1e-3)
        assert target.num_tokens.tolist() == [2, 4, 6, 8]  # each image its own length
        assert [len(t) for t in target.tokens] == target.num_tokens.tolist()
        assert np.array_equal(tk.decode(target.tokens)[0], tk.decode(target.tokens[:1])[0])  # decode takes them back
        assert np.array_equal(tk.decode(target), tk.decode(target.tokens))  # and the TargetTokens itself, as the
        # client's decode does
        for kwargs, words in (({"num_tokens": 0}, r"num_tokens is 0; it must be in \[1, 8\]"),
                              ({"num_tokens": 2.5}, r"num_tokens must be an integer in \[1, 8\], not 2.5"),
                              ({"target_psnr": float("nan")}, r"target_psnr is nan; it must be a finite number"),
                              ({"num_tokens": 2, "target_psnr": 20.0}, "not both")):
            with pytest.raises(InvalidBudget, match=words):
                tk.encode(images, **kwargs)
    with Tokenizer.load(tiny_artifact, device="cpu") as fixed:
        with pytest.raises(NotPrefixDecodable, match="num_tokens needs a prefix-decodable model"):
            fixed.encode(images[:, :, :, :], num_tokens=99)  # any value: this model takes no budget at all


def _npy(images: np.ndarray) -> bytes:
    from titok.core.arrays import write_npy

    return write_npy(images)


@pytest.mark.parametrize(("tokens", "words"), [
    ([[1, 2], []], r"^tokens\[1\] is empty; a sequence holds 1 to 8 token ids"),
    ([], r"^no token ids \(shape \(0,\)\); send integer token ids of shape \(B, k\)"),
    ([[2**70, 1]], rf"^tokens\[0\]\[0\] must be a token id that fits in 64 bits; {2**70} does not"),
    (None, r"^tokens must be an integer token id; None \(NoneType\) is not one"),
    ([[1, True]], r"^tokens\[0\]\[1\] must be an integer token id; True \(bool\) is not one"),
    ([[1.5, 2]], r"^tokens\[0\]\[0\] must be an integer token id; 1.5 \(float\) is not one"),
    (np.array([[1.0, 2.0]]), r"^the tokens array has dtype float64"),
])
def test_decode_names_what_is_wrong_with_the_tokens(prefix_artifact: Path, tokens: object,  # noqa: F811
                                                     words: str) -> None:
    """Each was "the tokens array has dtype float64/object" (a hostile pass)."""
    with Tokenizer.load(prefix_artifact, device="cpu") as tk, pytest.raises(InvalidArray, match=words):
        tk.decode(tokens)
