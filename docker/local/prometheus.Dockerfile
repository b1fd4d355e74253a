# Prometheus for compose's cpu profile on a machine without a registry: Debian
# bookworm's prometheus (2.42, which reads docker/prometheus.yml and the alert rules),
# with the official prom/prometheus image's interface: the binary as entrypoint (compose
# passes the flags), /prometheus for data owned by nobody, wget for the healthcheck.

ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus \
    && chown nobody:nogroup /prometheus

USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
