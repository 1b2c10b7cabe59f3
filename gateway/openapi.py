"""The gateway's OpenAPI 3 description, served at /openapi.json and fuzzed in the tests."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,62}$"},
}


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _ERROR for c in codes}


def document() -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Function"}
    infer = {
        "parameters": [_NAME],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}},
        },
        "responses": {
            "200": _json({"$ref": "#/components/schemas/InferResponse"}),
            **_errors(400, 401, 404, 413, 429, 500, 503, 504),
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "torpor", "version": "0.1.0", "description": "Serverless inference on shared accelerators."},
        "paths": {
            "/v1/functions": {"get": {"responses": {"200": _json({"type": "object"})}}},
            "/v1/functions/{name}": {
                "put": {
                    "parameters": [_NAME],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Deploy"}}},
                    },
                    "responses": {"200": _json(ref), "201": _json(ref), **_errors(400, 401, 413, 503)},
                },
                "get": {"parameters": [_NAME], "responses": {"200": _json(ref), **_errors(404)}},
                "delete": {"parameters": [_NAME], "responses": {"200": _json({"type": "object"}), **_errors(401, 404)}},
            },
            "/v1/functions/{name}/invoke": {"post": infer},
            "/v1/devices": {"get": {"responses": {"200": _json({"type": "object"})}}},
            "/v2/health/live": {"get": {"responses": {"200": _json({"type": "object"})}}},
            "/v2/health/ready": {
                "get": {"responses": {"200": _json({"type": "object"}), "503": _json({"type": "object"})}}
            },
            "/v2/models/{name}": {
                "get": {"parameters": [_NAME], "responses": {"200": _json({"type": "object"}), **_errors(404)}}
            },
            "/v2/models/{name}/infer": {"post": infer},
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "TensorSpec": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                    },
                },
                "Deploy": {
                    "type": "object",
                    "required": ["model", "slo_ms"],
                    "properties": {
                        "model": {
                            "type": "object",
                            "properties": {
                                "zoo": {"type": "string"},
                                "seed": {"type": "integer"},
                                "path": {"type": "string"},
                            },
                        },
                        "slo_ms": {"type": "number"},
                        "timeout_ms": {"type": "number"},
                        "invoke_token": {"type": "string"},
                        "slo_percentile": {"type": "number", "minimum": 0, "maximum": 100},
                        "max_batch_size": {"type": "integer", "minimum": 1, "maximum": 256},
                        "drop_late": {"type": "boolean"},
                        "heavy": {"type": "boolean", "nullable": True},
                        "input_spec": {"type": "array", "items": {"$ref": "#/components/schemas/TensorSpec"}},
                    },
                },
                "Function": {"type": "object", "required": ["name", "model", "slo_ms", "inputs", "outputs"]},
                "InferTensor": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string"},
                        "data": {"type": "array"},
                        "parameters": {"type": "object"},
                    },
                },
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferTensor"}},
                        "outputs": {
                            "type": "array",
                            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
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
                        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferTensor"}},
                    },
                },
            }
        },
    }
