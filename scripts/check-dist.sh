#!/usr/bin/env bash
# Fail when a committed bundle (actions/<name>/dist, packages/cli/dist), a generated action.yml or a
# generated doc is stale: rebuild everything, then ask git whether anything changed.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run build
node_modules/.bin/node scripts/gen-actions.mjs
node_modules/.bin/node scripts/gen-docs.mjs
changes="$(git status --porcelain -- actions packages/cli/dist action.yml docs/reference.md docs/errors.md)"
if [ -n "$changes" ]; then
  echo "check-dist: committed build output is stale; run 'npm run build && npm run docs' and commit:" >&2
  echo "$changes" >&2
  git --no-pager diff --stat -- actions packages/cli/dist action.yml docs >&2 || true
  exit 1
fi
echo "check-dist: bundles, action.yml files and generated docs are up to date"
