"""The HTTP door: the FastAPI app (`app.build_app`) onto the core.

app (assembly), routes, middleware, batcher (dynamic batching in front of the engine), decoding (the
image-decode queue), drain (SIGTERM), auth (API keys), docs + static/ (offline Swagger UI), openapi,
answers, schemas, metrics, and the web page in ui/.
"""
