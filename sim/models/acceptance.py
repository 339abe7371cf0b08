"""How many draft tokens the target accepts: parametric (per-dataset Beta) or replayed.

Both models work on *greedy match lengths*: before the policy decides, the engine draws for
every decoding request the number m of leading draft positions the target would accept
(0..k_max). A request that then drafts k tokens gets ``num_accepted = min(k, m)`` (the
recovered/bonus token is not counted). Drawing m first is what lets oracle policies see
``Observation.future_match_lens`` and what makes replay of recorded runs exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr


_QUANTILES = 4096


class _Pool:
    """Pre-drawn random numbers handed out in order: one bulk numpy call per ~64k draws
    instead of one small call per step (the same sequence for the same seed)."""

    def __init__(self, draw, size: int = 1 << 16):
        self._draw, self._size = draw, size
        self._buf, self._pos = draw(size), 0

    def take(self, count: int) -> np.ndarray:
        if self._pos + count > self._buf.shape[0]:
            rest = self._buf[self._pos:]
            self._buf = np.concatenate([rest, self._draw(max(self._size, count))])
            self._pos = 0
        out = self._buf[self._pos:self._pos + count]
        self._pos += count
        return out

    def give_back(self, count: int) -> None:
        """Un-take the last ``count`` numbers (they were drawn for steps that never ran), so
        the next ``take`` hands them out again: the sequence stays the per-step one."""
        if not 0 <= count <= self._pos:
            raise ValueError(f"cannot give back {count} draws, only {self._pos} taken")
        self._pos -= count


@dataclass(frozen=True)
class StepDraw:
    """One step's draws for the decoding requests (rows aligned with the observation)."""

    match_len: np.ndarray         # int (n,), greedy match length m, 0..k_max
    confidences: np.ndarray | None  # float (n, k_max), draft prob of the token at each
    #                               position (None: not computed, see ParametricAcceptance.draw)
    uniforms: np.ndarray | None   # float (n, k_max): position p passes iff u_p < rate_p
    rates: np.ndarray | None      # float (n, k_max), or (n, 1) without position decay:
    #                               per-position acceptance probability (broadcasts)

    def tree_accepted(self, widths: np.ndarray) -> np.ndarray:
        """Accepted depth of a token tree with ``widths[i, j]`` candidates at depth j.

        Independence approximation: the w_j candidates at depth j are taken to be accepted
        independently with the chain's rate a_j, so depth j is accepted (given depth j-1 was)
        with probability 1 - (1 - a_j)**w_j. Real siblings are correlated and their draft
        probabilities sum to <= 1, so this is an upper bound on a tree's gain. A width of 0
        ends the tree. With all widths 1 this reduces exactly to ``min(k, match_len)``.
        """
        if self.uniforms is None:
            raise ValueError("token trees need the parametric acceptance model; "
                             "replayed traces record chains only")
        p = 1.0 - (1.0 - self.rates) ** widths
        ok = self.uniforms < p
        return _leading_true(ok)

    def tree_min_widths(self, max_width: int) -> np.ndarray:
        """int (n, k_max): per depth, the narrowest width w <= ``max_width`` that ``tree_accepted``
        would pass (u < 1 - (1 - a)^w), ``max_width`` + 1 where none does: what a tree oracle
        knows of this step's sampled outcomes (``Observation.future_tree_min_widths``)."""
        if self.uniforms is None:
            raise ValueError("tree oracles need the parametric acceptance model; "
                             "replayed traces record chains only")
        u = self.uniforms
        fail = np.broadcast_to(1.0 - self.rates, u.shape)
        # (1-a)^w < 1-u  <=>  w > log(1-u) / log(1-a); rounding is settled by testing the
        # very inequality tree_accepted tests, every width at once: an array of integer
        # widths as the exponent, as there (a Python int exponent would take numpy's
        # scalar fast paths, e.g. np.square for 2, whose floats its power need not give)
        passes = u[..., None] < 1.0 - fail[..., None] ** np.arange(1, max_width + 1)
        return np.where(passes.any(axis=-1), passes.argmax(axis=-1) + 1,
                        max_width + 1).astype(np.int64, copy=False)


class TreePassTable:
    """Per request and draft position, the chance 1 - (1 - a_p)^w that a depth of w
    candidates passes, w = 1..``max_width``: the very numpy powers ``StepDraw.tree_accepted``
    and ``tree_min_widths`` form each step, formed once per request instead (a request's
    rows are filled the first time a step asks for them; ``fill``). The compiled step
    reads it (sim/fast/step_kernel.py ``TREE_MIN_WIDTHS_KERNEL``)."""

    def __init__(self, rate_table: np.ndarray, max_width: int):
        self.max_width = int(max_width)
        self._fail = 1.0 - rate_table                    # (requests, positions or 1)
        self.chances = np.empty(rate_table.shape + (self.max_width,))
        self.filled = np.zeros(rate_table.shape[0], bool)
        # the exponents as tree_min_widths has them: an integer array (see there)
        self._widths = np.arange(1, self.max_width + 1)

    def fill(self, rows: np.ndarray) -> None:
        """Form the chances of those of ``rows`` not formed yet."""
        new = rows[~self.filled[rows]]
        if new.shape[0]:
            self.chances[new] = 1.0 - self._fail[new][..., None] ** self._widths
            self.filled[new] = True


def correlated_uniforms(latent: np.ndarray, innovations: np.ndarray, rho: float,
                        share: float = 1.0, fresh: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One step of the latents behind a request's outcomes: the slow part moves one AR(1)
    step, s' = rho s + sqrt(1 - rho^2) e (again N(0, 1), correlated rho with s), and the
    outcome's latent is z = sqrt(share) s' + sqrt(1 - share) f with ``fresh`` f ~ N(0, 1)
    drawn anew (share 1: z = s'). Returns (s', the uniforms Phi(z))."""
    slow = rho * latent + math.sqrt(1.0 - rho * rho) * innovations
    if share >= 1.0:
        return slow, ndtr(slow)
    return slow, ndtr(math.sqrt(share) * slow + math.sqrt(1.0 - share) * fresh)


def _leading_true(ok: np.ndarray) -> np.ndarray:
    """Number of leading True values along the last axis: the first False of ``ok`` with a
    False column appended (one argmin; an accumulate over many short rows costs far more)."""
    pad = np.zeros(ok.shape[:-1] + (ok.shape[-1] + 1,), bool)
    pad[..., :-1] = ok
    return pad.argmin(axis=-1).astype(np.int64, copy=False)


class ParametricAcceptance:
    """Per-request rate a ~ Beta(alpha, beta) of its dataset tag; position p is accepted with
    probability a * position_decay**p, the chain stops at the first failure.

    Draft confidence at a position is Beta-distributed around ``confidence_accept_mean`` when
    that position's Bernoulli passes and around ``confidence_reject_mean`` when it fails, with
    concentration ``confidence_sharpness`` (higher: confidence separates the two better).

    ``step_correlation`` rho > 0: live, a request's accepted counts are correlated from one
    verify to the next beyond its own mean (text that is easy to draft comes in stretches).
    Each request and draft position keeps a slow latent s ~ N(0, 1) that moves by one AR(1)
    step per verify step of the request, s' = rho s + sqrt(1 - rho^2) e; the position's
    uniform is Phi(z), z = sqrt(w) s' + sqrt(1 - w) f with f drawn anew each step and
    w = ``correlated_share`` (``correlated_uniforms``), so outcomes l steps apart have latents
    correlated w rho^l. Each uniform is still U(0, 1), so pass chances and match-length
    distributions are those of rho = 0; only a request's steps are tied to each other.
    """

    def __init__(self, config, k_max: int, seed: int):
        self.config, self.k_max = config, int(k_max)
        for tag, alpha, beta in (("default", *config.default), *config.per_dataset):
            if alpha <= 0 or beta <= 0:
                raise ValueError(f"acceptance Beta for {tag!r} needs alpha, beta > 0, "
                                 f"got ({alpha}, {beta})")
        if not 0.0 < config.position_decay <= 1.0:
            raise ValueError(f"position_decay must be in (0, 1], got {config.position_decay}")
        self.step_correlation = float(config.step_correlation)
        if not 0.0 <= self.step_correlation < 1.0:
            raise ValueError(f"acceptance step_correlation must be in [0, 1), got "
                             f"{config.step_correlation} (0: independent verify steps)")
        self.correlated_share = float(config.correlated_share)
        if not 0.0 < self.correlated_share <= 1.0:
            raise ValueError(f"acceptance correlated_share must be in (0, 1], got "
                             f"{config.correlated_share} (1: every outcome follows its latent)")
        ss = np.random.SeedSequence([int(seed), 0xACC])
        # (the fourth stream, the latents' start, leaves the first three as they were)
        self._rng_rate, rng_u, rng_conf, self._rng_latent = (
            np.random.default_rng(s) for s in ss.spawn(4))
        s = float(config.confidence_sharpness)
        hi, lo = config.confidence_accept_mean, config.confidence_reject_mean
        if s <= 0 or not (0 < lo < 1 and 0 < hi < 1):
            raise ValueError("confidence_sharpness must be > 0 and confidence means in (0, 1)")
        # the pool hands out uniforms, or with correlated steps the latents' innovations
        self._u = _Pool(rng_u.standard_normal if self.step_correlation else rng_u.random)
        self._latent = np.zeros((0, self.k_max))      # (requests, k_max), set by prepare
        # Quantile tables of the two confidence Betas: a confidence is looked up from the
        # position's own uniform, rescaled within its pass/fail branch (u/rate or
        # (u-rate)/(1-rate) is again uniform), so no extra random draws per step. Formed at
        # the first confidence asked for (from their own stream: the same numbers whenever;
        # most runs read none, and forming them costs more than many a short run)
        self._rng_conf = rng_conf
        self._tables: tuple[np.ndarray, np.ndarray] | None = None
        self._decay = config.position_decay ** np.arange(self.k_max, dtype=np.float64)
        self.rate = np.zeros(0)
        self._rate_table: np.ndarray | None = None     # set by prepare
        self._tree_table: TreePassTable | None = None

    def prepare(self, trace) -> None:
        """Draw every request's acceptance rate (one Beta draw per request, by dataset tag)."""
        params = {tag: (a, b) for tag, a, b in self.config.per_dataset}
        tags = np.asarray(trace.dataset, dtype=object)
        rate = np.empty(len(trace))
        uniq, inverse = np.unique(tags.astype(str), return_inverse=True)
        for j, tag in enumerate(uniq):
            alpha, beta = params.get(tag, self.config.default)
            idx = np.flatnonzero(inverse == j)
            rate[idx] = self._rng_rate.beta(alpha, beta, idx.shape[0])
        self.rate = rate
        # each request's per-position rates once (the products a step formed): steps gather
        self._rate_table = (rate[:, None] * self._decay[None, :]
                            if self.config.position_decay != 1.0 else rate[:, None])
        self._tree_table = None
        if self.step_correlation:                      # stationary start: z ~ N(0, 1)
            self._latent = self._rng_latent.standard_normal((len(trace), self.k_max))

    @property
    def steps_independent(self) -> bool:
        """Whether a step's draws depend on nothing but the pool's order (multi-step epochs
        draw blocks of steps ahead and give back what did not run: only then)."""
        return not self.step_correlation

    def take_uniforms(self, rows: np.ndarray) -> np.ndarray:
        """The next step's uniforms of decoding ``rows``, flat (n * k_max), row-major; with
        correlated steps the rows' latents move one step (``correlated_uniforms``)."""
        count = rows.shape[0] * self.k_max
        if not self.step_correlation:
            return self._u.take(count)
        share = self.correlated_share
        parts = 1 if share >= 1.0 else 2             # innovations, then fresh draws
        normals = self._u.take(parts * count).reshape(parts, rows.shape[0], self.k_max)
        slow, u = correlated_uniforms(self._latent[rows], normals[0], self.step_correlation,
                                      share, normals[-1])
        self._latent[rows] = slow
        return u.reshape(-1)

    def _rates(self, rows: np.ndarray) -> np.ndarray:
        if self._rate_table is None or self._rate_table.shape[0] != self.rate.shape[0]:
            raise RuntimeError("ParametricAcceptance.prepare(trace) must run before draws")
        return self._rate_table.take(rows, axis=0)

    @property
    def rate_table(self) -> np.ndarray:
        """float (requests, k_max), or (requests, 1) without position decay: each request's
        per-position pass chances, the rows a step's draw gathers (``step_uniforms``)."""
        self._rates(np.zeros(0, np.int64))        # prepare must have run
        return self._rate_table

    def tree_pass_table(self, max_width: int) -> TreePassTable:
        """The requests' ``TreePassTable`` up to ``max_width`` candidates (at least; kept
        across steps, formed anew after ``prepare``)."""
        table = self._tree_table
        if table is None or table.max_width < max_width:
            self._rates(np.zeros(0, np.int64))        # prepare must have run
            table = self._tree_table = TreePassTable(self._rate_table, max_width)
        return table

    def step_uniforms(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The uniforms (n, k_max) a step's ``draw`` of ``rows`` takes from the pool, and
        the rows' per-position rates ((n, k_max), or (n, 1) without position decay)."""
        rates = self._rates(rows)
        return self.take_uniforms(rows).reshape(rows.shape[0], self.k_max), rates

    @property
    def confidence_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The quantile tables a confidence is looked up in: (passed, failed) positions'."""
        if self._tables is None:
            c = self.config
            s, hi, lo = (float(c.confidence_sharpness), c.confidence_accept_mean,
                         c.confidence_reject_mean)
            q = (np.arange(_QUANTILES) + 0.5) / _QUANTILES
            self._tables = (np.quantile(self._rng_conf.beta(s * hi, s * (1 - hi), 1 << 17), q),
                            np.quantile(self._rng_conf.beta(s * lo, s * (1 - lo), 1 << 17), q))
        return self._tables

    def draw(self, rows: np.ndarray, positions: np.ndarray,
             with_confidences: bool = True) -> StepDraw:
        """``with_confidences=False`` leaves ``confidences`` None (the engine's static-policy
        fast path; ``confidences(rows, draw.uniforms)`` gives them later if needed)."""
        n, k = rows.shape[0], self.k_max
        u, rates = self.step_uniforms(rows)
        pad = np.zeros((n, k + 1), bool)    # _leading_true's padding, filled in place
        ok = pad[:, :k]
        np.less(u, rates, out=ok)
        conf = self._confidences(u, ok, rates) if with_confidences else None
        return StepDraw(pad.argmin(axis=-1).astype(np.int64, copy=False), conf, u, rates)

    def _confidences(self, u, ok, rates):
        safe = np.minimum(np.maximum(rates, 1e-12), 1.0 - 1e-12)
        v = np.where(ok, u / safe, (u - safe) / (1.0 - safe))
        idx = np.minimum((v * _QUANTILES).astype(np.int64), _QUANTILES - 1)
        q_hi, q_lo = self.confidence_tables
        return np.where(ok, q_hi[idx], q_lo[idx])

    # ---- multi-step epochs (sim/fast/epoch.py) ---------------------------------------------------
    def draw_block(self, rows: np.ndarray, num_steps: int, num_positions: int | None = None):
        """Match lengths (num_steps, n) of ``num_steps`` consecutive steps of the same decoding
        ``rows`` and their uniforms (num_steps, n, k_max): the very numbers ``num_steps``
        calls of ``draw`` would take, in the same order (positions do not matter here).
        Only the first ``num_positions`` positions are tested (the match length is capped
        there: enough for ``min(k, m)`` with k <= num_positions)."""
        if not self.steps_independent:
            raise RuntimeError("draw_block needs independent steps (step_correlation 0): a "
                               "block given back would leave the latents moved")
        n, k = rows.shape[0], self.k_max
        p = k if num_positions is None else min(int(num_positions), k)
        u = self._u.take(num_steps * n * k).reshape(num_steps, n, k)
        ok = np.zeros((num_steps, n, p + 1), bool)           # the last column stays False
        np.less(u[:, :, :p], self._rates(rows)[:, :p], out=ok[:, :, :p])
        return ok.argmin(axis=-1).astype(np.int64, copy=False), u

    def give_back(self, num_draws: int) -> None:
        """Return the uniforms of block steps that did not run (see ``_Pool.give_back``)."""
        self._u.give_back(num_draws)

    def confidences(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The (n, k_max) confidences ``draw`` would give for uniforms ``u`` of ``rows``."""
        rates = self._rates(rows)
        return self._confidences(u, u < rates, rates)


def make_acceptance_model(config, k_max: int, seed: int):
    """The model named by ``AcceptanceConfig.kind`` ("parametric" | "replay")."""
    if config.kind == "parametric":
        return ParametricAcceptance(config, k_max, seed)
    if config.kind == "replay":
        if not config.replay_path:
            raise ValueError("acceptance kind 'replay' needs AcceptanceConfig.replay_path")
        from sim.models.acceptance_replay import ReplayAcceptance, load_acceptance_traces
        return ReplayAcceptance(load_acceptance_traces(config.replay_path), k_max)
    raise KeyError(f"unknown acceptance kind {config.kind!r}; known kinds: parametric, replay")
