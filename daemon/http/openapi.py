"""The OpenAPI 3.1 document of every endpoint, served at `GET /openapi.json`.

Built from the settings, so the limits and the model's name, input size and version it states are the
running appliance's. The suite validates it (openapi-spec-validator) and fuzzes a real appliance from it
(schemathesis): every status an endpoint can answer is listed here, and a status that is not is a defect.

Why past 400 lines: most of it is the document itself, written as data in the order a reader of the spec
meets it; the schemas its paths share are defined once here, so cutting it by route would scatter them.
Schemas of documents a dataclass produces are derived from it (`dataclass_schema`), not written again.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

import falcon

from daemon.http.status_page import ASSETS
from daemon.ops.shard_status import ShardStatus
from daemon.queue.wire import SHARD_STATUSES
from daemon.settings import Settings

JSON = "application/json"


JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
"""Python annotations -> JSON schema types; any other class (a nested dataclass) is an object."""


def dataclass_schema(cls: type, **extra: dict[str, Any]) -> dict[str, Any]:
    """The schema of `dataclasses.asdict` of `cls`: every field, all present, typed from its annotation;
    `extra` adds keywords (an enum, a description) to a field's schema."""
    hints = typing.get_type_hints(cls)
    properties = {}
    for field in dataclasses.fields(cls):
        choices = typing.get_args(hints[field.name]) or (hints[field.name],)
        kinds = [JSON_TYPES.get(hint, "object") for hint in choices if hint is not type(None)]
        nullable = type(None) in choices
        (kind,) = kinds  # one type, optionally None: the dataclasses behind documents stay that plain
        properties[field.name] = {"type": [kind, "null"] if nullable else kind, **extra.get(field.name, {})}
    return {"type": "object", "required": list(properties), "properties": properties}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: dict[str, Any] | None = None, media: str = JSON) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {media: {"schema": schema}}
    return response


def _errors(schema: str, statuses: dict[str, str], retry: bool = False) -> dict[str, Any]:
    answers = {status: _answer(description, _ref(schema)) for status, description in statuses.items()}
    if retry and "503" in answers:
        answers["503"]["headers"] = {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}
        }
    return answers


AUTH = {"401": "bearer token missing or wrong (only when api.auth_token_file is set)"}
UPLOAD_ERRORS = {
    "400": "no image, an empty, corrupt or truncated image, or a malformed request",
    **AUTH,
    "411": "chunked body: send a Content-Length",
    "413": "body over api.max_body_bytes, an image over api.max_image_pixels, or a V2 request whose images "
    "declare more than api.max_request_pixels",
    "415": "not an image format the appliance reads, or a content type it does not take",
    "429": "this client address is over api.client_max_connections or api.client_requests_per_s: retry after "
    "Retry-After seconds",
    "503": "no live worker, every queue full, or Redis down: retry after Retry-After seconds",
    "504": "no answer within api.request_timeout_s",
}


def _schemas(settings: Settings) -> dict[str, Any]:
    size = settings.model.input_size
    string_list = {"type": "array", "items": {"type": "string"}}
    tensor_meta = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["success", "error"],
            "properties": {"success": {"const": False}, "error": {"type": "string"}},
        },
        "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Prediction": {
            "type": "object",
            "required": ["label", "probability"],
            "properties": {"label": {"type": "string"}, "probability": {"type": "number"}},
        },
        "PredictResponse": {
            "type": "object",
            "required": ["success", "predictions"],
            "properties": {
                "success": {"const": True},
                "predictions": {"type": "array", "items": _ref("Prediction")},
                "model_version": {
                    "type": "integer",
                    "description": "the version of the model that computed the answer (`inferd reload`)",
                },
            },
        },
        "Ready": {
            "type": "object",
            "required": ["ready"],
            "properties": {
                "ready": {"type": "boolean"},
                "live_shards": string_list,
                "registered_shards": string_list,
                "reason": {"type": "string"},
            },
        },
        "Shards": {
            "type": "object",
            "required": ["time", "nvml", "shards", "down", "failed"],
            "properties": {
                "time": {"type": "number", "description": "Unix time of the reading"},
                "nvml": {"type": "boolean", "description": "whether GPU figures could be read"},
                "shards": {"type": "array", "items": _ref("Shard")},
                "down": string_list,
                "failed": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
            },
        },
        "Shard": dataclass_schema(
            ShardStatus,
            status={"enum": list(SHARD_STATUSES)},
            gpu={"description": "NVML's figures for a GPU shard"},
        ),
        "TensorMetadata": tensor_meta,
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": string_list,
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": string_list,
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            },
        },
        "InferInput": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "description": (
                "'image': BYTES [N] or [N, 1] of image files (base64 text in JSON); "
                f"'pixels': UINT8 [N, {size}, {size}, 3]. Binary data follows the JSON when "
                "parameters.binary_data_size is given (Inference-Header-Content-Length header)."
            ),
            "properties": {
                "name": {"enum": ["image", "pixels"]},
                "datatype": {"enum": ["BYTES", "UINT8"]},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "parameters": {"type": "object"},
                "data": {"type": "array"},
            },
        },
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "items": _ref("InferInput")},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"const": "probabilities"}, "parameters": {"type": "object"}},
                    },
                },
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            },
        },
    }


def _model_paths(settings: Settings) -> dict[str, Any]:
    name = {
        "name": "model_name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "example": settings.model.served_name,
    }
    version = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
    unknown = {"404": "no such model or version"}
    ready = {
        "200": _answer("the model can answer", {"type": "object"}),
        "503": _answer("no live worker", {"type": "object"}),
        **_errors("V2Error", {**AUTH, **unknown}),
    }
    infer_errors = _errors("V2Error", {**UPLOAD_ERRORS, **unknown}, retry=True)
    operations = {
        "": {
            "get": {
                "summary": "model metadata: inputs, outputs, datatypes, shapes",
                "responses": {
                    "200": _answer("metadata", _ref("ModelMetadata")),
                    **_errors("V2Error", {**AUTH, **unknown}),
                },
            }
        },
        "/ready": {"get": {"summary": "whether the model can answer", "responses": ready}},
        "/infer": {
            "post": {
                "summary": "classify N images (KServe V2 infer; binary tensor and classification extensions)",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": _ref("InferRequest")},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "200": {
                        "description": "the outputs; JSON, or JSON then binary tensors (Inference-Header-Content-Length)",
                        "content": {
                            JSON: {"schema": _ref("InferResponse")},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    **infer_errors,
                },
            }
        },
    }
    paths: dict[str, Any] = {}
    for suffix, methods in operations.items():
        paths[f"/v2/models/{{model_name}}{suffix}"] = {"parameters": [name], **methods}
        paths[f"/v2/models/{{model_name}}/versions/{{model_version}}{suffix}"] = {
            "parameters": [name, version],
            **methods,
        }
    return paths


def openapi_document(settings: Settings, version: str) -> dict[str, Any]:
    """The whole document for this appliance's settings."""
    api = settings.api
    text = "text/plain"
    predict_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "top": {"type": "integer", "minimum": 1, "maximum": api.max_top},
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "what this is: JSON, or the status page for a client that prefers text/html",
                "responses": {
                    "200": {
                        "description": "a description (JSON), or the status page (HTML, served without a token)",
                        "content": {
                            JSON: {"schema": {"type": "object"}},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors("Error", AUTH),
                },
            }
        },
        "/shards": {
            "get": {
                "summary": "every shard: device, status, queue, in flight, images/s, batch size, GPU figures",
                "responses": {
                    "200": _answer("the shards, as tools/gpu_status --json shows them", _ref("Shards")),
                    **_errors("Error", {**AUTH, "503": "Redis unreachable"}, retry=True),
                },
            }
        },
        **{
            url: {
                "get": {
                    "summary": f"a file of the status page ({name})",
                    "security": [],
                    "responses": {"200": _answer(name, {"type": "string"}, content_type.split(";")[0])},
                }
            }
            for url, (name, content_type) in ASSETS.items()
        },
        "/healthz": {
            "get": {
                "summary": "the API process is alive",
                "security": [],
                "responses": {"200": _answer("alive", {"type": "object"})},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Redis reachable and at least one worker live",
                "security": [],
                "responses": {
                    "200": _answer("ready", _ref("Ready")),
                    "503": _answer("not ready", _ref("Ready")),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (inferd_* and Triton's nv_*)",
                "responses": {
                    "200": _answer("text exposition format", {"type": "string"}, text),
                    **_errors("Error", AUTH),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {"200": _answer("OpenAPI 3.1", {"type": "object"}), **_errors("Error", AUTH)},
            }
        },
        "/predict": {
            "post": {
                "summary": "classify one image",
                "parameters": [
                    {
                        "name": "top",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": api.max_top,
                            "default": api.default_top,
                        },
                    }
                ],
                "requestBody": predict_body,
                "responses": {
                    "200": _answer("the top predictions", _ref("PredictResponse")),
                    **_errors("Error", UPLOAD_ERRORS, retry=True),
                },
            }
        },
        "/v2": {
            "get": {
                "summary": "KServe V2 server metadata",
                "responses": {"200": _answer("metadata", _ref("ServerMetadata")), **_errors("V2Error", AUTH)},
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "the server is live",
                "security": [],
                "responses": {"200": _answer("live", {"type": "object"})},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "the server can answer (a worker is live)",
                "security": [],
                "responses": {
                    "200": _answer("ready", {"type": "object"}),
                    "503": _answer("not ready", {"type": "object"}),
                },
            }
        },
        **_model_paths(settings),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "inferd",
            "version": version,
            "description": f"Image classification with {settings.model.served_name} (version {settings.model.version}).",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # Auth is optional (api.auth_token_file): a request without it is valid where no token is set.
        "security": [{}, {"bearer": []}],
    }


class OpenApiResource:
    """The document, rebuilt when `inferd reload` changes the model version it states (rarely: cached)."""

    def __init__(self, settings: Settings, version: str, model_version: Callable[[], int]) -> None:
        self._settings = settings
        self._version = version
        self._model_version = model_version
        self._documents: dict[int, dict[str, Any]] = {}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        served = self._model_version()
        if served not in self._documents:
            # The name stays the one clients were given at start; only the version follows the reload.
            model = dataclasses.replace(self._settings.model, version=served)
            self._documents = {
                served: openapi_document(dataclasses.replace(self._settings, model=model), self._version)
            }
        resp.media = self._documents[served]
