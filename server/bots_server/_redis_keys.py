"""Names of every Redis key the service uses, built in one place (docs/redis.md).

All keys of one pool share the hash tag ``{<pool>}`` so that a pool lives in
one Redis Cluster slot and every script's keys can be passed in ``KEYS``;
keys of a pool incarnation also carry the incarnation id, so that a deleted
and re-created pool never sees its predecessor's keys. There is no registry
of pools: a pool exists exactly when its meta hash does (found with SCAN).
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = "v2"
ROOT = f"bots:{VERSION}:"
EPOCH = ROOT + "epoch"
META_PATTERN = ROOT + "{*}:meta"
TASK_CHUNK = 65536


def meta(pool: str) -> str:
    """Hash of a pool's incarnation, config, log head and checkpoint position."""
    return f"{ROOT}{{{pool}}}:meta"


def pool_of_meta(key: str) -> str:
    """The pool name inside a meta key."""
    return key[len(ROOT) + 1 : -len("}:meta")]


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
        """Hash: the newest checkpoint image and its record seq."""
        return self.prefix + "ckpt"

    @property
    def log(self) -> str:
        """Stream: the records after the checkpoint, entry id ``<seq>-0``."""
        return self.prefix + "log"

    def tasks(self, chunk: int) -> str:
        """String: task columns ``chunk * TASK_CHUNK`` onwards (compressed)."""
        return f"{self.prefix}tasks:{chunk}"

    def chunks(self, task_count: int) -> list[str]:
        """Every task chunk key of a pool holding ``task_count`` tasks."""
        return [self.tasks(c) for c in range((task_count + TASK_CHUNK - 1) // TASK_CHUNK)]
