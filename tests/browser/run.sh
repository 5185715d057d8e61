#!/usr/bin/env bash
# The dashboard's browser test (ctest: browser.dashboard): installs puppeteer-core into
# <build-dir>/browser (install.sh; offline once there), then runs dashboard.test.js against the
# built `crew`, its screenshot written to <build-dir>/dashboard.png.
#
#   tests/browser/run.sh <crew> <build-dir>
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crew=${1:?usage: run.sh <crew> <build-dir>}
build=${2:?usage: run.sh <crew> <build-dir>}
command -v node >/dev/null || { echo "run.sh: node not found (scripts/bootstrap installs it)" >&2; exit 1; }
[[ -x ${CREW_CHROMIUM:-/usr/bin/chromium} ]] ||
  { echo "run.sh: no Chromium at ${CREW_CHROMIUM:-/usr/bin/chromium} (scripts/bootstrap installs it)" >&2; exit 1; }
bash "$here/install.sh" "$build/browser"
NODE_PATH="$build/browser/node_modules" exec node "$here/dashboard.test.js" "$crew" "$build/dashboard.png"
