#!/usr/bin/env bash
# Reproduces the nbdkit abort the kill-and-resume test works around, without ferry: nbdkit
# 1.32 (Debian 12's) with --threads=4 and the delay filter, and nbdcopy (libnbd's client)
# SIGKILLed mid-copy. When the killed client's socket fails under one worker thread's reply,
# nbdkit closes it, and another worker still sending its reply hits
#   connections.c:402: raw_send_socket: Assertion `sock >= 0' failed.
# and the server aborts (status 134). About half of the rounds do here. Usage: ROUNDS=N (20).
set -uo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
died=0
for round in $(seq 1 "${ROUNDS:-20}"); do
    rm -f "$dir/s.sock" "$dir/t.img"
    nbdkit -f --exit-with-parent -U "$dir/s.sock" --threads=4 --filter=delay \
        sparse-random size=1G percent=50 seed=99 rdelay=60ms 2>"$dir/nbdkit.log" &
    server=$!
    for _ in $(seq 100); do [ -S "$dir/s.sock" ] && break; sleep 0.05; done
    nbdcopy --connections=1 "nbd+unix:///?socket=$dir/s.sock" "$dir/t.img" >/dev/null 2>&1 &
    client=$!
    sleep "0.$((RANDOM % 9 + 1))"
    kill -9 "$client"
    wait "$client" 2>/dev/null
    sleep 0.5
    if ! kill -0 "$server" 2>/dev/null; then
        wait "$server"
        echo "round $round: nbdkit exited with status $?: $(grep -m1 Assertion "$dir/nbdkit.log")"
        died=$((died + 1))
    else
        kill "$server"
        wait "$server" 2>/dev/null
    fi
done
echo "nbdkit $(nbdkit --version | cut -d' ' -f2) died in $died of ${ROUNDS:-20} rounds"
