# Redis for compose's cpu profile on a machine without a registry: Debian bookworm's
# redis-server (7.0), with the official redis image's interface: data in /data (the
# working directory, owned by the redis user), redis-server as the command, and
# protected mode off when no config file is given, as the official entrypoint does (the
# compose network reaches it by name; its published port stays on 127.0.0.1).

ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown redis:redis /data

COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh

USER redis
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server"]
