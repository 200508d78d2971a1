#!/bin/sh
# The container's entry point. Accepts HTTP connections on $VISION_PORT (8080) and serves each
# one in a process of its own with front.sh, which hands it on to busybox httpd.
set -eu

export VISION_MODEL="${VISION_MODEL:-/models/detector.model}"
export VISION_CONFIG="${VISION_CONFIG:-/etc/vision/app.conf}"
port="${VISION_PORT:-8080}"

echo "vision-app: listening on port $port (model $VISION_MODEL, config $VISION_CONFIG)" >&2
# -ll: keep listening after the first client, running front.sh once per connection.
nc -ll -p "$port" -e /app/front.sh &
server=$!

# As PID 1 the shell gets no default action for TERM, so `docker stop` would wait for its
# timeout and kill; a trap lets it stop at once.
trap 'kill "$server" 2>/dev/null; exit 0' TERM INT
wait "$server"
