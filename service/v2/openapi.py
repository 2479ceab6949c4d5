"""An OpenAPI description of the v2 routes (served at GET /v2/openapi.json), for clients and for the
schemathesis run that fuzzes them; BentoML's own /docs.json covers only its API methods."""

from __future__ import annotations

from typing import Any

NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "example": "cifar10-cnn"}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
ERROR = {"description": "the request cannot be met", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
JSON_OK = {"description": "OK", "content": {"application/json": {"schema": {}}}}

TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "enum": ["images", "image_files"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["UINT8", "BYTES"]},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
        "data": {"type": "array"},
    },
}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "items": TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": ["probabilities", "in_distribution", "in_distribution_score"]},
            "parameters": {"type": "object", "properties": {
                "classification": {"type": "integer", "minimum": 0}, "binary_data": {"type": "boolean"}}},
        }}},
    },
}
CONTROL_REQUEST = {"type": "object", "properties": {"parameters": {"type": "object", "properties": {
    "version": {"type": "string"}, "unload_dependents": {"type": "boolean"}}}}}


def get(summary: str, parameters: list[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": list(parameters),
                    "responses": {"200": JSON_OK, "404": ERROR}}}


def post(summary: str, body: dict[str, Any], parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "parameters": parameters,
        "requestBody": {"required": False, "content": {"application/json": {"schema": body}}},
        "responses": {"200": JSON_OK, "400": ERROR, "403": ERROR, "404": ERROR},
    }}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "cifar-serve: Open Inference Protocol (v2)", "version": "2"},
    "paths": {
        "/v2": get("server metadata"),
        "/v2/health/live": get("liveness"),
        "/v2/health/ready": get("readiness"),
        "/v2/models/{name}": get("model metadata", [NAME]),
        "/v2/models/{name}/versions/{version}": get("model metadata at a version", [NAME, VERSION]),
        "/v2/models/{name}/ready": get("model readiness", [NAME]),
        "/v2/models/{name}/versions/{version}/ready": get("model readiness at a version", [NAME, VERSION]),
        "/v2/models/{name}/infer": post("inference", INFER_REQUEST, [NAME]),
        "/v2/models/{name}/versions/{version}/infer": post("inference at a version", INFER_REQUEST, [NAME, VERSION]),
        "/v2/repository/index": {**get("served models"), **post("served models", CONTROL_REQUEST, [])},
        "/v2/repository/models/{name}/load": post("load a stored version and switch to it", CONTROL_REQUEST, [NAME]),
        "/v2/repository/models/{name}/unload": post("take a model out of service", CONTROL_REQUEST, [NAME]),
    },
}
