# The TiTok tokenizer service. Build and run on a GPU (the NVIDIA Container Toolkit on the host):
#   docker build -t titok-service .
#   docker run --gpus all -p 8000:8000 titok-service
# One process (one uvicorn worker) per container: the batching queue lives in that process, so scale
# out with more containers behind a load balancer, one per GPU, not with more workers.
#
# BASE_IMAGE contract: the base provides `python3` (3.11 or newer) with pip, and torch (2.3 or newer,
# the CUDA or CPU build you mean to serve with) already installed. The first build step checks this and
# stops with a message saying what is missing. The install keeps the base's torch (pinned by a
# constraint), so pip never pulls the multi-GB CUDA build from PyPI. Bases that fit:
#   pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime                       (the default: CUDA)
#   Debian or Ubuntu + python3-pip + a torch CPU wheel                  (scripts/container_check.sh builds
#                                                                        one with debootstrap, offline)
# A Debian/Ubuntu python3 is "externally managed" (PEP 668): the install is allowed into it on purpose,
# since the image holds one application.
#
# Build args:
#   PIP_INDEX_URL    the package index for the serving dependencies (a private mirror); recorded in the
#                    image history, so never put credentials in it
#   EXTRA_CA_CERTS   PEM text of CAs pip should trust besides its own bundle (a TLS-intercepting proxy):
#                    --build-arg EXTRA_CA_CERTS="$(cat corp-ca.pem)"
#   EXTRAS           optional extras of the package, e.g. EXTRAS=ray for the image the RayJob runs
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG EXTRA_CA_CERTS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The contract, before anything else.
RUN python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version; import pip, torch' \
    || { echo "BASE_IMAGE must provide python3 (3.11+) with pip and torch installed (see the top of the Dockerfile)" >&2; \
         exit 1; }
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
# A wheel, so the image holds the installed package (with service/models/default.pt as package data),
# not the source tree. The CA bundle (pip's own plus EXTRA_CA_CERTS) lives only during this RUN.
RUN set -eu; \
    if [ -n "$EXTRA_CA_CERTS" ]; then \
        { cat "$(python3 -c 'from pip._vendor import certifi; print(certifi.where())')"; \
          printf '%s\n' "$EXTRA_CA_CERTS"; } > /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi; \
    python3 -m pip wheel --no-deps --wheel-dir /wheels .; \
    rm -f /tmp/ca.pem

FROM ${BASE_IMAGE}
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG EXTRA_CA_CERTS=""
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The wheel is bind-mounted from the build stage, so it is in no layer of this image. torch is pinned to
# the base's own build; only the serving dependencies are added (the [serve] extra plus EXTRAS; no [dev] or [train]).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    set -eu; \
    if [ -n "$EXTRA_CA_CERTS" ]; then \
        { cat "$(python3 -c 'from pip._vendor import certifi; print(certifi.where())')"; \
          printf '%s\n' "$EXTRA_CA_CERTS"; } > /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi; \
    python3 -c 'import torch; print("torch==" + torch.__version__)' > /tmp/keep-torch.txt; \
    wheel="$(ls /wheels/*.whl)"; \
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --constraint /tmp/keep-torch.txt \
        "${wheel}[serve${EXTRAS:+,$EXTRAS}]"; \
    rm -f /tmp/ca.pem /tmp/keep-torch.txt; \
    titok --version

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin titok
USER 10001
WORKDIR /home/titok

# Settings are TITOK_* environment variables (see README); the bundled default model is served unless
# TITOK_MODEL_PATH names another exported file (mount it, e.g. at /models).
ENV TITOK_DEVICE=auto \
    TITOK_HOST=0.0.0.0 \
    TITOK_PORT=8000
EXPOSE 8000

# curl is not in the base image; python3 is (the contract). /readyz answers 200 once the model is loaded
# and warmed up, 503 while starting or draining.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('TITOK_PORT', '8000'), timeout=4)"]

CMD ["titok", "serve"]
