#!/usr/bin/env bash
# Captures the NBD seeds from real servers (nbdkit, qemu-nbd) with capture/nbd.py. Rerun when
# the client's handshake or the targets' input formats change.
set -euo pipefail
cd "$(dirname "$0")"
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT

serve() { # NAME COMMAND...: starts a server on $dir/NAME.sock
    local sock=$dir/$1.sock
    shift
    "$@" &
    pids+=($!)
    for _ in $(seq 100); do [[ -S $sock ]] && return; sleep 0.05; done
    echo "server for $sock did not start" >&2
    return 1
}

# nbdkit: sparse data (data, holes), structured replies and base:allocation.
serve data nbdkit -f -U "$dir/data.sock" data "@0 1 2 3 4 @8192 5*1000 @65536 7*4096 @1048064 9*100" size=1M
./nbd.py "$dir/data.sock" nbdkit-data --structured
# nbdkit without structured replies: simple replies.
serve mem nbdkit -f -U "$dir/mem.sock" memory 1M
./nbd.py "$dir/mem.sock" nbdkit-memory-simple
# nbdkit that is not fixed-newstyle: the NBD_OPT_EXPORT_NAME path.
serve old nbdkit -f --mask-handshake=0 -U "$dir/old.sock" memory 1M
./nbd.py "$dir/old.sock" nbdkit-not-fixed --structured
# nbdkit failing every read and flush: structured error chunks.
serve err nbdkit -f -U "$dir/err.sock" --filter=error memory 1M error=EIO error-rate=1
./nbd.py "$dir/err.sock" nbdkit-errors --structured
# qemu-nbd: a qcow2 image with a dirty bitmap (qemu-nbd -B), block sizes announced.
qemu-img create -q -f qcow2 "$dir/d.qcow2" 1M
qemu-img bitmap --add "$dir/d.qcow2" bitmap0
qemu-io -f qcow2 -c "write -q -P 1 0 64k" -c "write -q -P 2 512k 4k" -c "write -q -z 768k 64k" "$dir/d.qcow2" >/dev/null
serve qemu qemu-nbd -k "$dir/qemu.sock" -f qcow2 -r -B bitmap0 -t -e 4 "$dir/d.qcow2"
./nbd.py "$dir/qemu.sock" qemu-nbd-bitmap --structured --bitmap bitmap0
# qemu-nbd asked for an export it does not have (NBD_REP_ERR_UNKNOWN), and for a missing bitmap.
serve named qemu-nbd -k "$dir/named.sock" -x other -f qcow2 -r -t "$dir/d.qcow2"
./nbd.py "$dir/named.sock" qemu-nbd-unknown-export --export disk --structured --handshake-only
./nbd.py "$dir/named.sock" qemu-nbd-no-bitmap --export other --structured --bitmap nope --handshake-only
