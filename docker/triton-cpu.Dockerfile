# Triton Inference Server for camstream on the CPU: the same server `camstream up` runs
# (camstream/stack/triton.py), in an image. docker-compose.yml's cpu profile starts it
# with the CPU config.pbtxt of each model: the python backend, whose model.py runs
# onnxruntime on model.onnx.
#
# The server is the real tritonserver that the nvidia-pytriton wheel ships (2.51, with
# only the python backend). The tree is laid out as prepare_server_tree() lays it out
# for the local stack: bin/, backends/ and caches/ of the wheel's pytriton/tritonserver,
# plus the backend stub for this image's Python minor version in backends/python/; it
# goes to /opt/tritonserver, Triton's default backend and cache directories, with the
# wheel's bundled libraries in /opt/tritonserver/lib.
#
# The model environment (/opt/model-env, first on PATH: the stub runs in isolated mode
# and finds its interpreter through the python3 on PATH) holds only what model.py
# imports, numpy and onnxruntime, at the versions requirements/model.txt pins (it is
# passed as a constraints file); torch and the offline lifecycle stay out.
#
# Build from the repository root: docker build -f docker/triton-cpu.Dockerfile .
# BASE_IMAGE: python:3.11-slim-bookworm by default, or a plain Debian bookworm
# (docker/build-local.sh's camstream-base:bookworm), whose python3 is 3.11 as well.

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# On a plain Debian base: Python 3.11, its shared libpython (the stub embeds it), venv
# and useradd. The python image has all of these already.
RUN if ! command -v python3.11 >/dev/null 2>&1 || ! command -v useradd >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends \
            python3 python3-venv libpython3.11 passwd ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

ARG BUILD_CA_URL=
COPY docker/with-build-ca.sh /usr/local/bin/with-build-ca
COPY requirements/model.txt /opt/model-env-constraints.txt

# The model environment and the server tree (see above), in one layer with the wheel
# removed again.
RUN set -eu; \
    python3 -m venv /opt/model-env; \
    with-build-ca /opt/model-env/bin/pip install --no-cache-dir \
        -c /opt/model-env-constraints.txt numpy onnxruntime; \
    with-build-ca /opt/model-env/bin/pip install --no-cache-dir --no-deps \
        --target /tmp/pytriton-wheel -c /opt/model-env-constraints.txt nvidia-pytriton; \
    minor="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
    wheel=/tmp/pytriton-wheel/pytriton/tritonserver; \
    mkdir -p /opt/tritonserver; \
    cp -a "$wheel/bin" "$wheel/backends" "$wheel/caches" /opt/tritonserver/; \
    cp "$wheel/python_backend_stubs/$minor/triton_python_backend_stub" \
        /opt/tritonserver/backends/python/; \
    cp -a /tmp/pytriton-wheel/nvidia_pytriton.libs /opt/tritonserver/lib; \
    rm -rf /tmp/pytriton-wheel; \
    /opt/model-env/bin/pip uninstall -y -q pip; \
    /opt/model-env/bin/python -c "import numpy, onnxruntime; print('numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"

# The wheel's libraries, then the interpreter's libpython (/usr/local/lib in the python
# image, Debian's multiarch directory otherwise).
ENV PATH=/opt/model-env/bin:/opt/tritonserver/bin:$PATH \
    LD_LIBRARY_PATH=/opt/tritonserver/lib:/usr/local/lib:/usr/lib/x86_64-linux-gnu \
    VIRTUAL_ENV=/opt/model-env

# Every shared library the server, the backend and its stub need is found.
RUN missing="$(ldd /opt/tritonserver/bin/tritonserver \
        /opt/tritonserver/backends/python/libtriton_python.so \
        /opt/tritonserver/backends/python/triton_python_backend_stub | grep 'not found' || true)"; \
    if [ -n "$missing" ]; then echo "unresolved libraries: $missing" >&2; exit 1; fi

RUN useradd --system --uid 10002 --create-home --home-dir /home/triton triton
USER triton

# The model repository is mounted read-only at /models by docker-compose.yml.
CMD ["tritonserver", "--model-repository=/models"]
