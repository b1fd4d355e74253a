#!/bin/sh
# As the official redis image's entrypoint: `redis-server` without a config file gets
# --protected-mode no, so that other containers can connect (Redis' built-in default
# refuses every client but loopback when no password is set).
set -eu
if [ "${1:-}" = redis-server ]; then
    case "${2:-}" in
        *.conf) ;;
        *)
            shift
            set -- redis-server --protected-mode no "$@"
            ;;
    esac
fi
exec "$@"
