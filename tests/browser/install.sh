#!/usr/bin/env bash
# Installs the browser tests' npm packages (puppeteer-core, pinned by package-lock.json) into
# <dest>/node_modules with `npm ci`. Idempotent, and offline once installed: nothing is done
# while <dest> holds the same package.json and package-lock.json and their node_modules.
# The browser itself is Debian's Chromium (scripts/bootstrap): puppeteer-core downloads none.
#
#   tests/browser/install.sh <dest>
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=${1:?usage: install.sh <dest>}
mkdir -p "$dest"
if cmp -s "$here/package.json" "$dest/package.json" &&
  cmp -s "$here/package-lock.json" "$dest/package-lock.json" &&
  [[ -f $dest/node_modules/puppeteer-core/package.json ]]; then
  exit 0
fi
command -v npm >/dev/null || { echo "install.sh: npm not found (scripts/bootstrap installs it)" >&2; exit 1; }
cp "$here/package.json" "$here/package-lock.json" "$dest/"
(cd "$dest" && npm ci --no-audit --no-fund --ignore-scripts --silent)
