#!/usr/bin/env python3
"""Process trees from /proc: a PID and all its descendants, their CPU time and memory.

Imported by rss_sampler.py and load_client.py; the shell scripts use the command line:

    proctree.py cpu PID...           CPU seconds (user + system, waited-for children
                                     included) of the trees, e.g. "12.34"; empty PIDs
                                     are skipped, a process counted once
    proctree.py rss PID              "SUM_KB MAX_KB": VmRSS summed over the tree, and the
                                     largest process's
    proctree.py cpu-log OUT ROOT [PID]
                                     every 0.1 s a line "epoch seconds, CPU s of ROOT's
                                     tree, CPU s of PID's tree (0 without PID)" into OUT,
                                     until SIGTERM or ROOT exits

Linux only, standard library only.
"""
import os
import signal
import sys
import time

TCK = os.sysconf("SC_CLK_TCK")


def children(pid):
    """Direct children of pid (from /proc/<pid>/task/*/children, else a /proc scan)."""
    kids = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    have_children_file = False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
            have_children_file = True
        except OSError:
            pass
    if not have_children_file:  # kernel without CONFIG_PROC_CHILDREN
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = stat_fields(entry)
                try:
                    if fields and int(fields[1]) == int(pid):
                        kids.append(int(entry))
                except (ValueError, IndexError):
                    pass
    return kids


def tree_pids(*roots):
    """roots and all their descendants, each once (roots that are empty or None skipped)."""
    pids, seen = [], set()
    todo = [int(p) for p in roots if p not in ("", None)]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        pids.append(pid)
        todo.extend(children(pid))
    return pids


def stat_fields(pid):
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid, reaped=True):
    """User + system CPU seconds of one process; with reaped, plus those of the children
    it has waited for (cutime, cstime). 0.0 if it is gone."""
    fields = stat_fields(pid)
    try:
        return sum(int(x) for x in fields[11:15 if reaped else 13]) / TCK
    except (TypeError, ValueError):
        return 0.0


def tree_cpu(*roots, reaped=True):
    """CPU seconds of the trees under roots (see cpu_seconds)."""
    return sum(cpu_seconds(p, reaped) for p in tree_pids(*roots))


def _status_kb(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def rss_kb(pid):
    """VmRSS of pid in KiB; None if gone, or a zombie (no VmRSS line)."""
    return _status_kb(f"/proc/{pid}/status", "VmRSS:")


def pss_kb(pid):
    """Pss of pid in KiB (/proc/<pid>/smaps_rollup: shared pages divided among their users)."""
    return _status_kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def tree_rss(*roots):
    """(sum, largest) of VmRSS in KiB over the trees; (0, 0) if none is there."""
    vals = [v for v in map(rss_kb, tree_pids(*roots)) if v is not None]
    return sum(vals), max(vals, default=0)


def cpu_log(out, root, other=0, interval=0.1):
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    with open(out, "w", buffering=1) as f:
        while not stop and stat_fields(root) is not None:
            f.write(f"{time.time():.3f} {tree_cpu(root):.2f} {tree_cpu(other) if other else 0:.2f}\n")
            time.sleep(interval)


def main(argv):
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "cpu":
        print(f"{tree_cpu(*args):.2f}")
    elif cmd == "rss" and len(args) == 1:
        print(*tree_rss(args[0]))
    elif cmd == "cpu-log" and len(args) in (2, 3):
        cpu_log(args[0], int(args[1]), int(args[2]) if len(args) > 2 else 0)
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
