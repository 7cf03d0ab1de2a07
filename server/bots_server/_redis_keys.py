"""Names of every Redis key the service uses, built in one place (docs/redis.md).

All keys of one pool share the hash tag ``{<pool>}`` so that a pool lives in
one Redis Cluster slot; keys of a pool incarnation also carry the incarnation
id, so that a deleted and re-created pool never sees its predecessor's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = "v1"
ROOT = f"bots:{VERSION}:"
EPOCH = ROOT + "epoch"
POOLS = ROOT + "pools"
TASK_CHUNK = 65536


def meta(pool: str) -> str:
    """Hash of a pool's config and counters."""
    return f"{ROOT}{{{pool}}}:meta"


@dataclass(frozen=True)
class PoolKeys:
    """Keys of one pool incarnation."""

    pool: str
    incarnation: str

    @property
    def meta(self) -> str:
        return meta(self.pool)

    @property
    def prefix(self) -> str:
        return f"{ROOT}{{{self.pool}}}:{self.incarnation}:"

    @property
    def ckpt(self) -> str:
        return self.prefix + "ckpt"

    @property
    def log(self) -> str:
        return self.prefix + "log"

    @property
    def open(self) -> str:
        return self.prefix + "open"

    @property
    def runs(self) -> str:
        return self.prefix + "runs"

    def tasks(self, chunk: int) -> str:
        return f"{self.prefix}tasks:{chunk}"

    def selection(self, number: int) -> str:
        return f"{self.prefix}sel:{number}"

    def request(self, request_id: str) -> str:
        return f"{self.prefix}req:{request_id}"


def run_key(run_id: str, step: int) -> str:
    """Field of the runs hash for (run id, step); '' for an anonymous selection."""
    return f"{run_id}\n{step}" if run_id else ""
