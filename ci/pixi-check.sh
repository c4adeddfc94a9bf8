#!/usr/bin/env bash
# What the hosted pixi CI runs in one environment (default: `default`): install from the lock only,
# check that what is installed is what the lock says, lint, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
env_name="${1:-default}"

pixi install --locked -e "$env_name"
pixi run --locked -e "$env_name" ensemble-kit env check      # exit 3 and every difference named on drift
pixi run --locked -e "$env_name" ensemble-kit env
pixi run --locked -e lint lint
pixi run --locked -e "$env_name" test
