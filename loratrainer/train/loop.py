"""The training loop. It reads like the recipe: for each step, predict the noise, learn from the error,
report, save when the policy says so, stop when asked."""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch

from loratrainer.run.files import stop_requested
from loratrainer.train.loss import diffusion_loss, huber_threshold, sample_weights, training_target
from loratrainer.train.max_norm import apply_max_norm
from loratrainer.train.noise import item_generators, noisy_latents, sample_noise, sample_timesteps
from loratrainer.train.sampling import maybe_sample
from loratrainer.train.schedulers import current_lr
from loratrainer.train.family import text_states  # noqa: F401  (SD1.5's hidden states; tests call it from here)
from loratrainer.train.setup import Trainer
from loratrainer.train.validation import maybe_validate


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, epoch: int, lr: float):
        super().__init__(f"the loss became NaN or infinite at step {step} (epoch {epoch}, learning rate {lr:.3g}); "
                         "lower the learning rate, or use bf16 or no mixed precision instead of fp16")
        self.step, self.epoch, self.lr = step, epoch, lr


class NonFiniteWeights(NonFiniteLoss):
    """The update itself overflowed: the loss of the step was finite, the LoRA weights after it are not. Raised on
    every process at once (the weights are the same on all), before anything saves or samples them."""

    def __init__(self, step: int, epoch: int, lr: float, fp16: bool):
        RuntimeError.__init__(self, f"the LoRA weights became NaN or infinite in the update of step {step} (epoch {epoch}, "
                              f"learning rate {lr:.3g}); lower the learning rate or the network alpha"
                              + (", or turn off full fp16 training (fp16 weights overflow above 65504)" if fp16 else ""))
        self.step, self.epoch, self.lr = step, epoch, lr


@dataclass
class Outcome:
    status: str  # "finished" or "stopped"
    step: int
    epoch: int


def train(t: Trainer, reporter) -> Outcome:
    """`t.saver` writes the LoRA files; `reporter.step(...)` reports each optimizer step."""
    maybe_sample(t, first=True)
    for epoch in range(t.step // t.report.steps.steps_per_epoch + 1, t.epochs + 1):  # after a resume: from its epoch
        if not train_epoch(t, epoch, reporter):
            t.saver.save("interrupted")
            return Outcome("stopped", t.step, epoch)
        reporter.epoch_end(epoch, t.step)
        maybe_validate(t, compute_loss, epoch_end=True)  # before the save, so the file's validation loss is known when it is listed
        t.saver.maybe_save(epoch_done=t.step == epoch * t.report.steps.steps_per_epoch)
        if t.step >= t.total_steps:
            break
        maybe_sample(t, epoch_end=True)
    assert t.step == t.total_steps, f"ran {t.step} steps, the plan was {t.total_steps}"
    t.saver.save("final")
    maybe_sample(t)  # the last step's or the last epoch's samples, whichever the schedule asks for
    maybe_sample(t, epoch_end=True)
    return Outcome("finished", t.step, t.epoch)


def train_epoch(t: Trainer, epoch: int, reporter) -> bool:
    """One epoch, or what is left of it; False when a stop was asked."""
    for group in epoch_step_groups(t, epoch):
        loss, stop = training_step(t, group)
        reporter.step(t.step, epoch, loss, current_lr(t.lr_scheduler))
        if stop:
            return False
        maybe_validate(t, compute_loss)
        if t.step >= t.total_steps:
            return True
        t.saver.maybe_save()
        maybe_sample(t)
    return True


def epoch_step_groups(t: Trainer, epoch: int):
    """The epoch's micro-batch groups, skipping those a resumed run trained before it stopped."""
    accumulation = t.config.training.gradient_accumulation_steps
    done = t.step - (epoch - 1) * t.report.steps.steps_per_epoch
    t.epoch = epoch
    t.sampler.set_epoch(epoch, skip_batches=max(done, 0) * accumulation)
    return step_groups(t.loader, accumulation)


def step_groups(loader, accumulation: int):
    """Micro-batches per optimizer step; the epoch's last group may be shorter (as data.steps counts)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == accumulation:
            yield group
            group = []
    if group:
        yield group


def training_step(t: Trainer, group: list[dict]) -> tuple[float, bool]:
    """One optimizer step over the group's micro-batches; returns (mean loss across processes, stop asked)."""
    losses = []
    for i, batch in enumerate(group):
        with ExitStack() as stack:
            if i < len(group) - 1:  # synchronise gradients between processes only on the last micro-batch
                for model in trained_models(t):
                    stack.enter_context(t.accelerator.no_sync(model))
            loss = compute_loss(t, batch)
            t.accelerator.backward(loss / len(group))
        losses.append(loss.detach())
    t.step += 1
    loss, stop = agree_across_processes(t, torch.stack(losses).mean())
    lr = current_lr(t.lr_scheduler)  # the rate of this step's update (the scheduler steps after it)
    if not math.isfinite(loss):
        raise NonFiniteLoss(t.step, t.epoch, lr)
    apply_gradients(t)
    check_weights(t, lr)
    return loss, stop


def compute_loss(t: Trainer, batch: dict, timestep: int | None = None) -> torch.Tensor:
    """The batch's loss; `timestep` fixes every item's timestep (validation, train/validation.py)."""
    scheduler = t.components.noise_scheduler
    # per-item generators (train.dataset.noise_seed): the same image gets the same noise on any process
    generators = item_generators(batch.get("noise_seeds"), t.accelerator.device)
    with t.accelerator.autocast():
        latents = batch_latents(t, batch, generators)
        hidden, extra = t.family.condition(t, batch)  # the text conditioning, and SDXL's size conditioning
        noise = sample_noise(latents, t.config.noise, generators)
        if timestep is None:
            timesteps = sample_timesteps(latents.shape[0], scheduler.config.num_train_timesteps, latents.device, generators)
        else:
            timesteps = torch.full((latents.shape[0],), timestep, dtype=torch.long, device=latents.device)
        noisy = noisy_latents(scheduler, latents, noise, timesteps, t.config.noise, generators)
        pred = t.unet(noisy.to(t.weight_dtype), timesteps, hidden.to(t.weight_dtype), **extra).sample
    target = training_target(scheduler, latents, noise, timesteps)
    loss = t.config.loss
    weights = sample_weights(scheduler, timesteps, batch["is_reg"], loss, t.config.dataset.prior_loss_weight)
    huber_c = huber_threshold(scheduler, timesteps, loss) if loss.loss_type != "l2" else None
    return diffusion_loss(pred, target, weights, loss, huber_c, batch.get("masks"))


def batch_latents(t: Trainer, batch: dict, generators=None) -> torch.Tensor:
    vae = t.components.vae
    if "latents" in batch:
        latents = batch["latents"].to(t.accelerator.device)
    else:
        # in the VAE's own dtype: fp32 with no_half_vae (autocast off for it, as sd-scripts encodes outside it)
        full = vae.dtype == torch.float32 and t.weight_dtype != torch.float32
        with torch.no_grad(), torch.autocast(t.accelerator.device.type, enabled=False) if full else nullcontext():
            dist = vae.encode(batch["pixels"].to(t.accelerator.device, vae.dtype)).latent_dist
            if generators is None:
                latents = dist.sample()
            else:  # the VAE's sample item by item from each item's generator, first of its draws
                latents = dist.mean + dist.std * torch.stack([torch.randn(dist.mean.shape[1:], generator=g, device=dist.mean.device,
                                                                          dtype=dist.mean.dtype) for g in generators])
    return latents.float() * vae.config.scaling_factor


def trained_models(t: Trainer) -> list[torch.nn.Module]:
    encoders = [(getattr(t, name), lr > 0) for name, lr in t.family.text_encoder_lrs(t.config).items()]
    return [m for m, on in [(t.unet, t.config.trains_unet), *encoders] if on]


def agree_across_processes(t: Trainer, loss: torch.Tensor) -> tuple[float, bool]:
    """One collective per step: the mean loss (for the NaN guard and the log) and whether any process saw STOP."""
    # each machine's first process reads its own run folder's STOP: a stop asked on any machine stops them all
    stop = 1.0 if t.accelerator.is_local_main_process and stop_requested(t.run_dir) else 0.0
    flags = torch.stack([loss.float(), torch.tensor(stop, device=loss.device)])
    if t.accelerator.num_processes > 1:
        flags = t.accelerator.gather(flags[None]).reshape(-1, 2)
        return float(flags[:, 0].mean()), bool(flags[:, 1].max() > 0)
    return float(flags[0]), bool(flags[1] > 0)


def check_weights(t: Trainer, lr: float) -> None:
    """A finite loss can still give an update that overflows (fp16 weights end at 65504), and a non-finite weight
    would otherwise reach the next file or sample image. Each trained weight's min and max (NaN and +-inf show in
    one of them; one pass, no copy), one read per step."""
    with torch.no_grad(), one_cpu_thread(t.params[0].device):
        mins, maxs = zip(*(torch.aminmax(p) for p in t.params))
        finite = bool(torch.isfinite(torch.stack(mins + maxs)).all())
    if not finite:
        raise NonFiniteWeights(t.step, t.epoch, lr, fp16=t.params[0].dtype == torch.float16)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, hundreds of small reductions (one per LoRA weight) on one thread. With more, each is a parallel
    region whose threads wait for each other at its end; on a machine with other work those waits made the weight
    check cost 1-3 s a step where one thread takes tens of milliseconds (docs/performance.md, per-step comparison). min and max
    are exact, so the verdict is the same on any number of threads."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def apply_gradients(t: Trainer) -> None:
    max_norm = t.config.optimizer.max_grad_norm
    if max_norm:  # accumulation is ours (no_sync on all but the last micro-batch): every call here is a sync step
        t.accelerator.clip_grad_norm_(t.params, max_norm)
    t.optimizer.step()
    t.lr_scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    if t.config.network.scale_weight_norms:
        apply_max_norm(t.handle, t.config.network.scale_weight_norms)
