"""Run every benchmark in sequence (each in its own process, on its own scratch database
and Redis db), then print a summary table, the machine and the date.

Run: make bench, or .venv/bin/python bench/run_all.py [--quick] [--only a,b] [--results-md PATH]
--quick passes --quick to each script and leaves chaos out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

BENCHMARKS = [
    "orchestration",
    "model_bound",
    "resume",
    "noisy",
    "parked",
    "export",
    "scale",
    "chaos",
]
NOT_QUICK = {"chaos"}
SCRIPT_TIMEOUT = 20 * 60  # seconds; a script that runs longer is stopped (SIGTERM, then KILL)
# Scripts that take longer: the scale benchmark builds 1M runs and ~10M events first (19 min
# on a loaded 2-core machine), then times each page 20 times for each of two tenants.
SCRIPT_TIMEOUTS = {"scale": 60 * 60}
RESTART_RETRIES = 2


def _terminate(signum, frame):  # unwind: the running script gets SIGTERM and stops its clusters
    raise SystemExit(128 + signum)


def run_script(name: str, quick: bool, out: Path) -> dict:
    """Run one script; again (twice at most) when PostgreSQL was restarted under it."""
    runs = 0
    while True:
        runs += 1
        result = run_script_once(name, quick, out)
        restarted = common.POSTGRES_RESTARTED in (result.get("error") or "")
        if not restarted or runs > RESTART_RETRIES:
            break
        print(f"bench: {name}: PostgreSQL was restarted under it; running it again", flush=True)
    if runs > 1:
        result["notes"].append(f"ran {runs} times: PostgreSQL was restarted under the others")
    return result


def run_script_once(name: str, quick: bool, out: Path) -> dict:
    command = [sys.executable, str(common.REPO / "bench" / f"{name}.py"), "--json", str(out)]
    if quick:
        command.append("--quick")
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=common.REPO, stdin=subprocess.DEVNULL)
    try:
        code = process.wait(timeout=SCRIPT_TIMEOUTS.get(name, SCRIPT_TIMEOUT))
    except subprocess.TimeoutExpired:
        process.terminate()  # the script stops its clusters on SIGTERM
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    seconds = time.monotonic() - started
    try:
        result = json.loads(out.read_text())
    except (OSError, ValueError):
        result = {"name": name, "figures": [], "notes": [], "error": f"exit code {code}"}
    result["exit"] = code
    result["seconds"] = round(seconds)
    if code and not result.get("error"):
        result["error"] = f"exit code {code}"
    return result


def summary_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for result in results:
        if result.get("error"):
            rows.append([result["name"], "COULD NOT RUN", result["error"][:60], "", ""])
        for f in result["figures"]:
            if not f["aim"]:
                continue
            verdict = "met" if f["met"] else "NOT MET"
            value = f"{common.fmt(f['value'])} {f['unit']}".strip()
            rows.append([result["name"], f["label"], value, f["aim"], verdict])
    return rows


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def markdown(results: list[dict], info: dict, command: str, seconds: float) -> str:
    out = [f"Command: `{command}` ({seconds / 60:.1f} min)", ""]
    out.append("Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    out.append("")
    for result in results:
        out.append(f"### {result['name']} ({result['seconds']} s)")
        out.append("")
        if result.get("error"):
            out.append(f"Could not run: {result['error']}")
            out.append("")
        out.append("| figure | value | aim | |")
        out.append("| --- | --- | --- | --- |")
        for f in result["figures"]:
            value = f"{common.fmt(f['value'])} {f['unit']}".strip()
            verdict = "" if not f["aim"] else ("met" if f["met"] else "**not met**")
            note = f" ({f['note']})" if f["note"] else ""
            out.append(f"| {f['label']}{note} | {value} | {f['aim']} | {verdict} |")
        out.append("")
        for note in result["notes"]:
            out.append(f"- {note}")
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller counts; chaos left out")
    p.add_argument("--only", help="comma-separated benchmark names")
    p.add_argument("--results-md", metavar="PATH", help="also write the figures as Markdown")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    names = args.only.split(",") if args.only else BENCHMARKS
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        p.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    if args.quick:
        names = [n for n in names if n not in NOT_QUICK]
    load = os.getloadavg()[0]
    print(f"bench: {', '.join(names)}{' (quick)' if args.quick else ''}; load average {load:.2f}")
    if load > 1:
        print("bench: warning: the machine is busy; figures will be lower and noisier")
    started = time.monotonic()
    results = []
    interrupted = ""
    with tempfile.TemporaryDirectory(prefix="agentdesk-bench-") as tmp:
        try:
            for name in names:
                results.append(run_script(name, args.quick, Path(tmp) / f"{name}.json"))
                print(flush=True)
        except (KeyboardInterrupt, SystemExit) as exc:
            interrupted = f"interrupted ({type(exc).__name__} {exc}) during {name}"
            print(f"bench: {interrupted}; summary of what ran:", file=sys.stderr, flush=True)
    seconds = time.monotonic() - started
    info = common.machine()
    info["load average at start"] = f"{load:.2f}"
    print("=" * 100)
    print("SUMMARY (figures with an aim; every figure is printed above)")
    print(table(summary_rows(results), ["benchmark", "figure", "value", "aim", ""]))
    print()
    for key, value in info.items():
        print(f"{key:>22}: {value}")
    print(f"{'total':>22}: {seconds / 60:.1f} min")
    if args.results_md:
        command = "bench/run_all.py" + (" --quick" if args.quick else "")
        Path(args.results_md).write_text(markdown(results, info, command, seconds))
        print(f"figures written to {args.results_md}")
    failed = [r["name"] for r in results if r.get("error")]
    if interrupted:
        sys.exit(1)
    if failed:
        print(f"bench: could not run: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
