#!/usr/bin/env bash
# The mongo service's entrypoint (docker-compose.yml): makes the replica set's key file, then hands over to
# the image's own entrypoint with the same arguments. A replica set with authentication needs a key file
# (members authenticate to each other with it, even a lone member). It is generated once, at the path the
# command's --keyFile names (in the mongo-config volume), and kept; mongod refuses one that others can read.
# The image's entrypoint leaves --replSet and --keyFile out of its first-start phase, the one that runs
# deploy/mongo/*.js, so the users are created on a plain server first.
set -euo pipefail
keyfile=""
previous=""
for arg in "$@"; do
  if [ "$previous" = "--keyFile" ]; then keyfile="$arg"; fi
  previous="$arg"
done
if [ -n "$keyfile" ]; then
  if [ ! -s "$keyfile" ]; then
    # 756 random bytes as base64 (1008 characters): within mongod's 6-1024 and its base64 alphabet.
    (umask 077 && head -c 756 /dev/urandom | base64 -w 0 > "$keyfile")
  fi
  chown mongodb:mongodb "$keyfile"
  chmod 400 "$keyfile"
fi
exec docker-entrypoint.sh "$@"
