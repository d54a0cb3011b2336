#!/usr/bin/env bash
# Smoke test of the test VM, run inside it: ci/vm/run ci/vm/smoke.sh
# Checks what the real-kernel tests rely on: ublk's control device, loopback (lo up, another
# 127.0.0.N bindable, network namespaces), mkfs.ext4 + mount of a file on the guest's tmpfs
# through a loop device, a writable /tmp; then writes a marker to $VM_OUT/smoke-ok.
set -euo pipefail

step() { echo "smoke: $* (${SECONDS}s)"; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

echo "smoke: kernel $(uname -r), cwd $(pwd)"

[ -c /dev/ublk-control ] || fail "/dev/ublk-control is missing"
grep -q '^ublk_drv ' /proc/modules || fail "ublk_drv is not loaded"
step "/dev/ublk-control present"

# io_uring (libublk needs it): 0 = enabled for everyone.
iou="$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)"
[ "$iou" = 0 ] || fail "io_uring is disabled (kernel.io_uring_disabled=$iou)"
step "io_uring enabled"

ip -o link show lo | grep -q 'UP' || fail "lo is not up"
ip -o addr show lo | grep -q '127.0.0.1/8' || fail "lo has no 127.0.0.1/8"
# Any 127.0.0.N is bindable (127/8 is local on lo); bash's /dev/tcp to a busybox-free listener
# is not available, so use python if the host has it, else a loopback ping.
if command -v python3 >/dev/null; then
    python3 - <<'EOF' || fail "binding/connecting 127.0.0.2 failed"
import socket
s = socket.socket(); s.bind(("127.0.0.2", 0)); s.listen(1)
c = socket.create_connection(s.getsockname(), timeout=5); a, _ = s.accept()
c.sendall(b"x"); assert a.recv(1) == b"x"
EOF
    step "127.0.0.2: bind, connect, send OK"
else
    ping -c1 -W2 127.0.0.2 >/dev/null || fail "ping 127.0.0.2"
    step "127.0.0.2 answers ping"
fi
ns="smoke$$"
if ip netns add "$ns" 2>/dev/null; then
    ip netns exec "$ns" ip link set lo up && ip netns exec "$ns" ip -o link show lo | grep -q UP \
        || fail "network namespace: lo up"
    ip netns del "$ns"
    step "network namespaces work (ip netns)"
else
    # ip netns needs a writable /run/netns: /run is a tmpfs here, so this is a real failure.
    fail "ip netns add failed"
fi

scratch="$(mktemp -d /tmp/smoke.XXXXXX)"
touch "$scratch/w" || fail "/tmp is not writable"
truncate -s 64M "$scratch/disk.img"
mkfs.ext4 -q -F "$scratch/disk.img" || fail "mkfs.ext4 on a file"
mkdir "$scratch/mnt"
mount -o loop "$scratch/disk.img" "$scratch/mnt" || fail "mount -o loop of the ext4 image"
echo hello >"$scratch/mnt/f"
sync
umount "$scratch/mnt"
mount -o loop,ro "$scratch/disk.img" "$scratch/mnt"
[ "$(cat "$scratch/mnt/f")" = hello ] || fail "file on the remounted ext4 differs"
umount "$scratch/mnt"
step "mkfs.ext4 + loop mount + remount OK"

# The project's binaries, if built, run from the read-only host tree.
bin="$(dirname "$0")/../../target/debug/sheepctl"
if [ -x "$bin" ]; then
    "$bin" --help >/dev/null 2>&1 || fail "$bin --help failed in the guest"
    step "target/debug/sheepctl runs"
fi

[ -n "${VM_OUT:-}" ] && [ -d "$VM_OUT" ] || fail "VM_OUT is not set"
echo "smoke-ok $(uname -r)" >"$VM_OUT/smoke-ok"
step "OK"
# For the Rust test: end with this code, so a non-zero code is seen coming out of the guest.
exit "${SMOKE_EXIT:-0}"
