#!/usr/bin/env bash
# What the hosted pixi CI runs (ci/pixi-ci.yml): install from the lock only, check that what is installed
# is what the lock says, print the fingerprint, lint, validate the manifest, run the tests.
# $1: the user environment to check (default: `default`); the tests run in `test` (same solve group).
set -euo pipefail
cd "$(dirname "$0")/.."
env_name="${1:-default}"

for env in "$env_name" test lint; do
  pixi install --locked -e "$env"
done
pixi run --locked -e "$env_name" ensemble-kit env check      # exit 3 and every difference named on drift
pixi run --locked -e "$env_name" ensemble-kit env
pixi run --locked -e lint lint
pixi run --locked -e test check-manifest
pixi run --locked -e test test
