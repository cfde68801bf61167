#!/usr/bin/env bash
# What the web console's browser test needs, made ready when missing:
# Chromium and its WebDriver from the system's packages. Prints the
# variables the test reads:
#
#   scripts/browser.sh    prints BOOKSHELF_CHROMEDRIVER=/usr/bin/chromedriver BOOKSHELF_CHROMIUM=/usr/bin/chromium
set -euo pipefail
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "installing chromium and chromium-driver from the system's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium chromium-driver >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q chromium chromium-driver >&2; }
fi
echo "BOOKSHELF_CHROMEDRIVER=$(command -v chromedriver) BOOKSHELF_CHROMIUM=$(command -v chromium)"
