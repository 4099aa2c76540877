"""Spectral health of a weight matrix: top singular value, stable rank and (opt-in) the ESD's power-law exponent.

Matrices, as WeightWatcher builds them (``weightwatcher.py``, ``conv2D_Wmats``): a 2-D weight is one matrix; a
convolution weight ``(out, in, *kernel)`` is ``prod(kernel)`` matrices ``W[:, :, i, j]`` of shape ``(out, in)`` whose
eigenvalues are pooled into one empirical spectral density (ESD). Other shapes (vectors, scalars, 5-D) have none.

- ``sigma_max``: the largest singular value over the matrices. :attr:`SpectralMode.DEFAULT`: power iteration on
  ``WᵀW`` accelerated by Lanczos (fixed start vector, float32 products, until the estimate moves by less than
  :data:`POWER_TOL` relative, at most :data:`POWER_ITERS` products); it approaches σ_max from below. :attr:`SpectralMode.FULL`: exact, from the ESD.
- ``stable_rank`` = ‖W‖²_F / σ²_max (WeightWatcher's ``stable_rank``: sum of the eigenvalues over the largest).
- ``alpha`` (``FULL`` only, matrices whose smaller side is at most :data:`FULL_MAX_DIM`): the ESD is the eigenvalues
  λ = σ² of every matrix, those above :data:`EVALS_THRESH` kept; the fit is WeightWatcher's default (its
  ``WW_powerlaw.WWFit``, after Clauset, Shalizi & Newman 2009): for every candidate ``xmin`` among the sorted
  eigenvalues, ``alpha = 1 + n / Σ log(λ_i / xmin)`` over the ``n`` eigenvalues ≥ xmin, and the ``xmin`` whose
  Kolmogorov-Smirnov distance ``D`` between the fitted and the empirical CDF is smallest wins. ``alpha_sigma`` =
  ``(alpha - 1) / sqrt(n)``. Fewer than :data:`MIN_EVALS` eigenvalues: no fit (NaN), where WeightWatcher switches
  to a small-sample estimator.
- :func:`alpha_band`: WeightWatcher's published reading of ``alpha`` (its ``OVER_TRAINED_THRESH`` 2 and
  ``UNDER_TRAINED_THRESH`` 6): below 2 "over-trained", above 6 "under-trained", between "well-trained".

Edge cases: an all-zero matrix has σ_max 0 and stable rank and alpha NaN; NaN/Inf anywhere make every number NaN.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ckptboard.core.readings import OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE, AlphaBand, alpha_band
from ckptboard.core.records import StrEnum

__all__ = [
    "SpectralMode",
    "AlphaBand",
    "SpectralStats",
    "weight_matrices",
    "spectral_stats",
    "power_sigma_max",
    "esd",
    "fit_alpha",
    "alpha_band",
    "FULL_MAX_DIM",
    "EVALS_THRESH",
    "MIN_EVALS",
    "POWER_ITERS",
    "POWER_TOL",
]

FULL_MAX_DIM = 4096  # the smaller side of a matrix whose full ESD --spectral full computes (a Gram of that size)
EVALS_THRESH = 1e-5  # WeightWatcher's EVALS_THRESH: eigenvalues at or below it are left out of the fit
MIN_EVALS = 20  # WeightWatcher's SMALL_N_CUTOFF: below it, its standard fit is not used
_NUMPY_EIG_MAX = 128  # measured: NumPy eigvalsh 0.02 vs torch 0.2 ms at 16x16; 570 vs 18 ms at 256x256
POWER_ITERS = 64
POWER_TOL = 1e-5
_NAN = float("nan")


class SpectralMode(StrEnum):
    """How much spectral work ``summarize --spectral`` does per 2-D weight."""

    OFF = "off"
    DEFAULT = "default"  # sigma_max by power iteration, stable rank
    FULL = "full"  # the whole ESD (eigenvalues of a Gram matrix): exact sigma_max, stable rank, alpha


@dataclass
class SpectralStats:
    """The spectral numbers of one weight (see the module docstring); ``alpha*`` NaN unless the ESD was fitted."""

    n_matrices: int
    rows: int  # the shape of each matrix
    cols: int
    sigma_max: float
    stable_rank: float
    method: str  # "power" or "full"
    iterations: int  # WᵀW products taken by the power/Lanczos iteration (0 for "full")
    n_evals: int  # eigenvalues above EVALS_THRESH (0 unless "full")
    alpha: float = _NAN
    alpha_xmin: float = _NAN
    alpha_ks: float = _NAN  # the Kolmogorov-Smirnov distance D of the chosen fit
    alpha_sigma: float = _NAN
    alpha_n: int = 0  # eigenvalues >= xmin, those the fit covers

    def as_row(self) -> dict:
        return asdict(self)


def weight_matrices(t: torch.Tensor) -> torch.Tensor | None:
    """The weight as a stack ``(k, out, in)`` of matrices, WeightWatcher's way; None when it has no matrix."""
    if t.dim() == 2:
        m = t.unsqueeze(0)
    elif t.dim() in (3, 4):  # Conv1d (out, in, k), Conv2d (out, in, kh, kw): one (out, in) slice per kernel tap
        m = t.reshape(t.shape[0], t.shape[1], -1).permute(2, 0, 1)
    else:
        return None
    return m if min(m.shape[1:]) >= 2 else None


def spectral_stats(t: torch.Tensor, mode: SpectralMode | str = SpectralMode.DEFAULT, *,
                   device: str | torch.device = "cpu", full_max_dim: int = FULL_MAX_DIM) -> SpectralStats | None:
    """Spectral statistics of one weight on ``device``; None for tensors without a matrix or with mode ``off``."""
    mode = SpectralMode(mode)
    if mode is SpectralMode.OFF or not t.is_floating_point():
        return None
    mats = weight_matrices(t.detach())
    if mats is None:
        return None
    k, rows, cols = mats.shape
    mats = mats.to(device=device, dtype=torch.float32 if mode is SpectralMode.DEFAULT else torch.float64)
    frob = float(mats.double().square().sum()) if mats.dtype != torch.float64 else float(mats.square().sum())
    if not math.isfinite(frob):
        return SpectralStats(k, rows, cols, _NAN, _NAN, "none", 0, 0)
    if mode is SpectralMode.FULL and min(rows, cols) <= full_max_dim:
        evals = esd(mats)
        sigma = math.sqrt(max(float(evals[-1]), 0.0)) if evals.size else 0.0
        out = SpectralStats(k, rows, cols, sigma, _ratio(frob, sigma * sigma), "full", 0,
                            int(np.sum(evals > EVALS_THRESH)))
        fit = fit_alpha(evals)
        if fit is not None:
            out.alpha, out.alpha_xmin, out.alpha_ks, out.alpha_sigma, out.alpha_n = fit
        return out
    sigma, iterations = power_sigma_max(mats)
    return SpectralStats(k, rows, cols, sigma, _ratio(frob, sigma * sigma), "power", iterations, 0)


def power_sigma_max(mats: torch.Tensor, *, iters: int = POWER_ITERS, tol: float = POWER_TOL) -> tuple[float, int]:
    """The largest singular value over a stack ``(k, n, m)``, and the ``WᵀW`` products taken.

    Power iteration with Lanczos' three-term recurrence (full reorthogonalisation): after ``j`` products the estimate
    is the top eigenvalue of the ``j x j`` tridiagonal matrix, which converges far faster than the last iterate's
    Rayleigh quotient when the top of the spectrum is crowded (random and early-training weights). Stops when the
    estimate moves by less than ``tol`` relative, or after ``min(iters, m)`` products.
    """
    k, _, cols = mats.shape
    steps = min(iters, cols)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(k, cols, 1, generator=g, dtype=torch.float64).to(mats)
    q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
    basis = [q]
    alphas, betas = [], []
    previous = sigma = 0.0
    for step in range(1, steps + 1):
        z = torch.bmm(mats.transpose(1, 2), torch.bmm(mats, basis[-1]))
        alpha = (basis[-1] * z).sum(dim=1, keepdim=True)
        qs = torch.cat(basis, dim=2)  # (k, m, step): reorthogonalise against every earlier vector
        z = z - qs @ (qs.transpose(1, 2) @ z)
        z = z - qs @ (qs.transpose(1, 2) @ z)  # twice is enough (Kahan-Parlett)
        beta = torch.linalg.vector_norm(z, dim=1, keepdim=True)
        alphas.append(alpha.reshape(k).double())
        betas.append(beta.reshape(k).double())
        sigma = math.sqrt(max(_top_ritz(alphas, betas[:-1]), 0.0))
        if sigma == 0.0 or (step > 1 and abs(sigma - previous) <= tol * sigma) or not math.isfinite(sigma):
            return sigma, step
        previous = sigma
        basis.append(z / torch.where(beta > 0, beta, torch.ones_like(beta)))
    return sigma, steps


def _top_ritz(alphas: list[torch.Tensor], betas: list[torch.Tensor]) -> float:
    """The largest eigenvalue over the stack of Lanczos tridiagonal matrices built so far."""
    diag = torch.stack(alphas, dim=1).cpu().numpy()
    k, j = diag.shape
    t = np.zeros((k, j, j))
    t[:, np.arange(j), np.arange(j)] = diag
    if betas:
        off = torch.stack(betas, dim=1).cpu().numpy()
        t[:, np.arange(j - 1), np.arange(1, j)] = off
        t[:, np.arange(1, j), np.arange(j - 1)] = off
    return float(np.linalg.eigvalsh(t)[:, -1].max())  # LAPACK via NumPy: ~100x less overhead than torch here


def esd(mats: torch.Tensor) -> np.ndarray:
    """Every eigenvalue λ = σ² of every matrix of the stack, pooled and sorted ascending (float64)."""
    mats = mats.double()
    gram = mats.transpose(1, 2) @ mats if mats.shape[2] <= mats.shape[1] else mats @ mats.transpose(1, 2)
    if gram.device.type == "cpu" and gram.shape[-1] <= _NUMPY_EIG_MAX:
        evals = np.linalg.eigvalsh(gram.numpy()).reshape(-1)  # small: NumPy's call overhead is ~10x less than torch's
    else:
        evals = torch.linalg.eigvalsh(gram).reshape(-1).cpu().numpy()  # large: torch's is ~10x faster than NumPy's
    return np.sort(np.clip(evals, 0.0, None))


def fit_alpha(evals: np.ndarray) -> tuple[float, float, float, float, int] | None:
    """WeightWatcher's power-law fit of an ESD: (alpha, xmin, D, sigma, n) or None below :data:`MIN_EVALS`."""
    data = np.sort(np.asarray(evals, dtype=np.float64))
    data = data[data > EVALS_THRESH]
    n_total = data.size
    if n_total < MIN_EVALS:
        return None
    logs = np.log(data)
    tail_sums = np.cumsum(logs[::-1])[::-1]  # tail_sums[i] = sum(logs[i:])
    best = (math.inf, _NAN, _NAN, 0)  # D, alpha, xmin, n
    for i in range(n_total - 1):
        n = n_total - i
        denom = tail_sums[i] - n * logs[i]
        if denom <= 0:
            continue
        alpha = 1.0 + n / denom
        tail = data[i:]
        ks = float(np.max(np.abs(1.0 - (tail / data[i]) ** (1.0 - alpha) - np.arange(n) / n)))
        if ks < best[0]:
            best = (ks, alpha, float(data[i]), n)
    ks, alpha, xmin, n = best
    if not math.isfinite(ks):
        return None
    return alpha, xmin, ks, (alpha - 1.0) / math.sqrt(n), n



def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and math.isfinite(den) else _NAN
