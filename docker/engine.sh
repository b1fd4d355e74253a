#!/usr/bin/env bash
# A private Docker engine for camstream, for machines where no system dockerd runs
# (CI, a dev container): its data root, exec root, socket, pidfile and log all live
# under the cache, ${CAMSTREAM_CACHE_DIR:-~/.cache/camstream}/docker (or
# CAMSTREAM_DOCKER_DIR), not in /var/lib/docker.
#
#   docker/engine.sh start    # start dockerd, or reuse the one already running; waits
#   eval "$(docker/engine.sh env)"   # DOCKER_HOST for docker / docker compose
#   docker/engine.sh status   # exit 0 when the engine answers
#   docker/engine.sh stop     # SIGTERM by pidfile, wait (containers are stopped), SIGKILL
#
# Install the engine first: docker/install-engine.sh. Needs root (dockerd does).
set -euo pipefail

root="${CAMSTREAM_DOCKER_DIR:-${CAMSTREAM_CACHE_DIR:-$HOME/.cache/camstream}/docker}"
data_root="$root/data"
exec_root="$root/exec"
socket="$root/docker.sock"
pidfile="$root/dockerd.pid"
logfile="$root/dockerd.log"
start_timeout_s="${CAMSTREAM_DOCKER_START_TIMEOUT_S:-60}"
# dockerd's own shutdown waits up to 15 s per container; then it stops containerd.
stop_timeout_s="${CAMSTREAM_DOCKER_STOP_TIMEOUT_S:-60}"

log() { echo "engine: $*" >&2; }

pid_alive() {
    local pid
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
        && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

answers() {
    [ -S "$socket" ] && DOCKER_HOST="unix://$socket" timeout 10 docker version \
        --format '{{.Server.Version}}' >/dev/null 2>&1
}

start() {
    if pid_alive; then
        wait_ready
        log "reusing dockerd $(cat "$pidfile") on unix://$socket"
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 \
        || { log "dockerd is not installed: run docker/install-engine.sh"; exit 1; }
    # unix sockets are limited to 107 bytes; containerd's lives under the exec root.
    if [ "${#exec_root}" -gt 60 ]; then
        log "$exec_root is too long for containerd's socket: set CAMSTREAM_DOCKER_DIR shorter"
        exit 1
    fi
    mkdir -p "$data_root" "$exec_root"
    rm -f "$pidfile" "$socket"  # stale: the process they named is gone
    log "starting dockerd (data root $data_root, log $logfile)"
    # setsid: the engine outlives this shell and its terminal's signals.
    setsid dockerd \
        --data-root "$data_root" \
        --exec-root "$exec_root" \
        --host "unix://$socket" \
        --pidfile "$pidfile" \
        >>"$logfile" 2>&1 </dev/null &
    wait_ready "$!"
    log "dockerd $(cat "$pidfile") ready on unix://$socket"
}

wait_ready() {
    local child="${1:-}" deadline=$((SECONDS + start_timeout_s))
    until answers; do
        if [ -n "$child" ] && ! kill -0 "$child" 2>/dev/null; then
            log "dockerd exited at start; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "dockerd did not answer within ${start_timeout_s}s; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
}

stop() {
    if ! pid_alive; then
        log "no dockerd running for $root"
        rm -f "$pidfile"
        return 0
    fi
    local pid deadline
    pid="$(cat "$pidfile")"
    log "stopping dockerd $pid"
    kill -TERM "$pid"
    deadline=$((SECONDS + stop_timeout_s))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "dockerd $pid still running after ${stop_timeout_s}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
    # dockerd removes its pidfile and socket on a clean exit; not after SIGKILL.
    rm -f "$pidfile" "$socket"
    log "dockerd stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export DOCKER_HOST=unix://$socket" ;;
    status)
        if pid_alive && answers; then
            log "dockerd $(cat "$pidfile") running on unix://$socket"
        else
            log "not running"
            exit 1
        fi
        ;;
    *)
        echo "usage: $0 start|stop|env|status" >&2
        exit 2
        ;;
esac
