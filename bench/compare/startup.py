#!/usr/bin/env python3
"""The start of a container on a fresh mount, for bench/compare/run.sh: mount, a container-like start read, unmount.
Usage: startup.py LIST MOUNTPOINT -- COMMAND...   (COMMAND mounts MOUNTPOINT and returns once it serves, or stays in
the foreground; for kernel overlayfs it is mount(8)). Prints JSON lines {"metric", "value", "unit", "better"}:
  mount                 exec of COMMAND to the mount's line in /proc/self/mountinfo (poll() on the mount table)
  idle rss / threads    VmRSS and tasks of the serving process 1 s after the first stat and read (FUSE daemons only)
  container start       exec of COMMAND to the end of the unmount, the reads of probe.py container-start between
  container start reads the reads alone (their own probe output is passed through)
The helpers for the mount table and the serving process are start.py's (bench/compare/start.sh)."""
import json
import os
import select
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import start  # noqa: E402  (start.mounted, start.serving_pid, start.status)

HERE = os.path.dirname(os.path.abspath(__file__))


def emit(metric, value, unit, better="lower"):
    print(json.dumps({"metric": metric, "value": value, "unit": unit, "better": better}), flush=True)


def main(argv):
    listing, mount_point, command = argv[1], argv[2], argv[4:]
    with open("/proc/self/mountinfo") as mountinfo:
        poller = select.poll()
        poller.register(mountinfo, select.POLLPRI | select.POLLERR)
        start.mounted(mountinfo, mount_point)  # a first read arms the notification
        t0 = time.perf_counter_ns()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        visible = None
        deadline = time.monotonic() + 30
        while visible is None and time.monotonic() < deadline:
            if poller.poll(100) and start.mounted(mountinfo, mount_point):
                visible = time.perf_counter_ns()
            elif process.poll() not in (None, 0):
                break
    if visible is None:
        raise SystemExit(f"startup.py: {' '.join(command)} did not mount {mount_point}")
    reads = subprocess.run([sys.executable, os.path.join(HERE, "probe.py"), "container-start", mount_point, listing],
                           check=True, capture_output=True, text=True).stdout
    t_read = time.perf_counter_ns()
    footprint = None
    if os.path.basename(command[0]) != "mount":
        time.sleep(1.0)  # idle, after having answered the start's requests (not part of the start's time)
        pid = start.serving_pid(mount_point, command[0])
        footprint = start.status(pid) if pid else None
    t_umount = time.perf_counter_ns()
    subprocess.run(["umount", mount_point], check=True)
    t_end = time.perf_counter_ns()
    if process.poll() is None:
        process.wait(timeout=30)
    emit("mount", (visible - t0) / 1e6, "ms")
    emit("container start", ((t_read - t0) + (t_end - t_umount)) / 1e6, "ms")
    sys.stdout.write(reads)
    if footprint is not None:
        rss_kib, threads = footprint
        emit("idle rss", rss_kib / 1024, "MiB")
        emit("idle threads", threads, "threads")


if __name__ == "__main__":
    main(sys.argv)
