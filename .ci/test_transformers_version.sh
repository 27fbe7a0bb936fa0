#!/usr/bin/env bash
# Runs rscc's compatibility subset (.ci/floor_tests.txt: model, processor, remote-code, generation, CLI and data
# tests) against one transformers release, in a fresh virtual environment:
#
#     bash .ci/test_transformers_version.sh 5.25.0      # or a minor version, 5.23: its newest patch release
#
# Widening the tested window when a release appears is this command passing on it, then the new ceiling in
# TESTED_TRANSFORMERS (rscc/compat_rscc.py); setup.cfg admits every release up to the next major already.
# Below the window's floor, rscc refuses to import: lower TESTED_TRANSFORMERS first to try an older release.
set -euo pipefail
version="${1:?usage: bash .ci/test_transformers_version.sh TRANSFORMERS_VERSION (e.g. 5.25.0 or 5.23)}"
cd "$(dirname "$0")/.."

case "$version" in
    *.*.*) requirement="transformers==$version" ;;
    *.*) requirement="transformers==$version.*" ;;
    *) echo "TRANSFORMERS_VERSION $version: expected MAJOR.MINOR or MAJOR.MINOR.PATCH" >&2; exit 2 ;;
esac

venv="${RSCC_VERSION_VENV:-$(mktemp -d)/venv}"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
install_log="$(dirname "$venv")/install-transformers-$version.log"
# The package with its test extras first, then the release under test over the window's newest (pip may warn that
# it lies outside setup.cfg's range: that is the point of the check).
if ! { DS_BUILD_OPS=0 pip install --quiet --disable-pip-version-check torch==2.13.0 -e ".[test]" &&
       pip install --quiet --disable-pip-version-check "$requirement"; } >"$install_log" 2>&1; then
    grep -v "^WARNING: Location" "$install_log" >&2
    exit 1
fi
python -c "import transformers; print('transformers', transformers.__version__, 'for the compatibility subset')"

mapfile -t subset < .ci/floor_tests.txt
HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider "${subset[@]}"
