"""full_fp16 / full_bf16: LoRA weights kept in fp16 or bf16 train with every optimizer of the table.

Plain torch AdamW on fp16 weights makes them NaN at step 1 (its eps, 1e-8, is 0 in fp16, and a lora_down weight's
first gradient is 0 because lora_up starts at zero). train/optimizers.py Fp32Master runs the optimizer on float32
master copies. Each optimizer here trains a LoRA-sized pair of fp16 (or bf16) factors of a frozen 320x320 layer for
a few steps, as the trainer builds it (build_optimizer from the config); one tiny end-to-end run per precision
trains the tiny SD model through the real trainer.

Optimizers that cannot be built on the machine are skipped with the builder's own sentence: the 8-bit ones need
bitsandbytes with a CUDA GPU; Prodigy, DAdaptAdam and DAdaptLion need their packages (prodigyopt, dadaptation),
which are optional and not in the project's environment.
"""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import copy
import math

import pytest
import torch

from loratrainer.config import TrainingConfig, with_values
from loratrainer.config.optimizer_table import ADAPTIVE, KNOWN_OPTIMIZERS
from loratrainer.train import optimizers
from loratrainer.train.schedulers import build_lr_scheduler

PRECISIONS = {"fp16": (torch.float16, {"mixed_precision": "fp16", "full_fp16": True}),
              "bf16": (torch.bfloat16, {"mixed_precision": "bf16", "full_bf16": True})}
RANK, WIDTH = 8, 320  # an SD1.5 attention projection's LoRA at rank 8
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # with CUDA (and bitsandbytes) the 8-bit optimizers run too


def _config(name: str, precision: str, **values) -> TrainingConfig:
    rate = 1.0 if name in ADAPTIVE else 1e-3 if "SGD" not in name else 0.05
    return with_values(TrainingConfig(), {"optimizer": name, "learning_rate": rate, **PRECISIONS[precision][1], **values})


def _lora(dtype: torch.dtype, seed: int = 0, device: str = "cpu"):
    """A frozen layer, its LoRA factors as peft/Kohya start them (down random, up zero), inputs and a target that a
    rank-RANK change of the layer reaches."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(WIDTH, WIDTH, generator=g) / WIDTH**0.5).to(device, dtype)
    down = torch.nn.Parameter((torch.randn(RANK, WIDTH, generator=g) / WIDTH**0.5).to(device, dtype))
    up = torch.nn.Parameter(torch.zeros(WIDTH, RANK, dtype=dtype, device=device))
    x = torch.randn(16, WIDTH, generator=g).to(device, dtype)
    wanted = torch.randn(WIDTH, RANK, generator=g) @ torch.randn(RANK, WIDTH, generator=g) / WIDTH
    target = (x.float() @ (base.float().cpu() + wanted).T.to(device)).to(dtype)
    return base, down, up, x, target


def _loss(base, down, up, x, target) -> torch.Tensor:
    return ((x @ (base + up @ down).T).float() - target.float()).pow(2).mean()


def _train(opt, lora, steps: int) -> list[float]:
    base, down, up, x, target = lora
    losses = []
    for _ in range(steps):
        loss = _loss(base, down, up, x, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def test_plain_adamw_on_fp16_lora_weights_is_nan_after_one_step():
    """What the issue reported, reproduced on the same setup the tests below use (so they can fail)."""
    base, down, up, x, target = lora = _lora(torch.float16)
    _train(torch.optim.AdamW([down, up], lr=1e-4), lora, 1)
    assert not torch.isfinite(down).all()


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("name", KNOWN_OPTIMIZERS)
def test_every_optimizer_trains_fp16_and_bf16_lora_weights(name, precision):
    dtype = PRECISIONS[precision][0]
    base, down, up, x, target = lora = _lora(dtype, device=DEVICE)
    start = [down.detach().clone(), up.detach().clone()]
    try:
        opt = optimizers.build_optimizer(_config(name, precision), [{"params": [down, up]}])
    except optimizers.OptimizerUnavailable as exc:
        pytest.skip(str(exc))
    losses = _train(opt, lora, 6)
    assert all(math.isfinite(v) for v in losses), losses
    assert down.dtype == up.dtype == dtype  # the model's weights keep the precision asked for
    assert torch.isfinite(down).all() and torch.isfinite(up).all()
    assert not torch.equal(up, start[1]) and not torch.equal(down, start[0])  # both factors learn
    # the optimizer's own state (moments, Prodigy's d and p0, ...) is float32, whatever the weights are
    floating = [v for s in opt.inner.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
    assert all(v.dtype == torch.float32 for v in floating), {v.dtype for v in floating}
    if name not in ADAPTIVE:  # Prodigy and D-Adaptation first estimate their step size
        assert losses[-1] < losses[0], losses


def test_under_gradscaler_as_accelerate_steps_it_with_fp16_on_a_gpu():
    """With mixed_precision fp16 on a GPU accelerate steps the optimizer through GradScaler, which
    setup.allow_fp16_gradients lets unscale fp16 gradients; a step whose gradients overflow is skipped, weights and
    masters untouched. (GradScaler on the CPU runs the same code.)"""
    lora = _lora(torch.float16)
    base, down, up, x, target = lora
    opt = optimizers.build_optimizer(_config("AdamW", "fp16"), [{"params": [down, up]}])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    unscale = scaler._unscale_grads_
    scaler._unscale_grads_ = lambda o, inv, found, allow_fp16: unscale(o, inv, found, True)
    losses = []
    for step in range(6):
        loss = _loss(*lora)
        scaler.scale(loss).backward()
        if step == 3:  # an overflowing gradient: GradScaler skips the step and lowers its scale
            before = [down.detach().clone(), up.detach().clone()]
            up.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        if step == 3:
            assert torch.equal(down, before[0]) and torch.equal(up, before[1]) and scaler.get_scale() < 2.0**16
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert torch.isfinite(down).all() and up.abs().amax() > 0


def test_updates_below_the_fp16_rounding_step_add_up():
    """1.0 in fp16 moves only in steps of 2^-10: each of these SGD updates (1e-4) alone would be rounded away, and
    plain SGD on the fp16 weight never moves it; the float32 master adds them up."""
    config = _config("SGD", "fp16", learning_rate=1e-4)
    plain, ours = (torch.nn.Parameter(torch.ones(4, dtype=torch.float16)) for _ in range(2))
    plain_opt = torch.optim.SGD([plain], lr=1e-4)
    opt = optimizers.build_optimizer(config, [{"params": [ours]}])
    for _ in range(20):
        for p, o in ((plain, plain_opt), (ours, opt)):
            p.grad = torch.ones(4, dtype=torch.float16)
            o.step()
    assert torch.equal(plain, torch.ones(4, dtype=torch.float16))
    assert float(ours.detach()[0]) == pytest.approx(1.0 - 20 * 1e-4, abs=2**-11)


def test_a_weight_changed_outside_the_optimizer_is_taken_over():
    """scale_weight_norms rescales the weights after a step; the next step continues from the rescaled weights."""
    config = _config("SGD", "fp16", learning_rate=0.5)
    p = torch.nn.Parameter(torch.full((4,), 2.0, dtype=torch.float16))
    opt = optimizers.build_optimizer(config, [{"params": [p]}])
    p.grad = torch.ones(4, dtype=torch.float16)
    opt.step()  # 2 - 0.5 = 1.5
    with torch.no_grad():
        p.mul_(0.5)  # 0.75, as apply_max_norm does in place
    p.grad = torch.ones(4, dtype=torch.float16)
    opt.step()
    assert torch.equal(p, torch.full((4,), 0.25, dtype=torch.float16))


def test_the_schedule_sets_the_rate_the_optimizer_uses_and_a_saved_state_resumes_exactly():
    config = _config("AdamW", "fp16", lr_scheduler="linear", lr_warmup_steps=2)
    lora = _lora(torch.float16)
    opt = optimizers.build_optimizer(config, [{"params": [lora[1], lora[2]]}])
    sched = build_lr_scheduler(config, opt, total_steps=6)
    assert opt.param_groups[0]["lr"] == 0  # warm-up: the first step is at rate 0
    for _ in range(3):
        rate = sched.get_last_lr()[0]
        _train(opt, lora, 1)
        assert opt.inner.param_groups[0]["lr"] == rate  # the rate the float32 optimizer stepped with
        sched.step()
    assert rate > 0
    state = copy.deepcopy({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})  # as torch.save keeps it
    weights = [lora[1].detach().clone(), lora[2].detach().clone()]
    straight = _train(opt, lora, 3)

    again = _lora(torch.float16)
    with torch.no_grad():
        again[1].copy_(weights[0])
        again[2].copy_(weights[1])
    opt2 = optimizers.build_optimizer(config, [{"params": [again[1], again[2]]}])
    sched2 = build_lr_scheduler(config, opt2, total_steps=6)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert _train(opt2, again, 3) == straight
    assert torch.equal(again[1], lora[1]) and torch.equal(again[2], lora[2])


def test_a_state_saved_before_the_masters_existed_still_resumes():
    """Training states saved by earlier versions hold the optimizer's own state dict (on the fp16 weights)."""
    lora = _lora(torch.float16)
    plain = torch.optim.SGD([lora[1], lora[2]], lr=0.05, momentum=0.9)
    _train(plain, lora, 2)
    opt = optimizers.build_optimizer(_config("SGD", "fp16", optimizer_args="momentum=0.9"), [{"params": [lora[1], lora[2]]}])
    opt.load_state_dict(copy.deepcopy(plain.state_dict()))
    momentum = opt.inner.state[opt.inner.param_groups[0]["params"][1]]["momentum_buffer"]
    assert momentum.dtype == torch.float32 and torch.equal(momentum, plain.state[lora[2]]["momentum_buffer"].float())
    assert all(math.isfinite(v) for v in _train(opt, lora, 2))


def test_adafactor_finding_its_own_rate_reports_it_through_the_schedule():
    config = _config("Adafactor", "bf16", lr_scheduler="adafactor")
    lora = _lora(torch.bfloat16)
    opt = optimizers.build_optimizer(config, [{"params": [lora[1], lora[2]]}])
    sched = build_lr_scheduler(config, opt, total_steps=4)
    base, down, up, x, target = lora
    _loss(*lora).backward()
    opt.step()
    sched.step()
    assert 0 < sched.get_last_lr()[0] < 1 and torch.isfinite(up).all() and up.abs().amax() > 0


@pytest.mark.slow
def test_full_fp16_adamw_trains_the_tiny_model_end_to_end(tmp_path, tiny_model):  # noqa: F811
    """The trainer itself (entry.run_and_classify in this process, fp16 autocast and GradScaler on the CPU): two
    steps, AdamW, the LoRA weights in fp16 (the case the issue reported); the run finishes and its final file holds
    finite weights that differ from the untrained start. (bf16 is covered at the optimizer level above.)"""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    from loratrainer.train import entry
    from loratrainer.train.run_context import RunContext

    config = small_config(tmp_path, tiny_model, images=2, repeats=1, epoch=2, network_dim=4, network_alpha=4,
                          learning_rate=1e-3, save_precision="float", **PRECISIONS["fp16"][1])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    threads = torch.get_num_threads()
    AcceleratorState._reset_state(True)  # accelerate keeps one state per process: this test's precision is its own
    try:
        status, reason, step, _ = entry.run_and_classify(config, RunContext(run_dir), Accelerator(cpu=True, mixed_precision="fp16"))
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(True)
    assert (status, step) == ("finished", 2), reason
    saved = load_file(str(tmp_path / "out" / "last.safetensors"))
    ups = [v for k, v in saved.items() if k.endswith("lora_up.weight")]
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert ups and all(v.abs().amax() > 0 for v in ups)  # lora_up starts at zero: every module learned
