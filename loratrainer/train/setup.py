"""Building everything a run needs, one named function per piece, into a `Trainer` that the loop drives."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from loratrainer.config import TrainingConfig
from loratrainer.data.check import check_dataset
from loratrainer.data.report import DatasetReport
from loratrainer.errors import UserError
from loratrainer.model.kohya_format import load_network_weights
from loratrainer.model.loading import SD15Components, load_sd15
from loratrainer.model.lora import LoraHandle, inject_lora
from loratrainer.train.captions import CaptionRules
from loratrainer.train.dataset import EpochBatchSampler, TrainDataset, build_loader
from loratrainer.train.latent_cache import cache_latents, join_shares
from loratrainer.train.loss import LossRecipe
from loratrainer.train.noise import NoiseRecipe
from loratrainer.train.optimizers import build_optimizer
from loratrainer.train.run_context import RunContext
from loratrainer.train.schedulers import build_lr_scheduler
from loratrainer.train.text import TextCache

log = logging.getLogger("loratrainer.train")
WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Trainer:
    """The state of one run. Built by `build_trainer`, driven by loop.train."""

    config: TrainingConfig
    run_dir: Path
    accelerator: Accelerator
    report: DatasetReport
    seed: int
    components: SD15Components  # the loaded models (the one place the UNet and text encoder are kept) and the rest
    handle: LoraHandle  # the adapters injected into components.unet / components.text_encoder
    # What the loop calls: accelerator.prepare's view of components.unet / .text_encoder. With one process it is
    # the same object; with several it is the DDP wrapper, whose forward synchronises the gradients.
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    loader: Any
    sampler: EpochBatchSampler
    weight_dtype: torch.dtype
    noise: NoiseRecipe
    loss: LossRecipe
    text_cache: TextCache | None
    run: RunContext | None = None  # where the run reports; a bare one (no event stream) when not given
    saver: Any = None  # saving.Saver, set by the entry point (or a test) before training
    sampling: Any = "unplanned"  # sampling.SampleRun, or None for no sampling, once the first round asks
    step: int = 0
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.run is None:
            self.run = RunContext(Path(self.run_dir))
        self.run.trainer = self

    @property
    def total_steps(self) -> int:
        return self.report.steps.total_steps

    @property
    def epochs(self) -> int:
        return self.report.steps.epochs


def plan_dataset(config: TrainingConfig, num_processes: int) -> DatasetReport:
    report = check_dataset(config, num_processes=num_processes)
    if not report.ok:
        raise UserError("the dataset check failed:\n" + report.format_text())
    return report


def load_and_adapt_models(config: TrainingConfig, accelerator: Accelerator):
    weight_dtype = WEIGHT_DTYPES.get(accelerator.mixed_precision, torch.float32)
    # Single files are always built with the shipped SD1.5 configs (tests/test_model_loading_full_size.py).
    components = load_sd15(config.model, dtype=weight_dtype)
    if config.model.v_parameterization:
        components.noise_scheduler.register_to_config(prediction_type="v_prediction")
    handle = add_lora(components, config)
    if config.network.network_weights:
        fresh = load_network_weights(handle, config.network.network_weights)
        log.info("started from %s%s", config.network.network_weights, f" ({len(fresh)} modules it lacks start fresh)" if fresh else "")
    set_attention(components.unet, config.precision.attention)
    if config.precision.gradient_checkpointing:
        enable_gradient_checkpointing(components, config)
    for module in (components.unet, components.text_encoder, components.vae):
        module.to(accelerator.device)
    components.vae.eval()
    speed_up_unet(components.unet, config)
    return components, handle, weight_dtype



def add_lora(components, config: TrainingConfig):
    """Inject the LoRA the network settings describe, its weights in the precision full_fp16/full_bf16 ask for."""
    p = config.precision
    lora_dtype = torch.float16 if p.full_fp16 else torch.bfloat16 if p.full_bf16 else torch.float32
    return inject_lora(components, config.network, train_unet=config.trains_unet,
                       train_text_encoder=config.trains_text_encoder, lora_dtype=lora_dtype)


def speed_up_unet(unet, config: TrainingConfig) -> None:
    """Options that change speed and memory, never the result (tests/test_speed_options.py checks the loss curve).

    The UNet is compiled in place (nn.Module.compile) rather than wrapped by torch.compile(), so that its class,
    its config and its state_dict keys, which saving and sampling use, stay as they are."""
    if config.precision.channels_last:
        unet.to(memory_format=torch.channels_last)
    if config.precision.dynamo_backend != "no":
        unet.compile(backend=config.precision.dynamo_backend)


def set_attention(unet, attention: str) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attention == "xformers":
        try:
            unet.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # not installed, or no CUDA
            raise UserError(f"xformers attention is not available here ({exc}): choose precision.attention = sdpa") from None
    else:
        unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


def enable_gradient_checkpointing(components, config: TrainingConfig) -> None:
    components.unet.enable_gradient_checkpointing()
    if config.trains_text_encoder:
        components.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def param_groups(handle, config: TrainingConfig) -> list[dict]:
    groups = []
    if config.trains_unet:
        groups.append({"params": list(handle.unet_parameters()), "lr": config.effective_unet_lr})
    if config.trains_text_encoder:
        groups.append({"params": list(handle.text_encoder_parameters()), "lr": config.effective_text_encoder_lr})
    return [g for g in groups if g["params"]]


def build_data(config: TrainingConfig, report: DatasetReport, components, accelerator: Accelerator, seed: int, weight_dtype,
               run: RunContext | None = None):
    latents = None
    if config.caches_latents:
        share = cache_latents(
            report.samples, components.vae, flip=config.dataset.flip_aug, to_disk=config.precision.cache_latents_to_disk,
            background=config.dataset.alpha_background, vae_id=f"{components.model_name}|{components.model_hash}|{config.model.vae}",
            device=accelerator.device, dtype=weight_dtype, rank=accelerator.process_index, world=accelerator.num_processes,
            seed=seed, run=run,
        )
        latents = join_shares(share, accelerator)
    dataset = TrainDataset(report.samples, config, seed, latents)
    sampler = EpochBatchSampler(report.samples, config.training.train_batch_size, seed, accelerator.process_index, accelerator.num_processes)
    return build_loader(dataset, sampler, config), sampler


def build_trainer(config: TrainingConfig, run_dir: Path, accelerator: Accelerator, seed: int, run: RunContext | None = None) -> Trainer:
    check_optimizer_available(config)
    report = plan_dataset(config, accelerator.num_processes)
    if run is not None:  # a stop asked while the process started (torch's import) ends here, before the model loads
        run.check_stop()
        run.phase_progress("loading_model")
    components, handle, weight_dtype = load_and_adapt_models(config, accelerator)
    if run is not None:
        run.check_stop()
    groups = param_groups(handle, config)
    optimizer = build_optimizer(config, groups)
    lr_scheduler = build_lr_scheduler(config, optimizer, report.steps.total_steps)
    unet, text_encoder, optimizer = prepare_models(accelerator, components, config, optimizer)
    loader, sampler = build_data(config, report, components, accelerator, seed, weight_dtype, run=run)
    static_text = not config.trains_text_encoder and CaptionRules.from_settings(config.dataset).is_static
    return Trainer(
        config=config, run_dir=run_dir, accelerator=accelerator, report=report, seed=seed, components=components,
        handle=handle, unet=unet, text_encoder=text_encoder, params=[p for g in groups for p in g["params"]],
        optimizer=optimizer, lr_scheduler=lr_scheduler, loader=loader, sampler=sampler, weight_dtype=weight_dtype,
        noise=NoiseRecipe.from_settings(config.noise), loss=LossRecipe.from_config(config),
        text_cache=TextCache() if static_text else None, run=run,
    )


def check_optimizer_available(config: TrainingConfig) -> None:
    """Fail before loading any model when the optimizer cannot be built (e.g. 8-bit on a CPU)."""
    from loratrainer.train.optimizers import optimizer_spec

    optimizer_spec(config.optimizer.optimizer)


def prepare_models(accelerator: Accelerator, components, config: TrainingConfig, optimizer):
    """Wrap what trains (DDP with several processes); the scheduler is stepped by us, once per step."""
    unet, text_encoder = components.unet, components.text_encoder
    if config.trains_unet and config.trains_text_encoder:
        unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    elif config.trains_unet:
        unet, optimizer = accelerator.prepare(unet, optimizer)
    else:
        text_encoder, optimizer = accelerator.prepare(text_encoder, optimizer)
    if config.precision.full_fp16 and accelerator.scaler is not None:
        allow_fp16_gradients(accelerator)
    unet.train() if config.trains_unet else unet.eval()
    text_encoder.train() if config.trains_text_encoder else text_encoder.eval()
    return unet, text_encoder, optimizer


def allow_fp16_gradients(accelerator: Accelerator) -> None:
    """full_fp16 keeps the LoRA weights in fp16, whose gradients GradScaler refuses to unscale; sd-scripts
    lets it (train_util.patch_accelerator_for_fp16_training), and so do we."""
    unscale = accelerator.scaler._unscale_grads_

    def unscale_fp16_too(optimizer, inv_scale, found_inf, allow_fp16):
        return unscale(optimizer, inv_scale, found_inf, True)

    accelerator.scaler._unscale_grads_ = unscale_fp16_too
