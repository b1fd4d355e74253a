# Apache Kafka (KRaft, broker and controller in one JVM) for compose's cpu profile on a
# machine without a registry: a JRE from Debian and the broker jars camstream's local
# stack resolves from Maven Central (camstream/stack/kafka-pom.xml, the same cached
# folder), plus kafka-tools for the healthcheck. docker/build-local.sh assembles the
# build context (libs/, tools/, log4j2.properties and the scripts beside this file).
#
# It keeps the interface of the official apache/kafka image that docker-compose.yml
# configures: KAFKA_* variables become server.properties (KAFKA_LOG_DIRS -> log.dirs),
# CLUSTER_ID formats the log dirs on first start, the broker runs as appuser (uid 1000)
# with /var/lib/kafka/data, and /opt/kafka/bin/kafka-broker-api-versions.sh exists.

ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# The JRE's post-install links its man pages: slim images have no man1 folder.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless passwd \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 1000 --home-dir /opt/kafka --no-create-home appuser \
    && mkdir -p /opt/kafka/bin /opt/kafka/config /var/lib/kafka/data \
    && chown appuser /opt/kafka/config /var/lib/kafka/data

COPY libs/ /opt/kafka/libs/
COPY tools/ /opt/kafka/tools/
COPY log4j2.properties /opt/kafka/config/log4j2.properties
COPY kafka-entrypoint.sh kafka-broker-api-versions.sh /opt/kafka/bin/

USER appuser
WORKDIR /opt/kafka
EXPOSE 9092
ENTRYPOINT ["/opt/kafka/bin/kafka-entrypoint.sh"]
