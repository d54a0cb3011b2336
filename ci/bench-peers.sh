# Sourced by `ci/bench --peers` (not run by itself): the same six jobs against two peers, in
# the same run and on the same tmpfs, and the table that sets this project's figures beside
# theirs.
#   nbdkit   nbdkit's memory plugin (allocator=malloc) on 127.0.0.1:PORT+2, driven by
#            `fio --ioengine=nbd`: the NBD path's ceiling (the bytes in one malloc, nothing else).
#   ceph     Ceph RBD from Debian's packages: 1 mon (127.0.0.1:PORT+3, msgr2 only), 1 mgr and
#            3 OSDs with BlueStore on files of the tmpfs, every other daemon port in
#            PORT+10..PORT+99, cephx, `osd crush chooseleaf type = 0` (one host), a pool of
#            size 3 min_size 2, an RBD image of SIZE, driven by `fio --ioengine=rbd` (librbd,
#            its cache off: every write reaches the OSDs, as every write reaches storaged).
# Both images are written whole before the jobs, as `sheepctl bench` prefills its VDI. CPU per
# operation sums fio's own (librbd runs inside fio) and every daemon's /proc/PID/stat ticks.
# Writes $DIR/peers.json. Daemons run in the foreground, in the background of ci/bench, their
# pids in PIDS (ci/bench's cleanup stops them); data, logs, sockets and run files stay under
# $DIR/nbdkit and $DIR/ceph.
# Uses from ci/bench: DIR PORT SIZE RUNTIME PIDS HZ wait_for ticks, $DIR/sheep.json, $DIR/nbd.json.

NBDKIT_PORT=$((PORT + 2))
CEPH_MON_PORT=$((PORT + 3))
CEPH=$DIR/ceph
CEPH_CONF=$CEPH/ceph.conf
SIZE_BYTES=$(numfmt --from=iec "$SIZE")
NBDKIT=()
CEPH_DAEMONS=()
CEPH_NAMES=()

# nbdkit: one process, ready once it has written its pid file.
start_nbdkit() {
    mkdir -p "$DIR/nbdkit"
    nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$NBDKIT_PORT" -P "$DIR/nbdkit/pid" \
        memory size="$SIZE_BYTES" allocator=malloc >"$DIR/nbdkit/nbdkit.log" 2>&1 &
    NBDKIT=($!)
    PIDS+=("${NBDKIT[@]}")
    wait_for 30 "nbdkit on 127.0.0.1:$NBDKIT_PORT" test -s "$DIR/nbdkit/pid"
}

quiet() {  # quiet COMMAND...: its output only if it fails
    local out
    out=$("$@" 2>&1) || { echo "ci/bench: $* failed:" >&2; echo "$out" >&2; return 1; }
}
# Every ceph CLI call bounded: wait_for retries, and no call can hang the run.
ceph_cli() { timeout 60 ceph -c "$CEPH_CONF" --connect-timeout 10 "$@"; }

write_ceph_conf() {  # $name is Ceph's own metavariable (mon.a, osd.0, ...), not the shell's
    cat >"$CEPH_CONF" <<EOF
[global]
fsid = $1
mon_host = [v2:127.0.0.1:$CEPH_MON_PORT]
mon_initial_members = a
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_port_min = $((PORT + 10))
ms_bind_port_max = $((PORT + 99))
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = $CEPH/run
admin_socket = $CEPH/run/\$cluster-\$name.asok
pid_file =
crash_dir = $CEPH/crash
log_file = $CEPH/log/\$name.log
mon_cluster_log_file = $CEPH/log/cluster.log
mon_data = $CEPH/\$name
mgr_data = $CEPH/\$name
osd_data = $CEPH/\$name
mgr_initial_modules = iostat
osd_crush_chooseleaf_type = 0
osd_pool_default_size = 3
osd_pool_default_min_size = 2
osd_pool_default_pg_autoscale_mode = off
rbd_cache = false
debug_ms = 0/0
debug_osd = 0/0
debug_bluestore = 0/0
debug_bluefs = 0/0
debug_bdev = 0/0
debug_rocksdb = 0/0
debug_mon = 0/0
debug_paxos = 0/0
debug_mgr = 0/0
debug_auth = 0/0
debug_monc = 0/0
debug_objecter = 0/0
debug_rados = 0/0
debug_rbd = 0/0
debug_objectcacher = 0/0
[osd]
osd_objectstore = bluestore
# The data dir gets a symlink named block to this file (not \$osd_data/block itself).
bluestore_block_path = $CEPH/\$name.block
bluestore_block_create = true
bluestore_block_size = $((SIZE_BYTES * 2 + (1 << 30)))
osd_memory_target = $((1 << 30))
# A file on tmpfs is taken for a rotational disk: BlueStore's SSD settings instead (no
# deferred writes of small blocks, SSD throttles). The op thread pool sized for 3 OSDs on a
# small machine: 2 shards x 1 thread beat the SSD default (8 x 2) on 2 cores (4K writes
# about +35%, reads the same), so that Ceph is not measured below its best here.
bluestore_debug_enforce_settings = ssd
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
# ci/bench stops every daemon at once: no waiting for the (stopping) mon's ack.
osd_fast_shutdown_notify_mon = false
[client]
keyring = $CEPH/client.admin.keyring
# One admin socket per client process (every ceph CLI call, fio).
admin_socket = $CEPH/run/\$cluster-\$name.\$pid.asok
EOF
}

osds_up() { [ "$(ceph_cli osd stat -f json | jq .num_up_osds)" = 3 ]; }
pgs_clean() {
    ceph_cli pg stat -f json | jq -e '.pg_summary // . | .num_pgs > 0 and
        ([.num_pg_by_state[] | select(.name == "active+clean") | .num] | add) == .num_pgs' >/dev/null
}

# Ceph: mon a, 3 OSDs, mgr x, the pool `rbd` and the image rbd/bench, every PG active+clean.
start_ceph() {
    local fsid id uuid secret
    fsid=$(cat /proc/sys/kernel/random/uuid)
    mkdir -p "$CEPH"/{run,log,crash,mon.a,mgr.x}
    write_ceph_conf "$fsid"
    quiet ceph-authtool --create-keyring "$CEPH/mon.keyring" --gen-key -n mon. --cap mon 'allow *'
    quiet ceph-authtool --create-keyring "$CEPH/client.admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
    quiet ceph-authtool "$CEPH/mon.keyring" --import-keyring "$CEPH/client.admin.keyring"
    quiet monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$CEPH_MON_PORT]" "$CEPH/monmap"
    quiet ceph-mon -c "$CEPH_CONF" --mkfs -i a --monmap "$CEPH/monmap" --keyring "$CEPH/mon.keyring"
    ceph-mon -c "$CEPH_CONF" -f -i a >"$CEPH/log/mon.a.out" 2>&1 &
    CEPH_DAEMONS+=($!); CEPH_NAMES+=(mon.a); PIDS+=($!)
    wait_for 60 "ceph-mon on 127.0.0.1:$CEPH_MON_PORT" ceph_cli mon stat

    for _ in 0 1 2; do
        uuid=$(cat /proc/sys/kernel/random/uuid)
        secret=$(ceph-authtool --gen-print-key)
        id=$(printf '{"cephx_secret": "%s"}' "$secret" | ceph_cli osd new "$uuid" -i -)
        mkdir -p "$CEPH/osd.$id"
        quiet ceph-authtool --create-keyring "$CEPH/osd.$id/keyring" --name "osd.$id" --add-key "$secret"
        quiet ceph-osd -c "$CEPH_CONF" -i "$id" --mkfs --osd-uuid "$uuid" ||
            { tail -n 20 "$CEPH/log/osd.$id.log" >&2; return 1; }
        ceph-osd -c "$CEPH_CONF" -f -i "$id" >"$CEPH/log/osd.$id.out" 2>&1 &
        CEPH_DAEMONS+=($!); CEPH_NAMES+=("osd.$id"); PIDS+=($!)
    done

    quiet ceph_cli auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
        -o "$CEPH/mgr.x/keyring"
    ceph-mgr -c "$CEPH_CONF" -f -i x >"$CEPH/log/mgr.x.out" 2>&1 &
    CEPH_DAEMONS+=($!); CEPH_NAMES+=(mgr.x); PIDS+=($!)

    wait_for 60 "3 ceph OSDs up" osds_up
    quiet ceph_cli osd pool create rbd 32 32 replicated
    quiet ceph_cli osd pool set rbd size 3
    quiet ceph_cli osd pool set rbd min_size 2
    quiet timeout 60 rbd -c "$CEPH_CONF" pool init rbd
    wait_for 120 "the ceph pool's PGs active+clean" pgs_clean
    quiet timeout 60 rbd -c "$CEPH_CONF" create rbd/bench --size "$((SIZE_BYTES >> 20))"
}

# peer_job SYSTEM NAME RW BS QD: one fio job against nbdkit or ceph, as JSON with CPU per op
# of fio and of every process of that system (ci/bench's fio_job).
peer_job() {
    local sys=$1
    shift
    if [ "$sys" = nbdkit ]; then
        local names=(nbdkit)
        fio_job "$sys" "$@" NBDKIT names --ioengine=nbd --uri="nbd://127.0.0.1:$NBDKIT_PORT"
    else
        CEPH_CONF=$CEPH_CONF fio_job "$sys" "$@" CEPH_DAEMONS CEPH_NAMES \
            --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench
    fi
}

# Writes the whole image once (4 MiB sequential, not timed), as the engine's bench prefills.
prefill_peer() {  # prefill_peer SYSTEM
    local engine
    if [ "$1" = nbdkit ]; then engine=(--ioengine=nbd --uri="nbd://127.0.0.1:$NBDKIT_PORT")
    else engine=(--ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench); fi
    CEPH_CONF=$CEPH_CONF fio --name=prefill "${engine[@]}" --size="$SIZE" --rw=write --bs=4M \
        --iodepth=8 --output-format=json >"$DIR/$1-prefill.out" 2>&1 ||
        { cat "$DIR/$1-prefill.out" >&2; return 1; }
}

peer_jobs() {  # peer_jobs SYSTEM: the six jobs, as a JSON array on stdout
    {
        peer_job "$1" seqwrite write 1M 8
        peer_job "$1" randwrite1 randwrite 4k 1
        peer_job "$1" randwrite32 randwrite 4k 32
        peer_job "$1" randread1 randread 4k 1
        peer_job "$1" randread32 randread 4k 32
        peer_job "$1" seqread read 1M 8
    } | jq -s .
}

# Both peers, one after the other (only one system busy at a time), then $DIR/peers.json: each
# peer's jobs, and one row per job with this project's figures (NBD and engine) beside theirs,
# the ratios and the goals against Ceph.
run_peers() {
    local t0=$SECONDS ceph_version
    ceph_version=$(ceph-osd --version | awk '{print $3}')
    echo "ci/bench: peers: nbdkit $(nbdkit --version | awk '{print $2}') memory plugin on 127.0.0.1:$NBDKIT_PORT, $RUNTIME s per job, region $SIZE" >&2
    start_nbdkit
    prefill_peer nbdkit
    peer_jobs nbdkit >"$DIR/peers-nbdkit.json"
    echo "ci/bench: peers: ceph $ceph_version: 1 mon (127.0.0.1:$CEPH_MON_PORT), 1 mgr, 3 BlueStore OSDs on $CEPH, size 3 min_size 2" >&2
    start_ceph
    prefill_peer ceph
    peer_jobs ceph >"$DIR/peers-ceph.json"
    jq -n --slurpfile e "$DIR/sheep.json" --slurpfile n "$DIR/nbd.json" \
        --slurpfile k "$DIR/peers-nbdkit.json" --slurpfile c "$DIR/peers-ceph.json" \
        --arg ceph "$ceph_version" --arg nbdkit "$(nbdkit --version | awk '{print $2}')" \
        --argjson seconds "$((SECONDS - t0))" '
      def ratio($a; $b): if $b > 0 then $a / $b else null end;
      def fig: {iops, mb_per_s, lat_avg_us, cpu_us_per_op};
      def find($list; $j): [$list[] | select(.job == $j)][0];
      {nbdkit: {version: $nbdkit, jobs: $k[0]},
       ceph: {version: $ceph, jobs: $c[0]},
       goals_against_ceph: {randwrite: 10, randread: 3, seq: 2},
       rows: [$e[0][] as $r | find($n[0]; $r.job) as $x | find($k[0]; $r.job) as $kk |
              find($c[0]; $r.job) as $cc |
              (if $r.bs >= 1048576 then 2 elif ($r.job | startswith("randwrite")) then 10 else 3 end) as $goal |
              {job: $r.job, bs: $r.bs, qd: $r.qd,
               nbd: ($x | fig), engine: ($r | fig), nbdkit: ($kk | fig), ceph: ($cc | fig),
               nbd_per_nbdkit: ratio($x.iops; $kk.iops), nbd_per_ceph: ratio($x.iops; $cc.iops),
               engine_per_ceph: ratio($r.iops; $cc.iops), goal: $goal} |
              .met = {nbd: (.nbd_per_ceph != null and .nbd_per_ceph >= $goal),
                      engine: (.engine_per_ceph != null and .engine_per_ceph >= $goal)}],
       seconds: $seconds}' >"$DIR/peers.json"
}

print_peers() {
    local defs='def f: if . == null then "-" else floor | tostring end;
      def x: if . == null then "-" else (. * 100 | round / 100 | tostring) + "x" end;'
    echo
    echo "against peers, same jobs: nbdkit memory (fio nbd: the NBD path's ceiling) and Ceph RBD (fio rbd,"
    echo "3 BlueStore OSDs on the tmpfs, size 3); SHEEP NBD is fio through the NBD export, SHEEP ENGINE sheepctl bench:"
    jq -r "$defs"'["JOB", "QD", "SHEEP NBD IOPS", "SHEEP ENGINE IOPS", "NBDKIT IOPS", "CEPH IOPS",
        "NBD/NBDKIT", "NBD/CEPH", "ENGINE/CEPH"],
      (.rows[] | [.job, (.qd | tostring), (.nbd.iops | f), (.engine.iops | f), (.nbdkit.iops | f),
        (.ceph.iops | f), (.nbd_per_nbdkit | x), (.nbd_per_ceph | x), (.engine_per_ceph | x)]) | @tsv' \
        "$DIR/peers.json" | column -t -s $'\t'
    echo
    echo "QD1: average latency (us); 1 MiB: MB/s:"
    jq -r "$defs"'["JOB", "QD", "FIGURE", "SHEEP NBD", "SHEEP ENGINE", "NBDKIT", "CEPH"],
      (.rows[] | select(.qd == 1 or .bs >= 1048576) |
        (if .qd == 1 then ["lat us", "lat_avg_us"] else ["MB/s", "mb_per_s"] end) as [$what, $k] |
        [.job, (.qd | tostring), $what, (.nbd[$k] | f), (.engine[$k] | f), (.nbdkit[$k] | f), (.ceph[$k] | f)])
      | @tsv' "$DIR/peers.json" | column -t -s $'\t'
    echo
    echo "CPU per operation (us), every process of each system: sheep NBD = fio + export + groupd +"
    echo "3 storaged; engine = sheepctl + groupd + 3 storaged; nbdkit = fio + nbdkit; ceph = fio (librbd) + mon + 3 OSDs + mgr:"
    jq -r "$defs"'. as $p |
      ["JOB", "QD", "SHEEP NBD", "SHEEP ENGINE", "NBDKIT", "CEPH",
       ($p.nbdkit.jobs[0].cpu | map("nbdkit:" + .name) | .[]), ($p.ceph.jobs[0].cpu | map("ceph:" + .name) | .[])],
      (.rows[] | .job as $j | [.job, (.qd | tostring), (.nbd.cpu_us_per_op | f), (.engine.cpu_us_per_op | f),
        (.nbdkit.cpu_us_per_op | f), (.ceph.cpu_us_per_op | f),
        ($p.nbdkit.jobs[] | select(.job == $j) | .cpu[] | .us | f),
        ($p.ceph.jobs[] | select(.job == $j) | .cpu[] | .us | f)]) | @tsv' \
        "$DIR/peers.json" | column -t -s $'\t'
    echo
    echo "goals against Ceph (IOPS, NBD and engine): 4K writes >= 10x, 4K reads >= 3x, 1 MiB both ways >= 2x:"
    jq -r "$defs"'.rows[] | "  \(.job): NBD \(.nbd_per_ceph | x) \(if .met.nbd then "met" else "not met" end), engine \(.engine_per_ceph | x) \(if .met.engine then "met" else "not met" end) (goal >= \(.goal)x)"' \
        "$DIR/peers.json"
    echo "  the peers took $(jq .seconds "$DIR/peers.json") s (start, prefill and jobs of both)"
}
