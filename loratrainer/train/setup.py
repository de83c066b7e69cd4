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
from loratrainer.data.dataset_config import with_dataset_config
from loratrainer.data.report import DatasetReport
from loratrainer.errors import UserError
from loratrainer.messages import Label, Msg
from loratrainer.run import outcomes as _outcomes  # noqa: F401  the codes of the refusals below (run/outcomes.py defines them torch-free)
from loratrainer.run import notes as _notes  # noqa: F401  the codes of the warnings below (the page must know them)
from loratrainer.model.kohya_format import load_network_weights
from loratrainer.model.components import load_components
from loratrainer.model.loading import SD15Components
from loratrainer.model.lora import LoraHandle, inject_lora
from loratrainer.train.captions import captions_static
from loratrainer.train.dataset import EpochBatchSampler, TrainDataset, build_loader
from loratrainer.train.family import FAMILIES, Family, family_for, store_unet_in_fp8
from loratrainer.train.family import notes as family_notes
from loratrainer.data.masks import uses_masks
from loratrainer.train.latent_cache import cache_latents, join_shares
from loratrainer.train.optimizers import build_optimizer
from loratrainer.train.run_context import RunContext
from loratrainer.train.schedulers import build_lr_scheduler
from loratrainer.train.text import TextCache
from loratrainer.train.text_cache import check_text_cache_allowed, fill_text_cache
from loratrainer.train.validation import build_validation

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
    components: SD15Components  # the loaded models (the one place the UNet and text encoders are kept) and the rest
    # (an SDXLComponents for SDXL: a second tokenizer and text encoder, text_encoder_2)
    handle: LoraHandle  # the adapters injected into components.unet / components.text_encoder(s)
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
    text_cache: TextCache | None
    run: RunContext  # where the run reports (build_trainer makes a bare one, no event stream, when not given)
    family: Family  # what differs between model families (train/family.py), from the components
    saver: Any = None  # saving.Saver, set by the entry point (or a test) before training
    sampling: Any = "unplanned"  # sampling.SampleRun, or None for no sampling, once the first round asks
    step: int = 0
    epoch: int = 0
    text_encoder_2: torch.nn.Module | None = None  # SDXL: the prepared view of components.text_encoder_2
    validation: Any = None  # train.validation.ValidationSet: the held-out images (None without validation)

    def __post_init__(self) -> None:
        self.run.trainer = self

    def text_encoder_views(self) -> dict[str, torch.nn.Module]:
        """The family's text encoders as the loop calls them (accelerate's prepared views), by attribute name."""
        return {name: getattr(self, name) for name in self.family.text_encoders}

    @property
    def total_steps(self) -> int:
        return self.report.steps.total_steps

    @property
    def epochs(self) -> int:
        return self.report.steps.epochs


def plan_dataset(config: TrainingConfig, num_processes: int) -> DatasetReport:
    report = check_dataset(config, num_processes=num_processes)
    if not report.ok:
        raise UserError(Msg.of("check.failed", report=report.format_text()))
    return report


def load_and_adapt_models(config: TrainingConfig, accelerator: Accelerator):
    weight_dtype = WEIGHT_DTYPES.get(accelerator.mixed_precision, torch.float32)
    # Single files are always built with the shipped configs of their family (tests/test_model_loading_full_size.py).
    components = load_components(config.model, dtype=weight_dtype)
    family = family_for(components)
    for note in family_notes(family, config):
        log.warning("%s", note)
    if config.model.v_parameterization:
        components.noise_scheduler.register_to_config(prediction_type="v_prediction")
    if config.noise.zero_terminal_snr:
        components.noise_scheduler = zero_terminal_snr(components.noise_scheduler)
    if config.precision.no_half_vae:
        components.vae.to(torch.float32)  # SDXL's VAE overflows in fp16; the pixels are passed in its dtype
    declared = getattr(components, "declared_prediction", "")  # SD1.5/2 single files and folders say it
    if declared and (declared == "v_prediction") != config.model.v_parameterization:
        log.warning("%s", Msg.of("train.prediction_mismatch_" + ("on" if config.model.v_parameterization else "off"),
                                 declared=declared, v_param=Label("model.v_parameterization")))
    handle = add_lora(components, config, family)
    if config.network.network_weights:
        fresh = load_network_weights(handle, config.network.network_weights)
        log.info("started from %s%s", config.network.network_weights, f" ({len(fresh)} modules it lacks start fresh)" if fresh else "")
    set_attention(components.unet, config.precision.attention)
    if config.precision.gradient_checkpointing:
        enable_gradient_checkpointing(components, config)
    if config.precision.fp8_base:
        store_unet_in_fp8(components.unet, accelerator.mixed_precision, accelerator.device)
    for module in (components.unet, *(getattr(components, n) for n in family.text_encoders), components.vae):
        module.to(accelerator.device)
    components.vae.eval()
    speed_up_unet(components.unet, config)
    return components, handle, weight_dtype


def zero_terminal_snr(scheduler):
    """The same schedule with its betas rescaled so the last timestep is pure noise (https://arxiv.org/abs/2305.08891):
    diffusers' rescale_zero_terminal_snr, which is sd-scripts' fix_noise_scheduler_betas_for_zero_terminal_snr
    (library/custom_train_functions.py), step for step."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=True)


def add_lora(components, config: TrainingConfig, family: Family | None = None):
    """Inject the LoRA the network settings describe, its weights in the precision full_fp16/full_bf16 ask for."""
    p = config.precision
    lora_dtype = torch.float16 if p.full_fp16 else torch.bfloat16 if p.full_bf16 else torch.float32
    lrs = (family or family_for(components)).text_encoder_lrs(config)
    # a text encoder whose rate is 0 gets no adapters (SDXL can train one encoder and not the other)
    return inject_lora(components, config.network, train_unet=config.trains_unet, train_text_encoder=lrs["text_encoder"] > 0,
                       train_text_encoder_2=lrs["text_encoder_2"] > 0 if "text_encoder_2" in lrs else None, lora_dtype=lora_dtype)


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
            raise UserError(Msg.of("train.xformers_unavailable", detail=str(exc))) from None
    else:
        unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


def enable_gradient_checkpointing(components, config: TrainingConfig) -> None:
    components.unet.enable_gradient_checkpointing()
    for name, lr in family_for(components).text_encoder_lrs(config).items():
        if lr > 0:
            getattr(components, name).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def param_groups(handle, config: TrainingConfig, family: Family | None = None) -> list[dict]:
    """One group per trained part at its rate: the UNet, then each text encoder (SDXL: text_encoder_lr for the
    first, text_encoder_2_lr for the second, as sd-scripts' prepare_optimizer_params_with_multiple_te_lrs)."""
    groups = []
    if config.trains_unet:
        groups.append({"params": list(handle.unet_parameters()), "lr": config.effective_unet_lr})
    for name, lr in (family or FAMILIES["sd15"]).text_encoder_lrs(config).items():
        if lr > 0:
            groups.append({"params": list(getattr(handle, f"{name}_parameters")()), "lr": lr})
    return [g for g in groups if g["params"]]


def build_data(config: TrainingConfig, report: DatasetReport, components, accelerator: Accelerator, seed: int, weight_dtype,
               run: RunContext | None = None):
    latents = None
    if config.caches_latents:
        share = cache_latents(
            report.samples, components.vae, flip=config.dataset.flip_aug, to_disk=config.precision.cache_latents_to_disk,
            background=config.dataset.alpha_background, vae_id=f"{components.model_name}|{components.model_hash}|{config.model.vae}",
            device=accelerator.device, dtype=components.vae.dtype, rank=accelerator.process_index, world=accelerator.num_processes,
            seed=seed, bucketed=config.buckets.enable_bucket, masks=config if uses_masks(config) else None, run=run,
        )
        latents = join_shares(share, accelerator)
    dataset = TrainDataset(report.samples, config, seed, latents, size_conditioning=family_for(components).size_conditioning)
    sampler = EpochBatchSampler(report.samples, config.training.train_batch_size, seed, accelerator.process_index, accelerator.num_processes)
    return build_loader(dataset, sampler, config), sampler


def build_trainer(config: TrainingConfig, run_dir: Path, accelerator: Accelerator, seed: int, run: RunContext | None = None) -> Trainer:
    # a dataset config's resolution, batch size, bucket and caption settings are the run's (the check applies the same)
    config = with_dataset_config(config)
    check_optimizer_available(config)
    check_text_cache_allowed(config)
    report = plan_dataset(config, accelerator.num_processes)
    if run is not None:  # a stop asked while the process started (torch's import) ends here, before the model loads
        run.check_stop()
        run.phase_progress("loading_model")
    components, handle, weight_dtype = load_and_adapt_models(config, accelerator)
    if run is not None:
        run.check_stop()
    family = family_for(components)
    groups = param_groups(handle, config, family)
    optimizer = build_optimizer(config, groups)
    lr_scheduler = build_lr_scheduler(config, optimizer, report.steps.total_steps)
    views, optimizer = prepare_models(accelerator, components, config, optimizer, family)
    loader, sampler = build_data(config, report, components, accelerator, seed, weight_dtype, run=run)
    static_text = not family.trains_text(config) and captions_static(config.dataset)
    t = Trainer(
        config=config, run_dir=run_dir, accelerator=accelerator, report=report, seed=seed, components=components,
        handle=handle, unet=views["unet"], text_encoder=views["text_encoder"], params=[p for g in groups for p in g["params"]],
        optimizer=optimizer, lr_scheduler=lr_scheduler, loader=loader, sampler=sampler, weight_dtype=weight_dtype,
        text_cache=TextCache() if static_text else None, run=run if run is not None else RunContext(Path(run_dir)),
        text_encoder_2=views.get("text_encoder_2"), family=family,
    )
    t.validation = build_validation(config, report.validation, family.size_conditioning)
    fill_text_cache(t)  # precision.cache_text_encoder_outputs: every caption encoded now (and kept on disk)
    return t


def check_optimizer_available(config: TrainingConfig) -> None:
    """Fail before loading any model when the optimizer cannot be built (e.g. 8-bit on a CPU)."""
    from loratrainer.train.optimizers import optimizer_spec

    optimizer_spec(config.optimizer.optimizer)


def prepare_models(accelerator: Accelerator, components, config: TrainingConfig, optimizer, family: Family | None = None):
    """Wrap what trains (DDP with several processes); the scheduler is stepped by us, once per step. Returns the
    views the loop calls by name ("unet", "text_encoder", ...) and the optimizer."""
    family = family or family_for(components)
    trains = {"unet": config.trains_unet, **{n: lr > 0 for n, lr in family.text_encoder_lrs(config).items()}}
    views = {name: getattr(components, name) for name in trains}
    trained = [name for name, on in trains.items() if on]
    *prepared, optimizer = accelerator.prepare(*(views[n] for n in trained), optimizer)
    views.update(zip(trained, prepared))
    if config.precision.full_fp16 and accelerator.scaler is not None:
        allow_fp16_gradients(accelerator)
    for name, on in trains.items():
        views[name].train() if on else views[name].eval()
    return views, optimizer


def allow_fp16_gradients(accelerator: Accelerator) -> None:
    """full_fp16 keeps the LoRA weights in fp16, whose gradients GradScaler refuses to unscale; sd-scripts
    lets it (train_util.patch_accelerator_for_fp16_training), and so do we."""
    unscale = accelerator.scaler._unscale_grads_

    def unscale_fp16_too(optimizer, inv_scale, found_inf, allow_fp16):
        return unscale(optimizer, inv_scale, found_inf, True)

    accelerator.scaler._unscale_grads_ = unscale_fp16_too
