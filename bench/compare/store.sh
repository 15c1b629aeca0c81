#!/usr/bin/env bash
# The layer store behind a network file system: sshd on 127.0.0.1 and sshfs, as the test fixture (SshfsStore) does.
# Usage (as root): bench/compare/store.sh BAOVERLAYFS BCOW [ROUNDS]
#   BAOVERLAYFS, BCOW: the programs (published builds, or "dotnet path/x.dll").
# Measures, ROUNDS times each (medians are the figures in docs/benchmarks.md):
#   - a container-like start (probe.py container-start: stat and read what a shell and a Python start read on this
#     host, copied into one layer and published) through baoverlayfs: the layer from the local disk (lowerdir=, the
#     floor); -o store=SHARE,image=... over sshfs with no cache; with cache=: cold (first start, every zone touched once), admitting (second start: zones read again
#     are fetched whole and admitted), warm (third start: from the cache); bytes read vs bytes fetched from the store
#     (the cache's state file, fetched-bytes), files opened on the store (store-opens), and the bytes of requests sshfs
#     sent to the server during the start (share-requests: its wchar; 0 when the start did not touch the share);
#   - the mount itself, before each of those starts (baoverlayfs verifies the image's layers — with cache=, a layer
#     published with its tree list by its metadata only, each file's content at its first read during the start —
#     or trusts this host's record of their verification, and reads or makes their indexes): its time (mount-ms), what sshfs received
#     during it (mount-share-fetched: its rchar, the server's answers with the files' data, and the kernel's
#     requests) and sent (mount-share-requests: its wchar); the start's own share-fetched the same way; and
#     total-share-fetched = mount + start, the bytes the share delivered for the whole container start, against the
#     bytes the start read (container-start-bytes);
#   - publish-to-visible: a layer published on the store's own host (bcow store publish), until a reader polling the
#     generation record through sshfs (every 10 ms) sees it change; LayerStore readers poll every 2 s on top of that;
#   - the store unreachable (sshd and its sessions stopped with SIGSTOP) under a warm mount: 4 KiB reads of a cached
#     file (page cache dropped before each) healthy vs unreachable, and the time an uncached read takes to fail (EIO).
# Prints "round phase name value unit" lines, then their medians ("# median phase name value unit"). Data in ${BAOVERLAY_STORE_DIR:-/var/tmp/storeb}, removed at the end.
# BAOVERLAY_STORE_DELAY_MS=N: sshfs reaches sshd through a relay (python asyncio on 127.0.0.1) that holds every chunk
# N ms in each direction, a stand-in for a network with a round trip of about 2N ms (this kernel has no netem; the
# relay's timers have millisecond granularity, and it adds its own CPU time).
set -u
# Every line also goes to a file, for the medians at the end.
OUT=${TMPDIR:-/tmp}/store-bench.$$.out
exec > >(tee "$OUT")
B=$1; BCOW=$2; ROUNDS=${3:-5}; D=${BAOVERLAY_STORE_DIR:-/var/tmp/storeb}
HERE=$(cd "$(dirname "$0")" && pwd)
SSHFS_OPTS="dir_cache=no,no_contain_symlinks,ServerAliveInterval=1,ServerAliveCountMax=2,ConnectTimeout=2,reconnect"
cleanup() {
  for m in "$D/m" "$D/share"; do mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }; done
  [ -n "${RELAY:-}" ] && kill "$RELAY" 2>/dev/null
  [ -n "${SSHD:-}" ] && { kill -CONT $(server_pids) 2>/dev/null; kill "$SSHD" 2>/dev/null; wait "$SSHD" 2>/dev/null; }
  rm -rf "$D"
}
server_pids() { local p=$SSHD; echo "$p"; for c in $(cat /proc/$p/task/$p/children 2>/dev/null); do echo "$c"; cat /proc/$c/task/$c/children 2>/dev/null; done | tr ' ' '\n' | grep .; }
trap cleanup EXIT
rm -rf "$D"; mkdir -p "$D"/{store,share,m,u,w,layer,keys} /run/sshd
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"

# sshd on 127.0.0.1 with throwaway keys; sshfs mounting the store
ssh-keygen -q -t ed25519 -N "" -f "$D/keys/host"; ssh-keygen -q -t ed25519 -N "" -f "$D/keys/client"
cp "$D/keys/client.pub" "$D/keys/authorized"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$D/keys/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $PORT
HostKey $D/keys/host
AuthorizedKeysFile $D/keys/authorized
PidFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel ERROR
EOF
/usr/sbin/sshd -D -e -f "$D/keys/sshd_config" 2>"$D/sshd.log" & SSHD=$!
for i in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
SSHFS_PORT=$PORT
if [ -n "${BAOVERLAY_STORE_DELAY_MS:-}" ]; then
  SSHFS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 - "$SSHFS_PORT" "$PORT" "$BAOVERLAY_STORE_DELAY_MS" <<'EOF' & RELAY=$!
import asyncio, sys
listen, target, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000
async def pipe(reader, writer):
    queue = asyncio.Queue()
    async def pump():
        while data := await reader.read(65536):
            queue.put_nowait((asyncio.get_running_loop().time() + delay, data))
        queue.put_nowait((0, b""))
    async def deliver():
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()
    await asyncio.gather(pump(), deliver(), return_exceptions=True)
async def serve(reader, writer):
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", listen)
    await server.serve_forever()
asyncio.run(main())
EOF
  for i in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$SSHFS_PORT) 2>/dev/null && break; sleep 0.1; done
  echo "# sshfs through a relay holding each chunk $BAOVERLAY_STORE_DELAY_MS ms each way"
fi
$BCOW store init "$D/store" >/dev/null || exit 1
share_mount() {
  sshfs -o "port=$SSHFS_PORT,IdentityFile=$D/keys/client,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR" \
    -o "$SSHFS_OPTS" "root@127.0.0.1:$D/store" "$D/share" || exit 1
}
share_unmount() {
  mountpoint -q "$D/share" || return 0
  fusermount3 -u "$D/share"; for i in $(seq 300); do mountpoint -q "$D/share" || break; sleep 0.01; done
}
# Drops the share's files from the kernel's page cache (the mount's verification of the image has just read them all).
share_drop() {
  python3 -c 'import os, sys
for top, dirs, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(top, name)
        if os.path.isfile(path) and not os.path.islink(path):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$D/share/layers"
}

# the layer: what a shell and a Python start read here, plus a hot file and a cold file for the outage figures
python3 "$HERE/probe.py" start-files "$D/list"
xargs -a "$D/list" -d '\n' cp --parents -L -t "$D/layer" 2>/dev/null
mkdir -p "$D/layer/bench"; head -c 1M /dev/urandom >"$D/layer/bench/hot.bin"; head -c 4M /dev/urandom >"$D/layer/bench/cold.bin"
echo "# layer: $(wc -l <"$D/list") files listed, $(du -sb "$D/layer" | cut -f1) bytes"
$BCOW store publish --host writer --name app "$D/store" "$D/layer" >/dev/null || exit 1

# Each start gets a fresh sshfs mount, and the share's data is dropped from the page cache once baoverlayfs has
# verified the image through it: nothing of the store's data is on this host but what baoverlayfs's cache holds (the
# kernel's page cache of the share would otherwise serve every read of a "no cache" start from memory).
mount_image() {  # $1 round, $2 phase, $3: extra options
  rm -rf "$D/u" "$D/w"; mkdir -p "$D/u" "$D/w"
  share_mount
  local fetched0 requests0 t0 t1
  fetched0=$(sshfs_io rchar); requests0=$(sshfs_io wchar); t0=$(date +%s%N)
  $B -o "store=$D/share,image=app,upperdir=$D/u,workdir=$D/w$3" "$D/m" || exit 1
  t1=$(date +%s%N)
  MOUNT_FETCHED=$(( $(sshfs_io rchar) - fetched0 ))
  echo "$1 $2 mount-ms $(( (t1 - t0) / 1000000 )) ms"
  echo "$1 $2 mount-share-fetched $MOUNT_FETCHED B"
  echo "$1 $2 mount-share-requests $(( $(sshfs_io wchar) - requests0 )) B"
  share_drop
}
unmount_image() {  # and wait for the process to end: it writes the cache's state file last
  fusermount3 -u "$D/m"
  for i in $(seq 600); do pgrep -f -- "workdir=$D/w" >/dev/null || break; sleep 0.05; done
  share_unmount
}
sshfs_io() {  # $1 rchar|wchar of the sshfs process (read: the server's answers and the kernel's requests; written:
  # its requests to the server and its answers to the kernel), or 0 without a share
  local p; p=$(pgrep -f -- "sshfs.*$D/share" | head -1)
  [ -n "$p" ] && sed -n "s/^$1: //p" "/proc/$p/io" || echo 0
}
start() {  # $1 round, $2 phase; after mount_image (MOUNT_FETCHED), or with MOUNT_FETCHED=0
  local requests0 fetched0 fetched; requests0=$(sshfs_io wchar); fetched0=$(sshfs_io rchar)
  python3 "$HERE/probe.py" container-start "$D/m" "$D/list" |
    python3 -c 'import json, sys; [print(sys.argv[1], sys.argv[2], j["metric"].replace(" ", "-"), j["value"], j["unit"]) for j in map(json.loads, sys.stdin)]' "$1" "$2"
  fetched=$(( $(sshfs_io rchar) - fetched0 ))
  echo "$1 $2 share-requests $(( $(sshfs_io wchar) - requests0 )) B"
  echo "$1 $2 share-fetched $fetched B"
  echo "$1 $2 total-share-fetched $(( MOUNT_FETCHED + fetched )) B"
}
fetched() { sed -n 's/^fetched-bytes: //p' "$D/cache/state"; }

LOCAL=$($BCOW store resolve "$D/store" app) || exit 1
for ((r = 1; r <= ROUNDS; r++)); do
  # the floor: the same layer from the local disk (lowerdir=, no network, no cache)
  rm -rf "$D/u" "$D/w"; mkdir -p "$D/u" "$D/w"
  t0=$(date +%s%N)
  $B -o "lowerdir=$LOCAL,upperdir=$D/u,workdir=$D/w" "$D/m" || exit 1
  echo "$r local mount-ms $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  MOUNT_FETCHED=0; start $r local; unmount_image
  mount_image $r nocache ""; start $r nocache; unmount_image
  rm -rf "$D/cache"
  for phase in cold admitting warm; do
    mount_image $r "$phase" ",cache=$D/cache"; start $r "$phase"; unmount_image
    echo "$r $phase fetched $(fetched) B"
    echo "$r $phase store-opens $(sed -n 's/^store-opens: //p' "$D/cache/state") files"
  done
done

# publish-to-visible through sshfs, ROUNDS times
share_mount
for ((r = 1; r <= ROUNDS; r++)); do
  mkdir -p "$D/pub$r"; echo "layer $r $RANDOM" >"$D/pub$r/f"
  python3 - "$D/share/generation" "$BCOW" "$D/store" "$D/pub$r" "$r" <<'EOF'
import subprocess, sys, time
path, bcow, store, layer, r = sys.argv[1:]
def gen():
    with open(path, "rb") as f:
        return f.read()
before = gen()
subprocess.run(bcow.split() + ["store", "publish", "--host", "writer", "--name", "pub" + r, store, layer], check=True, stdout=subprocess.DEVNULL)
done = time.monotonic()
while gen() == before:
    time.sleep(0.01)
print(r, "publish", "visible-after", "%.0f" % ((time.monotonic() - done) * 1000), "ms")
EOF
done

share_unmount

# the store unreachable, under a warm mount
mount_image 0 outage ",cache=$D/cache" >/dev/null
python3 - "$D/m/bench" "$ROUNDS" $(server_pids) <<'EOF'
import os, signal, statistics, sys, time
root, rounds, pids = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
for _ in range(2):  # two readers: every zone of hot.bin admitted
    with open(root + "/hot.bin", "rb") as f:
        f.read()
hot = os.open(root + "/hot.bin", os.O_RDONLY)
cold = os.open(root + "/cold.bin", os.O_RDONLY)
def reads(n=200):
    times = []
    for i in range(n):
        os.posix_fadvise(hot, 0, 0, os.POSIX_FADV_DONTNEED)
        t = time.perf_counter_ns()
        os.pread(hot, 4096, (i * 4096 * 7) % (1 << 20))
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000
for r in range(1, rounds + 1):
    print(r, "healthy", "cached-read", "%.1f" % reads(), "us")
    for p in pids: os.kill(p, signal.SIGSTOP)
    try:
        print(r, "unreachable", "cached-read", "%.1f" % reads(), "us")
        t = time.monotonic()
        try:
            os.posix_fadvise(cold, 0, 0, os.POSIX_FADV_DONTNEED)
            os.pread(cold, 4096, r * 65536 * 3)
            outcome = "answered"
        except OSError as e:
            outcome = os.strerror(e.errno)
        print(r, "unreachable", "uncached-read", "%.0f" % ((time.monotonic() - t) * 1000), "ms", outcome)
    finally:
        for p in pids: os.kill(p, signal.SIGCONT)
    time.sleep(3)  # sshfs reconnects; the cold file's descriptor is reopened below
    os.close(cold)
    for _ in range(100):
        try:
            cold = os.open(root + "/cold.bin", os.O_RDONLY)
            os.pread(cold, 4096, 0)
            break
        except OSError:
            time.sleep(0.1)
EOF
unmount_image
echo "# status file of the cache after the run:"; sed 's/^/#   /' "$D/cache/state"
python3 - "$OUT" <<'EOF'
import collections, statistics, sys
values, units, order = collections.defaultdict(list), {}, []
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) < 5 or not parts[0].isdigit() or parts[0] == "0":
        continue
    try:
        value = float(parts[3])
    except ValueError:
        continue
    key = (parts[1], parts[2])
    if key not in units:
        order.append(key)
    values[key].append(value)
    units[key] = parts[4]
for key in order:
    print("# median", key[0], key[1], "%g" % statistics.median(values[key]), units[key])
EOF
rm -f "$OUT"
