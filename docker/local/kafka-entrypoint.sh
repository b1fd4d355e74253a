#!/bin/bash
# The broker's start in camstream-kafka:local, as the official apache/kafka image does
# it: every KAFKA_* variable (but the JVM's own) becomes a server.properties line, its
# name lower-cased with "_" -> ".", "__" -> "_" and "___" -> "-" (KAFKA_LOG_DIRS ->
# log.dirs); the log dirs are formatted with CLUSTER_ID on first start (again is a
# no-op); then the broker runs in the foreground as PID 1 (SIGTERM stops it cleanly).
set -euo pipefail

home=/opt/kafka
config="$home/config/server.properties"
classpath="$home/libs/*"
log4j="-Dlog4j2.configurationFile=$home/config/log4j2.properties"

: >"$config"
for name in $(compgen -e); do
    case "$name" in
        KAFKA_HEAP_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_OPTS | KAFKA_GC_LOG_OPTS | \
            KAFKA_LOG4J_OPTS | KAFKA_JMX_OPTS | KAFKA_VERSION) continue ;;
        KAFKA_*) ;;
        *) continue ;;
    esac
    key="${name#KAFKA_}"
    key="${key,,}"
    key="${key//___/-}"
    key="${key//__/@}"
    key="${key//_/.}"
    key="${key//@/_}"
    printf '%s=%s\n' "$key" "${!name}" >>"$config"
done
# A small heap needs a small log-cleaner buffer (the default 128 MiB can exhaust it).
grep -q '^log.cleaner.dedupe.buffer.size=' "$config" \
    || echo "log.cleaner.dedupe.buffer.size=16777216" >>"$config"

if [ -z "${CLUSTER_ID:-}" ]; then
    echo "kafka: set CLUSTER_ID (a base64 UUID, e.g. from kafka-storage random-uuid)" >&2
    exit 1
fi
java -Xmx256m -XX:TieredStopAtLevel=1 "$log4j" -cp "$classpath" kafka.tools.StorageTool \
    format --config "$config" --cluster-id "$CLUSTER_ID" --ignore-formatted

# shellcheck disable=SC2086  # the *_OPTS are word lists, as in kafka-run-class.sh
exec java ${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G} \
    ${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true} \
    ${KAFKA_OPTS:-} "$log4j" -cp "$classpath" kafka.Kafka "$config"
