#!/usr/bin/env bash
# Build the images of docker-compose's cpu profile on a machine that reaches no container
# registry: a Debian bookworm base made with debootstrap (once), then the app, Triton
# (CPU), Kafka, Redis and Prometheus images FROM it. See camstream/stack/docker_images.py.
#
#   docker/engine.sh start          # or any running engine (DOCKER_HOST)
#   docker/build-local.sh build     # [--only app,triton-cpu] [--no-cache] [--rebuild-base]
#   docker/build-local.sh list      # the images and their sizes
#   docker/compose-local.sh up -d --wait
#
# Runs camstream's environment (.venv, or CAMSTREAM_PYTHON): the Kafka jars come from the
# same Maven resolution and cache as the local stack's.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${CAMSTREAM_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || { echo "build-local: no $python: run make setup (or set CAMSTREAM_PYTHON)" >&2; exit 1; }
if [ -z "${DOCKER_HOST:-}" ] && [ ! -S /var/run/docker.sock ]; then
    eval "$(bash "$root/docker/engine.sh" env)"
    export DOCKER_HOST
fi
cd "$root"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec nice -n "${CAMSTREAM_BUILD_NICE:-10}" \
    "$python" -m camstream.stack.docker_images "$@"
