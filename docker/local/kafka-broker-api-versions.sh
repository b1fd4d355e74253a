#!/bin/sh
# kafka-broker-api-versions.sh as in the official image (compose's healthcheck runs it):
# an ApiVersions round trip to --bootstrap-server. A small, quickly started JVM: it
# runs every healthcheck interval.
exec java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
    -cp '/opt/kafka/libs/*:/opt/kafka/tools/*' \
    org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
