"""``python -m sim.tools.fit_acceptance TRACES.parquet``: parametric acceptance model from m(p) traces.

Fits the model of sim/models/acceptance.py ``ParametricAcceptance`` (AcceptanceConfig kind
"parametric") to recorded greedy match lengths (exec/match_lengths.py, or any parquet with
request_id, position, match_len, confidences and optionally dataset):

* A record with match length m (capped at k_max, the largest m seen unless given) is a chain
  of Bernoulli trials: draft positions j < m passed, position m failed when m < k_max.
* Position j of request i passes with probability a_i * d**j. Given d, a_i is its maximum
  likelihood estimate (bisection on the score); d maximises the profile likelihood over all
  requests (a grid over (0.2, 1], refined), capped at 1.
* Beta(alpha, beta) per dataset by the method of moments on the a_i, with each estimate's
  sampling variance (inverse Fisher information) removed from their spread.
* Confidence means: mean draft probability of passed positions and of the first failed one.
* Step correlation (``fit_step_correlation``): the chains a policy drafting k_max every step
  would verify (from a request's first position p, the next verify is at p + m(p) + 1) give
  each request's sequence of match lengths. Deviations from the request's own mean, l
  verifies apart, have a Spearman correlation (``successive_correlation``; l = 1..6: the lag
  profile). The model's profile is measured on sequences of the same lengths drawn by the
  simulator's own ``ParametricAcceptance`` (the statistic is biased low on short sequences,
  alike for both) over a grid of (step_correlation, correlated_share), and the pair nearest
  the traces' profile is taken among those whose drift alone spreads per-request means no
  more than the traces do; the Beta is then narrowed to keep the traces' spread (a drift
  moves each request's realised rate, so part of the spread the Beta was fitted to is it).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
from scipy import stats

from sim.core.config import AcceptanceConfig

MIN_CONCENTRATION, MAX_CONCENTRATION = 0.5, 1e4


def chain_counts(match_len: np.ndarray, k_max: int,
                 tokens_left: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(trials, passes) per record and position: arrays (rows, k_max). ``tokens_left``: output
    tokens from the record's position to the request's end; a chain that reaches the end is
    censored there (recorded m is capped by it), not failed."""
    m = np.minimum(np.asarray(match_len, np.int64), k_max)[:, None]
    j = np.arange(k_max)[None, :]
    passes = j < m
    trials = j <= m          # position m is tried (and fails) unless m == k_max
    if tokens_left is not None:
        trials &= j < np.asarray(tokens_left, np.int64)[:, None]
    return trials.astype(np.float64), passes.astype(np.float64)


def _loglik(s, t, a, decay) -> float:
    q = np.clip(a[:, None] * decay[None, :], 1e-9, 1 - 1e-9)
    return float((s * np.log(q) + (t - s) * np.log(1 - q)).sum())


def fit_decay(s: np.ndarray, t: np.ndarray) -> float:
    """Position decay d by profile likelihood: per-request rates re-fitted for every d on a
    grid over (0.2, 1], then refined around the best (pooled per-position rates would be
    biased: only requests that passed position j-1 are tried at j)."""
    k = s.shape[1]
    if k < 2 or t[:, 1:].sum() == 0:
        return 1.0

    def ll(d):
        decay = d ** np.arange(k)
        return _loglik(s, t, request_rates(s, t, decay)[0], decay)

    grid = np.linspace(0.2, 1.0, 33)
    best = grid[int(np.argmax([ll(d) for d in grid]))]
    fine = np.linspace(max(best - 0.025, 0.2), min(best + 0.025, 1.0), 21)
    return float(fine[int(np.argmax([ll(d) for d in fine]))])


def request_rates(s: np.ndarray, t: np.ndarray, decay: np.ndarray) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Per request MLE of a (passes ``s``, trials ``t``: arrays (requests, k) per position;
    position j passes with probability a * decay[j]) by bisection on the score, and each
    estimate's sampling variance (inverse Fisher information)."""
    lo, hi = np.full(s.shape[0], 1e-6), np.full(s.shape[0], 1.0 - 1e-6)
    for _ in range(50):
        a = 0.5 * (lo + hi)
        q = np.clip(a[:, None] * decay[None, :], 1e-9, 1 - 1e-9)
        score = (s / a[:, None] - (t - s) * decay[None, :] / (1 - q)).sum(axis=1)
        lo, hi = np.where(score > 0, a, lo), np.where(score > 0, hi, a)
    a = 0.5 * (lo + hi)
    q = np.clip(a[:, None] * decay[None, :], 1e-9, 1 - 1e-9)
    info = (t * decay[None, :] ** 2 / (q * (1 - q))).sum(axis=1)
    return a, 1.0 / np.maximum(info, 1e-12)


def fit_beta(rates: np.ndarray, noise_var: np.ndarray) -> tuple[float, float]:
    """Beta(alpha, beta) of per-request rates (method of moments); each rate's sampling
    variance ``noise_var`` is removed from the observed spread."""
    if rates.size == 0:
        raise ValueError("no drafted positions to fit an acceptance rate from")
    mean = float(np.clip(rates.mean(), 1e-4, 1 - 1e-4))
    true_var = float(rates.var()) - float(noise_var.mean())
    if true_var <= 0:
        conc = MAX_CONCENTRATION
    else:
        conc = float(np.clip(mean * (1 - mean) / true_var - 1, MIN_CONCENTRATION,
                             MAX_CONCENTRATION))
    return mean * conc, (1 - mean) * conc


def _confidence_means(df: pd.DataFrame, k_max: int) -> tuple[float, float]:
    acc, rej = [], []
    for m, conf in zip(df["match_len"].to_numpy(), df["confidences"]):
        c = np.asarray(conf if conf is not None else [], np.float64)
        m = min(int(m), k_max)
        acc.extend(c[:m][~np.isnan(c[:m])].tolist())
        if m < k_max and m < c.shape[0] and not np.isnan(c[m]):
            rej.append(float(c[m]))
    return (float(np.mean(acc)) if acc else float("nan"),
            float(np.mean(rej)) if rej else float("nan"))


def fit_acceptance(df: pd.DataFrame, k_max: int | None = None) -> dict:
    """Fitted parameters: position_decay, per-dataset (alpha, beta), confidence means."""
    missing = {"request_id", "position", "match_len"} - set(df.columns)
    if missing:
        raise ValueError(f"acceptance traces: missing columns {sorted(missing)}")
    if len(df) == 0:
        raise ValueError("acceptance traces: no records")
    k = int(k_max if k_max is not None else df["match_len"].max())
    if k < 1:
        raise ValueError("acceptance traces: every match_len is 0 (nothing was ever accepted), "
                         "give k_max to fit a zero rate")
    last = df.groupby("request_id")["position"].transform("max").to_numpy()
    trials, passes = chain_counts(df["match_len"].to_numpy(), k,
                                  last + 1 - df["position"].to_numpy())
    tags = df["dataset"].astype(str) if "dataset" in df.columns else pd.Series(
        "default", index=df.index)
    cols = [f"s{j}" for j in range(k)] + [f"t{j}" for j in range(k)]
    per = pd.DataFrame(np.hstack([passes, trials]), columns=cols)
    per["dataset"], per["request_id"] = tags.to_numpy(), df["request_id"].to_numpy()
    per = per.groupby(["dataset", "request_id"], sort=True)[cols].sum()
    d = fit_decay(per[cols[:k]].to_numpy(), per[cols[k:]].to_numpy())
    decay = d ** np.arange(k)
    datasets = {}
    for tag, g in per.groupby(level=0, sort=True):
        sj, tj = g[cols[:k]].to_numpy(), g[cols[k:]].to_numpy()
        keep = tj.sum(axis=1) > 0
        rates, noise = request_rates(sj[keep], tj[keep], decay)
        alpha, beta = fit_beta(rates, noise)
        datasets[str(tag)] = {"alpha": alpha, "beta": beta, "mean_rate": alpha / (alpha + beta),
                              "num_requests": int(keep.sum())}
    conf_acc, conf_rej = (_confidence_means(df, k) if "confidences" in df.columns
                          else (float("nan"), float("nan")))
    return {"k_max": k, "position_decay": d, "datasets": datasets,
            "confidence_accept_mean": conf_acc, "confidence_reject_mean": conf_rej,
            "num_records": int(len(df)),
            "mean_match_len": float(np.minimum(df["match_len"], k).mean())}


def verify_chains(df: pd.DataFrame, k_max: int) -> list[np.ndarray]:
    """Per request (in request-id order), the match lengths min(m(p), k_max) that drafting
    k_max every step verifies: from its first recorded position p, the next verify is at
    p + m + 1 (m accepted drafts, then the target's own token); a chain ends at the first
    position not recorded."""
    chains = []
    for _, g in df.sort_values(["request_id", "position"]).groupby("request_id", sort=True):
        m_at = dict(zip(g["position"].tolist(), np.minimum(g["match_len"], k_max).tolist()))
        p, seq = int(g["position"].iloc[0]), []
        while p in m_at:
            seq.append(m_at[p])
            p += m_at[p] + 1
        chains.append(np.asarray(seq, np.float64))
    return chains


def successive_correlation(chains: list[np.ndarray], lag: int = 1) -> float:
    """Spearman correlation, pooled over requests, of each verify's deviation from its
    request's mean match length with the deviation ``lag`` verifies later: the part of a
    step's outcome its request's previous ones tell beyond the request's own rate (nan
    without pairs). Biased low on short chains (removing the mean ties the deviations)."""
    first, then = [], []
    for c in chains:
        if c.size > lag and c.std() > 0:
            d = c - c.mean()
            first.append(d[:-lag])
            then.append(d[lag:])
    if not first:
        return float("nan")
    return float(stats.spearmanr(np.concatenate(first), np.concatenate(then)).statistic)


def model_chains(config: AcceptanceConfig, lengths: np.ndarray, k_max: int,
                 seed: int) -> list[np.ndarray]:
    """Match-length chains of the given lengths drawn by the simulator's parametric model
    (``ParametricAcceptance``, each request a verify step per draw, as the engine draws)."""
    from sim.models.acceptance import ParametricAcceptance
    from traces.schema import Trace

    n = lengths.shape[0]
    model = ParametricAcceptance(config, k_max, seed)
    model.prepare(Trace.from_columns(np.zeros(n), np.ones(n, np.int64),
                                     np.maximum(lengths, 1), dataset="default"))
    out = np.zeros((n, int(lengths.max(initial=0))))
    for t in range(out.shape[1]):
        rows = np.flatnonzero(lengths > t)
        out[rows, t] = model.draw(rows, np.full(rows.shape[0], t),
                                  with_confidences=False).match_len
    return [out[i, :lengths[i]] for i in range(n)]


def lag_profile(chains: list[np.ndarray], lags: int) -> np.ndarray:
    """``successive_correlation`` at lags 1..``lags``."""
    return np.array([successive_correlation(chains, lag) for lag in range(1, lags + 1)])


RHO_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
SHARE_GRID = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)


def fit_step_correlation(df: pd.DataFrame, config: AcceptanceConfig, k_max: int,
                         rhos=RHO_GRID, shares=SHARE_GRID, lags: int = 6,
                         replicates: int = 4, n_resamples: int = 499, seed: int = 0) -> dict:
    """``AcceptanceConfig.step_correlation`` and ``correlated_share`` from m(p) traces
    (module docstring): the grid pair whose model lag profile (``lag_profile`` of chains of
    the traces' lengths drawn by the simulator's model, averaged over ``replicates`` with
    common random numbers) is nearest the traces' in squared error weighted by the traces'
    bootstrap variances (95 % percentile intervals over requests, scipy.stats.bootstrap),
    among the pairs whose drift alone (every request the same rate) spreads per-request mean
    match lengths no more than the traces do; the Beta is then narrowed to keep that spread
    (``_dispersion_scale``).
    ``config``: the fitted parametric model without correlation."""
    from dataclasses import replace

    chains = verify_chains(df, k_max)
    observed = lag_profile(chains, lags)
    if not np.isfinite(observed[0]):
        raise ValueError("acceptance traces: no request has 2 verify steps with different "
                         "match lengths, nothing to fit a step correlation from")
    lengths = np.array([c.size for c in chains], np.int64)

    boot = stats.bootstrap((np.arange(len(chains)),),
                           lambda idx: lag_profile([chains[i] for i in idx], lags),
                           vectorized=False, n_resamples=n_resamples, method="percentile",
                           random_state=np.random.default_rng(seed))
    low, high = (x[:lags] for x in boot.confidence_interval)
    se = np.nan_to_num(boot.standard_error[:lags], nan=1.0)
    weight = 1.0 / np.maximum(se, 1e-3) ** 2
    target = float(np.var([c.mean() for c in chains if c.size]))
    keep = np.isfinite(observed)

    def correlated(rho: float, share: float) -> AcceptanceConfig:
        return replace(config, step_correlation=float(rho), correlated_share=float(share))

    def model(cfg: AcceptanceConfig) -> np.ndarray:
        return np.mean([lag_profile(model_chains(cfg, lengths, k_max, seed + r), lags)
                        for r in range(replicates)], axis=0)

    def error(profile: np.ndarray) -> float:
        return float((weight * (profile - observed) ** 2)[keep].sum())

    independent = model(correlated(0.0, 1.0))
    best = (error(independent), 0.0, 1.0, independent)
    widest = _widest_scale(config)
    infeasible = 0
    for rho in (r for r in rhos if r > 0):
        for share in shares:
            got = model(correlated(rho, share))
            err = error(got)
            if err >= best[0]:
                continue
            if _chain_mean_var(_scaled(correlated(rho, share), widest), lengths, k_max,
                               replicates, seed) > target:
                infeasible += 1        # its drift alone spreads requests more than seen
                continue
            best = (err, float(rho), float(share), got)
    _, rho, share, fitted = best
    inside = (low <= fitted) & (fitted <= high)
    # a slow part moves each request's realised rate over its life: the spread of the
    # per-request rates the Beta was fitted to holds that drift already, so the Beta is
    # narrowed until the model's spread of per-request means is the traces' again
    scale = (_dispersion_scale(correlated(rho, share), lengths, k_max, target, replicates,
                               seed) if rho > 0.0 else 1.0)
    narrowed = _scaled(correlated(rho, share), scale)
    datasets = {str(tag): {"alpha": a, "beta": b}
                for tag, a, b in (narrowed.per_dataset or (("default", *narrowed.default),))}
    return {"step_correlation": rho, "correlated_share": share,
            "concentration_scale": scale, "datasets_narrowed": datasets,
            "chain_mean_var": target,
            "chain_mean_var_model": _chain_mean_var(narrowed, lengths, k_max, replicates, seed),
            "pairs_spreading_too_much": infeasible,
            "successive_spearman": float(observed[0]),
            "successive_spearman_ci": [float(low[0]), float(high[0])],
            "successive_spearman_independent": float(independent[0]),
            "lag_profile": observed.tolist(), "lag_profile_model": fitted.tolist(),
            "lag_profile_independent": independent.tolist(),
            "lag_profile_ci": np.stack([low, high], axis=1).tolist(),
            "lags_within_ci": int(inside[keep].sum()),
            "lags_within_ci_independent": int(((low <= independent) & (independent <= high))[
                keep].sum()),
            "num_chains": int(sum(c.size >= 2 for c in chains)),
            "num_verify_pairs": int(sum(max(c.size - 1, 0) for c in chains))}


def _scaled(config: AcceptanceConfig, scale: float) -> AcceptanceConfig:
    """``config`` with every Beta's concentration times ``scale`` (means kept)."""
    from dataclasses import replace
    return replace(config, default=(config.default[0] * scale, config.default[1] * scale),
                   per_dataset=tuple((t, a * scale, b * scale) for t, a, b in config.per_dataset))


def _widest_scale(config: AcceptanceConfig) -> float:
    """The largest concentration factor ``_scaled`` is taken to (the default Beta's
    concentration up to MAX_CONCENTRATION: every request nearly the same rate)."""
    return MAX_CONCENTRATION / max(sum(config.default), MIN_CONCENTRATION)


def _chain_mean_var(config, lengths, k_max, replicates, seed) -> float:
    """The model's variance of per-request mean match lengths on chains of ``lengths``."""
    return float(np.mean([np.var([c.mean() for c in model_chains(config, lengths, k_max,
                                                                  seed + r) if c.size])
                          for r in range(replicates)]))


def _dispersion_scale(config, lengths, k_max, target: float, replicates: int, seed: int,
                      steps: int = 14) -> float:
    """The concentration factor (>= 1: the Beta only narrows; bisection on its log) at which
    the model's variance of per-request means is ``target``; the widest bound reached when
    even that leaves it above."""
    lo, hi = 0.0, np.log(_widest_scale(config))
    if _chain_mean_var(config, lengths, k_max, replicates, seed) <= target:
        return 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if _chain_mean_var(_scaled(config, float(np.exp(mid))), lengths, k_max, replicates,
                           seed) > target:
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


def to_acceptance_config(fit: dict, **overrides) -> AcceptanceConfig:
    """The fitted parameters as a parametric AcceptanceConfig (first dataset is the default)."""
    ds = fit.get("datasets_narrowed") or fit["datasets"]
    first = next(iter(ds.values()))
    kw = dict(kind="parametric", default=(first["alpha"], first["beta"]),
              per_dataset=tuple((t, v["alpha"], v["beta"]) for t, v in ds.items()),
              position_decay=max(fit["position_decay"], 1e-6))
    for name in ("confidence_accept_mean", "confidence_reject_mean"):
        v = fit[name]
        if np.isfinite(v):
            kw[name] = float(np.clip(v, 0.01, 0.99))
    for name in ("step_correlation", "correlated_share"):
        if name in fit:
            kw[name] = float(fit[name])
    kw.update(overrides)
    return AcceptanceConfig(**kw)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces", nargs="+", help="acceptance parquet(s) (exec record_acceptance)")
    ap.add_argument("--k-max", type=int, default=None)
    ap.add_argument("--no-step-correlation", action="store_true",
                    help="skip fitting the step-to-step correlation (fit_step_correlation)")
    ap.add_argument("--resamples", type=int, default=999,
                    help="bootstrap resamples of the step correlation's 95 %% interval")
    args = ap.parse_args(argv)
    frames = []
    for i, path in enumerate(args.traces):
        df = pd.read_parquet(path)
        if len(args.traces) > 1:   # keep request ids of different files apart
            df = df.assign(request_id=df["request_id"] + i * (1 << 32))
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    fit = fit_acceptance(df, args.k_max)
    if not args.no_step_correlation:
        fit.update(fit_step_correlation(df, to_acceptance_config(fit), fit["k_max"],
                                        n_resamples=args.resamples))
    for tag, v in fit["datasets"].items():
        print(f"{tag}: Beta(alpha={v['alpha']:.3f}, beta={v['beta']:.3f}) mean rate "
              f"{v['mean_rate']:.3f} over {v['num_requests']} requests")
    print(f"position_decay={fit['position_decay']:.4f} k_max={fit['k_max']} "
          f"mean match_len={fit['mean_match_len']:.3f} (drafts, bonus token not counted)")
    print(f"confidence_accept_mean={fit['confidence_accept_mean']:.3f} "
          f"confidence_reject_mean={fit['confidence_reject_mean']:.3f}")
    if "step_correlation" in fit:
        def row(values):
            return " ".join(f"{v:+.3f}" for v in values)
        print(f"step_correlation={fit['step_correlation']:.3f} "
              f"correlated_share={fit['correlated_share']:.3f}: successive verifies' Spearman "
              f"by lag 1..{len(fit['lag_profile'])} over {fit['num_verify_pairs']} pairs")
        print(f"  traces      {row(fit['lag_profile'])}")
        print(f"  95% low     {row(lo for lo, _ in fit['lag_profile_ci'])}")
        print(f"  95% high    {row(hi for _, hi in fit['lag_profile_ci'])}")
        print(f"  model       {row(fit['lag_profile_model'])} ({fit['lags_within_ci']} lags "
              f"within the interval)")
        print(f"  independent {row(fit['lag_profile_independent'])} "
              f"({fit['lags_within_ci_independent']} within)")
        narrowed = ", ".join(f"{t}: Beta({v['alpha']:.3f}, {v['beta']:.3f})"
                             for t, v in fit["datasets_narrowed"].items())
        print(f"  the drift's share of the rates' spread taken out: concentration x "
              f"{fit['concentration_scale']:.3f} ({narrowed}); variance of per-request "
              f"means {fit['chain_mean_var']:.3f}, model {fit['chain_mean_var_model']:.3f}")
    print(json.dumps(fit))
    return fit


if __name__ == "__main__":
    main()
