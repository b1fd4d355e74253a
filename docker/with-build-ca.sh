#!/bin/sh
# with-build-ca COMMAND [ARG...]: run COMMAND (pip, uv) inside an image build with the
# CA bundle served at $BUILD_CA_URL, for machines whose egress to PyPI goes through a
# TLS-intercepting proxy. docker/build-local.sh serves the bundle on loopback for the
# build's duration; it is fetched here, used and deleted before the RUN step ends, so it
# is in no image layer. Without BUILD_CA_URL (the usual case) COMMAND runs as it is.
set -eu
if [ -z "${BUILD_CA_URL:-}" ]; then
    exec "$@"
fi
ca="$(mktemp /tmp/build-ca.XXXXXX)"
trap 'rm -f "$ca"' EXIT
trap 'exit 130' INT TERM
python3 - "$BUILD_CA_URL" "$ca" <<'PY'
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=30) as response:
    data = response.read()
with open(sys.argv[2], "wb") as out:
    out.write(data)
PY
SSL_CERT_FILE="$ca" PIP_CERT="$ca" REQUESTS_CA_BUNDLE="$ca" "$@"
