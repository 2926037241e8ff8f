#!/usr/bin/env bash
# Create the teacher's CurveZMQ key pair and one key pair per edge, and register the edges.
#   deploy/keys.sh kitchen-cam garage-cam
# Copy <keys_dir>/edges/NAME.key_secret and <keys_dir>/teacher.key to each edge.
set -euo pipefail
gemma-teacher keys init
for edge in "$@"; do
  gemma-teacher keys new-edge "$edge"
done
gemma-teacher keys list
