#!/usr/bin/env python3
"""Captures vSphere SOAP answers from the repository's vCenter simulator (.peers/bin/vcsim-ferry,
as importer/tests/common/vcsim.rs starts it) for the vsphere_soap seeds: the service content,
Login (refused and accepted), FindByUuid (found, not found), a VM's device list, pages of
QueryChangedDiskAreas, and faults (InvalidArgument, FileFault, NotAuthenticated).

    capture/vsphere.py
"""

import json
import os
import ssl
import subprocess
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
SEEDS = os.path.join(HERE, "..", "seeds", "vsphere_soap")


def main():
    os.makedirs(SEEDS, exist_ok=True)
    tmp = tempfile.mkdtemp()
    sim = subprocess.Popen(
        [os.path.join(ROOT, ".peers/bin/vcsim-ferry"), "-areas", "12", "-page", "5",
         "-capacity", str(64 << 20), "-dump", os.path.join(tmp, "areas.json")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ, TMPDIR=tmp))
    ready = json.loads(sim.stdout.readline())
    url, vm = ready["url"], ready["vms"][0]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    cookie = [None]

    def call(name, body, keep_cookie=True):
        env = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
               'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
               'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>%s'
               '</soapenv:Body></soapenv:Envelope>' % body)
        req = urllib.request.Request(url, data=env.encode(), headers={
            "Content-Type": "text/xml; charset=utf-8", "SOAPAction": "urn:vim25/7.0"})
        if cookie[0] and keep_cookie:
            req.add_header("Cookie", cookie[0])
        try:
            resp = urllib.request.urlopen(req, context=ctx)
        except urllib.error.HTTPError as e:
            resp = e
        answer = resp.read()
        for v in resp.headers.get_all("Set-Cookie") or []:
            if v.startswith("vmware_soap_session="):
                cookie[0] = v.split(";")[0]
        with open(os.path.join(SEEDS, name), "wb") as f:
            f.write(answer)
        print("vsphere_soap/%s: %d bytes" % (name, len(answer)))
        return answer.decode()

    call("service-content", '<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">'
         'ServiceInstance</_this></RetrieveServiceContent>')
    login = ('<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this>'
             '<userName>%s</userName><password>%s</password></Login>')
    call("login-refused", login % (ready["user"], "wrong"))
    call("login", login % (ready["user"], ready["password"]))
    find = ('<FindByUuid xmlns="urn:vim25"><_this type="SearchIndex">SearchIndex</_this><uuid>%s</uuid>'
            '<vmSearch>true</vmSearch><instanceUuid>%s</instanceUuid></FindByUuid>')
    call("find-by-uuid", find % (vm["instanceUuid"], "true"))
    call("find-by-uuid-none", find % ("00000000-0000-0000-0000-000000000000", "false"))
    call("devices", '<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">'
         'propertyCollector</_this><specSet><propSet><type>VirtualMachine</type><pathSet>'
         'config.hardware.device</pathSet></propSet><objectSet><obj type="VirtualMachine">%s</obj>'
         '</objectSet></specSet><options></options></RetrievePropertiesEx>' % vm["moref"])
    qcda = ('<QueryChangedDiskAreas xmlns="urn:vim25"><_this type="VirtualMachine">%s</_this>'
            '<deviceKey>%s</deviceKey><startOffset>%d</startOffset><changeId>%s</changeId>'
            '</QueryChangedDiskAreas>')
    first = call("changed-areas-page-0", qcda % (vm["moref"], vm["diskKey"], 0, vm["changeId"]))
    nxt = int(first.split("<length>")[1].split("<")[0])
    call("changed-areas-page-1", qcda % (vm["moref"], vm["diskKey"], nxt, vm["changeId"]))
    call("fault-invalid-argument", qcda % (vm["moref"], 999, 0, vm["changeId"]))
    call("fault-file", qcda % (vm["moref"], vm["diskKey"], 0, "reset"))
    call("fault-not-authenticated", qcda % (vm["moref"], vm["diskKey"], 0, vm["changeId"]),
         keep_cookie=False)
    sim.stdin.close()
    sim.wait()


if __name__ == "__main__":
    main()
