""".npy bodies: what is accepted, and each bad file named for what is wrong with it (never unpickled)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from npy_strategies import npy_files

from titok.core.arrays import media_types, parse_images, parse_tokens, read_npy, stack, wants_npy, write_npy
from titok.errors import ANSWERABLE, InvalidArray, MalformedArray, TooManyImages, answer


def npy(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, **kw)
    return buf.getvalue()


def test_images_and_tokens_parse_from_what_numpy_save_writes() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    out = parse_images(npy(images), 8, 4)
    assert len(out) == 3 and all(np.array_equal(a, b) for a, b in zip(out, images, strict=True))
    for dtype in (np.uint8, np.int16, ">u2", np.int32, np.uint64, np.int64):
        tokens = parse_tokens(npy(np.array([[0, 5, 63], [1, 2, 3]], dtype=dtype)), 3, 64, 4)
        assert tokens.dtype == np.int64 and tokens.tolist() == [[0, 5, 63], [1, 2, 3]]
    fortran = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert parse_tokens(npy(fortran), 3, 64, 4).tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("array", [np.arange(64, dtype=np.int64).reshape(2, 32), np.zeros((3, 16, 16, 3), np.uint8),
                                   np.ones((0, 5), np.float32), np.ones((2, 3), ">i4"), np.array(7, np.int16),
                                   np.zeros((1,) * 40, np.uint8)], ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_write_npy_writes_what_numpy_save_writes_and_reads_back(array: np.ndarray) -> None:
    """Headers are built once per dtype and shape (cached): the bytes stay numpy.save's, 0-d arrays included."""
    for _ in range(2):  # the second time from the cache
        assert write_npy(array) == npy(array)
        back = read_npy(write_npy(array))
        assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    fortran = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert np.array_equal(read_npy(write_npy(fortran)), fortran)  # written in C order, the same values


def test_a_cached_header_is_checked_again_for_every_body() -> None:
    """The header cache holds what numpy read; the body's length is still checked against it each time."""
    good = npy(np.zeros((2, 3), np.int64))
    assert read_npy(good).shape == (2, 3)
    with pytest.raises(MalformedArray, match="truncated"):
        read_npy(good[:-1])
    with pytest.raises(MalformedArray, match="after its data"):
        read_npy(good + b"x")
    forged = bytearray(good)
    forged[8:10] = (len(good) * 2).to_bytes(2, "little")  # a header length past the body
    with pytest.raises(MalformedArray):
        read_npy(bytes(forged))


def test_answers_load_back_with_numpy_load_and_keep_their_dtype() -> None:
    tokens = [np.array([1, 4095]), np.array([7, 8])]
    back = np.load(io.BytesIO(stack(tokens, np.dtype(np.uint16))))
    assert back.dtype == np.uint16 and back.tolist() == [[1, 4095], [7, 8]]
    pixels = np.zeros((2, 4, 4, 3), np.uint8)
    assert np.array_equal(np.load(io.BytesIO(write_npy(pixels))), pixels)
    for items in ([pixels[1]], list(pixels), [np.arange(6, dtype=np.int64)[1::2]]):  # one item, many, a strided one
        saved = io.BytesIO()
        np.save(saved, np.stack(items))
        assert stack(items) == saved.getvalue()


def test_a_pickled_object_array_is_refused_and_never_unpickled() -> None:
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    body = npy(np.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(MalformedArray, match="Python objects"):
        parse_tokens(body, 3, 64, 4)
    with pytest.raises(MalformedArray, match="not a .npy file"):
        parse_tokens(pickle.dumps(np.zeros((1, 3), np.int64)), 3, 64, 4)


@pytest.mark.parametrize(("body", "words"), [
    (b"", "empty"),
    (b"P6 not an npy at all", "not a .npy file"),
    (npy(np.zeros((2, 3), np.int64))[:-5], r"truncated: its header \(2, 3\) int64 needs 48 data bytes, "
                                             "the body holds 43"),
    (npy(np.zeros((2, 3), np.int64))[:60], "truncated|cannot be read"),
    (npy(np.zeros((2, 3), np.int64)) + b"xx", "2 bytes after its data"),
    (b"\x93NUMPY\x03\x00" + b"\x00" * 100, "version 3.0 is not supported"),
])
def test_broken_files_are_malformed_400s_naming_the_problem(body: bytes, words: str) -> None:
    with pytest.raises(MalformedArray, match=words) as e:
        read_npy(body)
    assert answer(e.value)[0] == 400 and e.value.code == "malformed_npy"


def handmade(header: str, data: bytes = b"") -> bytes:
    """A version 1.0 .npy with any header text, as a hostile client would write it."""
    text = header.encode("latin-1") + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


@pytest.mark.parametrize(("header", "words"), [
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (10000000000, 10000000000), }",
     "larger than any array can be"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (100000, 100000), }", "truncated"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (-2, 3), }", "negative dimension"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3)", "header cannot be read"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (__import__('os'),), }", "header cannot be read"),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", "Python objects"),
    # numpy's own words say what is off (they were "cannot be read (ValueError)", a hostile pass)
    ("{'descr': '<i8', 'fortran_order': 1, 'shape': (1, 6), }",
     r"header cannot be read: fortran_order is not a valid bool: 1; write it with numpy.save"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (1, 6), 'x': 1, }",
     r"header cannot be read: Header does not contain the correct keys: \['descr', 'fortran_order', 'shape', 'x'\]"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (1, (6,)), }",
     r"header cannot be read: shape is not valid: \(1, \(6,\)\)"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (1, 6), }" + " " * 12000,
     r"header cannot be read: Header info length \(\d+\) is large and may not be safe to load securely"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3)", r"header cannot be read \(TokenError: not a Python"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (__import__('os'),), }",
     "header cannot be read: it holds something other than plain literals"),
])
def test_hostile_headers_are_refused_before_any_data_is_read(header: str, words: str) -> None:
    with pytest.raises(MalformedArray, match=words):
        read_npy(handmade(header, b"\x00" * 48))


@pytest.mark.parametrize(("header", "error", "words"), [  # the headers that were 500s (issue 21, item 7)
    ("{'descr': '<U0', 'fortran_order': False, 'shape': (2, 3), }", InvalidArray, "dtype <U0"),
    ("{'descr': '|S0', 'fortran_order': False, 'shape': (2, 3), }", InvalidArray, r"dtype \|S0"),
    ("{'descr': '|V0', 'fortran_order': False, 'shape': (2, 3), }", InvalidArray, r"dtype \|V0"),
    ("{'descr': '<U0', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", InvalidArray, "dtype <U0"),
    ("{'descr': '<M8[s]', 'fortran_order': False, 'shape': (2, 3), }", InvalidArray, "datetime64"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (True, 3), }", MalformedArray, "non-integer"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (2, False), }", MalformedArray, "non-integer"),
    (f"{{'descr': '<i8', 'fortran_order': False, 'shape': {(1,) * 65}, }}", MalformedArray,
     "65 dimensions; numpy allows at most 64"),
    (f"{{'descr': '<i8', 'fortran_order': False, 'shape': {(0,) * 65}, }}", MalformedArray, "65 dimensions"),
    ("{'descr': '<i8', 'fortran_order': False, 'shape': (0, 1073741824, 1073741824), }", MalformedArray,
     "larger than any array can be"),  # empty, yet numpy's "array is too big"; found by hypothesis
    ("{'descr': '|u1', 'fortran_order': False, 'shape': (9223372036854775807, 2, 0), }", MalformedArray,
     "larger than any array can be"),
])
def test_headers_numpy_reads_but_no_array_can_have_are_4xx(header: str, error: type, words: str) -> None:
    for parse in (read_npy, lambda b: parse_tokens(b, 3, 64, 4), lambda b: parse_images(b, 8, 4)):
        with pytest.raises(error, match=words) as e:
            parse(handmade(header, b"\x00" * 8))
        assert 400 <= answer(e.value)[0] < 500


@given(body=npy_files())
@settings(max_examples=1500, deadline=None, database=None)
def test_any_header_is_an_array_or_a_4xx_never_an_exception(body: bytes) -> None:
    for parse in (read_npy, lambda b: parse_tokens(b, 3, 8, 4), lambda b: parse_images(b, 2, 4)):
        try:
            parse(body)
        except ANSWERABLE as e:
            assert 400 <= answer(e)[0] < 500, e


@pytest.mark.parametrize(("array", "words"), [
    (np.zeros((2, 8, 8, 3), np.float32), "dtype float32; send uint8 images of shape"),
    (np.zeros((2, 8, 8, 3), np.int64), "dtype int64"),
    (np.zeros((8, 8, 3), np.uint8), r"rank 3 \(shape \(8, 8, 3\)\)"),
    (np.zeros((2, 16, 16, 3), np.uint8), r"shape \(2, 16, 16, 3\); the model takes uint8 images "
                                           r"of shape \(B, 8, 8, 3\)"),
    (np.zeros((2, 8, 8, 4), np.uint8), r"shape \(2, 8, 8, 4\)"),
    (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
])
def test_wrong_image_arrays_are_422s_naming_the_problem(array: np.ndarray, words: str) -> None:
    with pytest.raises(InvalidArray, match=words) as e:
        parse_images(npy(array), 8, 4)
    assert answer(e.value)[0] == 422 and e.value.code == "invalid_array"


@pytest.mark.parametrize(("array", "words"), [
    (np.zeros((2, 3), np.float64), "dtype float64; send integer token ids"),
    (np.zeros((2, 3), bool), "dtype bool"),
    (np.zeros((2, 3), [("a", np.int32)]), "structured dtype"),
    (np.zeros(3, np.int64), "rank 1"),
    (np.zeros((2, 4), np.int64), "exactly 3 tokens"),
    (np.array([[0, 1, 64], [0, 0, 0]]), r"tokens\[0\]\[2\] is 64; token ids must be in \[0, 64\)"),
    (np.array([[0, 1, 2], [0, -1, 0]], np.int8), r"tokens\[1\]\[1\] is -1"),
    (np.array([[0, 1, 2**63 - 1]], np.int64), "is 9223372036854775807"),
])
def test_wrong_token_arrays_are_422s_naming_the_problem(array: np.ndarray, words: str) -> None:
    with pytest.raises(InvalidArray, match=words):
        parse_tokens(npy(array), 3, 64, 4)


def test_too_many_items_in_an_array_is_a_422() -> None:
    with pytest.raises(TooManyImages, match="5 token sequences in one request; the limit is 4"):
        parse_tokens(npy(np.zeros((5, 3), np.int64)), 3, 64, 4)
    with pytest.raises(TooManyImages, match="5 images") as e:
        parse_images(npy(np.zeros((5, 8, 8, 3), np.uint8)), 8, 4)
    assert answer(e.value)[0] == 422  # what the schema's maxItems promises (issue 21, item 14)


def test_accept_headers() -> None:
    assert wants_npy("application/x-npy") and wants_npy("application/x-npy, application/json;q=0.9")
    assert wants_npy("application/json, application/x-npy")  # a tie: a program that names .npy at all wants it
    assert not wants_npy("") and not wants_npy("application/json") and not wants_npy("*/*")
    # quality values count (RFC 9110, 12.5.1): q=0 refuses, a lower q loses (both were read as "npy named")
    assert not wants_npy("application/x-npy;q=0, application/json") and not wants_npy("application/x-npy;q=0")
    assert not wants_npy("application/json, application/x-npy;q=0.9")
    assert not wants_npy("application/x-npy;q=0.5, image/*", ("image/png", "application/json"))
    assert not wants_npy("application/json, application/x-npy;q=0.5", ("image/png", "application/json"))
    assert wants_npy("application/x-npy;q=0.5, image/*;q=0.4", ("image/png", "application/json"))
    assert media_types("Application/X-NPY; charset=x") == {"application/x-npy"}
