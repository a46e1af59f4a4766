#!/usr/bin/env bash
# Installs every test peer from the package registries (Debian). Idempotent; needs root.
set -euo pipefail
# nginx: the HTTP(S) source tests start their own nginx on free loopback ports; openssl makes
# their CA and server certificates.
# libclang-dev: vddk-sys's test that the committed bindgen bindings still match its header.
# golang-go, golang-github-vmware-govmomi-dev: the vSphere tests' vCenter simulator (built below).
# python3-vmdkstream: VMDKstream.py, which writes streamOptimized VMDKs the way VMware's exports
# do (grain directory in a footer at the end); qemu-img writes it at the start. tar: the OVAs;
# gzip, xz-utils: compressed images. curl: the daemon's TLS test talks to it as a client would.
# openssh-server: the copy-offload tests' ESXi sshd (ESXI_CLONE_METHOD=ssh), started on loopback
# with the restricted key's forced command; openssh-client: ssh-keygen for its keys; busybox:
# ESXi's shell and tools, which the SSH method's wrapper script must run under.
pkgs=(nbdkit libnbd-bin nbd-server qemu-utils util-linux time nginx openssl libclang-dev
  golang-go golang-github-vmware-govmomi-dev python3-vmdkstream tar gzip xz-utils curl
  openssh-server openssh-client busybox)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test peers: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packaged services (nginx on port 80, nbd-server) must not start: the tests run their own
  # instances. A policy-rc.d that denies every start does that, unless the host has its own.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Should the packaged nginx have started anyway (its pid file says so), stop it: nothing in the
# tests uses port 80, and the tests' own nginx instances are left alone.
if [ -s /run/nginx.pid ]; then
  service nginx stop >/dev/null 2>&1 || true
fi
for b in nbdkit nbdcopy nbdinfo nbd-server qemu-nbd qemu-img qemu-io tar gzip xz losetup /usr/bin/time nginx openssl curl /usr/sbin/sshd ssh-keygen busybox; do
  command -v "$b" >/dev/null || { echo "test peer missing after install: $b" >&2; exit 1; }
done
[ -f /usr/lib/python3/dist-packages/VMDKstream.py ] ||
  { echo "test peer missing after install: VMDKstream.py (python3-vmdkstream)" >&2; exit 1; }
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || { echo "test peer missing after install: libclang" >&2; exit 1; }
# ovirt-imageio (PyPI): the real imageio daemon for the imageio source tests, in a venv inside the
# repository (.peers/, ignored by git) so that the system Python stays untouched. Needs python3
# with venv and pip; the tests find the daemon at .peers/venv/bin/ovirt-imageio.
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/.peers/venv"
if [ ! -x "$venv/bin/ovirt-imageio" ]; then
  echo "installing test peer: ovirt-imageio (into $venv)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check ovirt-imageio
fi
[ -x "$venv/bin/ovirt-imageio" ] || { echo "test peer missing after install: $venv/bin/ovirt-imageio" >&2; exit 1; }
# vcsim-ferry: govmomi's vCenter simulator with the changed-block tracking that the vSphere tests
# and the copy-offload tests need (esxcli over the vSphere API), from the launcher in
# importer/tests/fixtures/vcsim/. Built offline: GOPATH mode against the govmomi sources that
# Debian installs under /usr/share/gocode (no go.mod, no module proxy), with the build cache
# inside .peers/. Rebuilt when any of the launcher's .go files is newer than the binary.
vcsim="$repo/.peers/bin/vcsim-ferry"
launcher="$repo/importer/tests/fixtures/vcsim"
if [ ! -x "$vcsim" ] || [ -n "$(find "$launcher" -name '*.go' -newer "$vcsim")" ]; then
  echo "building test peer: vcsim-ferry (into $vcsim)"
  mkdir -p "$repo/.peers/bin"
  (cd "$launcher" && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$repo/.peers/gocache" \
    GOPROXY=off GOFLAGS= go build -o "$vcsim" .) ||
    { echo "test peer missing after install: $vcsim (go build failed)" >&2; exit 1; }
fi
[ -x "$vcsim" ] || { echo "test peer missing after install: $vcsim" >&2; exit 1; }
# The fuzz targets (fuzz/run.sh) need a nightly toolchain (SanitizerCoverage, AddressSanitizer).
if ! rustc +nightly --version >/dev/null 2>&1; then
  echo "installing the nightly Rust toolchain for the fuzz targets"
  rustup toolchain install nightly --profile minimal ||
    { echo "test tool missing after install: rust nightly (for fuzz/run.sh)" >&2; exit 1; }
fi
