"""The OpenAPI schema as exact as the API: token counts and ranges from the served model, the limits from the
settings, and the API-key security on every guarded path.

FastAPI's generated schema only knows the Python types; what a request may hold depends on the model loaded
at start-up, so the schema is tightened once the engine is there (and cached from then on).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .auth import is_open
from .schemas import ErrorResponse

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY (TITOK_API_KEYS)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "X-API-Key: KEY"},
}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def token_ids(num_tokens: int, codebook_size: int) -> dict[str, Any]:
    """One sequence: exactly K ids in [0, codebook_size)."""
    return {"type": "array", "minItems": num_tokens, "maxItems": num_tokens,
            "items": {"type": "integer", "minimum": 0, "maximum": codebook_size - 1}}


def tighten(schema: dict[str, Any], num_tokens: int, codebook_size: int, max_items: int) -> None:
    """Say in `schema` what the routes check: K ids in range, 1..max_items sequences or images, images required."""
    one = token_ids(num_tokens, codebook_size)
    paths = schema["paths"]
    decode_json = paths["/decode"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    decode_json["properties"]["tokens"] = {
        "description": decode_json["properties"]["tokens"].get("description", ""),
        "anyOf": [one, {"type": "array", "minItems": 1, "maxItems": max_items, "items": one}]}
    decode_json["required"] = sorted({*decode_json.get("required", []), "tokens"})
    form = paths["/encode"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form["required"] = sorted({*form.get("required", []), "images"})
    form["properties"]["images"].update(minItems=1, maxItems=max_items)
    encoded = schema["components"]["schemas"]["EncodeResponse"]["properties"]["tokens"]
    encoded.update(minItems=1, maxItems=max_items, items=one)


def secure(schema: dict[str, Any], open_paths: frozenset[str]) -> None:
    """Declare the API keys and a 401 on every operation outside `open_paths`."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    schema["components"].setdefault("schemas", {}).setdefault("ErrorResponse", ErrorResponse.model_json_schema())
    for path, item in schema["paths"].items():
        if is_open(path, open_paths):
            continue
        for method in _METHODS:
            if method in item:
                item[method]["security"] = [{"bearer": []}, {"apiKey": []}]
                item[method].setdefault("responses", {})["401"] = {
                    "description": "Missing or unknown API key (see WWW-Authenticate)",
                    "content": {"application/json": {"schema": error_ref}}}


def request_formats(app: FastAPI) -> dict[str, list[str]]:
    """The media types each path's request body takes, read from the schema, so /info and /docs always agree
    (clients pick the array formats by them)."""
    return {path: sorted(op["requestBody"]["content"]) for path, item in app.openapi()["paths"].items()
            for op in item.values() if isinstance(op, dict) and "requestBody" in op}


def install(app: FastAPI, open_paths: frozenset[str] | None) -> None:
    """Replace `app.openapi` by the exact schema; `open_paths` None: no API keys, nothing to declare."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        svc = app.state.service
        if open_paths is not None:
            secure(schema, open_paths)
        if svc.engine is None:  # not loaded yet: the generic schema, not cached
            return schema
        eng = svc.engine
        tighten(schema, eng.num_tokens, eng.codebook_size, svc.settings.max_images_per_request)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
