#!/usr/bin/env bash
# `docker compose` for the cpu profile on a machine without a registry: the engine of
# docker/engine.sh (unless DOCKER_HOST is set or a system engine runs), the images of
# docker/build-local.sh (docker/compose.local.yml), and the host's CA bundle for
# sample-data when egress goes through a TLS-intercepting proxy
# (docker/compose.egress-ca.yml). Arguments go to docker compose:
#   docker/compose-local.sh up -d --wait
#   docker/compose-local.sh ps
#   docker/compose-local.sh down -v
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${DOCKER_HOST:-}" ] && [ ! -S /var/run/docker.sock ]; then
    eval "$(bash "$root/docker/engine.sh" env)"
    export DOCKER_HOST
fi
files=(-f "$root/docker-compose.yml" -f "$root/docker/compose.local.yml")
if [ -z "${CAMSTREAM_EGRESS_CA_BUNDLE:-}" ] \
    && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null \
    && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export CAMSTREAM_EGRESS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi
if [ -n "${CAMSTREAM_EGRESS_CA_BUNDLE:-}" ]; then
    files+=(-f "$root/docker/compose.egress-ca.yml")
fi
exec docker compose --project-directory "$root" "${files[@]}" --profile "${CAMSTREAM_COMPOSE_PROFILE:-cpu}" "$@"
