#!/usr/bin/env bash
# Prints the path of a python with the tests' PyPI packages
# (scripts/python-requirements.txt), made once into a virtual environment
# in the cache and made again when the requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}
venv="$cache/venv"
wanted=$(sha256sum scripts/python-requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
    echo "installing the tests' Python packages into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/python-requirements.txt >&2
    echo "$wanted" > "$venv/requirements.sha256"
fi
echo "$venv/bin/python"
