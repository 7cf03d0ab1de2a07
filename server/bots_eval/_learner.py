"""The simulated RFT learner: item-response abilities that grow with each step's useful signal.

The model (documented in docs/simulation.md):

* Task k has a difficulty d_k, a skill c_k (one of C topics) and a quirk e_k:
  how much easier or harder this particular model finds it than its
  difficulty says. The learner's success probability is

      p_k = sigmoid(a + b[c_k] + u_k + e_k - d_k)

  with a global ability a, per-skill abilities b, and a per-task bonus u_k
  (what training on that very task taught, which does not transfer).
* One training step on a batch with observed pass rates r_k gives each group
  the useful signal g_k = 2 sqrt(r_k (1 - r_k)): the standard deviation of
  its rewards, i.e. the size of its group-normalised advantages, scaled to
  [0, 1]. It is zero when all rollouts of a group agree.
* The step raises a by eta_a * mean(g), skill c by eta_b * C * sum_{c_k = c} g_k / B
  (a batch spread evenly over skills moves every skill like a), and u_k by
  eta_u * g_k for each task of the batch.
* Held-out accuracy is the exact mean success probability on tasks never
  trained on (no u, their own quirks), so it has no evaluation noise.
* The weak and strong references are two other models of the same form with
  fixed abilities, their own skill offsets and quirks; their pass rates are
  measured from a finite number of samples, as a real dataset's would be.
* With ``families`` > 0 the tasks come in related families (as variants of one
  problem do): a family has one skill and a difficulty, and its tasks differ
  from it by ``family_spread`` of the difficulty spread. Each task has an
  embedding, its family's centroid plus noise, drawn without looking at any
  difficulty (docs/similarity.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from bots_core._neighbours import NeighbourGraph, knn_graph

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LearnerModel:
    """Parameters of the simulated tasks, references and learner (logit units).

    Attributes:
        skills: Number of skills (topics) C.
        difficulty_sd: Spread of task difficulties d_k (mean 0).
        quirk_sd: Spread of a model's per-task quirks e_k.
        skill_sd: Spread of a model's per-skill offsets.
        initial_ability: The learner's global ability a before training.
        weak_ability: Global ability of the weak reference model.
        strong_ability: Global ability of the strong reference model.
        reference_samples: Rollouts behind each reference pass rate.
        heldout_tasks: Size of the held-out evaluation set.
        global_rate: eta_a, growth of a per unit of mean signal.
        skill_rate: eta_b, growth of a skill per unit of its share of signal.
        task_rate: eta_u, growth of u_k per unit of the task's own signal.
        families: Task families F (0: independent tasks, no embeddings).
        family_spread: Share of the difficulty spread left within a family
            (in [0, 1]; the family difficulties take the rest).
        embedding_dim: Dimension of the task embeddings.
        embedding_noise: Spread of a task's embedding around its family's
            centroid (the centroids have spread 1 per dimension).
        neighbours: k of the embeddings' neighbour graph.
    """

    skills: int = 6
    difficulty_sd: float = 3.0
    quirk_sd: float = 1.0
    skill_sd: float = 0.5
    initial_ability: float = -1.5
    weak_ability: float = -1.0
    strong_ability: float = 1.5
    reference_samples: int = 16
    heldout_tasks: int = 1000
    global_rate: float = 0.006
    skill_rate: float = 0.006
    task_rate: float = 0.5
    families: int = 0
    family_spread: float = 0.1
    embedding_dim: int = 16
    embedding_noise: float = 0.5
    neighbours: int = 16

    def __post_init__(self) -> None:
        if self.skills < 1 or self.reference_samples < 1 or self.heldout_tasks < 1:
            raise ValueError("skills, reference_samples and heldout_tasks must be >= 1")
        for name in ("difficulty_sd", "quirk_sd", "skill_sd", "global_rate", "skill_rate",
                     "task_rate"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.families < 0 or not 0.0 <= self.family_spread <= 1.0:
            raise ValueError("families must be >= 0 and family_spread in [0, 1]")
        if self.embedding_dim < 1 or self.embedding_noise < 0 or self.neighbours < 1:
            raise ValueError("embedding_dim and neighbours must be >= 1, embedding_noise >= 0")


@dataclass(frozen=True)
class World:
    """One seed's tasks, reference pass rates, held-out set and initial learner.

    Attributes:
        model: The parameters it was drawn from.
        difficulty: d_k of the training tasks.
        skill: c_k of the training tasks.
        quirk: The learner's e_k on the training tasks.
        weak: Weak reference pass rate w_k.
        strong: Strong reference pass rate g_k.
        skill_offset: The learner's initial per-skill abilities b.
        heldout_difficulty: d of the held-out tasks.
        heldout_skill: c of the held-out tasks.
        heldout_quirk: The learner's quirks on the held-out tasks.
        family: Family of each training task (None without families).
        embedding: Task embeddings, shape (N, embedding_dim) (None without families).
        graph: Their neighbour graph (None without families).
    """

    model: LearnerModel
    difficulty: FloatArray
    skill: IntArray
    quirk: FloatArray
    weak: FloatArray
    strong: FloatArray
    skill_offset: FloatArray
    heldout_difficulty: FloatArray
    heldout_skill: IntArray
    heldout_quirk: FloatArray
    family: IntArray | None = None
    embedding: npt.NDArray[np.float32] | None = None
    graph: NeighbourGraph | None = None

    @property
    def task_count(self) -> int:
        """Number of training tasks N."""
        return len(self.difficulty)

    def keys(self) -> list[str]:
        """Stable task keys, in index order."""
        return [f"t{i:07d}" for i in range(self.task_count)]


def make_world(model: LearnerModel, n_tasks: int, seed: int) -> World:
    """Draws the tasks, the references' pass rates and the learner's starting point.

    Args:
        model: Parameters.
        n_tasks: Number of training tasks N.
        seed: Seed; every method run with the same seed sees the same world.

    Returns:
        The world.
    """
    if n_tasks < 1:
        raise ValueError("n_tasks must be >= 1")
    rng = np.random.default_rng([seed, 0])
    c = model.skills

    def tasks(n: int) -> tuple[FloatArray, IntArray]:
        d = rng.normal(0.0, model.difficulty_sd, n)
        k = rng.integers(0, c, n).astype(np.int64)
        return d, k

    difficulty, skill = tasks(n_tasks)
    quirk = rng.normal(0.0, model.quirk_sd, n_tasks)
    skill_offset = rng.normal(0.0, model.skill_sd, c)

    def reference(ability: float) -> FloatArray:
        offsets = rng.normal(0.0, model.skill_sd, c)
        quirks = rng.normal(0.0, model.quirk_sd, n_tasks)
        p = _sigmoid(ability + offsets[skill] + quirks - difficulty)
        hits = rng.binomial(model.reference_samples, p)
        return np.asarray(hits / model.reference_samples, dtype=np.float64)

    family: IntArray | None = None
    embedding: npt.NDArray[np.float32] | None = None
    graph: NeighbourGraph | None = None
    if model.families > 0:
        # Its own stream: the worlds without families stay what they were.
        frng = np.random.default_rng([seed, 3])
        f = model.families
        within = model.difficulty_sd * np.sqrt(model.family_spread)
        between = model.difficulty_sd * np.sqrt(1.0 - model.family_spread)
        family = frng.integers(0, f, n_tasks).astype(np.int64)
        difficulty = frng.normal(0.0, between, f)[family] + frng.normal(0.0, within, n_tasks)
        skill = frng.integers(0, c, f).astype(np.int64)[family]
        centroid = frng.normal(0.0, 1.0, (f, model.embedding_dim))
        noise = frng.normal(0.0, model.embedding_noise, (n_tasks, model.embedding_dim))
        embedding = (centroid[family] + noise).astype(np.float32)
        graph = knn_graph(embedding, model.neighbours)
    weak = reference(model.weak_ability)
    strong = reference(model.strong_ability)
    h_difficulty, h_skill = tasks(model.heldout_tasks)
    h_quirk = rng.normal(0.0, model.quirk_sd, model.heldout_tasks)
    return World(
        model,
        difficulty,
        skill,
        quirk,
        weak,
        strong,
        skill_offset,
        h_difficulty,
        h_skill,
        h_quirk,
        family,
        embedding,
        graph,
    )


class Learner:
    """A policy being trained on a world's tasks (see the module docstring).

    Args:
        world: The tasks and the learner's starting point. Several learners
            built from one world start as the same model.
        head_start: Added to the initial global ability: a stronger model of
            the same family (same skills and quirks) starts this much higher.
    """

    def __init__(self, world: World, head_start: float = 0.0) -> None:
        self.world = world
        m = world.model
        self.ability = m.initial_ability + head_start
        self.skill_ability: FloatArray = world.skill_offset.copy()
        self.task_bonus: FloatArray = np.zeros(world.task_count)
        self._base = world.quirk - world.difficulty
        self._heldout_base = world.heldout_quirk - world.heldout_difficulty

    def success_prob(self, indices: IntArray | None = None) -> FloatArray:
        """p_k of the given training tasks (all when None)."""
        w = self.world
        if indices is None:
            z = self.ability + self.skill_ability[w.skill] + self.task_bonus + self._base
        else:
            z = (
                self.ability
                + self.skill_ability[w.skill[indices]]
                + self.task_bonus[indices]
                + self._base[indices]
            )
        return _sigmoid(z)

    def rollout(self, indices: IntArray, rollouts: int, rng: np.random.Generator) -> FloatArray:
        """Successes of ``rollouts`` Bernoulli(p_k) rollouts per task (Binomial draws)."""
        return rng.binomial(rollouts, self.success_prob(indices)).astype(np.float64)

    def learn(self, indices: IntArray, successes: FloatArray, trials: FloatArray) -> float:
        """Applies one training step on a batch; returns its mean useful signal."""
        m = self.world.model
        r = successes / trials
        signal = 2.0 * np.sqrt(r * (1.0 - r))
        b = len(indices)
        mean_signal = float(signal.mean()) if b else 0.0
        self.ability += m.global_rate * mean_signal
        per_skill = np.bincount(self.world.skill[indices], weights=signal, minlength=m.skills)
        self.skill_ability += m.skill_rate * m.skills * per_skill / max(b, 1)
        # A task may appear once per batch, so fancy-index += is exact here.
        self.task_bonus[indices] += m.task_rate * signal
        return mean_signal

    def heldout_accuracy(self) -> float:
        """Expected accuracy on the held-out tasks (no sampling noise)."""
        w = self.world
        z = self.ability + self.skill_ability[w.heldout_skill] + self._heldout_base
        return float(np.mean(_sigmoid(z)))


def _sigmoid(z: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)
