#!/usr/bin/env python3
"""Writes the seeds no peer here can produce, in the shapes the real services answer with (the
API references of Keystone v3, Glance v2 and the oVirt REST API; the tests' in-process fakes in
importer/tests/keystone/mod.rs answer in the same shapes), plus edge cases of the formats ferry
reads: HTTP replies that are not the range asked, raw DeltaSet ranges, a damaged chain file,
a disk backed by snapshots' parents,
redirects.

    capture/handmade.py
"""

import hashlib
import json
import os
import struct

SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "seeds")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, (dict, list)):
        data = json.dumps(data, indent=1)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def endpoint(interface, url, region="RegionOne"):
    return {"id": hashlib.md5((interface + url).encode()).hexdigest(), "interface": interface,
            "region_id": region, "url": url, "region": region}


def glance():
    catalog = [
        {"endpoints": [endpoint("public", "https://keystone.example:5000/v3/"),
                       endpoint("internal", "http://controller:5000/v3/")],
         "type": "identity", "id": "0c4ee3b4f6b94e9e8d2f1a60e4b1c2d3", "name": "keystone"},
        {"endpoints": [endpoint("public", "https://glance.example:9292"),
                       endpoint("internal", "http://controller:9292/v2/"),
                       endpoint("admin", "http://controller:9292", "RegionTwo")],
         "type": "image", "id": "7a1e2f0c9b8d4e6f8a0b1c2d3e4f5a6b", "name": "glance"},
    ]
    token = {"token": {
        "methods": ["password"],
        "user": {"domain": {"id": "default", "name": "Default"}, "id": "f3a1d6c4b2e04c5a9d8e7f6a5b4c3d2e",
                 "name": "demo", "password_expires_at": None},
        "audit_ids": ["3T2dc1CGQxyJsHdDu1xkcw"],
        "expires_at": "2026-11-25T18:31:42.000000Z", "issued_at": "2026-11-25T17:31:42.000000Z",
        "project": {"domain": {"id": "default", "name": "Default"}, "id": "b146f6a39f7d4bbf8179",
                    "name": "migration"},
        "is_domain": False,
        "roles": [{"id": "8aaea39029464511b9a3b3fc30e59224", "name": "reader"}],
        "catalog": catalog}}
    write("glance_json", "keystone-token.json", token)
    data = b"\0" * 4096
    image = {
        "checksum": hashlib.md5(data).hexdigest(), "container_format": "bare",
        "created_at": "2026-11-20T09:12:01Z", "disk_format": "qcow2",
        "file": "/v2/images/2b8e1c7a-52c3-4d8e-9a0b-5d3f0e6a7c11/file",
        "id": "2b8e1c7a-52c3-4d8e-9a0b-5d3f0e6a7c11", "min_disk": 0, "min_ram": 0, "name": "rhel9",
        "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest(),
        "os_hidden": False, "owner": "b146f6a39f7d4bbf8179", "protected": False,
        "schema": "/v2/schemas/image", "self": "/v2/images/2b8e1c7a-52c3-4d8e-9a0b-5d3f0e6a7c11",
        "size": len(data), "status": "active", "tags": [], "updated_at": "2026-11-20T09:12:05Z",
        "virtual_size": 1073741824, "visibility": "private"}
    write("glance_json", "glance-image.json", image)
    old = dict(image)
    for k in ("os_hash_algo", "os_hash_value"):
        del old[k]
    write("glance_json", "glance-image-md5-only.json", old)
    queued = dict(image, status="queued", size=None, checksum=None, os_hash_algo=None,
                  os_hash_value=None, virtual_size=None)
    write("glance_json", "glance-image-queued.json", queued)


def ovirt():
    write("ovirt_engine", "sso-token.json",
          {"access_token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbkBpbnRlcm5hbCJ9.c2ln",
           "scope": "ovirt-app-api ovirt-ext=token-info:public-authz-search",
           "exp": "1795631502000", "token_type": "Bearer"})
    write("ovirt_engine", "sso-error.json",
          {"error_code": "access_denied", "error": "Cannot authenticate user 'admin@internal'."})
    t = "3f1b9c2e-8d4a-4e6f-a1b2-c3d4e5f60718"
    base = {
        "active": True, "direction": "download", "format": "raw",
        "inactivity_timeout": 300, "phase": "initializing", "shallow": False,
        "timeout_policy": "legacy", "transferred": 0,
        "href": "/ovirt-engine/api/imagetransfers/" + t, "id": t,
        "disk": {"href": "/ovirt-engine/api/disks/5e7b", "id": "5e7b"},
        "host": {"href": "/ovirt-engine/api/hosts/9c1d", "id": "9c1d"},
        "image": {"id": "a4d2"}}
    write("ovirt_engine", "transfer-initializing.json", base)
    write("ovirt_engine", "transfer-transferring.json", dict(
        base, phase="transferring",
        proxy_url="https://engine.example:54323/images/0a1b2c3d-ticket",
        transfer_url="https://host1.example:54322/images/0a1b2c3d-ticket"))
    write("ovirt_engine", "transfer-proxy-only-string-timeout.json", dict(
        base, phase="transferring", inactivity_timeout="120",
        proxy_url="https://engine.example:54323/images/0a1b2c3d-ticket"))
    write("ovirt_engine", "engine-fault.json",
          {"detail": "[Cannot transfer Virtual Disk: Disk is locked.]", "reason": "Operation Failed"})


def http():
    # http_headers inputs: flags, offset (u32), length - 1 (u16), size (u64), limit (u16),
    # Content-Range (u8-prefixed), body chunks (u8-prefixed each).
    def seed(name, flags, offset, length, size, header, body, limit=4096):
        d = bytes([flags]) + struct.pack(">IHQH", offset, length - 1, size, limit)
        d += bytes([len(header)]) + header
        for i in range(0, len(body), 255):
            d += bytes([len(body[i:i + 255])]) + body[i:i + 255]
        write("http_headers", name, d)
    seed("200-range-ignored", 1 | 8, 0, 1, 1 << 20, b"", b"\x1f\x8b\x08\x00" + b"\0" * 60)
    seed("206-unknown-total", 0, 512, 512, 1 << 20, b"bytes 512-1023/*", b"\xa5" * 512)
    seed("416-unsatisfiable", 2, 1 << 20, 16, 1 << 20, b"bytes */1048576", b"")
    seed("206-short-body", 4, 0, 100, 4096, b"bytes 0-99/4096", b"x" * 50)
    seed("206-qcow2", 0, 0, 8, 65536, b"bytes 0-7/65536", b"QFI\xfb\x00\x00\x00\x03")


def delta():
    # DeltaSet::new inputs: disk size, then (offset, length) pairs, big-endian u64.
    pairs = [(0, 65536), (1 << 20, 4096), (1 << 20, 65536), (65536, 4096), (4 << 20, 0)]
    write("delta_json", "raw-ranges", struct.pack(">Q", 4 << 20) + b"".join(
        struct.pack(">QQ", o, l) for o, l in pairs))
    write("delta_json", "overlapping.json", [{"start": 4096, "length": 4096},
                                             {"start": 0, "length": 8192},
                                             {"start": 8192, "length": 0}])


def chain():
    write("checkpoint_chain", "damaged-previous.json",
          {"checkpoints": [{"id": "snapshot-1", "previous": 5, "size": 1, "time": 2}], "version": 1})
    write("checkpoint_chain", "empty.json", {"checkpoints": [], "version": 1})


def vsphere():
    # The device list of a disk under two snapshots (as vCenter shows it: the backing's parents).
    write("vsphere_soap", "devices-snapshot-parents",
          '<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
          'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><RetrievePropertiesExResponse '
          'xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-42</obj><propSet><name>'
          'config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice"><VirtualDevice '
          'xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo">'
          '<fileName>[ds] vm/vm-000002.vmdk</fileName><changeId>52 2d 8e 1a 0c 7b 51 f6-9c 5d 3e 21 a4 9f 07 7b/3'
          '</changeId><parent><fileName>[ds] vm/vm-000001.vmdk</fileName><parent><fileName>[ds] vm/vm.vmdk'
          '</fileName></parent></parent></backing><capacityInKB>1048576</capacityInKB></VirtualDevice></val>'
          '</propSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>')


def redirects():
    # http_redirects inputs: flags (bit 0: ranged), then answers: status (u16), Location (u8-prefixed).
    def seed(name, flags, answers):
        d = bytes([flags])
        for status, loc in answers:
            d += struct.pack(">H", status - 100) + bytes([len(loc)]) + loc
        write("http_redirects", name, d)
    seed("same-origin", 1, [(301, b"/images/disk2"), (200, b"")])
    seed("cross-origin", 1, [(302, b"http://other.fuzz/images/disk"), (206, b"")])
    seed("scheme-relative-then-back", 0, [(307, b"//other.fuzz:8080/x"), (308, b"http://origin.fuzz/images/disk"), (200, b"")])
    seed("to-https", 0, [(302, b"https://origin.fuzz/images/disk"), (200, b"")])
    seed("loop", 0, [(302, b"/loop")] * 12)
    seed("no-location", 0, [(303, b"")])
    seed("not-modified", 0, [(304, b"/elsewhere")])


if __name__ == "__main__":
    glance()
    ovirt()
    http()
    delta()
    chain()
    vsphere()
    redirects()
