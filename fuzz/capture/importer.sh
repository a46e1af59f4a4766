#!/usr/bin/env bash
# Captures what ferry itself writes and later reads back: the changed-areas JSON that
# `importer extents --dirty` prints (from qemu-nbd's dirty bitmap) for delta_json, and the
# checkpoint chain file a full copy and a delta leave (TARGET.checkpoints.json) for
# checkpoint_chain. Needs a built importer (IMPORTER, default target/release/importer).
set -euo pipefail
cd "$(dirname "$0")"
importer=${IMPORTER:-$(cd ../.. && pwd)/target/release/importer}
seeds=$(cd .. && pwd)/seeds
dir=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill $pid; rm -rf "$dir"' EXIT
mkdir -p "$seeds/delta_json" "$seeds/checkpoint_chain"
qemu-img create -q -f qcow2 "$dir/d.qcow2" 4M
qemu-img bitmap --add "$dir/d.qcow2" bitmap0
qemu-io -f qcow2 -c "write -q -P 1 0 64k" -c "write -q -P 2 1M 4k" -c "write -q -z 2M 64k" "$dir/d.qcow2" >/dev/null
qemu-nbd -k "$dir/nbd.sock" -f qcow2 -r -B bitmap0 -t "$dir/d.qcow2" &
pid=$!
for _ in $(seq 100); do [[ -S $dir/nbd.sock ]] && break; sleep 0.05; done
src="nbd+unix:///?socket=$dir/nbd.sock"
"$importer" extents --dirty --dirty-bitmap bitmap0 "$src" >"$seeds/delta_json/importer-extents-dirty.json"
"$importer" extents "$src" >"$seeds/delta_json/importer-extents.json"
"$importer" copy "$src" "$dir/t.img" --checkpoint snapshot-1 >/dev/null
cp "$dir/t.img.checkpoints.json" "$seeds/checkpoint_chain/after-full-copy.json"
"$importer" copy "$src" "$dir/t.img" --changed-areas "$seeds/delta_json/importer-extents-dirty.json" \
    --checkpoint snapshot-2 --previous-checkpoint snapshot-1 >/dev/null
cp "$dir/t.img.checkpoints.json" "$seeds/checkpoint_chain/after-delta.json"
wc -c "$seeds"/delta_json/importer-* "$seeds"/checkpoint_chain/after-*
