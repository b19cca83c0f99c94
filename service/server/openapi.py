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


def token_ids(num_tokens: int, codebook_size: int, prefix: bool = False) -> dict[str, Any]:
    """One sequence: exactly K ids in [0, codebook_size); with `prefix` (a prefix-decodable model) 1 to K."""
    return {"type": "array", "minItems": 1 if prefix else num_tokens, "maxItems": num_tokens,
            "items": {"type": "integer", "minimum": 0, "maximum": codebook_size - 1}}


def tighten(schema: dict[str, Any], num_tokens: int, codebook_size: int, max_items: int,
            prefix: bool = False) -> None:
    """Say in `schema` what the routes check: K ids in range (1..K for a prefix-decodable model), 1..max_items
    sequences or images, images required, and the token budgets' bounds (or their absence)."""
    one = token_ids(num_tokens, codebook_size, prefix)
    tighten_budgets(schema, num_tokens, prefix)
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


def tighten_budgets(schema: dict[str, Any], num_tokens: int, prefix: bool) -> None:
    """/encode's num_tokens gets its maximum K; a model that is not prefix-decodable takes neither budget, so
    both parameters leave its schema (the route refuses them with 422 saying why)."""
    op = schema["paths"]["/encode"]["post"]
    kept = []
    for param in op.get("parameters", []):
        if param.get("name") in ("num_tokens", "target_psnr") and param.get("in") == "query":
            if not prefix:
                continue
            param = {**param, "schema": dict(param["schema"])}  # a copy: the route's declaration is shared
            if param["name"] == "num_tokens":
                param["schema"]["maximum"] = num_tokens
        kept.append(param)
    op["parameters"] = kept


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
        tighten(schema, eng.num_tokens, eng.codebook_size, svc.settings.max_images_per_request,
                getattr(eng, "prefix_decodable", False))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
