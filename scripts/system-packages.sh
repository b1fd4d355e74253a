#!/usr/bin/env bash
# Debian packages camstream's tests and sources need beyond the machine's base image.
# Installs only what is missing (apt-get as root); prints what it installs.
set -euo pipefail

packages=(
    # producers: a live RTSP camera stand-in for the producer tests
    # (tests/support/rtsp_server.py, run with Debian's python3 for gi)
    python3-gi
    gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-ugly
    # the live view's browser tests (headless Chromium, driven through chromedriver)
    chromium
    chromium-driver
    # `camstream up --prometheus` and the alert-rule tests: a real Prometheus, promtool
    prometheus
)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "system-packages: run as root, or install: ${missing[*]}" >&2
    exit 1
fi
echo "system-packages: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
