"""Hypothesis strategies for hand-made .npy files, as a hostile or careless client would write them."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import strategies as st

DESCRS = ["<i8", "<u2", "|u1", "|b1", "<f4", "<c8", ">i4", "<U0", "|S0", "|V0", "<U3", "|S7", "|V16", "|O",
          "<M8[ns]", "<m8", "[('a', '<i4')]", "('<i4', (2,))", "('|V0', (0,))", "<i0", "x", "{}", "None", "0"]
VALID_SHAPES = [(1, 3), (2, 3), (1, 8), (3, 8), (1, 2, 2, 3), (2, 2, 2, 3), ()]  # for the tests' small models
DIM = st.one_of(st.integers(-3, 10), st.integers(2**30, 2**70), st.booleans(), st.floats(allow_nan=True),
                st.text(max_size=3), st.none())


@st.composite
def saved(draw: st.DrawFn) -> bytes:
    """What numpy.save writes for a small array: often valid for the tests' models, sometimes cut or padded."""
    dtype = draw(st.sampled_from(["<i8", "|u1", "<u2", ">i4", "<f4", "|b1"]))
    shape = draw(st.sampled_from(VALID_SHAPES))
    buf = io.BytesIO()
    np.save(buf, np.full(shape, draw(st.integers(0, 9)), dtype=dtype), allow_pickle=False)
    data = buf.getvalue()
    cut = draw(st.sampled_from([0, 0, 0, -1, 1]))
    return data[:cut] if cut < 0 else data + b"\x00" * cut


def npy_files() -> st.SearchStrategy[bytes]:
    """Hand-made .npy files of every kind, a few of them valid."""
    return st.one_of(saved(), handmade())


@st.composite
def handmade(draw: st.DrawFn) -> bytes:
    """A .npy made by hand: any dtype text, any shape (of any length, holding anything), any data length."""
    descr = draw(st.one_of(st.sampled_from(DESCRS), st.text(max_size=12).map(repr)))
    shape = draw(st.one_of(st.lists(DIM, max_size=70).map(tuple), DIM, st.sampled_from(VALID_SHAPES)))
    order = draw(st.sampled_from(["False", "True", "1", "None", "'C'"]))
    keys = draw(st.sampled_from(["'descr': {d}, 'fortran_order': {o}, 'shape': {s}",
                                 "'descr': {d}, 'shape': {s}", "'descr': {d}, 'fortran_order': {o}, 'shape': {s}, "
                                 "'extra': 1"]))
    header = "{" + keys.format(d=descr if descr.startswith(("[", "(", "{", "N", "0", "'")) else repr(descr),
                               o=order, s=repr(shape)) + "}"
    data = draw(st.sampled_from([b"\x00", b"\x07"])) * draw(st.sampled_from([0, 1, 3, 8, 24, 48, 64, 96, 1000]))
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00"]))
    text = header.encode("latin-1", "replace") + b"\n"
    width = 2 if version == b"\x01\x00" else 4
    if width == 2 and len(text) >= 2**16:
        text = text[: 2**16 - 1]
    return b"\x93NUMPY" + version + len(text).to_bytes(width, "little") + text + data
