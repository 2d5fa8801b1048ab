"""Turns `mlx-sidecar bench --json` files into the small JSON kept in bench-results/.

`summary OUT IN` keeps a run's summary figures and drops its per-request dumps (`raw`, `pairs`,
`waves`). `paired OUT GROUP=A.json,B.json ...` pools `--paired` runs: per level, the median ratio
with its distribution-free 95 % interval (as the bench computes it), the pooled ratio and the
TTFT difference, plus each run's summary. `passes OUT GROUP=A.json,...` pools pass-design runs:
per level, tokens over wall time, decode mean and TTFT p50 over all requests, plus each run's
command (its summary is kept beside it). A file without `GROUP=` is only summarized.
"""

import json
import math
import statistics
import sys
from pathlib import Path

PER_REQUEST_KEYS = ("raw", "pairs", "waves")


def summary(run: dict) -> dict:
    """The run without its per-request dumps."""
    kept = {k: v for k, v in run.items() if k not in PER_REQUEST_KEYS}
    if "paths" in kept:
        kept["paths"] = [{k: v for k, v in path.items() if k != "raw"} for path in kept["paths"]]
    return kept


def median_ci(values: list[float]) -> dict:
    """Median and its 95 % interval from the binomial order statistics."""
    values = sorted(values)
    n = len(values)
    log_half_n = n * math.log(0.5)
    log_choose, below, k = 0.0, 0.0, 0
    while True:
        nxt = below + math.exp(log_choose + log_half_n)
        if nxt > 0.025 or k + 1 > n // 2:
            break
        below = nxt
        k += 1
        log_choose += math.log(n - k + 1) - math.log(k)
    low, high = (values[0], values[-1]) if k == 0 else (values[k - 1], values[n - k])
    return {"n": n, "median": statistics.median(values), "ci95": [low, high]}


def decode_tps(req: dict) -> float:
    return (req["tokens"] - 1) / (req["last_token"] - req["first_token"])


def ttft_ms(req: dict) -> float:
    return 1e3 * (req["first_token"] - req["start"])


def aggregate_tps(wave: dict) -> float:
    return sum(r["tokens"] for r in wave["requests"]) / wave["wall_s"]


def ttft_p50_ms(wave: dict) -> float:
    return statistics.median(ttft_ms(r) for r in wave["requests"])


def pool_paired(runs: list[dict]) -> dict:
    """Pools the single-request pairs and the wave pairs of several paired runs."""
    pairs = [p for run in runs for p in run.get("pairs") or []]
    waves: dict[int, list[dict]] = {}
    for run in runs:
        for wave in run.get("waves") or []:
            waves.setdefault(wave["concurrency"], []).append(wave)
    levels = {}
    if pairs:
        side, base = "sidecar", "inprocess"
        levels["1"] = {
            "decode_ratio": median_ci([decode_tps(p[side]) / decode_tps(p[base]) for p in pairs]),
            "ttft_delta_ms": median_ci([ttft_ms(p[side]) - ttft_ms(p[base]) for p in pairs]),
            "identical_token_ids": sum(p[side]["token_ids"] == p[base]["token_ids"] for p in pairs),
        }
    for conc, ws in sorted(waves.items()):
        tokens = {
            k: sum(r["tokens"] for w in ws for r in w[k]["requests"])
            for k in ("sidecar", "inprocess")
        }
        wall = {k: sum(w[k]["wall_s"] for w in ws) for k in ("sidecar", "inprocess")}
        levels[str(conc)] = {
            "aggregate_ratio": median_ci(
                [aggregate_tps(w["sidecar"]) / aggregate_tps(w["inprocess"]) for w in ws]
            ),
            "aggregate_ratio_pooled": (tokens["sidecar"] / wall["sidecar"])
            / (tokens["inprocess"] / wall["inprocess"]),
            "ttft_p50_delta_ms": median_ci(
                [ttft_p50_ms(w["sidecar"]) - ttft_p50_ms(w["inprocess"]) for w in ws]
            ),
        }
    return levels


def pool_passes(runs: list[dict]) -> dict:
    """Pools pass-design runs per level: sidecar / in-process over all their requests."""
    by_level: dict[int, dict[str, list[dict]]] = {}
    for run in runs:
        for path in run["paths"]:
            for level in path["raw"]:
                by_level.setdefault(level["concurrency"], {}).setdefault(path["path"], []).append(
                    level
                )
    levels = {}
    for conc, paths in sorted(by_level.items()):
        figures = {}
        for name, parts in paths.items():
            reqs = [r for part in parts for r in part["requests"]]
            figures[name] = {
                "requests": len(reqs),
                "aggregate_tps": sum(r["tokens"] for r in reqs) / sum(p["wall_s"] for p in parts),
                "decode_tps_mean": statistics.mean(decode_tps(r) for r in reqs),
                "ttft_p50_ms": statistics.median(ttft_ms(r) for r in reqs),
            }
        side, base = figures["sidecar"], figures["inprocess"]
        figures["sidecar_over_inprocess"] = {
            "aggregate": side["aggregate_tps"] / base["aggregate_tps"],
            "decode": side["decode_tps_mean"] / base["decode_tps_mean"],
            "ttft_p50_delta_ms": side["ttft_p50_ms"] - base["ttft_p50_ms"],
        }
        levels[str(conc)] = figures
    return levels


def main(argv: list[str]) -> None:
    """`summary OUT IN`, or `paired|passes OUT [GROUP=]A.json[,B.json...] ...`."""
    mode, out, *specs = argv
    if mode == "summary":
        result = summary(json.loads(Path(specs[0]).read_text()))
    else:
        runs: dict[str, dict] = {}
        groups: dict[str, list[str]] = {}
        for spec in specs:
            group, _, files = spec.rpartition("=")
            for f in files.split(","):
                runs.setdefault(Path(f).stem, json.loads(Path(f).read_text()))
                if group:
                    groups.setdefault(group, []).append(Path(f).stem)
        pool = pool_paired if mode == "paired" else pool_passes
        kept = summary if mode == "paired" else (lambda run: run["command"])
        result = {
            "pooled": {
                group: {"runs": names, "levels": pool([runs[n] for n in names])}
                for group, names in groups.items()
            },
            "runs": {name: kept(run) for name, run in runs.items()},
        }
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
