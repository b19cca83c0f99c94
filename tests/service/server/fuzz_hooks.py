"""Schemathesis hooks for this API, for the Python API and the `st` command alike (SCHEMATHESIS_HOOKS=fuzz_hooks).

An image part or body is a `string` with format `binary`, and the schema cannot say 'an image': valid
ones are generated here as small real images in the containers and modes the codec takes.
"""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image


@st.composite
def images(draw: st.DrawFn) -> bytes:
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]))
    mode = draw(st.sampled_from(["RGB", "L"] if fmt == "JPEG" else ["RGB", "L", "RGBA", "P"]))
    buf = io.BytesIO()
    Image.new(mode, (w, h), draw(st.integers(0, 255))).save(buf, format=fmt)
    return buf.getvalue()


schemathesis.openapi.format("binary", images())
