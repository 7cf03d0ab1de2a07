"""One simulated trainer for the sharing tests (run as a subprocess, not collected by pytest).

Two "ranks" of the run select the same step through different replicas, then
each reports half of every task's rollouts. Reports are sometimes sent twice
(a duplicate through another replica) or retried with the same request id.
Writes a JSON list of applied steps: selection id, posterior version and the
evidence, so that the test can replay them serially.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from bots_client import BotsError, SelectorClient, UnavailableError


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", required=True, help="comma-separated replica addresses")
    ap.add_argument("--pool", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lb", action="store_true", help="one round_robin channel over all targets")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    targets = args.targets.split(",")
    if args.lb:
        lb = f"ipv4:{','.join(targets)}"
        opts = [("grpc.lb_policy_name", "round_robin")]
        clients = [SelectorClient(lb, timeout=5.0, retries=5, options=opts)]
    else:
        clients = [SelectorClient(t, timeout=5.0, retries=5) for t in targets]

    def call(fn_name: str, *a, **kw):  # type: ignore[no-untyped-def]
        # Application-level persistence on top of the client's own retries.
        deadline = time.monotonic() + 60
        while True:
            client = rng.choice(clients)
            try:
                return getattr(client, fn_name)(*a, **kw)
            except UnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    applied = []
    duplicates = 0
    for step in range(args.steps):
        sel = call("select_batch", args.pool, args.batch, run_id=args.run, step=step)
        again = call("select_batch", args.pool, args.batch, run_id=args.run, step=step)
        if again.selection_id != sel.selection_id or again.keys != sel.keys:
            print(f"ranks got different selections at step {step}", file=sys.stderr)
            return 3
        evidence: dict[str, list[float]] = {k: [0.0, 0.0] for k in sel.keys}
        version = None
        for rank in range(2):
            outcomes = []
            for key in sel.keys:
                s = rng.randint(0, 8)
                outcomes.append((key, float(s), 8.0))
                evidence[key][0] += s
                evidence[key][1] += 8
            rid = f"{args.run}-{step}-{rank}"
            sends = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
            for _ in range(sends):
                ack = call(
                    "report_outcomes",
                    args.pool,
                    outcomes,
                    selection_id=sel.selection_id,
                    request_id=rid,
                )
                duplicates += ack.duplicate
                if ack.steps_applied:
                    version = ack.posterior_version
        if version is None:
            print(f"step {step} never closed", file=sys.stderr)
            return 4
        applied.append(
            {
                "selection": sel.selection_id,
                "version": version,
                "run": args.run,
                "evidence": evidence,
            }
        )
    with open(args.out, "w") as f:
        json.dump({"applied": applied, "duplicates": duplicates}, f)
    for c in clients:
        c.close()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BotsError as exc:
        print(f"worker failed: {exc!r}", file=sys.stderr)
        raise SystemExit(2) from None
