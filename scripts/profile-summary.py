#!/usr/bin/env python3
"""Sums cubecl's logs per kernel: `profile-summary.py profile.log [autotune.log]`.

profile.log (profiling logger, level basic): one `| duration | name` line per kernel run;
printed as a table of the kernels' total time, most first. autotune.log (autotune logger,
level full): one `- Tuning: candidate (compilation & bench: duration)` line per candidate and
one `Fastest result candidate-Key ...` line per tuned key; printed as candidates tried, their
time in all, and the winners."""
import collections
import re
import sys

UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
DURATION = re.compile(r"([0-9.]+)(ns|µs|us|ms|s)\b")


def seconds(text):
    m = DURATION.search(text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def short(name):
    name = name.strip()
    return name.split("<", 1)[0][:110]


def profile(path):
    total = collections.defaultdict(float)
    count = collections.Counter()
    for line in open(path, encoding="utf-8", errors="replace"):
        if not line.startswith("| "):
            continue
        parts = line.split("|")
        if len(parts) < 3:
            continue
        t = seconds(parts[1])
        if t is None:
            continue
        name = short("|".join(parts[2:]))
        total[name] += t
        count[name] += 1
    whole = sum(total.values())
    print(f"kernel time in all: {whole:.3f} s over {sum(count.values())} runs")
    print("| kernel | runs | total (ms) | share |")
    print("|---|---|---|---|")
    for name, t in sorted(total.items(), key=lambda kv: -kv[1])[:40]:
        print(f"| {name} | {count[name]} | {t * 1e3:.1f} | {100 * t / whole:.1f} % |")


def autotune(path):
    tried = 0
    spent = 0.0
    winners = collections.Counter()
    for line in open(path, encoding="utf-8", errors="replace"):
        if "Tuning:" in line and "compilation & bench" in line:
            tried += 1
            spent += seconds(line.split("compilation & bench:")[1]) or 0.0
        elif line.startswith("Fastest result"):
            winners[line.split()[2]] += 1
    print(f"\nautotune: {tried} candidates, {spent:.1f} s compiling and benching them")
    for name, n in winners.most_common():
        print(f"  {n:4d} × {name}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: profile-summary.py profile.log [autotune.log]")
    profile(sys.argv[1])
    if len(sys.argv) > 2:
        autotune(sys.argv[2])
