"""The OpenAPI 3 schema of the routes in serve/app.py, written by hand so it says exactly what they take."""
from __future__ import annotations

from gencc.runtime.samplers import SAMPLERS

from .config import ServerConfig

_ERROR = {"description": "an error: one line", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _json(schema_ref: str, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": schema_ref}}}}


def _errors(*codes: int) -> dict:
    return {str(c): _ERROR for c in codes}


def openapi_schema(models: dict, config: ServerConfig) -> dict:
    names = list(models)
    auth = config.token is not None
    sample_props = {
        "model": {"type": "string", "enum": names, "description": "a served model's name"},
        "n": {"type": "integer", "minimum": 1, "maximum": config.max_n, "default": 1},
        "steps": {"type": "integer", "minimum": 1, "maximum": config.max_steps},
        "sampler": {"type": "string", "enum": sorted(SAMPLERS)},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**64 - 1, "default": 0},
        "label": {"type": ["integer", "null"], "minimum": 0, "description": "class of a conditional model"},
        "guidance": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        "spacing": {"type": ["string", "null"], "enum": ["uniform", "logsnr", None]},
    }
    job_request = {"type": "object", "properties": sample_props, "additionalProperties": False}
    sample_request = {"type": "object", "additionalProperties": False,
                      "properties": {**sample_props, "format": {"type": "string", "enum": ["npy", "png", "json"]}}}
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    model_name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    job_errors = _errors(400, 404, 413, 422, 429, 503)
    if auth:
        job_errors.update(_errors(401))
    paths = {
        "/v1/samples": {"post": {
            "summary": "sample now and answer with the samples", "operationId": "samples",
            "requestBody": {"required": True, "content": {"application/json": {"schema": sample_request}}},
            "responses": {"200": {"description": "the samples", "content": {
                "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/Samples"}}}},
                **job_errors, **_errors(409, 500)}}},
        "/v1/jobs": {"post": {
            "summary": "queue a job", "operationId": "createJob",
            "requestBody": {"required": True, "content": {"application/json": {"schema": job_request}}},
            "responses": {"202": _json("#/components/schemas/JobCreated", "queued"), **job_errors}}},
        "/v1/jobs/{id}": {"get": {
            "summary": "a job's state", "operationId": "getJob", "parameters": [job_id],
            "responses": {"200": _json("#/components/schemas/Job"), **_errors(404)}}},
        "/v1/jobs/{id}/events": {"get": {
            "summary": "server-sent events: state, progress, preview, end", "operationId": "jobEvents",
            "parameters": [job_id, {"name": "after", "in": "query", "required": False, "description":
                                    "resume after this event id (or send Last-Event-ID)",
                                    "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}}],
            "responses": {"200": {"description": "an event stream", "content": {
                "text/event-stream": {"schema": {"type": "string"}}}}, **_errors(404, 422)}}},
        "/v1/jobs/{id}/cancel": {"post": {
            "summary": "cancel at the next step boundary", "operationId": "cancelJob", "parameters": [job_id],
            "responses": {"200": _json("#/components/schemas/Job"), **_errors(404)}}},
        "/v1/jobs/{id}/result": {"get": {
            "summary": "a finished job's samples", "operationId": "jobResult",
            "parameters": [job_id, {"name": "format", "in": "query", "required": False,
                                    "schema": {"type": "string", "enum": ["npy", "png", "json"]}}],
            "responses": {"200": {"description": "the samples", "content": {
                "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/Samples"}}}},
                **_errors(404, 409, 422, 500)}}},
        "/v1/images/generations": {"post": {
            "summary": "OpenAI-compatible image generation", "operationId": "imagesGenerations",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "properties": {
                    "prompt": {"type": "string"}, "model": {"type": "string", "enum": names},
                    "n": {"type": "integer", "minimum": 1, "maximum": config.max_n},
                    "response_format": {"type": "string", "enum": ["b64_json"]},
                    "size": {"type": "string"}, "user": {"type": "string"},
                    "steps": sample_props["steps"], "sampler": sample_props["sampler"], "seed": sample_props["seed"],
                    "guidance": sample_props["guidance"]}}}}},
            "responses": {"200": _json("#/components/schemas/Images"), **job_errors, **_errors(409, 500)}}},
        "/v1/capabilities": {"get": {"summary": "models, samplers, limits", "operationId": "capabilities",
                                     "responses": {"200": {"description": "OK", "content": {
                                         "application/json": {"schema": {"type": "object"}}}}}}},
        "/v2/health/live": {"get": {"summary": "liveness (no auth)", "operationId": "live", "security": [],
                                    "responses": {"200": {"description": "live"}}}},
        "/v2/health/ready": {"get": {"summary": "readiness (no auth)", "operationId": "ready", "security": [],
                                     "responses": {"200": {"description": "ready"}, **_errors(503)}}},
        "/v2/models/{name}": {"get": {"summary": "model metadata (Open Inference Protocol v2)",
                                      "operationId": "modelMetadata", "parameters": [model_name],
                                      "responses": {"200": {"description": "OK", "content": {
                                          "application/json": {"schema": {"type": "object"}}}}, **_errors(404)}}},
        "/v2/models/{name}/ready": {"get": {"summary": "model readiness", "operationId": "modelReady",
                                            "parameters": [model_name],
                                            "responses": {"200": {"description": "ready"}, **_errors(404, 503)}}},
        "/": {"get": {"summary": "the web page (no auth: it holds no data)", "operationId": "page", "security": [],
                      "responses": {"200": {"description": "HTML", "content": {
                          "text/html": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "this schema", "operationId": "openapi", "responses": {
            "200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "responses": {
            "200": {"description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }
    schema = {
        "openapi": "3.1.0",
        "info": {"title": "gencc serve", "version": "1", "description": "docs/SERVING.md"},
        "paths": paths,
        "components": {"schemas": _components()},
    }
    if auth:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return schema


def _components() -> dict:
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "status"],
            "properties": {"message": {"type": "string"}, "status": {"type": "integer"}}}}},
        "JobCreated": {"type": "object", "required": ["id", "queue_position"], "properties": {
            "id": {"type": "string"}, "queue_position": {"type": "integer"}, "state": {"type": "string"},
            "events": {"type": "string"}}},
        "Job": {"type": "object", "required": ["id", "state", "step", "steps"], "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
            "step": {"type": "integer"}, "steps": {"type": "integer"}, "queue_position": {"type": "integer"},
            "batch_rows": {"type": "integer"},
            "error": {"type": "string"}, "result": {"type": "string"}, "request": {"type": "object"},
            "created": {"type": "number"}}},
        "Samples": {"type": "object", "required": ["shape", "samples"], "properties": {
            "id": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
            "dtype": {"type": "string"}, "samples": {"type": "array"}}},
        "Images": {"type": "object", "required": ["created", "data"], "properties": {
            "created": {"type": "integer"}, "data": {"type": "array", "items": {
                "type": "object", "properties": {"b64_json": {"type": "string"}}}}}},
    }
