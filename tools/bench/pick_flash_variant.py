#!/usr/bin/env python3
"""Reads the output of hopper_attn_check.py and prints the SCHED_* expression of the fastest
flash_hopper.cu variant that passed every case it ran (timed at the DiT shape), or "0" (the free
schedule, the first verified kernel) when no variant both passed and was timed.

    python3 tools/bench/pick_flash_variant.py attn.txt      (run on the GPU machine, after the check)
"""
import pathlib
import re
import sys

text = pathlib.Path(sys.argv[1]).read_text()
src = (pathlib.Path(__file__).resolve().parent / "hopper_attn_check.py").read_text()
schedules = dict(re.findall(r'\("(\w+)", "([^"]*)"\)', src[src.index("SCHEDULES = "):]))
part = re.compile(r"(\w+) (ok|FAIL) rel \S+ max\|d\| \S+(?: ([\d.]+) ms)?")
failed, timing = set(), {}
body = text.split("variants (bf16)", 1)[1] if "variants (bf16)" in text else ""
for line in body.splitlines():
    for name, verdict, ms in part.findall(line):
        if verdict != "ok":
            failed.add(name)
        if ms and line.startswith("DiT"):
            timing[name] = float(ms)
passing = {n: t for n, t in timing.items() if n not in failed and n in schedules}
best = min(passing, key=passing.get) if passing else None
if best is None:
    print("0")
    print("no variant passed and was timed: the free schedule", file=sys.stderr)
else:
    print(schedules[best])
    print(f"fastest passing variant: {best} {passing[best]:.3f} ms ({schedules[best]}); failed: {sorted(failed)}", file=sys.stderr)
