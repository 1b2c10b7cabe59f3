"""The gateway's OpenAPI 3 description, served at /openapi.json and checked by schemathesis in the tests.

It says exactly what the server does: every path and method it routes, every status each can
answer, and request schemas as strict as the server's own validation (so a body the schema
accepts, the server accepts, and the reverse). With an admin token, the operations that need it
declare bearer security.
"""

from __future__ import annotations

from typing import Any

# The zoo's model names (shared/zoo needs torch, which the gateway does not import to serve;
# tests/unit/test_openapi.py keeps the two lists equal).
ZOO_MODELS = ("mlp", "resnet18", "resnet50", "resnet152", "bert-base")
MAX_SEED = 2**31 - 1  # gateway/deploy.py
MAX_MS = 3_600_000
NAME_PATTERN = r"^(?!.*\.\.)[a-z0-9][a-z0-9_.-]{0,62}$"  # gateway/registry.check_name
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
DATATYPES += ("FP16", "FP32", "FP64", "BF16")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_TEXT = {
    400: "invalid input: the message names the field and what was expected",
    401: "missing or wrong bearer token",
    404: "no such function, or a version that is not served",
    413: "body over --max-body",
    429: "queue bound reached; retry later",
    500: "the model failed on this request, or an internal error (never a traceback)",
    502: "a malformed reply crossed a worker socket",
    503: "unavailable: shutting down, the function is unloaded, a worker was lost, or dropped late",
    504: "the request's deadline passed",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ref("Error"), _ERROR_TEXT[c]) for c in (*codes, 500)}


def _path(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


NAME = _path("name", NAME_PATTERN)
VERSION = _path("version", "^[0-9]+$")


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _get(schema: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {"get": {"responses": {"200": _json(schema), **_errors(*errors)}}}


def _admin(op: dict[str, Any], admin: bool) -> dict[str, Any]:
    return {**op, "security": [{"adminToken": []}]} if admin else op


def document(admin: bool = False) -> dict[str, Any]:
    """The description of a server; `admin`: it runs with --admin-token."""
    infer_ok = {
        "description": "the outputs; binary outputs follow the JSON header (Inference-Header-Content-Length)",
        "content": {
            "application/json": {"schema": _ref("InferResponse")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    header_length = {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "description": "binary tensor extension: the byte length of the JSON header that starts the body; "
        "tensor bytes follow it",
        "schema": {"type": "integer", "minimum": 0},
    }
    infer = {
        "post": {
            "parameters": [header_length],
            "requestBody": _body(_ref("InferRequest")),
            "responses": {"200": infer_ok, **_errors(400, 401, 404, 413, 429, 502, 503, 504)},
        }
    }
    ready = {
        "description": "ready (200) or not (400, KServe v2: 4xx for false)",
        "content": {"application/json": {"schema": _ref("ModelReady")}},
    }
    model_ready = {"get": {"responses": {"200": ready, "400": ready, **_errors(404)}}}
    function = _ref("Function")
    deploy = _admin(
        {
            "requestBody": _body(_ref("Deploy")),
            "responses": {
                "200": _json(function, "replaced: the version rose by one"),
                "201": _json(function, "created"),
                **_errors(400, 401, 413, 503),
            },
        },
        admin,
    )
    repository_op = {"200": _json({"type": "object", "maxProperties": 0})}
    paths: dict[str, Any] = {
        "/v1/functions": _get(
            {
                "type": "object",
                "required": ["functions"],
                "properties": {"functions": {"type": "array", "items": function}},
            }
        ),
        "/v1/functions/{name}": {
            "parameters": [NAME],
            "put": deploy,
            **_get(function, 404),
            "delete": _admin(
                {
                    "responses": {
                        "200": _json(
                            {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}}
                        ),
                        **_errors(401, 404, 503),
                    }
                },
                admin,
            ),
        },
        "/v1/functions/{name}/invoke": {"parameters": [NAME], **infer},
        "/v1/devices": _get(
            {
                "type": "object",
                "required": ["devices"],
                "properties": {"devices": {"type": "array", "items": {"type": "object"}}},
            }
        ),
        "/v2": _get(_ref("ServerMetadata")),
        "/v2/health/live": _get({"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}}),
        "/v2/health/ready": {
            "get": {
                "responses": {
                    "200": _json(_ref("ServerReady"), "ready"),
                    "503": _json(_ref("ServerReady"), "starting or stopping"),
                    **_errors(),
                }
            }
        },
        "/v2/models/{name}": {"parameters": [NAME], **_get(_ref("ModelMetadata"), 404)},
        "/v2/models/{name}/versions/{version}": {"parameters": [NAME, VERSION], **_get(_ref("ModelMetadata"), 404)},
        "/v2/models/{name}/ready": {"parameters": [NAME], **model_ready},
        "/v2/models/{name}/versions/{version}/ready": {"parameters": [NAME, VERSION], **model_ready},
        "/v2/models/{name}/infer": {"parameters": [NAME], **infer},
        "/v2/models/{name}/versions/{version}/infer": {"parameters": [NAME, VERSION], **infer},
        "/v2/repository/index": {
            "post": {
                "requestBody": _body(_ref("IndexRequest"), required=False),
                "responses": {"200": _json({"type": "array", "items": _ref("IndexEntry")}), **_errors(400, 413)},
            }
        },
        "/v2/repository/models/{name}/load": {
            "parameters": [NAME],
            "post": _admin(
                {
                    "requestBody": _body(_ref("LoadRequest"), required=False),
                    "responses": {**repository_op, **_errors(400, 401, 404, 413, 503)},
                },
                admin,
            ),
        },
        "/v2/repository/models/{name}/unload": {
            "parameters": [NAME],
            "post": _admin(
                {
                    "requestBody": _body(_ref("UnloadRequest"), required=False),
                    "responses": {**repository_op, **_errors(400, 401, 404, 413, 503)},
                },
                admin,
            ),
        },
        "/openapi.json": _get({"type": "object"}),
        "/metrics": {
            "get": {
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(),
                }
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "torpor", "version": "0.1.0", "description": "Serverless inference on shared accelerators."},
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
    if admin:
        doc["components"]["securitySchemes"] = {"adminToken": {"type": "http", "scheme": "bearer"}}
    return doc


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def _schemas() -> dict[str, Any]:
    ms = {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": MAX_MS}
    dim = {"type": "integer", "minimum": -1, "not": {"enum": [0]}}
    tensor_spec = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "datatype": {"type": "string", "enum": list(DATATYPES)},
            "shape": {"type": "array", "items": dim},
        },
    }
    state = {"type": "string", "enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]}
    deploy = _strict(
        {
            "model": {"oneOf": [_ref("ZooModel"), _ref("FileModel")]},
            "slo_ms": ms,
            "timeout_ms": ms,
            "invoke_token": {"type": "string", "minLength": 16, "nullable": True},
            "slo_percentile": {
                "type": "number",
                "exclusiveMinimum": True,
                "minimum": 0,
                "exclusiveMaximum": True,
                "maximum": 100,
            },
            "max_batch_size": {"type": "integer", "minimum": 1, "maximum": 256},
            "drop_late": {"type": "boolean"},
            "heavy": {"type": "boolean", "nullable": True},
            "input_spec": {
                "type": "array",
                "minItems": 1,
                "items": _ref("TensorSpec"),
                "nullable": True,
                "description": "tensor names must be unique",
            },
        },
        ("model", "slo_ms"),
    )
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": list(DATATYPES)},
            "data": {"type": "array", "description": "row-major, flat or nested; absent for binary tensors"},
            "parameters": {"type": "object"},
        },
    }
    return {
        "Error": _strict({"error": {"type": "string"}}, ("error",)),
        "TensorSpec": tensor_spec,
        "ZooModel": _strict(
            {
                "zoo": {"type": "string", "enum": list(ZOO_MODELS)},
                "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
            },
            ("zoo",),
        ),
        "FileModel": _strict(
            {"path": {"type": "string", "minLength": 1, "description": "a torch.export .pt2 file on the server"}},
            ("path",),
        ),
        "Deploy": deploy,
        "Function": {
            "type": "object",
            "required": ["name", "model", "slo_ms", "inputs", "outputs", "version", "state", "reason"],
            "properties": {
                "name": {"type": "string"},
                "model": {"type": "object"},
                "slo_ms": {"type": "number"},
                "inputs": {"type": "array", "items": tensor_spec},
                "outputs": {"type": "array", "items": tensor_spec},
                "model_bytes": {"type": "integer"},
                "timeout_ms": {"type": "number"},
                "invoke_token": {"type": "boolean"},
                "version": {"type": "integer", "minimum": 1},
                "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                "reason": {"type": "string"},
                "resident_on": {"type": "array", "items": {"type": "integer"}},
                "queue_depth": {"type": "integer"},
                "stats": {"type": "object", "nullable": True},
                "schedule": {"type": "object", "nullable": True},
            },
        },
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ServerReady": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}, "description": "empty while unloaded"},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": tensor_spec},
                "outputs": {"type": "array", "items": tensor_spec},
            },
        },
        "IndexRequest": _strict({"ready": {"type": "boolean", "description": "only models ready for inference"}}),
        "IndexEntry": {
            "type": "object",
            "required": ["name", "state", "reason"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string", "description": "absent while a first deploy is loading"},
                "state": state,
                "reason": {"type": "string"},
            },
        },
        "LoadRequest": {
            "description": "empty: load an unloaded function from its saved config; with a config: deploy it",
            "oneOf": [
                _strict(
                    {
                        "parameters": _strict(
                            {
                                "config": {
                                    "oneOf": [
                                        {"type": "string", "description": "a Deploy as JSON text"},
                                        _ref("Deploy"),
                                    ]
                                }
                            }
                        )
                    }
                ),
                _ref("Deploy"),
            ],
        },
        "UnloadRequest": {
            "type": "object",
            "properties": {
                "parameters": {"type": "object", "properties": {"unload_dependents": {"type": "boolean"}}},
            },
        },
        "InferTensor": tensor,
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "items": _ref("InferTensor")},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                    },
                },
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "model_version", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": _ref("InferTensor")},
            },
        },
    }
