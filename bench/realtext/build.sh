#!/usr/bin/env bash
# Build the real-text corpus and its query set in one go (see README.md beside this file):
#   bench/realtext/build.sh [corpus.py options]      e.g. --seed 15 --posts 30000
# Needs apt (the .debs are downloaded once into .local/realtext/debs) and the bench's pinned tokenizer.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/python ] || scripts/bootstrap
.venv/bin/python -m pip install --disable-pip-version-check -q -r bench/realtext/requirements.txt
.venv/bin/python bench/realtext/corpus.py "$@"
.venv/bin/python bench/realtext/queries.py
