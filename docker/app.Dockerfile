# camstream's application image: the CLI, producers, the Faust worker and the Feast
# repo declarations, in the environment uv builds from pyproject.toml + uv.lock.
# Build from the repository root: docker build -f docker/app.Dockerfile .
# (docker-compose.yml does this for the worker, producer, feast-apply and sample-data.)
#
# The model runtime (torch, onnxruntime, nvidia-pytriton) is not here: Triton has its
# own image (docker/triton.Dockerfile, docker/triton-cpu.Dockerfile) and `camstream
# setup` exports the model on the host.
#
# BASE_IMAGE: the public python:3.11-slim-bookworm by default. docker/build-local.sh
# builds it FROM a plain Debian bookworm (camstream-base:bookworm, no registry needed),
# whose Python 3.11 comes from Debian; BUILD_CA_URL then hands pip and uv the CA of a
# TLS-intercepting proxy for the build only (docker/with-build-ca.sh).

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1

# On a plain Debian base: Debian's Python 3.11, with pip (sample-data's `pip download`
# runs it) and useradd. The python image has all of these already.
RUN if ! command -v python3.11 >/dev/null 2>&1 || ! command -v useradd >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-pip passwd ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

ARG BUILD_CA_URL=
COPY docker/with-build-ca.sh /usr/local/bin/with-build-ca
RUN with-build-ca python3 -m pip install --no-cache-dir --break-system-packages uv==0.13.8

WORKDIR /app

# Dependencies first, in their own layer: source edits do not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN with-build-ca uv sync --frozen --no-dev --no-install-project

# The project itself, installed editable so that camstream's REPO_ROOT is /app
# (features/ and schemas/ are found beside the packages).
COPY camstream ./camstream
COPY producers ./producers
COPY streams ./streams
COPY training ./training
COPY benchmarks ./benchmarks
COPY features ./features
COPY schemas ./schemas
RUN with-build-ca uv sync --frozen --no-dev

# Run as an unprivileged user; the folders the named volumes mount over are created
# here so that Docker gives the volumes this user's ownership.
RUN useradd --system --uid 10001 --create-home --home-dir /home/camstream camstream \
    && mkdir -p /var/lib/camstream/feast /var/lib/camstream/worker /app/.camstream \
    && chown -R camstream:camstream /var/lib/camstream /app/.camstream

ENV PATH=/app/.venv/bin:$PATH \
    CAMSTREAM_STATE_DIR=/app/.camstream

USER camstream

CMD ["camstream", "--help"]
