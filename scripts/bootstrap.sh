#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: uv, the application environment (.venv), the
# model runtime environment (.venv-model), then `camstream setup` (Kafka jars, sample
# videos and photos, model export, drift reference). Downloads are cached outside the
# clone, under ${CAMSTREAM_CACHE_DIR:-~/.cache/camstream}; a second run takes seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${CAMSTREAM_CACHE_DIR:-$HOME/.cache/camstream}"
uv_version="0.13.8"
uv="$cache/uv-$uv_version/bin/uv"
export UV_CACHE_DIR="$cache/uv-cache"
export UV_PYTHON_DOWNLOADS=never   # use this machine's Python 3.11; fetch none

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "bootstrap: '$1' is required: $2" >&2; exit 1; }
}
need python3 "install Python 3.11"
need java "install a JDK 17+ (apt-get install -y openjdk-17-jre-headless)"
need mvn "install Maven (apt-get install -y maven)"

python=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        python="$(command -v "$candidate")"
        break
    fi
done
[ -n "$python" ] || { echo "bootstrap: Python 3.11 is required (python3.11 on PATH)" >&2; exit 1; }

if [ ! -x "$uv" ]; then
    echo "bootstrap: installing uv $uv_version into $cache"
    "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --target "$cache/uv-$uv_version" "uv==$uv_version"
fi

bash scripts/system-packages.sh
# Docker Compose v2 (no engine): the unit tests validate docker-compose.yml's profiles.
bash docker/install-engine.sh --compose-only

echo "bootstrap: application environment (.venv)"
"$uv" sync --frozen --quiet --python "$python"

echo "bootstrap: model runtime environment (.venv-model)"
[ -x .venv-model/bin/python ] || "$uv" venv --quiet --python "$python" .venv-model
"$uv" pip sync --quiet -p .venv-model/bin/python requirements/model.txt

echo "bootstrap: camstream setup (Kafka jars, samples, model export)"
.venv/bin/camstream setup
