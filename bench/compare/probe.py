#!/usr/bin/env python3
"""Timed file-system probes for bench/compare/run.sh. Every probe prints one JSON object per metric on stdout:
{"metric": ..., "value": ..., "unit": ..., "better": "lower"|"higher"}. Times come from time.perf_counter_ns()
(CLOCK_MONOTONIC) around the system calls only; the interpreter's start-up is outside every timed span."""
import json
import os
import random
import sys
import time

ns = time.perf_counter_ns


def emit(metric, value, unit, better="lower"):
    print(json.dumps({"metric": metric, "value": value, "unit": unit, "better": better}), flush=True)


def first_write(label, path):
    """The first write into a lower file through a fresh mount: open(O_WRONLY), pwrite 4 KiB of random bytes at the
    middle of the file (4 KiB aligned), fdatasync, close. 'first-write' is open + pwrite: the time until the
    application's write(2) has returned (a copy-up at open counts, as it must); fdatasync and close are reported
    apart."""
    size = os.stat(path).st_size
    offset = (size // 2) & ~4095
    data = os.urandom(4096)
    t0 = ns()
    fd = os.open(path, os.O_WRONLY)
    t1 = ns()
    n = os.pwrite(fd, data, offset)
    t2 = ns()
    os.fdatasync(fd)
    t3 = ns()
    os.close(fd)
    t4 = ns()
    assert n == 4096
    emit(f"first-write {label}", (t2 - t0) / 1e6, "ms")
    emit(f"first-write open {label}", (t1 - t0) / 1e6, "ms")
    emit(f"first-write fdatasync {label}", (t3 - t2) / 1e6, "ms")
    emit(f"first-write close {label}", (t4 - t3) / 1e6, "ms")


def metadata(directory, count):
    """create (open O_CREAT|O_EXCL, write 100 bytes, close), stat, readdir, unlink of COUNT small files."""
    os.mkdir(directory)
    names = [os.path.join(directory, f"f{i:05d}") for i in range(count)]
    payload = b"x" * 100
    t0 = ns()
    for name in names:
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, payload)
        os.close(fd)
    t1 = ns()
    for name in names:
        os.stat(name)
    t2 = ns()
    listed = 0
    with os.scandir(directory) as it:
        for _ in it:
            listed += 1
    t3 = ns()
    for name in names:
        os.unlink(name)
    t4 = ns()
    assert listed == count, (listed, count)
    os.rmdir(directory)
    for phase, span in (("create", t1 - t0), ("stat", t2 - t1), ("readdir", t3 - t2), ("unlink", t4 - t3)):
        emit(f"meta {phase}", span / 1e6, "ms")


def listing(directory):
    """A directory that only a lower layer holds, on a fresh mount: the first scandir (the overlay reads the layers),
    a second one, then listdir + lstat of every entry (what ls -l does)."""
    def scan():
        t = ns()
        with os.scandir(directory) as it:
            n = sum(1 for _ in it)
        return n, ns() - t
    count, first = scan()
    _, second = scan()
    t0 = ns()
    for name in os.listdir(directory):
        os.lstat(os.path.join(directory, name))
    t1 = ns()
    emit(f"lower readdir first ({count})", first / 1e6, "ms")
    emit(f"lower readdir again ({count})", second / 1e6, "ms")
    emit(f"lower listdir + lstat ({count})", (t1 - t0) / 1e6, "ms")


def modify(label, path, writes, seed):
    """A container's change to a large image file: open O_RDWR, WRITES random 4 KiB pwrites, fsync, close."""
    size = os.stat(path).st_size
    rng = random.Random(seed)
    data = os.urandom(4096)
    t0 = ns()
    fd = os.open(path, os.O_RDWR)
    for _ in range(writes):
        os.pwrite(fd, data, rng.randrange(size // 4096) * 4096)
    os.fsync(fd)
    os.close(fd)
    t1 = ns()
    emit(f"container modify {label}", (t1 - t0) / 1e6, "ms")


def start_files(listing):
    """Writes to LISTING the files a shell and a Python start read on this machine, one path per line (absolute, as
    on the host): the dynamic loader's cache, the C library's configuration, and the cached byte code of every module
    a Python start with json, os, re and subprocess imports (what `python3 -c 'import json, os, re, subprocess'`
    loads), from this very interpreter."""
    import json as _json, re as _re, subprocess as _subprocess  # noqa: F401 (imported for sys.modules)
    paths = ["/etc/ld.so.cache", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/localtime", "/etc/profile"]
    for module in list(sys.modules.values()):
        for attr in ("__cached__", "__file__"):
            path = getattr(module, attr, None)
            if isinstance(path, str) and os.path.isfile(path):
                paths.append(path)
                break
    with open(listing, "w") as f:
        for path in dict.fromkeys(os.path.realpath(p) for p in paths):
            f.write(path + "\n")


def container_start(root, listing):
    """A container-like start read from ROOT (a mount whose lower layer holds the host's files under the same
    paths): stat and read every file of LISTING (see start_files), in order, as a starting shell and Python would."""
    with open(listing) as f:
        paths = [line.rstrip("\n") for line in f if line.strip()]
    read = 0
    present = 0
    t0 = ns()
    for path in paths:
        full = root + path
        try:
            os.stat(full)
        except FileNotFoundError:
            continue
        with open(full, "rb", buffering=0) as g:
            while True:
                chunk = g.read(1 << 20)
                if not chunk:
                    break
                read += len(chunk)
        present += 1
    t1 = ns()
    emit("container start reads", (t1 - t0) / 1e6, "ms")
    emit("container start files", present, "files", better="higher")
    emit("container start bytes", read, "B", better="higher")


def main(argv):
    kind = argv[1]
    if kind == "first-write":
        first_write(argv[2], argv[3])
    elif kind == "metadata":
        metadata(argv[2], int(argv[3]))
    elif kind == "listing":
        listing(argv[2])
    elif kind == "modify":
        modify(argv[2], argv[3], int(argv[4]), int(argv[5]))
    elif kind == "start-files":
        start_files(argv[2])
    elif kind == "container-start":
        container_start(argv[2], argv[3])
    else:
        raise SystemExit(f"probe.py: unknown probe {kind}")


if __name__ == "__main__":
    main(sys.argv)
