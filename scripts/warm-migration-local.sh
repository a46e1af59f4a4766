#!/bin/bash
# Runs deploy/warm-migration.sh (after cargo build --release -p importer -p vddk-fake and
# scripts/install-peers.sh) against a local TLS daemon, the vCenter simulator and the fake VDDK.
set -euo pipefail
W=${WORK:-/tmp/ferry-warm-run}; R=$(cd "$(dirname "$0")/.." && pwd)
rm -rf $W/d; mkdir -p $W/d/vol $W/d/vddk/lib64 $W/d/ds; cd $W/d
ln -s $R/target/release/libvddk_fake.so vddk/lib64/libvixDiskLib.so.8
openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null
head -c 24 /dev/urandom | base64 > token
mkfifo simin
$R/.peers/bin/vcsim-ferry -areas 40 -page 10 -capacity 67108864 -dump areas.json < simin > ready.json 2>sim.log &
exec 3>simin
sleep 2
python3 - <<'PY'
import json
v=json.loads(open('ready.json').readline())
vm=v['vms'][0]
open('env.sh','w').write(f"""PORT={v['url'].rsplit(':',1)[1].split('/')[0]}
USER_ENC='{v['user'].replace('@','%40')}'
PW='{v['password']}'
TP='{v['thumbprint']}'
VM='{vm['moref']}'
DISK='{vm['diskFile']}'
CID='{vm['changeId']}'
""")
PY
. ./env.sh
printf '%s' "$PW" > password
ds=${DISK#\[}; ds=${ds%%\]*}; rel=${DISK#*\] }
mkdir -p "ds/$ds/$(dirname "$rel")"; DISKPATH="$W/d/ds/$ds/$rel"
head -c 67108864 /dev/urandom > "$DISKPATH"
cat > checkpoint.sh <<CP
#!/bin/bash
# Takes a "snapshot": the guest has written the changed areas since the last one; prints the change id.
n=\$(( \$(cat $W/d/n 2>/dev/null || echo 0) + 1 )); echo \$n > $W/d/n
if [ \$n -gt 1 ]; then python3 -c "
import json
f=open('$DISKPATH','r+b')
for i,a in enumerate(json.load(open('$W/d/areas.json'))):
    f.seek(a['start']); f.write(bytes([(\$n*16+i)%256|1])*a['length'])
"; fi
echo "${CID%/*}/\$n"
CP
chmod +x checkpoint.sh
FAKE_VDDK_ROOT=$W/d/ds FAKE_VDDK_PASSWORD="$PW" FAKE_VDDK_LOG=$W/d/vddk.log $R/target/release/importer serve --listen tcp:127.0.0.1:18444 --tls-cert cert.pem --tls-key key.pem --token-file token --target-root $W/d/vol 2> daemon.log &
DPID=$!
sleep 1
FERRY=https://127.0.0.1:18444 TOKEN_FILE=token CACERT=cert.pem \
SOURCE="vddk://$USER_ENC@127.0.0.1:$PORT/?vm=moref=$VM&thumbprint=$TP" DISK="$DISK" TARGET=$W/d/vol/disk.img \
PASSWORD_FILE=$W/d/password LIBDIR=$W/d/vddk CHECKPOINT_CMD=./checkpoint.sh CUTOVER_CMD="echo the VM is stopped" \
PRECOPIES=2 INTERVAL=0 $R/deploy/warm-migration.sh
cmp "$DISKPATH" vol/disk.img && echo "target identical to the disk"
echo "vSphere logins: $(grep -c 'vcsim-ferry: Login' sim.log); ConnectEx calls: $(grep -c '"call":"ConnectEx"' vddk.log)"
grep -c "$PW" daemon.log || echo "password not in the daemon log"
kill $DPID; exec 3>&-
