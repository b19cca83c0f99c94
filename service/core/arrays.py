"""NumPy `.npy` bodies (application/x-npy) in and out: the format for programs that hold arrays.

Parsed with numpy's own format module, never with pickle: the header (magic, version, dtype, shape)
is checked before any data is touched, and the data must be exactly as long as the header says.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .errors import InvalidArray, MalformedArray, TooManyImages

NPY = "application/x-npy"
_NUMERIC = "biufc"  # numpy dtype kinds: bool, signed, unsigned, float, complex; each item takes >= 1 byte
_MAX_DIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32  # numpy's NPY_MAXDIMS
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def media_types(header: str) -> set[str]:
    """The media types named in a Content-Type or Accept header, lower-case, without parameters."""
    return {part.split(";")[0].strip().lower() for part in header.split(",") if part.strip()}


def accept_quality(accept: str, media: str) -> float:
    """The quality value an Accept header gives `media`: that of its most specific matching range (`type/sub`, then
    `type/*`, then `*/*`; RFC 9110, section 12.5.1), q=1 where no q is given; 0 when none matches. A q that is not
    a number counts as 1."""
    kind = media.split("/")[0]
    best, rank = 0.0, -1
    for part in accept.lower().split(","):
        name, *params = (p.strip() for p in part.split(";"))
        order = 2 if name == media else 1 if name == f"{kind}/*" else 0 if name == "*/*" else -1
        if order <= rank:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 1.0
        best, rank = q, order
    return best


def wants_npy(accept: str, others: tuple[str, ...] = ("application/json",)) -> bool:
    """Whether the answer should be .npy rather than one of `others` (JSON; /decode's PNG or JSON): the Accept
    header names application/x-npy itself, with a quality above 0 and at least each other's
    (`application/x-npy;q=0` or `application/json, application/x-npy;q=0.5` get the other; so does `*/*` alone,
    the default)."""
    npy = accept_quality(accept, NPY)
    return npy > 0 and NPY in media_types(accept) and all(npy >= accept_quality(accept, o) for o in others)


def read_npy(body: bytes) -> np.ndarray:
    """A .npy file -> its array (read-only view of `body`); MalformedArray says what is wrong with the file."""
    if not body:
        raise MalformedArray("the body is empty; send a .npy file (numpy.save)")
    f = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(f)
    except ValueError:
        raise MalformedArray("the body is not a .npy file (no \\x93NUMPY magic); write it with numpy.save") from None
    if version not in _HEADER_READERS:
        raise MalformedArray(f".npy format version {version[0]}.{version[1]} is not supported; use 1.0 or 2.0")
    # The header's length field (2 bytes in 1.0, 4 in 2.0, little-endian) says where the data starts.
    width = 2 if version == (1, 0) else 4
    offset = 8 + width + int.from_bytes(body[8:8 + width], "little")
    try:
        shape, fortran_order, dtype = _read_header(body[:offset])
    except ValueError as e:  # numpy says what is off (a key too many, fortran_order 1, a nested shape, 10,000 bytes)
        said = " ".join(str(e).split())
        if said.startswith("malformed node or string"):  # ast.literal_eval on a call, a name, ...: no object repr
            said = "it holds something other than plain literals (a call, a name)"
        said = said if len(said) <= 200 else said[:200] + "..."
        raise MalformedArray(f"the .npy header cannot be read: {said or 'ValueError'}; write it with numpy.save") \
            from None
    except Exception as e:  # SyntaxError or TokenError: the header is no Python literal at all
        raise MalformedArray(f"the .npy header cannot be read ({type(e).__name__}: not a Python dict literal); "
                             "write it with numpy.save") from None
    _check_header(shape, dtype)
    count = math.prod(shape)  # Python ints: a forged shape cannot overflow; itemsize >= 1 bounds it by the body
    expected = count * dtype.itemsize
    if len(body) - offset < expected:
        raise MalformedArray(f"the .npy is truncated: its header {tuple(shape)} {dtype} needs {expected} data bytes, "
                             f"the body holds {len(body) - offset}")
    if len(body) - offset > expected:
        raise MalformedArray(f"the .npy has {len(body) - offset - expected} bytes after its data; send one array")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran_order else "C")


@functools.lru_cache(maxsize=256)
def _read_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """numpy's reader on a file's magic, length and header dict: (shape, fortran_order, dtype).

    Cached by the header's bytes: a client sends the same few shapes again and again, and numpy parses the
    dict with ast.literal_eval, which took about a fifth of the event loop's time on a one-sequence .npy /decode.
    Junk raises (and is not cached); at most 256 headers of at most numpy's 10,000 bytes are kept.
    """
    f = io.BytesIO(head)
    version = np.lib.format.read_magic(f)
    shape, fortran_order, dtype = _HEADER_READERS[version](f)
    if f.tell() != len(head):  # cannot happen for a header numpy accepts; kept as a guard on the offset above
        raise ValueError("the header's length field disagrees with the header")
    return shape, fortran_order, dtype


def _check_header(shape: tuple[int, ...], dtype: np.dtype) -> None:
    """What numpy's header reader lets through but no array of ours can be: checked before any data is read."""
    if dtype.hasobject:
        raise MalformedArray("the .npy holds Python objects (a pickle); only plain numeric arrays are accepted")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise InvalidArray(f"the .npy has a structured dtype {dtype}; send a plain numeric array")
    if dtype.kind not in _NUMERIC:  # strings, bytes, void, dates: also the zero-size dtypes (<U0, |S0, |V0)
        raise InvalidArray(f"the .npy has dtype {dtype.str} ({dtype.name}); send a plain numeric array")
    if any(type(d) is not int for d in shape):  # numpy takes True for 1: a bool is an int to Python
        raise MalformedArray(f"the .npy header's shape {tuple(shape)} holds a non-integer; write it with numpy.save")
    if len(shape) > _MAX_DIMS:
        raise MalformedArray(f"the .npy header has {len(shape)} dimensions; numpy allows at most {_MAX_DIMS}")
    if any(d < 0 for d in shape):
        raise MalformedArray(f"the .npy header has a negative dimension in shape {tuple(shape)}")
    # numpy refuses ("array is too big") a shape whose non-zero dimensions multiply past its index range, even
    # when another dimension is 0 and the array would hold nothing (found by the hypothesis test of headers).
    if math.prod(d for d in shape if d) * dtype.itemsize > np.iinfo(np.intp).max:
        raise MalformedArray(f"the .npy header's shape {tuple(shape)} is larger than any array can be")


def write_npy(array: np.ndarray) -> bytes:
    """An array -> the bytes of its .npy file, as numpy.save writes a C-ordered array (a Fortran-ordered one is
    written in C order, the same values; format 1.0 unless the header needs 2.0). The header is built once per
    dtype and shape."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)  # (np.ascontiguousarray alone would make a 0-d array 1-d)
    if array.dtype.hasobject:
        raise ValueError("object arrays are not written as .npy here")
    return _npy_header(array.dtype.str, array.shape) + array.tobytes()


@functools.lru_cache(maxsize=256)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # a header over 65,535 bytes: format 2.0, as numpy.save does
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def _check_batch(shape: tuple[int, ...], max_items: int, what: str) -> None:
    if shape[0] == 0:
        raise InvalidArray(f"the {what} array is empty (shape {shape}); send at least one")
    if shape[0] > max_items:
        raise TooManyImages(f"{shape[0]} {what} in one request; the limit is {max_items}")


def parse_images(body: bytes, image_size: int, max_images: int) -> list[np.ndarray]:
    """A .npy of uint8 images (B, S, S, 3) at the model's size -> B arrays (S, S, 3); no image decoding."""
    a = read_npy(body)
    want = f"uint8 images of shape (B, {image_size}, {image_size}, 3)"
    if a.dtype != np.uint8:
        raise InvalidArray(f"the images array has dtype {a.dtype}; send {want}")
    if a.ndim != 4:
        raise InvalidArray(f"the images array has rank {a.ndim} (shape {a.shape}); send {want}")
    if a.shape[1:] != (image_size, image_size, 3):
        raise InvalidArray(f"the images array has shape {a.shape}; the model takes {want}")
    _check_batch(a.shape, max_images, "images")
    return [np.ascontiguousarray(img) for img in a]


def parse_tokens(body: bytes, num_tokens: int, codebook_size: int, max_sequences: int, *,
                 prefix: bool = False) -> np.ndarray:
    """A .npy of token ids (B, K) of any integer dtype -> int64 (B, K), every id in [0, codebook_size).

    prefix: the model is prefix-decodable, so (B, k) for any 1 <= k <= K is taken too (one k for all rows;
    sequences of different lengths travel as JSON lists).
    """
    return check_tokens(read_npy(body), num_tokens, codebook_size, max_sequences, prefix=prefix).astype(np.int64)


def check_tokens(a: np.ndarray, num_tokens: int, codebook_size: int, max_sequences: int, *,
                 prefix: bool = False) -> np.ndarray:
    """Token ids (B, K) of any integer dtype, returned as given once every id is in [0, codebook_size).

    prefix: (B, k) for any 1 <= k <= K is taken too. Raises InvalidArray (dtype, rank, length, an id out of
    range; the first bad one is named) or TooManyImages.
    """
    want = f"integer token ids of shape (B, {'k' if prefix else num_tokens})" + (
        f" with 1 <= k <= {num_tokens}" if prefix else "")
    if a.dtype.kind not in "iu":
        raise InvalidArray(f"the tokens array has dtype {a.dtype}; send {want}")
    if a.ndim != 2:
        raise InvalidArray(f"the tokens array has rank {a.ndim} (shape {a.shape}); send {want}")
    if prefix and not 1 <= a.shape[1] <= num_tokens:
        raise InvalidArray(f"the tokens array has shape {a.shape}; the model takes 1 to {num_tokens} tokens per "
                           "sequence (a prefix of an encoding)")
    if not prefix and a.shape[1] != num_tokens:
        raise InvalidArray(f"the tokens array has shape {a.shape}; the model takes exactly {num_tokens} tokens "
                           "per sequence")
    _check_batch(a.shape, max_sequences, "token sequences")
    if a.size and (a.min() < 0 or a.max() >= codebook_size):  # two reductions; the search only when one is bad
        i, j = (int(v) for v in np.argwhere((a < 0) | (a >= codebook_size))[0])
        raise InvalidArray(f"tokens[{i}][{j}] is {int(a[i, j])}; token ids must be in [0, {codebook_size})")
    return a


def as_token_ids(tokens: Any, what: str = "tokens") -> np.ndarray:
    """Any nesting of integer ids (lists, tuples, arrays of any integer dtype) -> an int64 array, unchecked for
    shape and range (check_tokens does that). Raises InvalidArray naming the first value that is no token id,
    where it is (`tokens[1][3]`) and what it is: a float, a bool (numpy silently makes [True, 1] an int64 array),
    a string, None, an int beyond 64 bits; or a nesting numpy cannot make one array of.
    """
    try:
        a = np.asarray(tokens)
    except ValueError:  # ragged below the level a caller splits at
        raise InvalidArray(f"{what} is ragged: its sequences differ in length at a level where they cannot") \
            from None
    python = isinstance(tokens, list | tuple)  # a tensor or other array-like: its dtype and values, not its repr
    if a.dtype.kind in "iu" and not (a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max):
        flag = next(((at, v) for at, v in _leaves(tokens, what) if isinstance(v, bool | np.bool_)), None) \
            if python else None
        if flag is not None:
            raise InvalidArray(f"{flag[0]} must be an integer token id; {bool(flag[1])!r} (bool) is not one")
        return a.astype(np.int64)
    if a.size == 0 and a.dtype.kind == "f" and python:  # np.asarray([]) is float64: empty, not floats
        return a.astype(np.int64)
    values = _leaves(tokens, what) if python else ((what, v) for v in a.reshape(-1))
    for at, v in values:
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, bool) or not isinstance(v, int):
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:40] + "..."
            raise InvalidArray(f"{at} must be an integer token id; {shown} ({type(v).__name__}) is not one")
        if not -2**63 <= v < 2**63:
            raise InvalidArray(f"{at} must be a token id that fits in 64 bits; {v} does not")
    raise InvalidArray(f"{what} must hold integer token ids, not {a.dtype}")


def _leaves(x: Any, at: str) -> Iterator[tuple[str, Any]]:
    """(where, value) of every scalar in a nesting of lists, tuples and arrays, depth first."""
    if isinstance(x, list | tuple | np.ndarray):
        for i, y in enumerate(x):
            yield from _leaves(y, f"{at}[{i}]")
    else:
        yield at, x


def stack(arrays: Iterable[np.ndarray], dtype: np.dtype | None = None) -> bytes:
    """Per-item results -> one .npy (B, ...) in `dtype` (the smallest token type for tokens)."""
    items = list(arrays)
    out = items[0][None] if len(items) == 1 else np.stack(items)  # one item: a view, not a copy
    return write_npy(out if dtype is None else out.astype(dtype))
