#!/usr/bin/env bash
# Regenerate the hash-pinned pip locks from pyproject.toml (one command: bash environments/regenerate.sh).
#
# torch is pinned to the CPU build in torch-cpu.txt and kept OUT of the hashed locks: PyPI's Linux
# torch wheel is the multi-GB CUDA build, and the +cpu wheel lives on PyTorch's own index, whose files
# we cannot promise to hash identically everywhere. Its dependencies ARE in the locks, hashed.
# Where the +cpu wheel comes from while resolving: $TORCH_FIND_LINKS, else /opt/wheels if present,
# else PyTorch's CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${TORCH_FIND_LINKS:-}" ]; then
  torch_src=(--find-links "$TORCH_FIND_LINKS")
elif [ -d /opt/wheels ]; then
  torch_src=(--find-links /opt/wheels)
else
  torch_src=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

common=(--quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
        --no-emit-trusted-host --unsafe-package torch --constraint environments/torch-cpu.txt
        --resolver backtracking --newline LF "${torch_src[@]}")

# Linux x86_64, CPU: the runtime lock and the dev/test/CI lock (a superset).
pip-compile "${common[@]}" --output-file environments/linux-cpu.txt pyproject.toml
pip-compile "${common[@]}" --extra dev --output-file environments/linux-cpu-dev.txt pyproject.toml
# The dev extra names the project itself (ensemble-kit[test]); pip-compile then pins it as a local
# `ensemble-kit @ file://...` line, which is not hashable and not a dependency: drop it (installed with -e .).
sed -i -e '/^ensemble-kit @ file:/,/^    # via ensemble-kit (pyproject.toml)$/d' \
       -e '/^# WARNING: pip install will require the following package to be hashed\.$/,/^# Consider using a hashable URL/d' \
       environments/linux-cpu-dev.txt
echo "wrote environments/linux-cpu.txt environments/linux-cpu-dev.txt"
