"""Generation backends: transformers ``generate`` (CPU or one GPU) and vLLM.

Both take token ids (prompt handling is shared, in `bots_refs._measure`) and
per-task seeds, and return the completions' token ids. torch, transformers
and vLLM are imported when a backend is made, never at import time, and are
typed ``Any`` here so the type check is the same with or without them.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bots_refs._errors import RefsError

# Files whose presence means a model directory has weights (else: config only).
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class Sampling:
    """How each task is sampled.

    Attributes:
        n: Rollouts per task.
        temperature: Softmax temperature; 0 decodes greedily.
        top_p: Nucleus sampling mass (1.0: off).
        max_new_tokens: Longest completion, in tokens.
        seed: Base seed; each task's seed is derived from it and the task key.
    """

    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise RefsError(f"n must be >= 1, got {self.n}")
        if not self.temperature >= 0.0:
            raise RefsError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise RefsError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise RefsError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (e.g. the base seed and a task key), the same on every run."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Backend(Protocol):
    """Samples completions for tokenized prompts."""

    name: str
    default_batch_size: int

    def generate(
        self, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: Sampling
    ) -> list[list[list[int]]]:
        """``sampling.n`` completions per prompt, as token ids without EOS or padding.

        A prompt's completions depend only on the prompt, its seed and
        ``sampling``, not on the other prompts of the call.
        """
        ...


def _module(name: str, extra: str = "refs") -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RefsError(
            f"{name} is not installed ({exc}); pip install 'bots-selector[{extra}]'"
        ) from None


def check_model(model: str) -> None:
    """Refuses a model that is written as a local path but does not exist.

    Anything else (``org/name``, ``name``) may be a hub name: transformers decides.
    """
    local = model.startswith((".", "/", "~")) or model.count("/") > 1
    if local and not os.path.exists(os.path.expanduser(model)):
        raise RefsError(f"no model directory {model!r}")


def load_tokenizer(model: str) -> Any:
    """The model's Hugging Face tokenizer (from a local directory or a hub name)."""
    check_model(model)
    transformers = _module("transformers")
    try:
        return transformers.AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise RefsError(f"cannot load a tokenizer from {model!r}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (library errors can run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def has_weights(model: str) -> bool:
    """False for a local directory with a config.json but no weight files (random weights)."""
    if not os.path.isdir(model):
        return True
    return any(os.path.exists(os.path.join(model, f)) for f in _WEIGHT_FILES) or not os.path.exists(
        os.path.join(model, "config.json")
    )


class TransformersBackend:
    """``model.generate`` from transformers, batched over tasks and rollouts.

    Each rollout row samples with its own ``torch.Generator`` (seeded from the
    task's seed and the rollout's index) inside a logits processor, so a
    task's completions do not depend on which tasks share its batch: a resumed
    run gives what an uninterrupted one would have.

    Args:
        model: A local model directory or a hub name. A directory with only a
            config.json gets random weights (seeded by ``init_seed``): for tests.
        tokenizer: The model's tokenizer (its pad/EOS tokens are used).
        device: torch device, e.g. ``cpu`` or ``cuda``.
        dtype: torch dtype name (``float32``, ``bfloat16``, ...); None: the model's.
        init_seed: Seed of random weights for a config-only directory.
    """

    name = "transformers"
    default_batch_size = 8

    def __init__(
        self,
        model: str,
        tokenizer: Any,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        init_seed: int = 0,
    ) -> None:
        self._torch = torch = _module("torch")
        transformers = _module("transformers")
        kwargs: dict[str, Any] = {}
        if dtype is not None:
            kwargs["dtype"] = getattr(torch, dtype, None)
            if not isinstance(kwargs["dtype"], torch.dtype):
                raise RefsError(f"unknown dtype {dtype!r}: use e.g. float32, bfloat16, float16")
        # One bar on stderr is ours: transformers' loading bars would break the error line.
        hf_logging = transformers.utils.logging
        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            if has_weights(model):
                net = transformers.AutoModelForCausalLM.from_pretrained(model, **kwargs)
            else:
                config = transformers.AutoConfig.from_pretrained(model)
                torch.manual_seed(init_seed)
                net = transformers.AutoModelForCausalLM.from_config(config, **kwargs)
        except (OSError, ValueError) as exc:
            raise RefsError(f"cannot load model {model!r}: {first_line(exc)}") from None
        finally:
            if bars_were_on:
                hf_logging.enable_progress_bar()
        try:
            self._model = net.to(device).eval()
        except (RuntimeError, AssertionError) as exc:  # e.g. cuda on a machine without it
            raise RefsError(
                f"cannot put the model on device {device!r}: {first_line(exc)}"
            ) from None
        self._device = device
        self._eos = _eos_ids(net.generation_config.eos_token_id, tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else (self._eos[0] if self._eos else 0))
        config = transformers.GenerationConfig(
            max_new_tokens=1,
            do_sample=False,  # the RowSampler below draws each token; greedy then takes it
            num_beams=1,
            pad_token_id=self._pad,
            eos_token_id=list(self._eos) or None,
        )
        self._generation_config = config
        self._processors = transformers.LogitsProcessorList

    def generate(
        self, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: Sampling
    ) -> list[list[list[int]]]:
        """See `Backend.generate`: one ``generate`` call for all rows (prompts times n)."""
        torch = self._torch
        if not prompts:
            return []
        rows = [ids for ids in prompts for _ in range(sampling.n)]
        row_seeds = [derive_seed(s, i) for s in seeds for i in range(sampling.n)]
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):  # left padding: every row ends where generation starts
            if ids:
                input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[r, width - len(ids) :] = 1
        sampler = _RowSampler(torch, row_seeds, sampling.temperature, sampling.top_p)
        self._generation_config.max_new_tokens = sampling.max_new_tokens
        with torch.no_grad():
            out = self._model.generate(
                input_ids=input_ids.to(self._device),
                attention_mask=mask.to(self._device),
                generation_config=self._generation_config,
                logits_processor=self._processors([sampler]),
            )
        completions = [self._strip(out[r, width:].tolist()) for r in range(len(rows))]
        n = sampling.n
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _strip(self, ids: list[int]) -> list[int]:
        for i, t in enumerate(ids):
            if t in self._eos:
                return ids[:i]
        return ids


def _eos_ids(*sources: Any) -> tuple[int, ...]:
    ids: list[int] = []
    for src in sources:
        for value in src if isinstance(src, (list, tuple)) else [src]:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
    return tuple(ids)


class _RowSampler:
    """A logits processor that samples one token per row with that row's own generator.

    It returns scores that are 0 for the drawn token and -inf elsewhere, so
    greedy decoding keeps exactly the sampled token.
    """

    def __init__(self, torch: Any, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self._torch = torch
        self._gens = [torch.Generator().manual_seed(s) for s in seeds]
        self._temperature = temperature
        self._top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self._torch
        # One uniform per row per step, drawn whether or not the row has finished.
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self._gens])
        if self._temperature == 0.0:
            choice = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores.double() / self._temperature, dim=-1)
            if self._top_p < 1.0:
                probs = _nucleus(torch, probs, self._top_p)
            cdf = probs.cumsum(dim=-1)
            target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
            choice = torch.searchsorted(cdf, target, right=True).squeeze(-1)
            choice = choice.clamp(max=scores.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, choice.unsqueeze(-1), 0.0)
        return out


def _nucleus(torch: Any, probs: Any, top_p: float) -> Any:
    """``probs`` kept on the smallest set of tokens whose mass reaches ``top_p`` (not renormalised)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly more likely tokens
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


class VllmBackend:
    """vLLM ``LLM.generate`` with ``SamplingParams(n=..., seed=...)`` per task.

    Args:
        model: What ``vllm.LLM`` loads (a local directory or a hub name).
        **llm_kwargs: More ``vllm.LLM`` arguments (``tensor_parallel_size``, ``dtype``, ...).
    """

    name = "vllm"
    default_batch_size = 256

    def __init__(self, model: str, **llm_kwargs: Any) -> None:
        self._vllm = vllm = _module("vllm", extra="vllm")
        self._llm = vllm.LLM(model=model, **llm_kwargs)

    def generate(
        self, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: Sampling
    ) -> list[list[list[int]]]:
        """See `Backend.generate`: one ``LLM.generate`` call, vLLM batches it."""
        params = [
            self._vllm.SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        requests = [{"prompt_token_ids": list(ids)} for ids in prompts]
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        return [[list(c.token_ids) for c in out.outputs] for out in outputs]


BACKENDS = ("transformers", "vllm")


def make_backend(
    name: str, model: str, tokenizer: Any, *, device: str = "cpu", dtype: str | None = None,
    init_seed: int = 0,
) -> Backend:  # fmt: skip
    """The backend called ``name`` for ``model``.

    Raises:
        RefsError: Unknown backend, its framework not installed, or the model fails to load.
    """
    if name == "transformers":
        return TransformersBackend(
            model, tokenizer, device=device, dtype=dtype, init_seed=init_seed
        )
    if name == "vllm":
        return VllmBackend(model, **({"dtype": dtype} if dtype else {}))
    raise RefsError(f"unknown backend {name!r}: use {' or '.join(BACKENDS)}")
