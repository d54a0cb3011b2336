#!/bin/sh
# PID 1 of the test VM (busybox sh, from the initramfs that ci/vm/build makes).
# Loads the modules listed in /modules/order, mounts the host's root (9p tag "host", read-only)
# at /host and the per-run writable share (9p tag "out") at /out, gives /host fresh proc, sys,
# dev, dev/pts, dev/shm, run and tmp mounts, brings lo up, then chroots into /host and runs
# /tmp/vm-out/job.sh (written by ci/vm/run) with bash. The script's exit code goes to
# /out/exit-code and to the console as "SHEEP-VM-EXIT: N"; then the guest powers off.
# Any failure before the script runs prints "SHEEP-VM-ERROR: ..." and powers off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

fail() {
    echo "SHEEP-VM-ERROR: $*"
    poweroff -f
    sleep 10
    exit 1
}

while read -r m need; do
    if ! insmod "/modules/$m"; then
        [ "$need" = required ] && fail "insmod $m failed"
        echo "SHEEP-VM-WARNING: insmod $m failed (optional)"
    fi
done </modules/order

opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts" out /out || fail "mounting the writable 9p share (tag out) failed"
mount -t 9p -o "$opts,ro,cache=loose" host /host || fail "mounting the host's root (9p tag host) failed"

h=/host
mount -t proc proc $h/proc || fail "mount $h/proc"
mount -t sysfs sysfs $h/sys || fail "mount $h/sys"
mount -t cgroup2 cgroup2 $h/sys/fs/cgroup 2>/dev/null
mount -t devtmpfs devtmpfs $h/dev || fail "mount $h/dev"
mkdir -p $h/dev/pts $h/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $h/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $h/dev/shm
# Host directories under /tmp or /run the job needs (listed by ci/vm/run): held aside before
# the fresh tmpfs hide them, then bound back at the same paths.
i=0
while read -r keep; do
    i=$((i + 1))
    [ -d "$h$keep" ] || continue
    mkdir -p /keep/$i && mount --bind "$h$keep" /keep/$i || fail "holding $keep"
done </out/keep
mount -t tmpfs -o mode=1777 tmpfs $h/tmp || fail "mount $h/tmp"
mount -t tmpfs -o mode=755 tmpfs $h/run || fail "mount $h/run"
i=0
while read -r keep; do
    i=$((i + 1))
    [ -d /keep/$i ] || continue
    mkdir -p "$h$keep" && mount --bind /keep/$i "$h$keep" || fail "binding $keep back"
done </out/keep
mkdir -p $h/run/lock $h/tmp/vm-out
mount --bind /out $h/tmp/vm-out || fail "bind-mounting the writable share at /tmp/vm-out"

ip link set lo up || fail "ip link set lo up"
hostname sheep-vm

[ -f /out/job.sh ] || fail "no job.sh in the writable share"
echo "SHEEP-VM-BOOTED: $(cut -d' ' -f1 /proc/uptime)s kernel $(uname -r)"
chroot $h /bin/bash /tmp/vm-out/job.sh
code=$?
echo "$code" >/out/exit-code
sync
echo "SHEEP-VM-EXIT: $code after $(cut -d' ' -f1 /proc/uptime)s"
poweroff -f
sleep 10
