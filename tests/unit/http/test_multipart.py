"""The /predict multipart parser: what a client library sends comes back byte for byte; the rest is a 400."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from urllib3 import encode_multipart_formdata

from daemon.errors import BadRequest
from daemon.http.multipart import MAX_PARTS, form_fields

WANTED = frozenset({"image", "top"})


@given(image=st.binary(max_size=4096), top=st.text(max_size=8), other=st.binary(max_size=256))
def test_what_urllib3_encodes_comes_back_exactly(image: bytes, top: str, other: bytes):
    body, content_type = encode_multipart_formdata(
        [("other", ("x.bin", other)), ("image", ("a.jpg", image)), ("top", top), ("image", ("b.jpg", b"2nd"))]
    )
    assert form_fields(body, content_type, WANTED) == {"image": image, "top": top.encode()}


def test_a_preamble_and_a_quoted_boundary_are_accepted():
    body = b'preamble\r\n--bx\r\nContent-Disposition: form-data; name="image"\r\n\r\nPIXELS\r\n--bx--\r\n'
    assert form_fields(body, 'multipart/form-data; boundary="bx"', WANTED) == {"image": b"PIXELS"}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--x\r\n", "multipart/form-data"),  # no boundary parameter
        (b"junk", "multipart/form-data; boundary=xyz"),
        (
            b'--x\r\nContent-Disposition: form-data; name="image"\r\n\r\ntruncated',
            "multipart/form-data; boundary=x",
        ),
        (b"--x\r\nContent-Disposition: form-data", "multipart/form-data; boundary=x"),
        (b"--xjunk", "multipart/form-data; boundary=x"),
        (b"--x\r\n\r\n\r\n" * (MAX_PARTS + 1), "multipart/form-data; boundary=x"),
    ],
)
def test_bodies_that_are_not_multipart_as_declared_are_a_400(body: bytes, content_type: str):
    with pytest.raises(BadRequest, match="malformed multipart body"):
        form_fields(body, content_type, WANTED)
