#!/usr/bin/env python3
"""Sample the resident memory of a process tree until told to stop.

    ./rss_sampler.py --pid PID [--interval 0.05] --out FILE

Every --interval seconds, reads VmRSS from /proc/<pid>/status of PID and all its
descendants (for MSR: the gunicorn master and its workers; for docker-registry: the
one process). Keeps the peak of the sum over the tree and the peak of the largest
single process. On SIGTERM/SIGINT, or when PID exits, writes a JSON summary to --out:

    peak_total_kb   highest sum of VmRSS over the tree seen in one sample
    peak_max_kb     highest VmRSS of any single process
    peak_max_pid    the process that had it
    first_total_kb  sum at the first sample (the idle size before the run)
    max_procs       most processes seen in the tree at once
    samples         number of samples taken
    peak_pss_kb     highest sum of Pss (/proc/<pid>/smaps_rollup) over the tree: shared
                    pages divided among the processes that share them, i.e. the tree's
                    real memory footprint

VmRSS counts pages shared between processes (gunicorn workers forked from a --preload
master share the code and the imported modules) once per process, so the sum
overstates the real footprint of a multi-process server; the largest single process
is the figure to compare with a one-process server. Standard library only (and
proctree.py next to it).
"""
import argparse
import json
import os
import signal
import sys
import time

from proctree import pss_kb, rss_kb, tree_pids


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, required=True, help="root of the process tree")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between samples (default 0.05)")
    ap.add_argument("--rescan", type=float, default=0.5,
                    help="seconds between re-reading the process tree (default 0.5)")
    ap.add_argument("--out", required=True, help="JSON summary written here at exit")
    args = ap.parse_args(argv)

    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    res = {"pid": args.pid, "interval_s": args.interval, "samples": 0, "peak_total_kb": 0,
           "peak_max_kb": 0, "peak_max_pid": None, "first_total_kb": None, "max_procs": 0, "peak_pss_kb": 0}
    pids, last_scan = [], 0.0
    t_start = time.monotonic()
    while not stop:
        now = time.monotonic()
        if now - last_scan >= args.rescan or not pids:
            pids, last_scan = tree_pids(args.pid), now
        values = [(rss_kb(p), p) for p in pids]
        values = [(v, p) for v, p in values if v is not None]
        if not values:
            if rss_kb(args.pid) is None:
                break  # the root process is gone
            pids = []
            continue
        total = sum(v for v, _ in values)
        big, big_pid = max(values)
        res["samples"] += 1
        if res["first_total_kb"] is None:
            res["first_total_kb"] = total
        if total > res["peak_total_kb"]:
            res["peak_total_kb"] = total
        if big > res["peak_max_kb"]:
            res["peak_max_kb"], res["peak_max_pid"] = big, big_pid
        res["max_procs"] = max(res["max_procs"], len(values))
        pss = sum(v for v in (pss_kb(p) for _, p in values) if v is not None)
        res["peak_pss_kb"] = max(res["peak_pss_kb"], pss)
        # sleep to the next tick, in small steps so that a signal ends it quickly
        deadline = now + args.interval
        while not stop:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.05))
    res["duration_s"] = round(time.monotonic() - t_start, 3)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
