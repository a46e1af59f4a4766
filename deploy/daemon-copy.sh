#!/usr/bin/env bash
# Copies a VM's disks through ferry's daemon (deploy/daemon-pod.yaml) and waits for them:
#   FERRY=https://ferry-daemon:8444 TOKEN_FILE=./token CACERT=./ca.crt \
#     deploy/daemon-copy.sh nbd://source-host/disk0 nbd://source-host/disk1
# Disk N goes to /volumes/disk-N/disk.img. Each copy records checkpoint "base" in its target's
# chain (deploy/warm-migration.sh takes it on with deltas and the cutover). The token is read
# from a file and passed to curl in a header file, never on its command line.
set -euo pipefail
: "${FERRY:?the daemon URL, https://HOST:8444}" "${TOKEN_FILE:?the bearer token file}" "${CACERT:?the CA that signed the daemon certificate}"
headers=$(mktemp)
trap 'rm -f "$headers"' EXIT
chmod 600 "$headers"
printf 'Authorization: Bearer %s\nContent-Type: application/json\n' "$(cat "$TOKEN_FILE")" >"$headers"
api() { curl -sS --fail-with-body --cacert "$CACERT" -H @"$headers" "$@"; }

ids=()
n=0
for source in "$@"; do
  body=$(printf '{"source":"%s","target":"/volumes/disk-%d/disk.img","checkpoint":"base","options":{"verify":true}}' "$source" "$n")
  id=$(api -X POST --data-binary "$body" "$FERRY/v1/transfers" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
  echo "disk $n: transfer $id"
  ids+=("$id")
  n=$((n + 1))
done
status=0
for id in "${ids[@]}"; do
  while :; do
    answer=$(api "$FERRY/v1/transfers/$id")
    state=$(printf '%s' "$answer" | sed -n 's/.*"state":"\([^"]*\)".*/\1/p')
    case "$state" in
      succeeded) echo "$id: succeeded"; break ;;
      failed|cancelled) echo "$id: $state: $answer" >&2; status=1; break ;;
    esac
    sleep 2
  done
done
exit "$status"
