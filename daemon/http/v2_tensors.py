"""The Open Inference Protocol (KServe V2) on the wire: an infer request's body to typed tensors, and output
tensors back to a response body. Pure: no Falcon, no Redis, so every malformed body can be tried in a unit test.

A body is one JSON object, optionally followed by binary tensor data (Triton's binary tensor data extension,
what tritonclient sends by default): the `Inference-Header-Content-Length` header then says how many leading
bytes are JSON, and each binary input names its size in `parameters.binary_data_size`, in input order. Binary
data is little-endian, row-major; a BYTES element is a 4-byte little-endian length and then the bytes.

In JSON, a BYTES element is text; an image file is not, so inferd reads JSON BYTES elements as base64 (what
MLServer calls `content_type: base64`). Only the datatypes inferd's model takes or gives are understood:
UINT8 and BYTES in, FP32 and BYTES out. Anything malformed is a BadRequest (400) naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.errors import BadRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES_LENGTH = struct.Struct("<I")
MAX_RANK = 8
"""More dimensions than any tensor of ours has: a longer shape is refused before its product is taken."""
MAX_ELEMENTS = 2**31 - 1
"""More elements than any body we accept can carry (and than numpy's reshape takes everywhere): a shape
whose dimensions or product exceed it is refused (400), whatever a zero elsewhere makes the product."""


@dataclass(frozen=True, slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[bytes] | npt.NDArray[np.uint8]
    """BYTES: the elements, flattened; UINT8: the array in `shape`."""


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None
    """`parameters.binary_data`; None: as the request's `binary_data_output` says."""
    classification: int
    """`parameters.classification` (Triton's classification extension); 0: the raw tensor."""


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    """None when the request names no outputs: every output is returned."""
    binary_output: bool
    """`parameters.binary_data_output`: outputs default to binary data."""


@dataclass(frozen=True, slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: npt.NDArray[np.float32] | list[bytes]
    binary: bool


# -- request ------------------------------------------------------------------------------------------------
def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request in `body`; `header_length` is the Inference-Header-Content-Length header, if sent."""
    json_size = _json_size(header_length, len(body))
    header = _object(_load_json(body[:json_size]), "the request")
    binary = memoryview(body)[json_size:]
    inputs_raw = header.get("inputs")
    if not isinstance(inputs_raw, list) or not inputs_raw:
        raise BadRequest("the request has no 'inputs' list")
    offset = 0
    inputs = []
    for raw in inputs_raw:
        tensor, used = _parse_input(_object(raw, "an input"), binary[offset:])
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise BadRequest(
            f"{len(binary) - offset} byte(s) of binary data follow the JSON that no input's binary_data_size claims"
        )
    parameters = _object(header.get("parameters", {}), "'parameters'")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    outputs_raw = header.get("outputs")
    outputs = None
    if outputs_raw is not None:
        if not isinstance(outputs_raw, list):
            raise BadRequest("'outputs' must be a list")
        outputs = [_parse_output(_object(raw, "an output")) for raw in outputs_raw]
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        binary_output=_flag(parameters, "binary_data_output", "the request") or False,
    )


def _json_size(header_length: str | None, body_size: int) -> int:
    if header_length is None:
        return body_size
    try:
        size = int(header_length)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} = {header_length!r} is not an integer") from None
    if not 0 < size <= body_size:
        raise BadRequest(f"{HEADER_LENGTH} = {size} is outside the body's {body_size} bytes")
    return size


def _load_json(data: bytes | memoryview) -> Any:
    try:
        return json.loads(bytes(data))
    except (ValueError, RecursionError) as exc:  # RecursionError: thousands of nested brackets
        raise BadRequest(f"the request's JSON does not parse: {str(exc)[:200]}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"parameter {key!r} of {where} must be true or false")
    return value


def _parse_input(raw: dict[str, Any], binary: memoryview) -> tuple[InputTensor, int]:
    """One input, and how many bytes of the binary section it took."""
    name, datatype = raw.get("name"), raw.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise BadRequest("every input needs a string 'name' and 'datatype'")
    shape = _shape(raw.get("shape"), name)
    count = math.prod(shape)
    parameters = _object(raw.get("parameters", {}), f"parameters of input {name!r}")
    size = parameters.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary):
            raise BadRequest(f"binary_data_size of input {name!r} is not within the {len(binary)} bytes sent")
        if "data" in raw:
            raise BadRequest(f"input {name!r} has both 'data' and binary_data_size")
        return InputTensor(
            name, datatype, shape, _from_binary(bytes(binary[:size]), datatype, shape, name)
        ), size
    if "data" not in raw:
        raise BadRequest(f"input {name!r} has neither 'data' nor binary_data_size")
    return InputTensor(name, datatype, shape, _from_json(raw["data"], datatype, shape, count, name)), 0


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_RANK
        or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value)
    ):
        raise BadRequest(
            f"the shape of input {name!r} must be a list of 1 to {MAX_RANK} non-negative integers"
        )
    # Each dimension on its own too: [2**64, 0] has a product of 0 but no array can take it.
    if any(dim > MAX_ELEMENTS for dim in value) or math.prod(dim for dim in value if dim) > MAX_ELEMENTS:
        raise BadRequest(f"the shape {value} of input {name!r} holds more than {MAX_ELEMENTS} elements")
    return tuple(value)


def _from_binary(
    data: bytes, datatype: str, shape: tuple[int, ...], name: str
) -> list[bytes] | npt.NDArray[np.uint8]:
    count = math.prod(shape)
    if datatype == "UINT8":
        if len(data) != count:
            raise BadRequest(f"input {name!r} of shape {list(shape)} needs {count} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    if datatype == "BYTES":
        elements = split_bytes_elements(data, count)
        if len(elements) != count:
            raise BadRequest(
                f"input {name!r} of shape {list(shape)} needs {count} element(s), got {len(elements)}"
            )
        return elements
    raise BadRequest(f"datatype {datatype!r} of input {name!r} is not accepted (UINT8 or BYTES)")


def _from_json(
    data: Any, datatype: str, shape: tuple[int, ...], count: int, name: str
) -> list[bytes] | npt.NDArray[np.uint8]:
    flat = _flatten(data)
    if len(flat) != count:
        raise BadRequest(f"input {name!r} of shape {list(shape)} needs {count} element(s), got {len(flat)}")
    if datatype == "UINT8":
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in flat):
            raise BadRequest(f"input {name!r} is UINT8: every element must be an integer from 0 to 255")
        return np.array(flat, dtype=np.uint8).reshape(shape)
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise BadRequest(f"input {name!r} is BYTES: in JSON every element must be a base64 string")
        try:
            return [base64.b64decode(v, validate=True) for v in flat]
        except binascii.Error:
            raise BadRequest(
                f"input {name!r}: a BYTES element in JSON must be base64 (an image file)"
            ) from None
    raise BadRequest(f"datatype {datatype!r} of input {name!r} is not accepted (UINT8 or BYTES)")


def _flatten(data: Any) -> list[Any]:
    """Row-major elements of JSON data given flat or nested as the shape (both are allowed)."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:  # iterative: nesting depth is whatever the client sent
        item = next(stack[-1], StopIteration)
        if item is StopIteration:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


def split_bytes_elements(data: bytes, count: int) -> list[bytes]:
    """A binary BYTES tensor (each element: 4-byte little-endian length, then the bytes) to its `count`
    elements; more data than `count` elements is refused before it is split any further, so megabytes of
    empty elements cost no list of millions."""
    if count * BYTES_LENGTH.size > len(data):
        raise BadRequest(
            f"a BYTES tensor of {count} element(s) needs at least {count * BYTES_LENGTH.size} bytes"
        )
    elements: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(elements) == count:
            raise BadRequest(f"a BYTES tensor holds more than its {count} element(s)")
        if offset + BYTES_LENGTH.size > len(data):
            raise BadRequest("a BYTES tensor ends inside an element's length prefix")
        (size,) = BYTES_LENGTH.unpack_from(data, offset)
        offset += BYTES_LENGTH.size
        if offset + size > len(data):
            raise BadRequest(f"a BYTES element claims {size} bytes; only {len(data) - offset} remain")
        elements.append(data[offset : offset + size])
        offset += size
    return elements


def _parse_output(raw: dict[str, Any]) -> RequestedOutput:
    name = raw.get("name")
    if not isinstance(name, str):
        raise BadRequest("every requested output needs a string 'name'")
    parameters = _object(raw.get("parameters", {}), f"parameters of output {name!r}")
    classification = parameters.get("classification", 0)
    if isinstance(classification, bool) or not isinstance(classification, int) or classification < 0:
        raise BadRequest(f"'classification' of output {name!r} must be an integer of 1 or more")
    return RequestedOutput(name, _flag(parameters, "binary_data", f"output {name!r}"), classification)


# -- response -----------------------------------------------------------------------------------------------
def classification_strings(
    probabilities: npt.NDArray[np.float32], labels: Sequence[str], count: int
) -> list[list[bytes]]:
    """Triton's classification extension: per row the `count` highest classes as b"<value>:<index>:<label>",
    the value printed as Triton's std::to_string prints a float (six decimals)."""
    count = min(count, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
    return [
        [f"{row[i]:f}:{i}:{labels[i]}".encode() for i in ranked]
        for row, ranked in zip(probabilities, order, strict=True)
    ]


def encode_infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: Sequence[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON's length for the Inference-Header-Content-Length header when binary
    outputs follow it (None: the body is all JSON)."""
    described, blobs = [], []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if output.binary:
            blob = _to_binary(output)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif isinstance(output.data, list):
            entry["data"] = [element.decode() for element in output.data]
        else:
            entry["data"] = output.data.ravel().tolist()
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = described
    header = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _to_binary(output: OutputTensor) -> bytes:
    if isinstance(output.data, list):
        return b"".join(BYTES_LENGTH.pack(len(element)) + element for element in output.data)
    return np.ascontiguousarray(output.data, dtype="<f4").tobytes()
