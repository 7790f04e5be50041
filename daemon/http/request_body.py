"""The size checks every request body gets before a byte of it is read, for /predict and the V2 routes alike.

Behind the front door neither check fires (nginx refuses oversized bodies, and reads chunked ones whole before
sending them on with a Content-Length); they guard the app served without it, as the tests and the
benchmark's bare app serve it.
"""

from __future__ import annotations

import falcon

from daemon.errors import LengthRequired, PayloadTooLarge


def check_declared_size(req: falcon.Request, limit: int, noun: str) -> None:
    """413 when the declared Content-Length passes `limit`; 411 for a chunked body, which has no size to check."""
    if req.content_length is not None and req.content_length > limit:
        raise PayloadTooLarge(f"the request body is {req.content_length} bytes; the limit is {limit}")
    if req.content_length is None and req.get_header("Transfer-Encoding"):
        raise LengthRequired(f"send the {noun} with a Content-Length (chunked {noun}s are not accepted)")
