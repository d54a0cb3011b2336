#!/usr/bin/env bash
# /dev/ublkbN against a loop device on tmpfs, inside the test VM (ci/vm/run). The same fio jobs
# run on (a) a fresh raw VDI `bench` attached with `sheepctl add` (ublk_drv, ublk-dev, the
# 3-node local cluster, copies 3, over loopback) and (b) a loop device (`losetup`) over a file
# of the same size on the guest's tmpfs (buffered in the page cache: the cheapest block device
# the kernel has):
#   seqwrite    1 MiB sequential write, QD8     randread1   4 KiB random read, QD1
#   randwrite1  4 KiB random write, QD1         randread32  4 KiB random read, QD32
#   randwrite32 4 KiB random write, QD32        seqread     1 MiB sequential read, QD8
# all --direct=1, --ioengine=libaio, time_based: 1 s of ramp then RUNTIME s each, one fio per
# device (the jobs stonewalled), after a full sequential write of the device so that reads
# find data on both (not unallocated objects, not holes). Both devices are under the same
# emulation (TCG: every instruction 30-40x slower than on the host, two emulated CPUs shared
# by fio, ublk-dev and the six daemons), so the absolute figures mean little; the ratio
# ublk/loop is what this VM can tell: how much the ublk path costs against a device whose
# only cost is the kernel's block layer and a memory copy.
#
# Prints a table (lines starting "ublk-vs-loop:"): the job, ublk's and the loop device's
# IOPS (MB/s for the 1 MiB jobs), the ratio, and the average latency of each for the QD1
# jobs; writes it as JSON to $VM_OUT/ublk-vs-loop.json (the VM's writable share). Fails
# only when a fio run fails or a job did no I/O: no timed assertion (goals live in ci/bench).
#
# Usage: tests/vm/ublk_vs_loop.sh [--cluster DIR]
#   --cluster DIR  use the running cluster of `sheepctl up --dir DIR` (its keyring;
#                  SHEEP_GROUPD as the caller set it): tests/vm/ublk_disk.sh runs it so at its
#                  end, in the same boot. Without it a 3-node cluster of its own is started
#                  (and stopped): `ci/vm/run tests/vm/ublk_vs_loop.sh`.
# Knobs: SHEEP_UBLK_BENCH_RUNTIME (seconds per job, default 2), SHEEP_UBLK_BENCH_SIZE (device
# size, default 32M), SHEEP_UBLK_BENCH_IOENGINE (default libaio; io_uring is enabled in the VM's kernel too).
set -euo pipefail

ROOT="${SHEEP_REPO:-$(cd "$(dirname "$0")/../.." && pwd)}"
export PATH="$ROOT/target/debug:$PATH"
RUNTIME="${SHEEP_UBLK_BENCH_RUNTIME:-2}"
SIZE="${SHEEP_UBLK_BENCH_SIZE:-32M}"
ENGINE="${SHEEP_UBLK_BENCH_IOENGINE:-libaio}"
RAMP=1
JOBS="seqwrite write 1M 8
randwrite1 randwrite 4k 1
randwrite32 randwrite 4k 32
randread1 randread 4k 1
randread32 randread 4k 32
seqread read 1M 8"

cluster=""
case "${1:-}" in
    --cluster) cluster="${2:?--cluster DIR}" ;;
    "") ;;
    *) echo "usage: $0 [--cluster DIR]" >&2; exit 2 ;;
esac
say() { echo "ublk-vs-loop: $*"; }
fail() { echo "ublk-vs-loop: FAIL: $*" >&2; exit 1; }
for tool in fio jq losetup sheepctl; do
    command -v "$tool" >/dev/null || fail "$tool is missing (ci/install-deps installs it)"
done
started=$SECONDS
B="$(mktemp -d /tmp/ublk-vs-loop.XXXXXX)"
own=0 ublk="" loopdev="" vdi=""
cleanup() {
    [ -z "$loopdev" ] || losetup -d "$loopdev" || true
    [ -z "$ublk" ] || sheepctl del "$ublk" >/dev/null || true
    [ -z "$vdi" ] || sheepctl vdi delete "$vdi" >/dev/null || true
    [ $own = 0 ] || sheepctl down --dir "$cluster" >/dev/null || true
    rm -rf "$B"
}
trap cleanup EXIT

if [ -z "$cluster" ]; then
    own=1
    cluster="$B/cluster"
    export SHEEP_RUN_DIR="$B/run"
    export SHEEP_GROUPD=127.0.0.1:7000,127.0.0.2:7000,127.0.0.3:7000
    # A long lease, as in ublk_disk.sh: the emulated VM starves keepalives.
    sheepctl up --dir "$cluster" --nodes 3 --no-disk --timeout 120 --lease-ms 15000 >/dev/null
fi
export SHEEP_KEYRING="$cluster/keyring"

# (a) a raw VDI attached as /dev/ublkbN; (b) a loop device over a tmpfs file of the same size.
sheepctl vdi create bench "$SIZE" >/dev/null
vdi=bench
ublk="$(sheepctl add bench)"
[ -b "$ublk" ] || fail "sheepctl add bench gave $ublk, not a block device"
bytes="$(blockdev --getsize64 "$ublk")"
truncate -s "$bytes" "$B/loop.img"
loopdev="$(losetup --find --show "$B/loop.img")"
[ "$(blockdev --getsize64 "$loopdev")" = "$bytes" ] || fail "$loopdev is not $bytes bytes"

# One fio job file per device: a full sequential write, then the jobs one after another.
jobfile() {  # jobfile DEVICE
    printf '[global]\nfilename=%s\ndirect=1\nioengine=%s\nsize=%s\nrandrepeat=0\nnorandommap\n' \
        "$1" "$ENGINE" "$bytes"
    printf '[prefill]\nrw=write\nbs=1M\niodepth=8\n'
    while read -r name rw bs qd; do
        printf '[%s]\nstonewall\nrw=%s\nbs=%s\niodepth=%s\ntime_based\nramp_time=%s\nruntime=%s\n' \
            "$name" "$rw" "$bs" "$qd" "$RAMP" "$RUNTIME"
    done <<<"$JOBS"
}
# Each job's figures as JSON: IOPS, MB/s, average total latency, submission to completion (us), I/Os.
run_fio() {  # run_fio NAME DEVICE
    local t0=$SECONDS
    jobfile "$2" >"$B/$1.fio"
    local rc=0
    fio --output-format=json --output="$B/$1.out" "$B/$1.fio" >"$B/$1.log" 2>&1 || rc=$?
    [ $rc = 0 ] || { cat "$B/$1.log" "$B/$1.out" >&2 || true; fail "fio on $1 ($2) exited $rc"; }
    # fio may put notes before its JSON.
    sed -n '/^{/,$p' "$B/$1.out" | jq -c '[.jobs[] | select(.jobname != "prefill") |
        (if .read.total_ios > 0 then .read else .write end) as $d |
        {job: .jobname, error: .error, iops: $d.iops, mb_per_s: ($d.bw_bytes / 1e6),
         lat_avg_us: ($d.lat_ns.mean / 1000), ios: $d.total_ios}]' >"$B/$1.json" ||
        fail "cannot read fio's JSON output for $1"
    say "$1: fio ran in $((SECONDS - t0))s"
}
say "$ublk (VDI bench over the 3-node cluster) against $loopdev (a file on tmpfs), $bytes bytes each;" \
    "fio --direct=1 --ioengine=$ENGINE, ${RAMP}s ramp + ${RUNTIME}s per job; kernel $(uname -r)"
run_fio ublk "$ublk"
run_fio loop "$loopdev"

# Both sides, job by job, with the ratio of the figure that counts (MB/s for 1 MiB, IOPS else).
printf '%s\n' "$JOBS" | jq -R 'split(" ") | {job: .[0], rw: .[1], bs: .[2], qd: (.[3] | tonumber)}' |
    jq -s --slurpfile u "$B/ublk.json" --slurpfile l "$B/loop.json" --arg kernel "$(uname -r)" \
        --arg ublk "$ublk" --arg loop "$loopdev" --arg engine "$ENGINE" \
        --argjson bytes "$bytes" --argjson runtime "$RUNTIME" --argjson ramp "$RAMP" '
    def val($unit): if $unit == "MB/s" then .mb_per_s else .iops end;
    {kernel: $kernel, ublk_device: $ublk, loop_device: $loop, ioengine: $engine,
     size_bytes: $bytes, runtime_s: $runtime, ramp_s: $ramp,
     jobs: [.[] | . as $j | (if .bs == "1M" then "MB/s" else "IOPS" end) as $unit |
        ($u[0][] | select(.job == $j.job)) as $a | ($l[0][] | select(.job == $j.job)) as $b |
        $j + {unit: $unit, ublk: $a, loop: $b,
              ratio: (if ($b | val($unit)) > 0 then ($a | val($unit)) / ($b | val($unit)) else null end)}]}' \
    >"$B/ublk-vs-loop.json"
if [ -n "${VM_OUT:-}" ] && [ -d "$VM_OUT" ]; then cp "$B/ublk-vs-loop.json" "$VM_OUT/ublk-vs-loop.json"; fi

say "$(printf '%-12s %5s %10s %10s %10s %12s %12s' JOB UNIT UBLK LOOP UBLK/LOOP "UBLK LAT us" "LOOP LAT us")"
jq -r '.jobs[] | [.job, .unit,
        (if .unit == "MB/s" then .ublk.mb_per_s else .ublk.iops end),
        (if .unit == "MB/s" then .loop.mb_per_s else .loop.iops end),
        (if .ratio == null then "-" else .ratio end),
        (if .qd == 1 then .ublk.lat_avg_us | round else "-" end),
        (if .qd == 1 then .loop.lat_avg_us | round else "-" end)] | @tsv' "$B/ublk-vs-loop.json" |
    while IFS=$'\t' read -r job unit u l r ul ll; do
        f='%.0f'; [ "$unit" = IOPS ] || f='%.1f'
        u="$(printf "$f" "$u")" l="$(printf "$f" "$l")"
        [ "$r" = - ] || r="$(printf '%.3g' "$r")"
        say "$(printf '%-12s %5s %10s %10s %10s %12s %12s' "$job" "$unit" "$u" "$l" "$r" "$ul" "$ll")"
    done

# Every job ran and did I/O on both devices; nothing about how fast.
jq -e '(.jobs | length) == 6 and all(.jobs[]; all(.ublk, .loop;
        . != null and .error == 0 and .ios > 0 and .iops > 0))' "$B/ublk-vs-loop.json" >/dev/null ||
    fail "a job did not run or did no I/O: $(cat "$B/ublk-vs-loop.json")"
say "done: 6 jobs on both devices in $((SECONDS - started))s"
