# Mosquitto laid out as the public eclipse-mosquitto image is (configuration in
# /mosquitto/config, data in /mosquitto/data, uid 1883), built from the local Debian base
# (tests/scripts/install-deps.d/images.sh): compose.yaml runs it unchanged, without a
# registry.
ARG BASE=edgepipe-local/debian:bookworm
FROM ${BASE}
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends mosquitto mosquitto-clients; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log; \
    chown -R 1883:1883 /mosquitto
EXPOSE 1883
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
