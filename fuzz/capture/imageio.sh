#!/usr/bin/env bash
# Captures answers of the real ovirt-imageio daemon (the repository's peer, .peers/venv, as
# importer/tests/common/imageio.rs starts it) for the imageio_extents and http_headers seeds:
# OPTIONS, extents (zero and dirty) of an NBD ticket (qemu-nbd with a dirty bitmap) and of a
# file ticket, and the Content-Range of ranged GETs.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
seeds=$(cd .. && pwd)/seeds
daemon=$root/.peers/venv/bin/ovirt-imageio
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
control=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$dir/conf.d" "$dir/run" "$seeds/imageio_extents" "$seeds/http_headers"
cat >"$dir/conf.d/99-capture.conf" <<CONF
[daemon]
drop_privileges = false
systemd_enable = false
run_dir = $dir/run
poll_interval = 0.1
[tls]
enable = false
[remote]
host = 127.0.0.1
port = $port
[local]
enable = true
socket =
[control]
transport = tcp
port = $control
[profile]
filename = $dir/run/profile
[handler_logfile]
args = ('$dir/daemon.log',)
CONF
"$daemon" --conf-dir "$dir" 2>"$dir/stderr.log" &
pids+=($!)

# An NBD ticket: a qcow2 image with data, zeros and holes, and a dirty bitmap.
qemu-img create -q -f qcow2 "$dir/d.qcow2" 4M
qemu-img bitmap --add "$dir/d.qcow2" bitmap0
qemu-io -f qcow2 -c "write -q -P 1 0 64k" -c "write -q -P 2 1M 4k" -c "write -q -z 2M 64k" "$dir/d.qcow2" >/dev/null
qemu-nbd -k "$dir/nbd.sock" -f qcow2 -r -B bitmap0 -t -e 8 "$dir/d.qcow2" &
pids+=($!)
# A file ticket: imageio's file backend reports one data extent.
head -c 1048576 /dev/urandom >"$dir/f.raw"

for _ in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$control/tickets/" && [[ -S $dir/nbd.sock ]] && break
    sleep 0.1
done
ticket() { # ID SIZE URL DIRTY
    curl -sf -X PUT "http://127.0.0.1:$control/tickets/$1" -H 'Content-Type: application/json' \
        -d "{\"uuid\": \"$1\", \"size\": $2, \"url\": \"$3\", \"ops\": [\"read\"], \"timeout\": 300, \"dirty\": $4, \"transfer_id\": \"transfer-$1\"}" >/dev/null
}
ticket nbd-ticket 4194304 "nbd:unix:$dir/nbd.sock" true
ticket file-ticket 1048576 "file://$dir/f.raw" false
img=http://127.0.0.1:$port/images

curl -sf -X OPTIONS "$img/nbd-ticket" -o "$seeds/imageio_extents/options-nbd.json"
curl -sf -X OPTIONS "$img/file-ticket" -o "$seeds/imageio_extents/options-file.json"
curl -sf "$img/nbd-ticket/extents?context=zero" -o "$seeds/imageio_extents/zero-nbd.json"
curl -sf "$img/nbd-ticket/extents?context=dirty" -o "$seeds/imageio_extents/dirty-nbd.json"
curl -sf "$img/file-ticket/extents?context=zero" -o "$seeds/imageio_extents/zero-file.json"

# http_headers inputs (see its header): flags, offset (u32), length - 1 (u16), size (u64),
# limit (u16), the Content-Range value, then the body in chunks of at most 255 bytes.
range_seed() { # NAME TICKET SIZE OFFSET LENGTH
    local name=$1 ticket=$2 size=$3 offset=$4 len=$5
    local last=$((offset + len - 1))
    curl -sf -D "$dir/h" -o "$dir/b" -H "Range: bytes=$offset-$last" "$img/$ticket"
    python3 - "$dir/h" "$dir/b" "$seeds/http_headers/$name" "$offset" "$len" "$size" <<'PY'
import struct, sys
head, body, out, offset, length, size = sys.argv[1:]
status = open(head).readline().split()[1]
cr = [l.split(":", 1)[1].strip() for l in open(head) if l.lower().startswith("content-range:")][0].encode()
body = open(body, "rb").read()
flags = {"206": 0, "200": 1}[status]
data = bytes([flags]) + struct.pack(">IHQH", int(offset), int(length) - 1, int(size), 4096)
data += bytes([len(cr)]) + cr
for i in range(0, len(body), 255):
    c = body[i:i + 255]
    data += bytes([len(c)]) + c
open(out, "wb").write(data)
print("%s: %s, Content-Range %s, %d bytes" % (out, status, cr.decode(), len(data)))
PY
}
range_seed imageio-nbd-first-byte nbd-ticket 4194304 0 1
range_seed imageio-nbd-data nbd-ticket 4194304 1048576 512
range_seed imageio-nbd-tail nbd-ticket 4194304 4194048 256
range_seed imageio-file-range file-ticket 1048576 4096 1000
ls -l "$seeds/imageio_extents"
