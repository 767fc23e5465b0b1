"""Per-stage wall time of a DVC run, from its own output: runs a command (default `make repro`), passes its
output through, stamps every line (tqdm's carriage-return updates count as lines) and prints, per stage,
seconds, share of the whole and the longest stretch without output. Time before DVC's first stage (the
venv install of `make repro` on a fresh clone) is the row `setup`; after the last, `after`.

    python benchmarks/stage_times.py                 # make repro
    python benchmarks/stage_times.py -- dvc repro -f
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

STAGE = re.compile(r"^Running stage '([^']+)'")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="*", default=["make", "repro"])
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    start = time.monotonic()
    rows: list[list] = [["setup", 0.0, 0.0]]  # name, seconds, longest silence
    last = start
    proc = subprocess.Popen(args.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    buffer = b""
    assert proc.stdout is not None
    while chunk := proc.stdout.read1(4096):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        now = time.monotonic()
        rows[-1][2] = max(rows[-1][2], now - last)
        last = now
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for line in lines:
            match = STAGE.match(line.decode(errors="replace"))
            if match:
                rows[-1][1] = now - start - sum(r[1] for r in rows[:-1])
                rows.append([match.group(1), 0.0, 0.0])
    code = proc.wait()
    end = time.monotonic()
    rows[-1][2] = max(rows[-1][2], end - last)
    rows[-1][1] = end - start - sum(r[1] for r in rows[:-1])
    total = end - start
    table = ["| stage | seconds | share | longest silence (s) |", "| --- | ---: | ---: | ---: |"]
    table += [f"| {n} | {s:.1f} | {100 * s / total:.1f}% | {q:.1f} |" for n, s, q in rows]
    table.append(f"| **total** (`{' '.join(args.command)}`, exit {code}) | {total:.1f} | 100% | |")
    print("\n".join(table))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(table) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
