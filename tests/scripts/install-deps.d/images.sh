#!/usr/bin/env bash
# Container images without a registry (tests/tests/images.rs): Debian's docker.io (the
# engine, started here when it does not run), docker-compose (Compose v1) and
# debootstrap; a Debian bookworm base made with debootstrap (cached as a tarball in
# tests/.tools/images) imported as edgepipe-local/debian:bookworm, and a Mosquitto image
# built from it (tests/docker/mosquitto.Dockerfile); the pod sandbox image of the real node
# (tests/docker/pause), and the packages that node needs. Needs root. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
export PATH="$PATH:/usr/sbin:/sbin"
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: images: not root, skipping the Docker engine and the local base images" >&2
    exit 0
fi
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# The real node (tests/kit/src/node.rs): CNI plugins, and conntrack for kube-proxy;
# containerd and runc come with docker.io.
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's client (20.10) talks to Debian's engine; another docker on PATH may be newer.
DOCKER=/usr/bin/docker
if ! "$DOCKER" info >/dev/null 2>&1; then
    echo "install-deps: starting dockerd (log in /tmp/dockerd.log)"
    mkdir -p /run
    nohup dockerd >/tmp/dockerd.log 2>&1 &
    for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    "$DOCKER" info >/dev/null 2>&1 || { echo "dockerd did not start:" >&2; tail -20 /tmp/dockerd.log >&2; exit 1; }
fi
CACHE="$ROOT/tests/.tools/images"
BASE=edgepipe-local/debian:bookworm
if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    mkdir -p "$CACHE"
    if [ ! -s "$CACHE/debian-bookworm-minbase.tar" ]; then
        echo "install-deps: debootstrap bookworm (minbase)"
        rm -rf "$CACHE/rootfs"
        debootstrap --variant=minbase bookworm "$CACHE/rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1
        tar -C "$CACHE/rootfs" -cf "$CACHE/debian-bookworm-minbase.tar" .
        rm -rf "$CACHE/rootfs"
    fi
    "$DOCKER" import "$CACHE/debian-bookworm-minbase.tar" "$BASE" >/dev/null
fi
if ! "$DOCKER" image inspect edgepipe-local/mosquitto:2 >/dev/null 2>&1; then
    echo "install-deps: edgepipe-local/mosquitto:2 from $BASE"
    DOCKER_BUILDKIT=1 "$DOCKER" build -q -t edgepipe-local/mosquitto:2 \
        -f "$ROOT/tests/docker/mosquitto.Dockerfile" "$ROOT/tests/docker" >/dev/null
fi
if ! "$DOCKER" image inspect edgepipe-local/pause:3.10 >/dev/null 2>&1; then
    echo "install-deps: edgepipe-local/pause:3.10 from tests/docker/pause"
    context="$(mktemp -d)"
    cp "$ROOT/tests/docker/pause/Dockerfile" "$context/"
    gcc -static -Os -s -o "$context/pause" "$ROOT/tests/docker/pause/pause.c"
    DOCKER_BUILDKIT=1 "$DOCKER" build -q -t edgepipe-local/pause:3.10 "$context" >/dev/null
    rm -rf "$context"
fi
