#!/usr/bin/env bash
# CI for sm.js (js/). Assumes node >= 20.19, npm, Debian's chromium and
# tcpdump are installed, runs as root (tcpdump), and WSGATE_BIN points at a
# built gateway binary (default: ../target/debug/wsgate, relative to js/).
#
# Steps: npm ci, the committed bundle equals a fresh build, type check, unit
# and vector tests (both crypto backends), end-to-end tests in headless
# Chromium (secure and insecure page, reconnect, wire capture).
# Every step runs; the script exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")"
export WSGATE_BIN="${WSGATE_BIN:-../target/debug/wsgate}"

failed=()
step() {
  local name="$1"
  shift
  echo "::: sm.js: ${name}"
  local start=$SECONDS
  if "$@"; then
    echo "::: sm.js: ${name}: ok ($((SECONDS - start)) s)"
  else
    echo "::: sm.js: ${name}: FAILED ($((SECONDS - start)) s)"
    failed+=("${name}")
  fi
}

step "npm ci" npm ci --no-audit --no-fund
step "check-bundle" npm run --silent check-bundle
step "typecheck" npm run --silent typecheck
# The shared vectors in ../testdata must be there in CI.
step "unit tests" env WSGATE_REQUIRE_VECTORS=1 npm test --silent
step "e2e tests" npm run --silent test:e2e

if ((${#failed[@]} > 0)); then
  echo "::: sm.js: failed steps: ${failed[*]}"
  exit 1
fi
echo "::: sm.js: all steps passed"
