"""Checks .ci/compose.sh runs against the compose stack from the host.

Each subcommand prints what it saw and exits non-zero when a check fails:

* ``quickstart``: the README quickstart block, twice (it must be re-runnable), with its
  target swapped for round robin over every published replica; then the README CLI
  block with ``BOTS_TARGET`` pointing at one replica.
* ``prometheus``: every replica is an ``up`` target, every rule of the alert file is
  loaded and healthy, and each replica served SelectBatch calls (round robin works).
* ``load --kill CONTAINER``: select/report steps in a loop while ``docker kill`` takes
  one replica down; no call may fail.
* ``snapshot --out FILE`` / ``snapshot --compare FILE``: every pool's counters, read
  through each replica; ``--compare`` also runs one more step afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from bots_client import SelectorClient

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LB = [("grpc.lb_policy_name", "round_robin")]


def say(text: str) -> None:
    print(f"  {text}", flush=True)


def fail(text: str) -> None:
    print(f"  FAILED: {text}", file=sys.stderr, flush=True)
    sys.exit(1)


def readme_block(heading: str, lang: str) -> str:
    text = README.read_text()
    match = re.search(rf"```{lang}\n(.*?)```", text[text.index(heading) :], re.S)
    if match is None:
        fail(f"no {lang} block after {heading!r} in README.md")
        raise AssertionError  # unreachable; for type checkers
    return match.group(1)


def lb_target(targets: list[str]) -> str:
    return "ipv4:" + ",".join(targets)


# ----------------------------------------------------------------- quickstart


def cmd_quickstart(args: argparse.Namespace) -> None:
    code = readme_block("## Quickstart (Python)", "python")
    call = 'SelectorClient("127.0.0.1:50051")'
    if call not in code:
        fail(f"the quickstart no longer says {call}; update .ci/compose_checks.py")
    code = code.replace(call, f"SelectorClient({lb_target(args.targets)!r}, options={LB!r})")
    for run in (1, 2):
        t = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            fail(f"quickstart run {run} failed:\n{out.stderr}")
        say(f"quickstart run {run}: {out.stdout.strip()} ({time.monotonic() - t:.1f}s)")
        if not out.stdout.startswith(f"steps={3 * run} "):
            fail(f"run {run} should end with steps={3 * run}")

    # A fresh channel sends its first calls to whichever replica answered first; a
    # steady trickle shows the round robin once both connections are up.
    with SelectorClient(lb_target(args.targets), options=LB) as client:
        for _ in range(40):
            client.get_pool("quickstart")
            time.sleep(0.05)
    say("40 GetPool calls over 2s through the same round-robin target")

    script = readme_block("## CLI", "bash")
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": f"{bindir}:/usr/bin:/bin", "BOTS_TARGET": args.targets[0]},
        )
    if out.returncode != 0:
        fail(f"README CLI block failed:\n{out.stderr}")
    pools = [line.split()[0] for line in out.stdout.splitlines()[-3:]]
    say(f"README CLI block against {args.targets[0]}: ok; `bots pool list` ends with {pools}")


# ----------------------------------------------------------------- prometheus


def prom(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        fail(f"{path}: {body}")
    return body["data"]


def wait_for(what: str, check: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    t = time.monotonic()
    while True:
        result = check()
        if result:
            say(f"{what} (after {time.monotonic() - t:.0f}s)")
            return result
        if time.monotonic() > deadline:
            fail(f"timed out waiting: {what}")
        time.sleep(2)


def cmd_prometheus(args: argparse.Namespace) -> None:
    base = args.prometheus
    n = len(args.targets)

    def targets_up() -> list[dict[str, Any]] | None:
        active = prom(base, "/api/v1/targets", state="active")["activeTargets"]
        mine = [t for t in active if t["labels"]["job"] == "bots-selector"]
        return mine if len(mine) == n and all(t["health"] == "up" for t in mine) else None

    up = wait_for(f"{n} selector targets up", targets_up)
    for target in up:
        say(
            f"  {target['labels']['instance']}: {target['health']}, last scrape {target['lastScrape'][:19]}"
        )

    expected = {r["alert"] for g in yaml.safe_load(Path(args.rules).read_text())["groups"] for r in g["rules"]}  # fmt: skip
    groups = prom(base, "/api/v1/rules")["groups"]
    loaded = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    if set(loaded) != expected:
        fail(f"rules loaded {sorted(loaded)} != {sorted(expected)} in {args.rules}")
    bad = {name: health for name, health in loaded.items() if health != "ok"}
    if bad:
        fail(f"unhealthy rules: {bad}")
    firing = [r["name"] for g in groups for r in g["rules"] if r.get("state") == "firing"]
    say(
        f"{len(loaded)} alert rules loaded from {args.rules}, all healthy; firing: {firing or 'none'}"
    )

    query = "sum by (instance, method) (bots_rpc_handled_total)"

    def per_replica() -> dict[str, dict[str, int]] | None:
        rows = prom(base, "/api/v1/query", query=query)["result"]
        seen: dict[str, dict[str, int]] = {}
        for r in rows:
            seen.setdefault(r["metric"]["instance"], {})[r["metric"]["method"]] = int(
                float(r["value"][1])
            )
        busy = [i for i, m in seen.items() if m.get("GetPool", 0) > 0]
        return seen if len(busy) == n else None

    seen = wait_for("every replica served calls (scraped every 15s)", per_replica)
    for instance, methods in sorted(seen.items()):
        calls = ", ".join(f"{m} {c}" for m, c in sorted(methods.items()) if c)
        say(f"  {instance}: {calls}")


# ----------------------------------------------------------------- kill under load


def cmd_load(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    stop = threading.Event()
    killed_at: list[float] = []
    counts = {"before": 0, "after": 0}
    errors: list[str] = []

    def loop() -> None:
        with SelectorClient(lb_target(args.targets), options=LB, timeout=10) as client:
            tasks = [f"load-{i}" for i in range(500)]
            client.create_pool("compose-load", tasks, preset="bots")
            step = 0
            while not stop.is_set():
                try:
                    sel = client.select_batch("compose-load", 16, run_id="load", step=step)
                    outcomes = [(t.key, rng.randint(0, 16), 16) for t in sel.tasks]
                    client.report_outcomes("compose-load", outcomes, selection_id=sel.selection_id)
                    counts["after" if killed_at else "before"] += 1
                except Exception as exc:  # every failure is a finding here
                    errors.append(f"step {step}: {type(exc).__name__}: {exc}")
                step += 1

    worker = threading.Thread(target=loop)
    t0 = time.monotonic()
    worker.start()
    time.sleep(args.before)
    out = subprocess.run(["docker", "kill", args.kill], capture_output=True, text=True)
    if out.returncode != 0:
        stop.set()
        worker.join()
        fail(f"docker kill: {out.stderr.strip()}")
    killed_at.append(time.monotonic())
    say(f"docker kill {args.kill[:12]} at +{killed_at[0] - t0:.1f}s")
    time.sleep(args.after)
    stop.set()
    worker.join(timeout=60)
    say(
        f"select+report steps: {counts['before']} before the kill, {counts['after']} in the "
        f"{args.after:.0f}s after it, {len(errors)} failed"
    )
    for e in errors[:5]:
        say(f"  {e}")
    if errors or counts["after"] == 0 or counts["before"] == 0:
        fail("clients did not keep working through the kill")
    with SelectorClient(lb_target(args.targets), options=LB) as client:
        info = client.get_pool("compose-load")
    total = counts["before"] + counts["after"]
    say(f"pool compose-load: {info.steps_applied} steps applied for {total} reported")
    if info.steps_applied != total:
        fail("every acknowledged report must be applied exactly once")


# ----------------------------------------------------------------- snapshots


def pool_counters(target: str) -> dict[str, list[int]]:
    with SelectorClient(target) as client:
        return {
            p.name: [p.task_count, p.steps_applied, p.selections_opened]
            for p in client.list_pools()
        }


def cmd_snapshot(args: argparse.Namespace) -> None:
    views = {t: pool_counters(t) for t in args.targets}
    first = views[args.targets[0]]
    if any(v != first for v in views.values()):
        fail(f"replicas disagree: {views}")
    if args.out:
        Path(args.out).write_text(json.dumps(first))
        say(f"{len(first)} pools [tasks, steps, selections]: {json.dumps(first, sort_keys=True)}")
        return
    before = json.loads(Path(args.compare).read_text())
    if first != before:
        fail(f"pools changed across the Redis restart:\n  before {before}\n  after  {first}")
    say(f"every replica sees the same {len(first)} pools as before the restart")
    with SelectorClient(lb_target(args.targets), options=LB) as client:
        steps = client.get_pool("quickstart").steps_applied
        sel = client.select_batch("quickstart", 16, run_id="after-restart", step=0)
        client.report_outcomes(
            "quickstart", [(t.key, 8, 16) for t in sel.tasks], selection_id=sel.selection_id
        )
        after = client.get_pool("quickstart").steps_applied
    if after != steps + 1:
        fail(f"a step after the restart left steps_applied at {after}, expected {steps + 1}")
    say(f"one more step on 'quickstart' after the restart: steps {steps} -> {after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", required=True, type=lambda s: s.split(","))
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("quickstart").set_defaults(func=cmd_quickstart)
    p = sub.add_parser("prometheus")
    p.add_argument("--rules", required=True)
    p.set_defaults(func=cmd_prometheus)
    p = sub.add_parser("load")
    p.add_argument("--kill", required=True, help="container id")
    p.add_argument("--before", type=float, default=3.0)
    p.add_argument("--after", type=float, default=8.0)
    p.set_defaults(func=cmd_load)
    p = sub.add_parser("snapshot")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--out")
    group.add_argument("--compare")
    p.set_defaults(func=cmd_snapshot)
    args = parser.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args.func(args)


if __name__ == "__main__":
    main()
