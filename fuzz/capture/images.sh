#!/usr/bin/env bash
# Writes the seeds of the image-format targets (vmdk, vmdk_descriptor, ovf, ova_tar): the
# descriptors qemu-img writes, a tiny VMware-style stream-optimized extent (4 KiB grains, one
# compressed grain, its grain table, directory, footer and end-of-stream marker, laid out as the
# VMDK 5.0 specification says; qemu-img reads it back), that extent without its footer, and an
# OVA of it packed by GNU tar.
#
#   capture/images.sh
set -euo pipefail
seeds="$(cd "$(dirname "$0")/.." && pwd)/seeds"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$seeds"/{vmdk,vmdk_descriptor,ovf,ova_tar}

truncate -s 64M "$dir/raw"
for f in monolithicSparse monolithicFlat twoGbMaxExtentSparse; do
  qemu-img convert -q -O vmdk -o subformat=$f "$dir/raw" "$dir/$f.vmdk"
done
head -c 512 "$dir/monolithicFlat.vmdk" | tr -d '\000' >"$seeds/vmdk_descriptor/monolithicFlat.txt"
head -c 512 "$dir/twoGbMaxExtentSparse.vmdk" | tr -d '\000' >"$seeds/vmdk_descriptor/twoGbMaxExtentSparse.txt"
dd if="$dir/monolithicSparse.vmdk" bs=512 skip=1 count=2 status=none | tr -d '\000' \
  >"$seeds/vmdk_descriptor/embedded-monolithicSparse.txt"

python3 - "$dir" <<'PY'
import struct, sys, zlib
d = sys.argv[1]
def header(gd):
    h = bytearray(512)
    # magic, version 3, flags (newline test, compressed, markers), capacity 64 sectors,
    # 8-sector grains, descriptor at sector 1 (1 sector), 512 entries per table, no
    # redundant directory, directory at gd, 2 sectors of overhead.
    struct.pack_into('<4sIIQQQQIQQQ', h, 0, b'KDMV', 3, 1 | 1 << 16 | 1 << 17, 64, 8, 1, 1,
                     512, 0, gd, 2)
    h[73:77] = b'\n \r\n'
    struct.pack_into('<H', h, 77, 1)
    return bytes(h)
def pad(b):
    return b + b'\0' * (-len(b) % 512)
desc = (b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
        b'createType="streamOptimized"\n\nRW 64 SPARSE "tiny.vmdk"\n\n'
        b'ddb.geometry.cylinders = "1"\nddb.geometry.heads = "16"\n'
        b'ddb.geometry.sectors = "63"\nddb.adapterType = "lsilogic"\n')
grain = (b'ferry ' * 700)[:4096]
z = zlib.compress(grain)
out = bytearray(header(0xffffffffffffffff) + pad(desc))
at = len(out) // 512
out += pad(struct.pack('<QI', 8, len(z)) + z)           # grain 1 (sector 8)
gt = len(out) // 512
table = [0] * 512
table[1] = at
out += pad(struct.pack('<QII', 4, 0, 1)) + struct.pack('<512I', *table)
gd = len(out) // 512
out += pad(struct.pack('<QII', 1, 0, 2)) + pad(struct.pack('<I', gt + 1))
out += pad(struct.pack('<QII', 1, 0, 3)) + header(gd + 1) + bytes(512)
open(f'{d}/tiny.vmdk', 'wb').write(out)
PY
qemu-img convert -q -O raw "$dir/tiny.vmdk" "$dir/tiny.raw"
cp "$dir/tiny.vmdk" "$seeds/vmdk/vmware-stream-tiny.vmdk"
head -c 1024 "$dir/tiny.vmdk" >"$seeds/vmdk/header-and-descriptor.bin"
head -c $(($(stat -c %s "$dir/tiny.vmdk") - 1536)) "$dir/tiny.vmdk" >"$seeds/vmdk/no-footer.bin"

cat >"$dir/one.ovf" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:href="tiny.vmdk" ovf:id="file1" ovf:size="6656"/>
    <File ovf:href="tiny2.vmdk.gz" ovf:id="file2" ovf:compression="gzip" ovf:chunkSize="1000"/>
  </References>
  <DiskSection>
    <Info>disks</Info>
    <Disk ovf:capacity="32" ovf:capacityAllocationUnits="byte * 2^10" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="MB" ovf:diskId="vmdisk2" ovf:fileRef="file2"/>
    <Disk ovf:capacity="1048576" ovf:diskId="blank"/>
  </DiskSection>
</Envelope>
XML
cp "$dir/one.ovf" "$seeds/ovf/one-disk.ovf"
tar --format=ustar -C "$dir" -cf "$seeds/ova_tar/one-disk.ova" one.ovf tiny.vmdk
