# camstream's application image: the CLI, producers, the Faust worker and the Feast
# repo declarations, in the environment uv builds from pyproject.toml + uv.lock.
# Build from the repository root: docker build -f docker/app.Dockerfile .
# (docker-compose.yml does this for the worker, producer, feast-apply and sample-data.)
#
# The model runtime (torch, onnxruntime, nvidia-pytriton) is not here: Triton has its
# own image (docker/triton.Dockerfile) and `camstream setup` exports the model on the host.

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1

RUN pip install --no-cache-dir uv==0.13.8

WORKDIR /app

# Dependencies first, in their own layer: source edits do not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# The project itself, installed editable so that camstream's REPO_ROOT is /app
# (features/ and schemas/ are found beside the packages).
COPY camstream ./camstream
COPY producers ./producers
COPY streams ./streams
COPY training ./training
COPY benchmarks ./benchmarks
COPY features ./features
COPY schemas ./schemas
RUN uv sync --frozen --no-dev

# Run as an unprivileged user; the folders the named volumes mount over are created
# here so that Docker gives the volumes this user's ownership.
RUN useradd --system --uid 10001 --create-home --home-dir /home/camstream camstream \
    && mkdir -p /var/lib/camstream/feast /var/lib/camstream/worker /app/.camstream \
    && chown -R camstream:camstream /var/lib/camstream /app/.camstream

ENV PATH=/app/.venv/bin:$PATH \
    CAMSTREAM_STATE_DIR=/app/.camstream

USER camstream

CMD ["camstream", "--help"]
