#!/usr/bin/env bash
# The real /dev/ublkbN path, run inside the test VM (ci/vm/run) by tests/tests/ublk_vm.rs:
# a 3-node cluster whose `sheepctl up` attaches disk0 as /dev/ublkb0; exclusive attach; ext4
# with a tree of checksummed files across unmount/del/add; del refused while mounted; kill -9
# of the ublk daemon under a mounted filesystem and `add --recover`; a power loss inside a
# write on every storaged at once; a crash-consistent snapshot of the busy filesystem; fio
# randwrite with crc32c verify on a raw device while it is snapshotted and a storaged is
# killed -9. Then, node 3 back, tests/vm/ublk_vs_loop.sh: fio figures of /dev/ublkbN against a
# loop device on tmpfs (a ratio; no timed assertion). Prints "ublk-vm: OK" at the end.
set -euo pipefail

# The repository: given by the Rust test (which copies this script into the VM's share),
# else where this script lives.
ROOT="${SHEEP_REPO:-$(cd "$(dirname "$0")/../.." && pwd)}"
export PATH="$ROOT/target/debug:$PATH"
W="$(mktemp -d /tmp/ublk-vm.XXXXXX)"
C="$W/cluster"
export SHEEP_RUN_DIR="$W/run"
export SHEEP_GROUPD=127.0.0.1:7000,127.0.0.2:7000,127.0.0.3:7000

step() { echo "ublk-vm: $* (${SECONDS}s)"; }
fail() {
    echo "ublk-vm: FAIL: $*" >&2
    for f in "$C"/ublk-*.log "$SHEEP_RUN_DIR"/*.log; do
        [ -f "$f" ] && { echo "----- $f" >&2; tail -25 "$f" >&2; }
    done
    exit 1
}
# Runs a command that must fail, and checks its stderr says $1.
must_fail() {
    local want="$1"; shift
    local err
    if err="$("$@" 2>&1 >/dev/null)"; then fail "expected failure: $*"; fi
    echo "$err" | grep -q -- "$want" || fail "'$*' failed without '$want': $err"
    echo "  refused as expected: $(echo "$err" | head -1)"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
field() { # field KEY DEVICE-OR-VDI: a value from `sheepctl --json list` (no jq/python needed)
    sheepctl --json list | awk -v key="$1" -v who="$2" '
        /^  \{/ { delete v; next }
        /^    "[a-z_]+": / {
            k = $1; gsub(/[":]/, "", k)
            val = $0; sub(/^    "[a-z_]+": /, "", val); sub(/,$/, "", val); gsub(/"/, "", val)
            v[k] = val; next
        }
        /^  \}/ { if (v["device"] == who || v["vdi"] == who) { print v[key]; exit } }'
}
step "kernel $(uname -r)"
# A lease of 15 s, not groupd's 5 s: the VM is emulated (TCG), 10 to 50 times slower than the
# host, and with 5 s a starved keepalive took live nodes for dead, one after another (each
# new epoch's recovery starving the rest more), until fio's writes failed.
sheepctl up --dir "$C" --nodes 3 --disk-size 512M --timeout 120 --lease-ms 15000 | tee "$W/up.txt"
grep -q "attached as /dev/ublkb0" "$W/up.txt" || fail "sheepctl up did not attach disk0 as /dev/ublkb0"
# The keyring `up` made: every later command (and daemon) authenticates with it.
export SHEEP_KEYRING="$C/keyring"
[ "$(stat -c %a "$SHEEP_KEYRING")" = 600 ] || fail "the keyring is not mode 600"
[ -b /dev/ublkb0 ] || fail "/dev/ublkb0 is not a block device"
[ "$(blockdev --getsize64 /dev/ublkb0)" = $((512 << 20)) ] || fail "size of /dev/ublkb0"
[ "$(field state disk0)" = live ] || fail "disk0 is not live in sheepctl list"
sheepctl list
step "up attached disk0 as /dev/ublkb0"

# Exclusive attach: here (already attached), from "another host" (a daemon of its own), NBD.
must_fail "already attached" sheepctl add disk0
must_fail "locked by" ublk-dev ublk --vdi disk0
must_fail "locked by" timeout 30 sheepctl export disk0 --listen 127.0.0.1:0
must_fail "no VDI named" sheepctl add nosuch
must_fail "no Sheepdog ublk device matches" sheepctl del nosuch
step "second attach refused; unknown VDI or device named"

# A filesystem with a tree of files, across unmount, del and add.
mkfs.ext4 -q -F /dev/ublkb0
M="$W/mnt"; mkdir -p "$M"
mount /dev/ublkb0 "$M"
for d in 1 2 3 4; do
    mkdir -p "$M/dir$d/sub"
    for f in 1 2 3 4 5 6; do
        head -c $(( (d * 7 + f * 13) * 4099 )) /dev/urandom >"$M/dir$d/file$f"
        head -c $(( f * 1000 + 1 )) /dev/urandom >"$M/dir$d/sub/small$f"
    done
done
head -c $((24 << 20)) /dev/urandom >"$M/big"
(cd "$M" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$W/sums"
sync
step "ext4: $(wc -l <"$W/sums") files written"
must_fail "in use" sheepctl del /dev/ublkb0
umount "$M"
sheepctl del disk0
[ ! -e /dev/ublkb0 ] || fail "/dev/ublkb0 still exists after del"
[ -z "$(field device disk0)" ] || fail "disk0 still listed after del"
dev="$(sheepctl add disk0)"
[ "$dev" = /dev/ublkb0 ] || step "note: re-attached as $dev"
mount "$dev" "$M"
(cd "$M" && sha256sum --quiet -c "$W/sums") || fail "checksums after del + add"
step "ext4: every checksum verified after umount, del, add"

# kill -9 of the daemon under the mounted filesystem; recovery brings the same device back.
echo "written before the crash" >"$M/before"
sync
pid="$(field pid "$dev")"
kill -9 "$pid"
for _ in $(seq 1 100); do [ "$(field state "$dev")" = quiesced ] && break; sleep 0.1; done
[ "$(field state "$dev")" = quiesced ] || fail "state after kill -9 is $(field state "$dev"), not quiesced"
sheepctl list
# I/O issued now waits for the new daemon.
(drop_caches; cat "$M/big" >/dev/null; echo "read while recovering: done") &
reader=$!
sheepctl add --recover "$dev" --timeout 120 >"$W/recovered"
[ "$(cat "$W/recovered")" = "$dev" ] || fail "recovered as $(cat "$W/recovered"), not $dev"
wait "$reader" || fail "a read issued during the recovery failed"
drop_caches
(cd "$M" && sha256sum --quiet -c "$W/sums") || fail "checksums after the daemon was killed and recovered"
[ "$(cat "$M/before")" = "written before the crash" ] || fail "file written before the crash"
echo "written after recovery" >"$M/after"
sync
[ "$(field state "$dev")" = live ] || fail "not live after recovery"
[ "$(field pid "$dev")" != "$pid" ] || fail "same daemon pid after recovery"
step "kill -9 of ublk-dev under a mounted ext4: recovered, files intact, writes work"

# A power loss in the middle of ext4's writes: every storaged aborts (a failpoint) inside an
# object write, after its block checksums and before its data, and the device's daemon is
# killed at once, so nothing after the cut reaches the nodes. The image the cluster then
# serves (recovery settles each cut-off object: every 4 KiB block its old or its new content)
# replays its journal, checks clean and mounts with every file synced before the cut intact;
# every replica gives the same image; the device recovers and goes on.
storaged --version | grep -q failpoints || fail "storaged is built without the failpoints feature (ci/test builds it)"
storaged_pids() { for n in 1 2 3; do cat "$C/node$n/storaged.pid"; done; }
gone() { for p in "$@"; do ! kill -0 "$p" 2>/dev/null || return 1; done; }
wait_gone() { for _ in $(seq 1 600); do gone "$@" && return 0; sleep 0.1; done; return 1; }
recovered() { [ "$(sheepctl --json node recovery 2>/dev/null | grep -c '"complete": true')" = 3 ]; }
wait_recovered() { for _ in $(seq 1 600); do recovered && return 0; sleep 0.2; done; fail "recovery did not complete"; }
# The value of one sample (a name with its labels, exactly as printed) of the /metrics at
# $1 (ip:port), over bash's own /dev/tcp: the guest needs no HTTP client.
metric() {
    local sample
    exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || fail "cannot reach the metrics at $1"
    printf 'GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" >&3
    sample="$(timeout 10 cat <&3 | tr -d '\r' | awk -v s="$2" '$1 == s { print $2 }')"
    exec 3<&-
    echo "${sample:-none}"
}
old="$(storaged_pids)"
kill -9 $old
wait_gone $old || fail "storaged did not exit after kill -9"
FAILPOINTS="object-write-before-data=60*off->return(crash)" sheepctl up --dir "$C" --no-disk --timeout 120 >/dev/null
wait_recovered
armed="$(storaged_pids)"
: >"$W/torn-done"
mkdir -p "$W/torn-src"
(for i in $(seq 1 60); do
    head -c $((40000 + i * 4099)) /dev/urandom >"$W/torn-src/$i"
    cp "$W/torn-src/$i" "$M/torn.$i" && sync "$M/torn.$i" && echo "$i" >>"$W/torn-done"
done) &
torn_writer=$!
wait_gone $armed || fail "the storaged armed to crash mid-write did not all crash"
kill -9 "$(field pid "$dev")"
cp "$W/torn-done" "$W/torn-before"
synced="$(wc -l <"$W/torn-before")"
step "power loss: every storaged cut off inside a write, ublk-dev killed, $synced files synced before"
sheepctl up --dir "$C" --no-disk --timeout 120 >/dev/null
wait_recovered
grep -h "a write to it had been cut off" "$C"/node*/storaged.log | head -3
grep -q "a write to it had been cut off" "$C"/node*/storaged.log || fail "no node settled a cut-off write"
for r in 0 1 2; do
    sheepctl vdi export disk0 "$W/torn$r.img" --replica "$r" >/dev/null
    sha256sum <"$W/torn$r.img" | cut -d' ' -f1 >"$W/torn$r.sum"
done
cmp -s "$W/torn0.sum" "$W/torn1.sum" && cmp -s "$W/torn0.sum" "$W/torn2.sum" || fail "the replicas differ after the cut"
rm "$W/torn1.img" "$W/torn2.img"
set +e; e2fsck -fy "$W/torn0.img" >"$W/fsck-torn1.txt" 2>&1; rc=$?; set -e
[ "$rc" -le 1 ] || { cat "$W/fsck-torn1.txt"; fail "e2fsck -fy of the image after the cut exited $rc"; }
e2fsck -fn "$W/torn0.img" >"$W/fsck-torn2.txt" 2>&1 ||
    { cat "$W/fsck-torn2.txt"; fail "the image after the cut is not clean after its journal replay"; }
M3="$W/mnt3"; mkdir -p "$M3"
mount -o loop,ro "$W/torn0.img" "$M3"
(cd "$M3" && sha256sum --quiet -c "$W/sums") || fail "the first tree in the image after the cut"
[ "$(cat "$M3/after")" = "written after recovery" ] || fail "a file synced long before the cut"
while read -r i; do
    cmp -s "$W/torn-src/$i" "$M3/torn.$i" || fail "torn.$i, synced before the cut, differs in the image"
done <"$W/torn-before"
umount "$M3"
rm "$W/torn0.img"
step "power loss: every replica the same image; its journal replays, it checks clean, it mounts, files intact"
sheepctl add --recover "$dev" --timeout 120 >/dev/null
wait "$torn_writer" || fail "writes after the device recovered failed"
drop_caches
(cd "$M" && sha256sum --quiet -c "$W/sums") || fail "checksums on the device after the cut"
for i in $(seq 1 60); do
    cmp -s "$W/torn-src/$i" "$M/torn.$i" || fail "torn.$i differs on the device after its recovery"
done
rm -r "$M"/torn.* "$W/torn-src"
sync
step "power loss: the device recovered, the writes in flight completed"

# fstrim gives the space of deleted files back: the discards unmap whole objects, which are
# removed from the nodes.
objects() { find "$C" -path '*/storaged/obj/*' -type f | wc -l; }
head -c $((20 << 20)) /dev/urandom >"$M/trimme"
sync
before="$(objects)"
rm "$M/trimme"
sync
fstrim -v "$M"
after="$(objects)"
[ "$after" -le $((before - 9)) ] || fail "fstrim freed too little: $before object copies before, $after after"
(cd "$M" && sha256sum --quiet -c "$W/sums") || fail "checksums after fstrim"
step "fstrim: $before object copies before, $after after"

# Grow: the VDI grows; the device follows live where the kernel can resize a ublk device
# (UPDATE_SIZE, Linux 6.16+), else after a re-attach; ext4 then grows into it.
sheepctl vdi resize disk0 768M
for _ in $(seq 1 50); do [ "$(blockdev --getsize64 "$dev")" = $((768 << 20)) ] && break; sleep 0.2; done
if [ "$(blockdev --getsize64 "$dev")" = $((768 << 20)) ]; then
    how="live"
else
    grep -q "cannot resize a live device" "$SHEEP_RUN_DIR/ublk-disk0.log" || fail "the device neither grew nor said why"
    how="after re-attach ($(uname -r) has no UPDATE_SIZE)"
    umount "$M"
    sheepctl del disk0
    dev="$(sheepctl add disk0)"
    mount "$dev" "$M"
    [ "$(blockdev --getsize64 "$dev")" = $((768 << 20)) ] || fail "re-attached at $(blockdev --getsize64 "$dev") bytes"
fi
resize2fs "$dev" >/dev/null 2>&1 || fail "resize2fs of the mounted ext4"
head -c $((8 << 20)) /dev/urandom >"$M/after-grow" && sync
(cd "$M" && sha256sum --quiet -c "$W/sums") || fail "checksums after the grow"
step "vdi resize: the device grew to 768 MiB $how, ext4 grown to $(df -h --output=size "$M" | tail -1 | tr -d ' ')"

# A snapshot of the mounted, busy filesystem is crash-consistent: a clone of it passes fsck
# after its journal replays, and every file fsynced before the snapshot is there, intact.
: >"$W/done"
(for i in $(seq 1 30); do
    head -c $((100000 + i * 4099)) /dev/urandom >"$M/busy.$i" && sync "$M/busy.$i" && echo "$i" >>"$W/done"
done) &
writer=$!
sleep 3
cp "$W/done" "$W/done-before"
sheepctl vdi snapshot disk0 --tag busy | tee "$W/snap.txt"
grep -q "taken by ublk-dev" "$W/snap.txt" || fail "the snapshot of an attached VDI was not taken by its daemon"
wait "$writer" || fail "writes after the snapshot failed"
sheepctl vdi clone disk0 --snapshot busy snapcheck
dev2="$(sheepctl add snapcheck)"
set +e; e2fsck -fy "$dev2" >"$W/fsck1.txt" 2>&1; rc=$?; set -e
[ "$rc" -le 1 ] || { cat "$W/fsck1.txt"; fail "e2fsck -fy of the snapshot's clone exited $rc"; }
e2fsck -fn "$dev2" >"$W/fsck2.txt" 2>&1 || { cat "$W/fsck2.txt"; fail "the snapshot's clone is not clean after its journal replay"; }
M2="$W/mnt2"; mkdir -p "$M2"
mount -o ro "$dev2" "$M2"
(cd "$M2" && sha256sum --quiet -c "$W/sums") || fail "the first tree in the snapshot's clone"
while read -r i; do
    cmp -s "$M/busy.$i" "$M2/busy.$i" || fail "busy.$i, fsynced before the snapshot, differs in it"
done <"$W/done-before"
umount "$M2"
sheepctl del "$dev2"
step "snapshot of a busy mounted ext4: clone fscks clean, $(wc -l <"$W/done-before") fsynced files intact"
umount "$M"

# fio randwrite + crc32c verify on a raw device, a storaged killed -9 in the middle.
sheepctl vdi create raw 64M >/dev/null
raw="$(sheepctl add raw --queues 2 --depth 64 --metrics 127.0.0.1:9187)"
(sleep 4; sheepctl vdi snapshot raw --tag during-fio >"$W/fio-snap.txt" 2>&1; echo $? >"$W/fio-snap.rc") &
snapper=$!
(sleep 8; kill -9 "$(cat "$C/node3/storaged.pid")"; echo "ublk-vm: killed storaged of node 3 (${SECONDS}s)") &
killer=$!
fio --name=verify --filename="$raw" --rw=randwrite --bs=4k --size=64M --direct=1 \
    --ioengine=libaio --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --eta=never --output="$W/fio.txt" || { cat "$W/fio.txt"; fail "fio verify"; }
wait "$killer"
wait "$snapper"
[ "$(cat "$W/fio-snap.rc")" = 0 ] || { cat "$W/fio-snap.txt"; fail "snapshot during fio"; }
grep -q "taken by ublk-dev" "$W/fio-snap.txt" || fail "the snapshot during fio was not taken by the daemon"
grep -E "WRITE:|READ:|verify" "$W/fio.txt" || true
# Everything was read back and verified by fio; read it again once the cluster has healed.
fio --name=reverify --filename="$raw" --rw=randread --bs=4k --size=64M --direct=1 \
    --ioengine=libaio --iodepth=16 --verify=crc32c --verify_only=1 --verify_fatal=1 \
    --eta=never --output="$W/fio2.txt" || { cat "$W/fio2.txt"; fail "fio verify_only after the storaged kill"; }
step "fio randwrite 64M with crc32c verify passed across a snapshot and a storaged kill -9"
# The device's daemon counted it: every byte fio wrote, reads of them, no error.
written="$(metric 127.0.0.1:9187 'sheep_frontend_data_bytes_total{vdi="raw",op="write"}')"
[ "$written" -ge $((64 << 20)) ] 2>/dev/null || fail "the ublk daemon's metrics count $written bytes written, not 64 MiB"
read_ops="$(metric 127.0.0.1:9187 'sheep_frontend_ops_total{vdi="raw",op="read"}')"
[ "$read_ops" -gt 0 ] 2>/dev/null || fail "the ublk daemon's metrics count $read_ops reads"
step "the ublk daemon's /metrics: $written bytes written, $read_ops reads"

sheepctl del "$raw"

# Figures, once every check above has passed: the same fio jobs on /dev/ublkbN (a VDI of its
# own, nothing later reads it) and on a loop device over tmpfs, with node 3 back and its
# recovery complete, so that the cluster is whole and idle.
sheepctl up --dir "$C" --no-disk --timeout 120 >/dev/null
wait_recovered
step "storaged of node 3 back, recovery complete"
bash "$ROOT/tests/vm/ublk_vs_loop.sh" --cluster "$C" || fail "tests/vm/ublk_vs_loop.sh"
step "ublk against loop on tmpfs measured"

sheepctl down --dir "$C"
[ ! -e /dev/ublkb0 ] || fail "down left /dev/ublkb0"
step "OK"
echo "ublk-vm: OK"
