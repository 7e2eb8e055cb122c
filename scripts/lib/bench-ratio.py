"""Shared by scripts/bench-security.sh, bench-tls.sh and bench-sharding.sh: the median
table of two gateways measured in alternating rounds, with the candidate/anchor throughput
ratio, for each operation both measured.

  python3 scripts/lib/bench-ratio.py NAME ANCHOR CANDIDATE TMP ROUNDS DURATION CONCURRENCY COMMIT

reads TMP/<which>.<round>.json (`bulwark bench kv --json`) for which in ANCHOR, CANDIDATE.
"""
import datetime
import json
import statistics
import sys

name, anchor, cand, tmp, rounds, duration, conc, commit = sys.argv[1:9]
rounds = int(rounds)
runs = {}
for which in (anchor, cand):
    for r in range(1, rounds + 1):
        for res in json.load(open(f"{tmp}/{which}.{r}.json"))["results"]:
            bad = res["requests"] - res["ok"]
            if bad:
                sys.exit(f"{name}: round {r}, {which} {res['op']}: {bad} requests failed: {res['status_codes']}")
            runs.setdefault((which, res["op"]), []).append(res)
med = statistics.median
print(f"{name}  {datetime.date.today()}  commit {commit}  {rounds} rounds × {duration} s, "
      f"{conc} keep-alive connections, --api v1, medians")
a, c = anchor, cand
print(f"{'op':6} {a + ' rps':>12} {c + ' rps':>12} {'ratio':>6} {a + ' p50':>12} {c + ' p50':>12} "
      f"{'Δp50 µs':>8} {a + ' p99':>12} {c + ' p99':>12}")
for op in ("write", "read"):
    if (anchor, op) not in runs or (cand, op) not in runs:
        continue
    o, s = runs[(anchor, op)], runs[(cand, op)]
    orps, srps = med([x["throughput_rps"] for x in o]), med([x["throughput_rps"] for x in s])
    o50, s50 = med([x["latency_us"]["p50"] for x in o]), med([x["latency_us"]["p50"] for x in s])
    o99, s99 = med([x["latency_us"]["p99"] for x in o]), med([x["latency_us"]["p99"] for x in s])
    print(f"{op:6} {orps:12.0f} {srps:12.0f} {srps / orps:6.3f} {o50:12.0f} {s50:12.0f} "
          f"{s50 - o50:8.0f} {o99:12.0f} {s99:12.0f}")
