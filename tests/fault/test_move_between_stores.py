"""A pool moves from the embedded store into Redis and back without losing anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bots_client import SelectorClient, Task
from service_procs import RedisProcess, ServerProcess, free_port


def posteriors(client: SelectorClient, pool: str) -> dict[str, tuple[float, float]]:
    return {
        tp.task.key: (tp.alpha, tp.beta)
        for _header, chunk in client.export_posteriors(pool)
        for tp in chunk
    }


def cli(target: str, *args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bots_server", "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


def test_embedded_to_redis_and_back_with_the_cli(tmp_path: Path, redis_server: RedisProcess):
    embedded = ServerProcess(tmp_path / "embedded", free_port()).start()
    shared = ServerProcess(tmp_path / "r", free_port(), "--redis", redis_server.url).start()
    back = ServerProcess(tmp_path / "embedded-2", free_port()).start()
    try:
        tasks = [Task(f"q{i}", weak=(i % 5) / 10, strong=0.5 + (i % 5) / 10) for i in range(40)]
        with SelectorClient(embedded.address) as c:
            c.create_pool("math", tasks)
            for step in range(5):
                sel = c.select_batch("math", 8, run_id="r", step=step)
                outs = [(k, float((i + step) % 17), 16.0) for i, k in enumerate(sel.keys)]
                c.report_outcomes("math", outs, selection_id=sel.selection_id)
            before, info = posteriors(c, "math"), c.get_pool("math")
        assert info.steps_applied == 5
        dump = tmp_path / "math.jsonl"
        cli(embedded.address, "pool", "export", "math", "--out", str(dump))
        cli(shared.address, "pool", "import", str(dump))
        again = tmp_path / "math-again.jsonl"
        cli(shared.address, "pool", "export", "math", "--out", str(again))
        cli(back.address, "pool", "import", str(again))
        for target in (shared.address, back.address):
            with SelectorClient(target) as c:
                moved = c.get_pool("math")
                assert posteriors(c, "math") == before
                assert (moved.steps_applied, moved.capability, moved.config) == (
                    info.steps_applied,
                    info.capability,
                    info.config,
                )
                # And it keeps learning where it left off.
                sel = c.select_batch("math", 8, run_id="after", step=0)
                ack = c.report_outcomes("math", [(k, 4.0, 16.0) for k in sel.keys],
                                        selection_id=sel.selection_id)  # fmt: skip
                assert ack.posterior_version == info.steps_applied + 1
    finally:
        for p in (embedded, shared, back):
            p.stop()
