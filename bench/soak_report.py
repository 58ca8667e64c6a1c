#!/usr/bin/env python3
"""soak_report.py — bench/soak's verdict: did each service's RSS, open file
descriptors and thread count stay flat? Reads <work>/samples.tsv (t_s,
service, rss_kb, fds, threads) and the loadgen JSON of each load stream.

    bench/soak_report.py <work dir> [--dead=<service>...]

"Flat", per service and figure: drop the warm-up (the first fifth of the
samples: pools, caches and malloc arenas fill there), split the rest into
thirds, and compare the median of the last third with the median of the
first third (medians, so that one burst — a batch, a GC of the idempotency
table — does not decide):
  RSS      last <= first * 1.10 + 2 MiB   allocator noise and caches that
           fill slowly pass; a leak of ~100 bytes per call at the soak's
           ~20 calls/s per service (~0.1 MiB/min) over 30 min does not
  fds      last <= first + 2               pools reconnecting may move by one
           or two; one leaked descriptor per call or per event would not
  threads  last <= first + 1               the thread pools are fixed
Also printed: the slope of a least-squares line over the kept samples
(per minute), and the max. Exit 1 when a figure is not flat or a service
died."""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict


def slope_per_min(ts, vs):
    n = len(ts)
    if n < 2:
        return 0.0
    mt, mv = sum(ts) / n, sum(vs) / n
    den = sum((t - mt) ** 2 for t in ts)
    return 0.0 if den == 0 else 60.0 * sum((t - mt) * (v - mv) for t, v in zip(ts, vs)) / den


RULES = {  # figure: (allowed(first) -> bound, unit)
    "rss_kb": (lambda f: f * 1.10 + 2048, "KiB"),
    "fds": (lambda f: f + 2, ""),
    "threads": (lambda f: f + 1, ""),
}


def main():
    work = sys.argv[1]
    dead = [a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--dead=")]
    rows = defaultdict(list)
    with open(os.path.join(work, "samples.tsv")) as f:
        next(f)
        for line in f:
            t, s, rss, fds, thr = line.split("\t")
            rows[s].append((int(t), int(rss), int(fds), int(thr)))
    bad = bool(dead)
    span = max((r[-1][0] for r in rows.values() if r), default=0)
    print(f"soak: {span / 60:.1f} min of samples, {sum(len(r) for r in rows.values())} in all")
    print(f"{'service':14} {'figure':8} {'first':>9} {'last':>9} {'bound':>9} {'max':>9} {'slope/min':>10}  verdict")
    for s, r in rows.items():
        keep = r[len(r) // 5:]
        if len(keep) < 6:
            print(f"{s:14} too few samples ({len(r)}) for a verdict")
            bad = True
            continue
        third = len(keep) // 3
        ts = [x[0] for x in keep]
        for i, (fig, (bound, unit)) in enumerate(RULES.items(), start=1):
            vs = [x[i] for x in keep]
            first = statistics.median(vs[:third])
            last = statistics.median(vs[-third:])
            b = bound(first)
            ok = last <= b
            bad |= not ok
            print(f"{s:14} {fig:8} {first:9.0f} {last:9.0f} {b:9.0f} {max(vs):9.0f} {slope_per_min(ts, vs):10.1f}  "
                  f"{'flat' if ok else 'GROWING'}")
    for s in dead:
        print(f"{s:14} DIED during the soak")
    # What the load did: calls and statuses per stream.
    streams = defaultdict(lambda: [0, defaultdict(int)])
    for path in glob.glob(os.path.join(work, "load-*.json")):
        name = os.path.basename(path)[5:].rsplit("-", 1)[0]
        try:
            d = json.load(open(path))
        except (OSError, ValueError):
            continue
        streams[name][0] += d.get("calls", 0)
        for k, v in d.get("status", {}).items():
            streams[name][1][k] += v
    if streams:
        print("load (calls, statuses):")
        for name in sorted(streams):
            calls, st = streams[name]
            print(f"  {name:22} {calls:8}  " + " ".join(f"{k} {v}" for k, v in sorted(st.items())))
    emails = 0
    try:
        emails = sum(1 for _ in open(os.path.join(work, "smtp.jsonl")))
    except OSError:
        pass
    print(f"  emails accepted by the SMTP sink: {emails}")
    print("soak: " + ("every service stayed flat" if not bad else "NOT FLAT (see above)"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
