"""The per-step weight check (train/loop.py check_weights): any NaN, +inf or -inf in any trained weight stops the
run at that update, in every precision the LoRA weights can have; finite weights pass; and the check, which runs
on one CPU thread for speed (docs/performance.md), leaves the run's thread count as it was."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from loratrainer.train.loop import NonFiniteWeights, check_weights


def _trainer(dtype: torch.dtype, bad: float | None, where: int) -> SimpleNamespace:
    weights = [torch.full((4, 3), 0.5, dtype=dtype), torch.full((3, 4), -60000.0, dtype=dtype), torch.zeros(2, 5, dtype=dtype)]
    if bad is not None:
        weights[where][1, 2] = bad
    return SimpleNamespace(params=weights, step=7, epoch=2)


@pytest.fixture(autouse=True)
def two_threads():
    """The run's threads (num_cpu_threads_per_process) are more than the check's one: they must come back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 2])
def test_a_non_finite_weight_anywhere_stops_the_run_at_that_step(dtype, bad, where):
    with pytest.raises(NonFiniteWeights) as caught:
        check_weights(_trainer(dtype, bad, where), lr=1e-4)
    assert (caught.value.step, caught.value.epoch) == (7, 2)
    assert ("full fp16" in str(caught.value)) == (dtype == torch.float16)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_weights_pass_even_at_the_edge_of_fp16(dtype):
    check_weights(_trainer(dtype, 65504.0 if dtype == torch.float16 else 3e38, 0), lr=1e-4)
    assert torch.get_num_threads() == 2
