"""The V2 wire codec alone: request bodies (JSON and binary) to tensors, outputs back, malformed bodies to 400."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import pytest

from daemon.errors import BadRequest
from daemon.http.v2_tensors import (
    OutputTensor,
    classification_strings,
    encode_infer_response,
    parse_infer_request,
    split_bytes_elements,
)


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(blobs), str(len(text))


def bytes_tensor(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_binary_inputs_are_read_in_order_after_the_json():
    files = bytes_tensor(b"first", b"", b"third")
    body, length = binary_body(
        {
            "id": "7",
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [3, 1],
                    "parameters": {"binary_data_size": len(files)},
                },
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [1, 2, 2, 3],
                    "parameters": {"binary_data_size": 12},
                },
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True, "classification": 2}}],
        },
        files,
        bytes(range(12)),
    )
    request = parse_infer_request(body, length)
    image, pixels = request.inputs
    assert image.data == [b"first", b"", b"third"] and image.shape == (3, 1)
    assert isinstance(pixels.data, np.ndarray) and pixels.data.shape == (1, 2, 2, 3)
    assert pixels.data.ravel().tolist() == list(range(12))
    assert request.id == "7" and request.outputs is not None
    assert (request.outputs[0].binary, request.outputs[0].classification) == (True, 2)


def test_json_inputs_flat_or_nested_and_bytes_as_base64():
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [1, 1, 2, 3],
                    "data": [[[[1, 2, 3], [4, 5, 6]]]],
                },
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(b"\x00\xff").decode()],
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    request = parse_infer_request(body, None)
    assert request.inputs[0].data.ravel().tolist() == [1, 2, 3, 4, 5, 6]  # type: ignore[union-attr]
    assert request.inputs[1].data == [b"\x00\xff"]
    assert request.outputs is None and request.binary_output is True


@pytest.mark.parametrize(
    ("body", "length", "says"),
    [
        (b"{", None, "does not parse"),
        (b"[" * 100_000, None, "does not parse"),
        (b"{}", None, "no 'inputs'"),
        (b'{"inputs": [1]}', None, "JSON object"),
        (
            b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2], "data": [1, 256]}]}',
            None,
            "0 to 255",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [3], "data": [1, 2]}]}',
            None,
            "3 element",
        ),
        (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [true]}]}', None, "0 to 255"),
        (
            b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}',
            None,
            "base64",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]}',
            None,
            "not accepted",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [-1], "data": []}]}',
            None,
            "non-negative",
        ),
        (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1]}]}', None, "neither"),
        (
            b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}]}xyz',
            "nine",
            "not an integer",
        ),
        (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}]}xyz', "999", "outside"),
        (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}]}xyz', "75", "no input"),
        (
            b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "parameters": {"binary_data_size": 9}}]}',
            None,
            "binary_data_size",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}], "outputs": [{"name": "p", '
            b'"parameters": {"classification": -1}}]}',
            None,
            "classification",
        ),
    ],
)
def test_malformed_requests_are_400_naming_the_problem(body, length, says):
    with pytest.raises(BadRequest, match=says):
        parse_infer_request(body, length)


def test_truncated_bytes_elements_are_refused():
    assert split_bytes_elements(bytes_tensor(b"ab", b"c"), 2) == [b"ab", b"c"]
    with pytest.raises(BadRequest, match="claims 5 bytes"):
        split_bytes_elements(struct.pack("<I", 5) + b"ab", 1)
    with pytest.raises(BadRequest, match="length prefix"):
        split_bytes_elements(bytes_tensor(b"x") + b"\x01\x00\x00", 2)


def test_the_declared_count_bounds_the_split():
    with pytest.raises(BadRequest, match="at least 40 bytes"):
        split_bytes_elements(bytes_tensor(b"a", b"b"), 10)
    # Megabytes of empty elements stop at the first one past the count, not after a list of millions.
    with pytest.raises(BadRequest, match="more than its 2 element"):
        split_bytes_elements(b"\x00" * 4_000_000, 2)


@pytest.mark.parametrize(
    "shape",
    [[18446744073709551616, 0], [2**31, 1], [0, 2**40], [65536, 65536], [2**63 - 1], [-1], [1.5], "3"],
)
def test_absurd_shapes_are_400(shape):
    for datatype in ("UINT8", "BYTES"):
        body = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": []}]})
        with pytest.raises(BadRequest, match="shape"):
            parse_infer_request(body.encode(), None)
        binary, length = binary_body(
            {
                "inputs": [
                    {"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": 0}}
                ]
            }
        )
        with pytest.raises(BadRequest, match="shape"):
            parse_infer_request(binary, length)


def test_classification_strings_are_triton_formatted_and_ranked():
    rows = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    assert classification_strings(rows, ["cat", "dog", "cup"], 2) == [
        [b"0.700000:1:dog", b"0.200000:2:cup"],
        [b"0.500000:0:cat", b"0.250000:1:dog"],  # ties keep class order
    ]
    assert len(classification_strings(rows, ["cat", "dog", "cup"], 10)[0]) == 3


def test_responses_are_json_unless_an_output_is_binary():
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    body, length = encode_infer_response(
        "m", "1", None, [OutputTensor("probabilities", "FP32", (1, 2), probabilities, False)]
    )
    assert length is None
    assert json.loads(body)["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}
    ]
    body, length = encode_infer_response(
        "m",
        "1",
        "x",
        [
            OutputTensor("probabilities", "FP32", (1, 2), probabilities, True),
            OutputTensor("probabilities", "BYTES", (1, 1), [b"0.750000:1:b"], True),
        ],
    )
    assert length is not None
    header = json.loads(body[:length])
    assert header["id"] == "x" and [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [8, 16]
    assert np.frombuffer(body[length : length + 8], "<f4").tolist() == [0.25, 0.75]
    assert split_bytes_elements(body[length + 8 :], 1) == [b"0.750000:1:b"]
