"""The /predict upload's multipart/form-data body, parsed in one pass over bytes already bounded in size.

Falcon's multipart handler streams each part through Python-level scanning: about 28 ms of CPU for a 4 MB
camera JPEG and a visible share of a small upload's cost (bench/RESULTS.md (k)). The body here is already
read whole (its Content-Length was checked against `api.max_body_bytes`, and behind the front door nginx has
buffered it), so the parts are found with `bytes.find`, which runs in C, and each value is a slice of the
body. What is refused and how is unchanged: a body that is not multipart as declared is a 400
("malformed multipart body"), and at most MAX_PARTS parts are looked at.
"""

from __future__ import annotations

from daemon.errors import BadRequest

MAX_PARTS = 64
"""Parts looked at before the body is refused (Falcon's own default)."""
MAX_HEADER_BYTES = 8192
"""Longest header block of one part."""


def form_fields(body: bytes, content_type: str, wanted: frozenset[str]) -> dict[str, bytes]:
    """The first value of each field named in `wanted`; other fields are skipped unread."""
    delimiter = b"--" + _boundary(content_type)
    found: dict[str, bytes] = {}
    position = _first_delimiter(body, delimiter)
    for _ in range(MAX_PARTS):
        position += len(delimiter)
        if body.startswith(b"--", position):
            return found  # the closing delimiter
        if not body.startswith(b"\r\n", position):
            raise _malformed("a boundary is not followed by a line break")
        headers_end = body.find(b"\r\n\r\n", position + 2, position + 2 + MAX_HEADER_BYTES)
        if headers_end < 0:
            raise _malformed("a part's headers do not end")
        name = _field_name(body[position + 2 : headers_end])
        content_start = headers_end + 4
        content_end = body.find(b"\r\n" + delimiter, content_start)
        if content_end < 0:
            raise _malformed("the body ends inside a part (no closing boundary)")
        if name in wanted and name not in found:
            found[name] = body[content_start:content_end]
        position = content_end + 2
    raise _malformed(f"more than {MAX_PARTS} parts")


def _boundary(content_type: str) -> bytes:
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary" and value:
            boundary = value.strip().strip('"')
            if 1 <= len(boundary) <= 70:
                return boundary.encode("latin-1")
    raise _malformed("the content type has no boundary")


def _first_delimiter(body: bytes, delimiter: bytes) -> int:
    if body.startswith(delimiter):
        return 0
    # A preamble before the first boundary is allowed (RFC 2046) and ignored.
    position = body.find(b"\r\n" + delimiter)
    if position < 0:
        raise _malformed("no boundary in the body")
    return position + 2


def _field_name(headers: bytes) -> str | None:
    for line in headers.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() != b"content-disposition":
            continue
        for parameter in value.split(b";")[1:]:
            name, _, quoted = parameter.strip().partition(b"=")
            if name.lower() == b"name":
                return quoted.strip().strip(b'"').decode("utf-8", errors="replace")
    return None


def _malformed(why: str) -> BadRequest:
    return BadRequest(f"malformed multipart body: {why}")
