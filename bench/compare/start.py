#!/usr/bin/env python3
"""Mount start-up and idle footprint for bench/compare/start.sh: one mount per system and round, rounds interleaved
(the order rotates), one JSON object per measure on stdout ({"round", "system", "metric", "value", "unit"}).

Usage: start.py ROUNDS DATA NAME=COMMAND [NAME=COMMAND...]
  COMMAND is a mount program taking fuse-overlayfs's command line (backgrounding by default); it is run as
  COMMAND -o lowerdir=DATA/lower1:DATA/lower2,upperdir=...,workdir=... MOUNTPOINT, on fresh upper and work folders.

Measures, per mount:
  visible   from just before fork/exec of the command to the mount's line in /proc/self/mountinfo (woken by poll():
            the kernel signals a change of the mount table with POLLPRI, so nothing spins)
  returned  from the same start to the command's exit (both programs return once the mount serves)
  rss, threads  VmRSS and the task count of the serving process, IDLE_SECONDS (1) after a stat and a 4 KiB read
            through the mount, i.e. an idle mount that has answered its first requests
"""
import json
import os
import select
import shlex
import subprocess
import sys
import time

IDLE_SECONDS = 1.0


def mounted(mountinfo, mount_point):
    mountinfo.seek(0)
    return any(line.split(" ")[4] == mount_point for line in mountinfo.read().splitlines())


def serving_pid(mount_point, program):
    """The process whose command line ends with the mount point and names the program (the daemon that stays)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
        except OSError:
            continue
        if argv and os.fsencode(mount_point) in argv and os.path.basename(argv[0]) == os.fsencode(os.path.basename(program)):
            return int(entry)
    return None


def alive(pid):
    """Whether the process runs: not gone and not a zombie (an exited daemon is reparented, and the init of a container
    or VM may reap it only seconds later)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def status(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


def one_mount(data, name, command):
    root = os.path.join(data, name)
    upper, work, mount_point = (os.path.join(root, d) for d in ("upper", "work", "merged"))
    subprocess.run(["rm", "-rf", upper, work], check=True)
    for d in (upper, work, mount_point):
        os.makedirs(d, exist_ok=True)
    options = f"lowerdir={data}/lower1:{data}/lower2,upperdir={upper},workdir={work}"
    argv = shlex.split(command) + ["-o", options, mount_point]
    with open("/proc/self/mountinfo") as mountinfo:
        poller = select.poll()
        poller.register(mountinfo, select.POLLPRI | select.POLLERR)
        mounted(mountinfo, mount_point)  # a first read arms the notification
        t0 = time.perf_counter_ns()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        visible = None
        deadline = time.monotonic() + 30
        while visible is None and time.monotonic() < deadline:
            events = poller.poll(100)
            if events and mounted(mountinfo, mount_point):
                visible = time.perf_counter_ns()
            elif not events and process.poll() is not None and not mounted(mountinfo, mount_point):
                break
        _, error = process.communicate(timeout=30)
        returned = time.perf_counter_ns()
    if visible is None or process.returncode != 0:
        raise SystemExit(f"start.py: {name} did not mount (exit {process.returncode}): {error.decode().strip()}")
    os.stat(os.path.join(mount_point, "etc/hostname"))
    with open(os.path.join(mount_point, "etc/hostname"), "rb") as f:
        f.read(4096)
    time.sleep(IDLE_SECONDS)
    pid = serving_pid(mount_point, argv[0])
    rss, threads = status(pid) if pid else (None, None)
    subprocess.run(["umount", mount_point], check=True)
    for _ in range(1000):  # the daemon exits once the kernel ends the connection
        if pid is None or not alive(pid):
            break
        time.sleep(0.01)
    return {"visible": ((visible - t0) / 1e6, "ms"), "returned": ((returned - t0) / 1e6, "ms"),
            "rss": (rss / 1024 if rss else None, "MiB"), "threads": (threads, "")}


def main():
    rounds, data, systems = int(sys.argv[1]), sys.argv[2], [s.split("=", 1) for s in sys.argv[3:]]
    for r in range(1, rounds + 1):
        for k in range(len(systems)):
            name, command = systems[(r - 1 + k) % len(systems)]
            for metric, (value, unit) in one_mount(data, name, command).items():
                print(json.dumps({"round": r, "system": name, "metric": metric, "value": value, "unit": unit}), flush=True)


if __name__ == "__main__":
    main()
