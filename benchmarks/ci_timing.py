"""`nox -s flow` and `nox -s tests` on clean clones of two commits, timed in one run.

    python benchmarks/ci_timing.py --before 09ef286 --after HEAD

Each (session, commit) pair gets a fresh clone of this repository at that commit, a fresh
virtualenv with the CI's nox pin, and its own nox virtualenvs, exactly as `.ci/run` does on a
clean clone; the wall time covers the installs too. The pairs run one after the other (never two
at once on a 2-core machine), in the order flow-before, flow-after, tests-after, tests-before, so
that neither commit always runs first on a warm pip cache. It prints one line per pair as it ends
and a table of the times and the after/before ratios (`--json` writes them too). `nox -s tests`
runs with `--durations=0`, so each test's time is in its log; the benchmark splits the pytest
time into the tests both commits have and the tests only one has, which tells a slower suite
from a suite with more tests. Half an hour or more per `tests` run on two cores: the whole
benchmark takes over an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOX_PIN = "nox==2026.10.20"  # the pin .ci/run installs


def resolve(ref: str) -> str:
    """The full commit id of `ref` in this repository (a clear error if there is none)."""
    out = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        print(f"ci_timing: {ref!r} is not a commit of {ROOT}", file=sys.stderr)
        sys.exit(2)
    return out.stdout.strip()


DURATION = re.compile(r"^\s*([0-9.]+)s (?:setup|call|teardown)\s+(\S+)\s*$")


def pytest_durations(log: Path) -> dict[str, float]:
    """`{test id: seconds}` (setup + call + teardown) from pytest's `--durations=0` lines."""
    out: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = DURATION.match(line)
        if m:
            out[m.group(2)] = out.get(m.group(2), 0.0) + float(m.group(1))
    return out


def split_tests(before: dict[str, float], after: dict[str, float]) -> dict:
    """Seconds of the tests both runs have, and of those only one has."""
    common = before.keys() & after.keys()
    return {"common_tests": len(common),
            "common_before_s": round(sum(before[t] for t in common), 1),
            "common_after_s": round(sum(after[t] for t in common), 1),
            "only_before": len(before.keys() - common),
            "only_before_s": round(sum(v for t, v in before.items() if t not in common), 1),
            "only_after": len(after.keys() - common),
            "only_after_s": round(sum(v for t, v in after.items() if t not in common), 1)}


def run_pair(session: str, sha: str, work: Path) -> dict:
    """Clone at `sha`, install nox into a fresh venv, run `nox -s session`; wall time and rc."""
    clone = work / f"{session}-{sha[:10]}"
    if clone.exists():
        shutil.rmtree(clone)
    t0 = time.time()
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
                   check=True)
    subprocess.run(["git", "checkout", "--quiet", sha], cwd=clone, check=True)
    venv = clone / ".bench-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", NOX_PIN],
                   check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    log = work / f"{session}-{sha[:10]}.log"
    with open(log, "w") as fh:
        extra = ["--", "--durations=0", "--durations-min=0"] if session == "tests" else []
        rc = subprocess.run([str(venv / "bin" / "nox"), "-s", session, *extra], cwd=clone,
                            env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - t0
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    return {"session": session, "commit": sha, "seconds": round(seconds, 1), "rc": rc,
            "log": str(log), "last_line": tail[0][:200]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the earlier commit (e.g. 09ef286)")
    ap.add_argument("--after", default="HEAD", help="the later commit (default HEAD)")
    ap.add_argument("--sessions", nargs="+", default=["flow", "tests"],
                    choices=["flow", "tests"])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "ci-timing",
                    help="where the clones and logs go (each clone is removed after its run)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the clones (several GB each)")
    args = ap.parse_args(argv)
    before, after = resolve(args.before), resolve(args.after)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, session in enumerate(args.sessions):
        order = [("before", before), ("after", after)]
        for label, sha in (order if i % 2 == 0 else order[::-1]):
            row = run_pair(session, sha, args.work)
            row["which"] = label
            rows.append(row)
            print(f"nox -s {session} at {label} {sha[:10]}: {row['seconds']:.0f} s, "
                  f"exit {row['rc']} ({row['log']})", flush=True)
            if not args.keep:
                shutil.rmtree(args.work / f"{session}-{sha[:10]}", ignore_errors=True)
    print(f"\n| session | before {before[:10]} | after {after[:10]} | after / before |")
    print("|---|---|---|---|")
    result = {"before": before, "after": after, "runs": rows, "ratios": {}}
    for session in args.sessions:
        b = next(r for r in rows if r["session"] == session and r["which"] == "before")
        a = next(r for r in rows if r["session"] == session and r["which"] == "after")
        ratio = a["seconds"] / b["seconds"]
        result["ratios"][session] = round(ratio, 3)
        flag = "" if a["rc"] == 0 and b["rc"] == 0 else " (a run failed: see its log)"
        print(f"| nox -s {session} | {b['seconds']:.0f} s | {a['seconds']:.0f} s | "
              f"{ratio:.2f}{flag} |")
    if "tests" in args.sessions:
        b, a = (next(r for r in rows if r["session"] == "tests" and r["which"] == w)
                for w in ("before", "after"))
        split = split_tests(pytest_durations(Path(b["log"])), pytest_durations(Path(a["log"])))
        result["tests_split"] = split
        if split["common_tests"]:
            print(f"\npytest time of the {split['common_tests']} tests both commits have: "
                  f"{split['common_before_s']:.0f} s before, {split['common_after_s']:.0f} s "
                  f"after ({split['common_after_s'] / split['common_before_s']:.2f}); "
                  f"{split['only_after']} tests only after: {split['only_after_s']:.0f} s; "
                  f"{split['only_before']} only before: {split['only_before_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
