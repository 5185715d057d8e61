#!/usr/bin/env bash
# Installs the Node.js benchmark anchors (bench/node/package.json) into <dest>/node_modules.
# Idempotent: does nothing when the pinned versions are already there.
#
#   bench/node/install.sh <dest>
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=${1:?usage: install.sh <dest>}
mkdir -p "$dest"
if [[ -f $dest/package.json ]] && cmp -s "$here/package.json" "$dest/package.json" &&
  [[ -d $dest/node_modules ]]; then
  exit 0
fi
command -v npm >/dev/null || { echo "install.sh: npm not found (scripts/bootstrap installs it)" >&2; exit 1; }
cp "$here/package.json" "$dest/package.json"
(cd "$dest" && npm install --no-audit --no-fund --silent --no-package-lock)
