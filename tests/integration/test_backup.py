"""The Redis backup procedure of docs/operations.md, run against a real redis-server."""

from __future__ import annotations

import shutil
from pathlib import Path

import redis as redis_py
from bots_client import SelectorClient, Task
from bots_server._app import RunningServer, start_server
from bots_server._settings import ServerSettings
from service_procs import RedisProcess


def serve(url: str, tmp_path: Path) -> RunningServer:
    return start_server(
        ServerSettings(
            host="127.0.0.1", port=0, metrics_port=-1, redis_url=url, data_dir=str(tmp_path / "d")
        )
    )


def test_a_copied_aof_directory_restores_every_pool(tmp_path: Path) -> None:
    live = RedisProcess(tmp_path / "live", aof=True).start()
    server = serve(live.url, tmp_path)
    try:
        with SelectorClient(server.address, timeout=10) as client:
            client.create_pool("p", [Task(f"t{i}", weak=0.1, strong=0.9) for i in range(8)])
            for step in range(3):
                sel = client.select_batch("p", 3, run_id="r", step=step)
                outcomes = {k: (step, 4) for k in sel.keys}
                client.report_outcomes("p", outcomes, selection_id=sel.selection_id, final=True)
            before = [
                (t.task.key, t.alpha, t.beta) for _, ts in client.export_posteriors("p") for t in ts
            ]
        # The documented procedure: no AOF rewrite while copying the directory.
        admin = redis_py.Redis(port=live.port)
        admin.config_set("auto-aof-rewrite-percentage", 0)
        assert admin.info("persistence")["aof_rewrite_in_progress"] == 0
        shutil.copytree(live.dir / "appendonlydir", tmp_path / "backup" / "appendonlydir")
        admin.config_set("auto-aof-rewrite-percentage", 100)
        admin.close()
    finally:
        server.stop(grace=0)
        live.stop()

    restored_dir = tmp_path / "restored"
    shutil.copytree(tmp_path / "backup", restored_dir)
    restored = RedisProcess(restored_dir, aof=True).start()
    server = serve(restored.url, tmp_path)
    try:
        with SelectorClient(server.address, timeout=10) as client:
            assert client.get_pool("p").steps_applied == 3
            after = [
                (t.task.key, t.alpha, t.beta) for _, ts in client.export_posteriors("p") for t in ts
            ]
        assert after == before
    finally:
        server.stop(grace=0)
        restored.stop()
