#!/usr/bin/env python3
"""Where a backgrounded baoverlayfs mount's start goes: runs PROGRAM -o lowerdir=...,upperdir=...,workdir=... MNT
ROUNDS times with BAOVERLAYFS_START_TRACE=1 (each process prints its phases with CLOCK_MONOTONIC times, StartTrace.cs)
and prints, per phase, the median (min-max) in ms from just before fork/exec of the command. P: the command's own
process, S: the serving process it starts. Also: visible (the mount's line in /proc/self/mountinfo, poll()), returned
(the command's exit) and a first stat through the mount.

Usage (as root): start-phases.py ROUNDS PROGRAM [DIR]   DIR (default /var/tmp/baoverlay-start-phases) is made and removed.
"""
import os
import select
import shutil
import statistics
import subprocess
import sys
import time


def main():
    rounds, program = int(sys.argv[1]), sys.argv[2]
    base = sys.argv[3] if len(sys.argv) > 3 else "/var/tmp/baoverlay-start-phases"
    for d in ("l1/etc", "l2/etc", "m"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    with open(os.path.join(base, "l1/etc/hostname"), "w") as f:
        f.write("start-phases\n")
    mnt = os.path.join(base, "m")
    phases = {}
    try:
        for _ in range(rounds):
            for d in ("u", "w"):
                shutil.rmtree(os.path.join(base, d), ignore_errors=True)
                os.makedirs(os.path.join(base, d))
            env = dict(os.environ, BAOVERLAYFS_START_TRACE="1")
            argv = [program, "-o", f"lowerdir={base}/l1:{base}/l2,upperdir={base}/u,workdir={base}/w", mnt]
            with open("/proc/self/mountinfo") as mountinfo:
                poller = select.poll()
                poller.register(mountinfo, select.POLLPRI | select.POLLERR)
                mountinfo.read()
                t0 = time.monotonic_ns()
                process = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env)
                visible = None
                while visible is None and process.poll() is None or visible is None and poller.poll(0):
                    if poller.poll(100):
                        mountinfo.seek(0)
                        if any(line.split(" ")[4] == mnt for line in mountinfo.read().splitlines()):
                            visible = time.monotonic_ns()
                error = process.communicate()[1].decode()
                returned = time.monotonic_ns()
            if process.returncode != 0 or visible is None:
                raise SystemExit(f"start-phases.py: exit {process.returncode}: {error}")
            os.stat(os.path.join(mnt, "etc/hostname"))
            stat = time.monotonic_ns()
            subprocess.run(["umount", mnt], check=True)
            pids = []
            for line in error.splitlines():
                fields = line.split()
                if fields[:2] != ["baoverlayfs:", "start-trace"]:
                    print(line, file=sys.stderr)
                    continue
                pid, phase, ns = fields[2], fields[3], int(fields[4])
                if pid not in pids:
                    pids.append(pid)
                name = ("P:" if pids.index(pid) == 0 else "S:") + phase
                phases.setdefault(name, []).append((ns - t0) / 1e6)
            for name, at in (("visible", visible), ("returned", returned), ("first stat done", stat)):
                phases.setdefault(name, []).append((at - t0) / 1e6)
            time.sleep(0.2)
    finally:
        subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)
    print(f"| phase ({rounds} rounds, ms from exec) | median (min–max) |")
    print("|---|---:|")
    for name, values in sorted(phases.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f}) |")


if __name__ == "__main__":
    main()
