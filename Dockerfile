# syntax=docker/dockerfile:1
# The TiTok tokenizer service on a CUDA PyTorch runtime. Build: docker build -t titok-service .
# Run:   docker run --gpus all -p 8000:8000 titok-service
# One process (one uvicorn worker) per container: the batching queue lives in that process, so
# scale out with more containers behind a load balancer, one per GPU, not with more workers.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
# A wheel, so the image holds the installed package (with service/models/default.pt as package
# data) and not the source tree.
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# torch comes from the base image and satisfies the package's torch requirement, so pip keeps it;
# only the serving dependencies are added (the [serve] extra; no [dev] or [train]).
RUN pip install "$(ls /wheels/*.whl)[serve]" && rm -rf /wheels

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin titok
USER titok
WORKDIR /home/titok

# Settings are TITOK_* environment variables (see README); the bundled default model is served
# unless TITOK_MODEL_PATH names another exported file (mount it, e.g. at /models).
ENV TITOK_DEVICE=auto
EXPOSE 8000

# curl is not in the base image; /readyz answers 200 once the model is loaded and warmed up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

CMD ["titok", "serve", "--host", "0.0.0.0", "--port", "8000"]
