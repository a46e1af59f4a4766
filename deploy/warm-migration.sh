#!/usr/bin/env bash
# Drives a VMware warm migration of one disk through ferry's daemon (deploy/daemon-pod.yaml):
# a base copy, precopy deltas while the VM runs, then the cutover delta after the VM stopped.
# The daemon keeps the vSphere login and the VDDK connection between checkpoints.
#
#   FERRY=https://ferry-daemon:8444 TOKEN_FILE=./token CACERT=./ca.crt \
#   SOURCE='vddk://user%40vsphere.local@vcenter/?vm=moref=vm-42&thumbprint=AA:...' \
#   DISK='[ds1] vm/vm.vmdk' TARGET=/volumes/disk-0/disk.img \
#   PASSWORD_FILE=/run/secrets/vcenter/password LIBDIR=/opt/vmware-vix-disklib-distrib \
#   CHECKPOINT_CMD=./take-snapshot.sh CUTOVER_CMD=./stop-vm.sh PRECOPIES=3 INTERVAL=3600 \
#     deploy/warm-migration.sh
#
# CHECKPOINT_CMD takes a snapshot of the VM and prints the disk's change id at it (the
# checkpoint the copy records; the next delta counts changes from it). CUTOVER_CMD stops the VM;
# the last checkpoint is taken after it. PASSWORD_FILE and LIBDIR are paths inside the daemon's
# pod. The token is read from a file and passed to curl in a header file, never on its command
# line. Exits non-zero, naming the checkpoint, as soon as a copy fails: the target's checkpoint
# chain then still says which checkpoint it holds.
set -euo pipefail
: "${FERRY:?the daemon URL, https://HOST:8444}" "${TOKEN_FILE:?the bearer token file}" "${CACERT:?the CA that signed the daemon certificate}"
: "${SOURCE:?the vddk:// URL of the VM}" "${DISK:?the disk file, [datastore] dir/file.vmdk}" "${TARGET:?the target path in the daemon pod}"
: "${PASSWORD_FILE:?the password file in the daemon pod}" "${LIBDIR:=/opt/vmware-vix-disklib-distrib}"
: "${CHECKPOINT_CMD:?a command that takes a snapshot and prints the disk change id}" "${CUTOVER_CMD:?a command that stops the VM}"
: "${PRECOPIES:=3}" "${INTERVAL:=3600}"
headers=$(mktemp)
trap 'rm -f "$headers"' EXIT
chmod 600 "$headers"
printf 'Authorization: Bearer %s\nContent-Type: application/json\n' "$(cat "$TOKEN_FILE")" >"$headers"
api() { curl -sS --fail-with-body --cacert "$CACERT" -H @"$headers" "$@"; }
json_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

# copy CHECKPOINT [PREVIOUS]: one transfer (a delta when PREVIOUS is given), waited for.
copy() {
  local checkpoint=$1 previous=${2:-} delta=""
  if [ -n "$previous" ]; then
    delta=$(printf ',"delta":{"changes":"source"},"previous_checkpoint":%s' "$(json_string "$previous")")
  fi
  local body
  body=$(printf '{"source":%s,"target":%s,"vddk":{"file":%s,"libdir":%s},"secrets":{"password_file":%s},"checkpoint":%s%s}' \
    "$(json_string "$SOURCE")" "$(json_string "$TARGET")" "$(json_string "$DISK")" "$(json_string "$LIBDIR")" \
    "$(json_string "$PASSWORD_FILE")" "$(json_string "$checkpoint")" "$delta")
  local id
  id=$(api -X POST --data-binary "$body" "$FERRY/v1/transfers" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || { echo "checkpoint $checkpoint: the daemon refused the transfer" >&2; exit 1; }
  while :; do
    local answer state
    answer=$(api "$FERRY/v1/transfers/$id")
    state=$(printf '%s' "$answer" | sed -n 's/.*"state":"\([^"]*\)".*/\1/p')
    case "$state" in
      succeeded) echo "checkpoint $checkpoint: transfer $id succeeded: $answer"; return ;;
      failed|cancelled) echo "checkpoint $checkpoint: transfer $id $state: $answer" >&2; exit 1 ;;
    esac
    sleep 1
  done
}

previous=$($CHECKPOINT_CMD)
copy "$previous"
for _ in $(seq 1 "$PRECOPIES"); do
  sleep "$INTERVAL"
  next=$($CHECKPOINT_CMD)
  copy "$next" "$previous"
  previous=$next
done
$CUTOVER_CMD
final=$($CHECKPOINT_CMD)
copy "$final" "$previous"
echo "cutover done: $TARGET holds checkpoint $final"
