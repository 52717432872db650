#!/usr/bin/env python3
"""Runs a command and prints one JSON line: wall seconds, user and system CPU seconds, and
peak resident memory (KiB) of the command and its children, plus its exit code.

usage: measure.py OUTFILE -- CMD [ARGS...]   (the command's stdout goes to OUTFILE)
"""
import json
import resource
import subprocess
import sys
import time


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out, cmd = sys.argv[1], sys.argv[3:]
    start = time.monotonic()
    with open(out, "wb") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE)
    wall = time.monotonic() - start
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "wall_s": round(wall, 3),
        "user_s": round(ru.ru_utime, 3),
        "sys_s": round(ru.ru_stime, 3),
        "max_rss_kib": ru.ru_maxrss,
        "exit": proc.returncode,
        "stderr_tail": proc.stderr.decode(errors="replace")[-400:],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
