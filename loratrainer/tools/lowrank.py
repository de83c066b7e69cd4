"""Low-rank algebra shared by merge, resize and extract: SVD of a product of factors, Kohya's dynamic rank rules.

A LoRA delta `up @ down` has rank <= r, so its SVD is computed from two thin QR factorisations and the SVD of
an r x r core instead of the full [out, in] matrix: the same singular values, at a fraction of the time and
memory (the full matrix of an SD1.5 feed-forward layer is 1280 x 5120).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_SV = 1e-6  # sd-scripts networks/resize_lora.py: a module whose largest singular value is below is "empty"
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


def svd_of_product(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) with up @ down = U diag(S) Vh; up [out, r], down [r, in], r small."""
    q_up, r_up = torch.linalg.qr(up)  # [out, k1], [k1, r]
    q_down, r_down = torch.linalg.qr(down.T)  # [in, k2], [k2, r]
    u, s, vh = torch.linalg.svd(r_up @ r_down.T, full_matrices=False)
    return q_up @ u, s, vh @ q_down.T


@dataclass
class RankChoice:
    rank: int
    fro_retained: float  # ||kept||_F / ||all||_F of the module's delta
    sum_retained: float  # sum of kept singular values / sum of all


def choose_rank(s: torch.Tensor, max_rank: int, method: str | None = None, param: float | None = None) -> RankChoice:
    """How many singular values to keep: `max_rank`, or Kohya's dynamic rule capped by it.

    The rules are sd-scripts networks/resize_lora.py's index_sv_* and rank_resize, including their `+ 1`
    (sv_fro 0.9 keeps one singular value more than the smallest count reaching 90 % of the Frobenius norm), so
    a file resized here has the ranks Kohya's resize gives it.
    """
    n = len(s)
    if method is None:
        rank = max_rank
    elif param is None:  # the CLI and the page always pass a dynamic method with its parameter
        raise ValueError(f"dynamic method {method} needs its parameter")
    elif method == "sv_ratio":
        rank = _clamp(int(torch.sum(s > s[0] / param).item()), n) + 1
    elif method == "sv_cumulative":
        cumulative = torch.cumsum(s, 0) / float(torch.sum(s))
        rank = _clamp(int(torch.searchsorted(cumulative, torch.tensor(param, dtype=s.dtype))) + 1, n) + 1
    elif method == "sv_fro":
        cumulative = torch.cumsum(s.pow(2), 0) / float(torch.sum(s.pow(2)))
        rank = _clamp(int(torch.searchsorted(cumulative, torch.tensor(param**2, dtype=s.dtype))) + 1, n) + 1
    else:
        raise ValueError(f"unknown dynamic method {method}")
    if n == 0 or float(s[0]) <= MIN_SV:
        rank = 1
    rank = max(1, min(rank, max_rank))
    kept = min(rank, n)
    total_sq = float(torch.sum(s.pow(2))) if n else 0.0
    fro = (float(torch.sum(s[:kept].pow(2))) / total_sq) ** 0.5 if total_sq > 0 else 1.0
    total = float(torch.sum(s.abs())) if n else 0.0
    return RankChoice(rank, fro, float(torch.sum(s[:kept].abs())) / total if total > 0 else 1.0)


def _clamp(index: int, n: int) -> int:
    return max(1, min(index, n - 1)) if n > 1 else 1


def split_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of the best rank-`rank` approximation, as Kohya splits it: up = U diag(S), down = Vh.

    When fewer singular values exist than `rank`, zero rows/columns pad the factors to the asked rank."""
    k = min(rank, len(s))
    up = u[:, :k] * s[:k]
    down = vh[:k]
    if k < rank:
        up = torch.cat([up, up.new_zeros(up.shape[0], rank - k)], 1)
        down = torch.cat([down, down.new_zeros(rank - k, down.shape[1])], 0)
    return up, down
