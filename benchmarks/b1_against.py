"""B1 side by side: this checkout's orchestration speed against another revision's, in one run.

The B1 workload (the scripted backend at zero latency, 10-turn dyadic episodes, every turn
persisted) runs alternately with the code of this checkout and with the code of REV (exported
with `git archive` into a temporary folder and imported first on PYTHONPATH), each in a fresh
process, ROUNDS times per size; the table gives the median turns/s of each and their ratio.

    .venv/bin/python benchmarks/b1_against.py --against 8ddc2c5 [--sizes 64 1024] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, report, write_scenario

_WORKLOAD = """
import json, sys, personae
result = personae.run(sys.argv[1], db=sys.argv[2], concurrency=int(sys.argv[3]))
print(json.dumps({"turns": result.turns, "elapsed": result.elapsed_s,
                  "where": personae.__file__}))
"""


def _export(rev: str, folder: Path) -> Path:
    """The files of `rev` under `folder` (a plain tree, not a checkout)."""
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def _once(tree: Path, scenario: Path, db: Path, n: int) -> float:
    for stale in db.parent.glob(db.name + "*"):
        stale.unlink()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, str(scenario), str(db), str(n)],
        cwd=tree, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(data["where"]).resolve().is_relative_to(tree.resolve()), data["where"]
    return float(data["turns"]) / float(data["elapsed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="git revision to compare with")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = folder / "baseline"
        base.mkdir()
        _export(args.against, base)
        for n in args.sizes:
            scenario = write_scenario(folder, repeats=n, max_turns=10, backend="scripted")
            ours, theirs = [], []
            for _ in range(args.rounds):  # alternate, so drift on a noisy machine hits both
                ours.append(_once(ROOT, scenario, folder / "ours.db", n))
                theirs.append(_once(base, scenario, folder / "theirs.db", n))
            rows.append(
                {
                    "episodes in flight": n,
                    "this checkout turns/s": statistics.median(ours),
                    f"{args.against} turns/s": statistics.median(theirs),
                    "ratio (this / baseline)": statistics.median(ours) / statistics.median(theirs),
                    "this min-max": f"{min(ours):.0f}-{max(ours):.0f}",
                    "baseline min-max": f"{min(theirs):.0f}-{max(theirs):.0f}",
                }
            )
    report(
        "b1_against",
        f"B1 side by side with {args.against} (scripted, zero latency, "
        f"10-turn episodes, median of {args.rounds} alternating rounds)",
        list(rows[0]),
        rows,
        {
            "workload": "personae.run on the B1 scenario, every turn persisted, one process "
            "per round"
        },
    )


if __name__ == "__main__":
    main()
