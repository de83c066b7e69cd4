"""The training-config schema: the one place each setting exists.

Every setting has its name, type, default, allowed range, its English label (`title`), a one-line help text
(`description`) and how a form shows it (`ui(...)`) here; the Korean label and help are in i18n/ko.json. The GUI form, the
CLI, presets, the Kohya import/export and the trainer all read this module. Field names follow the Kohya GUI
where Kohya has the setting, so that users recognise them (and a field's leaf name is unique across groups, so
`network_dim=16` and `network.network_dim=16` mean the same thing on the command line).

Here: the settings groups, `TrainingConfig`, its cross-field rules and derived values. The field catalogue
(`field_specs`, `resolve_key`, `with_values`, ...) is in `config.fields`, our JSON files (`load_config`,
`save_config`, migrations) in `config.files`; the package re-exports all three (`from loratrainer.config import
TrainingConfig, load_config`). This module imports only the leaf modules `messages`, `optimizer_table` and `samplers`, so
dependencies point one way (schema <- fields <- files <- kohya <- presets).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loratrainer.messages import Label, Msg, MsgError, define
from loratrainer.config.optimizer_table import ADAPTIVE, KNOWN_OPTIMIZERS, MIN_ADAPTIVE_LR, max_learning_rate  # noqa: F401  (KNOWN_OPTIMIZERS: the form's choices)
from loratrainer.config.samplers import SAMPLER_NAMES


SCHEMA_VERSION = 2

Scheduler = Literal[
    "constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial", "adafactor"
]
Precision = Literal["no", "fp16", "bf16"]
SavePrecision = Literal["float", "fp16", "bf16"]
# The sampler names are config/samplers.py's (with the scheduler each one means), not a second list here.
Sampler = Literal[SAMPLER_NAMES]  # type: ignore[valid-type]

# Notes about what a config will do (TrainingConfig.note_messages): the CLI prints them, the GUI shows them.
define({
    "config.note.unet_only": "{text_encoder_lr} is 0: this is a UNet-only LoRA (no lora_te_ weights are trained or saved).",
    "config.note.text_encoder_only": "{unet_lr} is 0: only the text encoder is trained.",
    "config.note.max_steps": "{max_steps} = {value} overrides the epoch count ({epochs}).",
    "config.note.fp16_saved_bf16": "{mixed} fp16 with {save} bf16: fine, but fp16 is the more widely loadable file.",
})
# Settings that are allowed but probably not meant (TrainingConfig.warning_messages): the GUI asks before Start
# ("Start anyway"), `loratrainer train` prints them and starts.
define({
    "config.warn.lr_high": "{setting} is {value}: far above what {optimizer} usually takes (at most about {limit}). Was a decimal comma typed (0,0001)?",
    "config.warn.lr_low": "{setting} is {value}: {optimizer} adapts the step size itself and expects about 1.0.",
    "config.warn.warmup_ignored": "{scheduler} is constant, which has no warm-up: {warmup} is ignored (choose constant_with_warmup).",
})

# What the validators and cross-field rules say: English here (the CLI's text), Korean in i18n/ko.json.
define({
    "config.plain_file_name": 'must be a plain file name (no / \\ : * ? " < > |)',
    "config.extension_empty": "must not be empty (e.g. .txt)",
    "config.extension_bad": "must be a file extension such as .txt",
    "config.hex_colour": "must be a hex colour such as #ffffff",
    "config.resolution_format": "must be 'width,height' such as 512,512",
    "config.resolution_range": "width and height must be between 64 and 8192",
    "config.unknown_optimizer": "unknown optimizer; choose one of {choices} or a module.Class path",
    "config.optimizer_arg_not_kv": "optimizer argument {item!r} is not key=value",
    "config.optimizer_arg_name": "optimizer argument name {key!r} is not valid",
    "config.main_process_ip": "must be an IP address or host name such as 192.168.1.10",
    "config.machines_need_ip": "{machines} is {count}: set {ip} (the address of the machine of rank 0)",
    "config.machine_rank_range": "{rank} ({value}) must be below {machines} ({count})",
    "config.processes_per_machine": "{processes} ({value}) is the total over all machines: it must be a multiple of {machines} ({count})",
    "config.gpu_ids": "must be GPU numbers separated by commas, e.g. 0,1",
    "config.augmentation_vs_cache": "{aug} changes the image every step, so latents cannot be cached: turn off {cache} and {cache_disk}, or the augmentation",
    "config.nothing_trains": "{unet_lr} and {text_encoder_lr} are both 0: nothing would be trained",
    "config.bucket_range": "{min_reso} ({min_value}) is larger than {max_reso} ({max_value})",
    "config.full_needs_mixed": "{full} needs {mixed} = {precision}",
    "config.full_both": "{full_fp16} and {full_bf16} exclude each other",
    "config.gpu_ids_count": "{gpu_ids} lists {count} GPU(s) for {processes} processes",
    "config.adafactor_scheduler": "{scheduler} 'adafactor' works only with optimizer Adafactor (not {optimizer})",
    "config.lokr_factor": "must be -1 (near the square root) or a positive number",
    "config.rank_over_1024": "{setting} above 1024 is only allowed when {lora_type} is LoKr (where it means full matrices); set 1024 or less",
    "config.dora_not_lycoris": "{setting} works with Standard and LoCon only (peft has no DoRA for {kind}); turn it off or choose LoCon",
    "config.dora_diffusers": "{setting} cannot hold {dora}'s magnitude vectors (diffusers' LoRA layout has none); turn one of them off",
    "config.lycoris_only": "{setting} works only when {lora_type} is LoHa or LoKr; set it back to its default for {kind}",
    "config.lokr_tucker": "{setting} is not available for LoKr: ComfyUI cannot apply LoKr's Tucker tensors (lokr_t2) and would skip those modules; turn it off",
    "config.not_for_lycoris": "{setting} is not available for {kind} (peft's LoHa/LoKr have no such option); set it to {default}",
})

_RESOLUTION = re.compile(r"^\s*(\d+)\s*(?:[,x]\s*(\d+))?\s*$")


def ui(*, basic: int | None = None, lines: int | None = None, browse: Literal["model", "file", "dir"] | None = None,
       check: Literal["model", "train", "reg", "output", "log"] | None = None) -> dict[str, Any]:
    """How a form shows a setting, kept on the field (`json_schema_extra=ui(...)`) beside its label and help:
    `basic`: its place among the Basic settings (the Korean tutorial's, in its order; the rest are Advanced);
    `lines`: a multi-line text box of that height; `browse`: a file browser beside it ("model": files and
    folders, "file", "dir"); `check`: the as-you-type path check it gets (loratrainer.gui.filebrowser.check_path)."""
    hints = {"basic": basic, "lines": lines, "browse": browse, "check": check}
    return {"ui": {k: v for k, v in hints.items() if v is not None}}


class _Group(BaseModel):
    """Base of every settings group: unknown keys are an error, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Group):
    pretrained_model_name_or_path: str = Field(
        # runwayml/stable-diffusion-v1-5 was removed from the hub in 2024; this is its maintained copy
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        title="Pretrained model", json_schema_extra=ui(basic=1, browse="model", check="model"), description="Base model (SD1.5 or SDXL, Pony, Illustrious, NoobAI): a diffusers folder, a .safetensors/.ckpt checkpoint file, or a hub id.",
    )
    # The family is read from the model's own weights and config, never from its file name; a config file that
    # names one (Kohya's `sdxl`) while the model is another is refused before a run in one sentence.
    model_family: Literal["auto", "sd15", "sdxl"] = Field(
        "auto", title="Model family", description="auto = read it from the model's own weights; sd15 or sdxl = the model must be that family.",
    )
    vae: str = Field("", title="VAE", json_schema_extra=ui(browse="file"), description="Optional separate VAE (.safetensors/.ckpt file or diffusers folder); empty = the model's own.")
    v_parameterization: bool = Field(False, title="V-parameterization", description="The base model predicts v (v-prediction fine-tunes); off for ordinary SD1.5.")
    # 0 is the Kohya GUI's "no clip skip" (its slider starts at 0; lora_gui.py passes no --clip_skip for 0): the last layer
    clip_skip: int = Field(1, ge=0, le=12, title="Clip skip", description="Use the text encoder's n-th layer from the end (1 = last, as 0; 2 is common for anime models).")
    max_token_length: Literal[75, 150, 225] = Field(75, title="Max token length", description="Caption length in tokens the text encoder sees: 75, 150 or 225.")

    @field_validator("max_token_length", mode="before")
    @classmethod
    def _token_length_number(cls, v: Any) -> Any:
        # Literal choices do not take the numeric strings older files hold ("150"); ints and other values pass on.
        if isinstance(v, str) and v.strip().isdigit():
            return int(v.strip())
        return v


class FolderSettings(_Group):
    train_data_dir: str = Field("", title="Image folder", json_schema_extra=ui(browse="dir", check="train"), description="The image folder: the PARENT of concept folders named <repeats>_<name>.")
    reg_data_dir: str = Field("", title="Regularisation folder", json_schema_extra=ui(browse="dir", check="reg"), description="Optional regularisation images folder, same <repeats>_<name> layout.")
    dataset_config: str = Field("", title="Dataset config (.toml)", json_schema_extra=ui(browse="file"), description=(
        "Optional: a Kohya/sd-scripts dataset config (.toml with [[datasets]] and [[datasets.subsets]]). When set, it names "
        "the image folders, repeats and class tokens instead of the image and regularisation folders, and its resolution, "
        "batch size, bucket and caption settings replace these settings (docs/dataset.md)."))
    validation_data_dir: str = Field("", title="Validation folder", json_schema_extra=ui(browse="dir"), description="Optional folder of validation images (same <repeats>_<name> layout): used only for validation loss, never trained on.")
    output_dir: str = Field("", title="Output folder (model)", json_schema_extra=ui(browse="dir", check="output"), description="Where LoRA files, sample images and the run's config are written (Kohya's 'model' folder).")
    logging_dir: str = Field("", title="Logging folder (log)", json_schema_extra=ui(browse="dir", check="log"), description="Where logs and TensorBoard files are written (Kohya's 'log' folder); empty = <output>/log.")
    output_name: str = Field("last", min_length=1, max_length=200, title="Output name", json_schema_extra=ui(basic=2), description="File name of the LoRA, without extension.")

    @field_validator("output_name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # The name becomes a file name: path separators or '..' would write outside the output folder.
        if any(c in v for c in '/\\:*?"<>|\0') or v.strip() in {"", ".", ".."}:
            raise MsgError(Msg.of("config.plain_file_name"))
        return v


class DatasetSettings(_Group):
    caption_extension: str = Field(".txt", title="Caption extension", description="Caption file extension next to each image (a.png -> a.txt).")
    shuffle_caption: bool = Field(False, title="Shuffle caption", description="Shuffle comma-separated caption tags each step (after the kept tokens).")
    keep_tokens: int = Field(0, ge=0, le=225, title="Keep n tokens", description="Keep the first n comma-separated tags in place when shuffling or dropping.")
    caption_dropout_rate: float = Field(0.0, ge=0.0, le=1.0, title="Caption dropout rate", description="Probability of training a sample with an empty caption.")
    caption_dropout_every_n_epochs: int = Field(0, ge=0, title="Caption dropout every n epochs", description="Drop all captions every n-th epoch (0 = never).")
    caption_tag_dropout_rate: float = Field(0.0, ge=0.0, le=1.0, title="Tag dropout rate", description="Probability of dropping each comma-separated tag.")
    flip_aug: bool = Field(False, title="Flip augmentation", description="Randomly mirror images left-right (doubles variety; avoid for asymmetric subjects or text).")
    color_aug: bool = Field(False, title="Colour augmentation", description="Randomly shift hue; makes latent caching impossible.")
    random_crop: bool = Field(False, title="Random crop", description="Random instead of centre crop into the bucket; makes latent caching impossible.")
    prior_loss_weight: float = Field(1.0, ge=0.0, le=10.0, title="Prior loss weight", description="Loss weight of regularisation images.")
    undersized_images: Literal["skip", "refuse"] = Field(
        "skip", title="Undersized images", description="Images smaller than the bucket step: skip them with a warning, or refuse to train."
    )
    # sd-scripts' --masked_loss / --conditioning_data_dir / --alpha_mask (library/train_util.py, train_network.py):
    # the loss of each latent pixel is weighted by a mask (train/masks.py)
    masked_loss: bool = Field(False, title="Masked loss", description="Weight the loss by a mask per image (white = trained, black = ignored), read from the mask folder.")
    conditioning_data_dir: str = Field("", title="Mask folder", json_schema_extra=ui(browse="dir"), description="Folder with one mask image per training image, named like the image (a.png -> a.png or a.jpg); needed by masked loss unless the alpha channel is the mask.")
    alpha_mask: bool = Field(False, title="Alpha channel as mask", description="Weight the loss by each image's own transparency (opaque = trained, transparent = ignored); images without alpha train fully.")
    alpha_background: str = Field("#ffffff", title="Transparent background colour", description="Colour that transparent pixels are composited onto (hex).")
    max_data_loader_n_workers: int = Field(0, ge=0, le=64, title="Data loader workers", description="Worker processes loading images (0 = in the training process).")
    persistent_data_loader_workers: bool = Field(False, title="Persistent data loader workers", description="Keep data loader workers alive between epochs.")

    @field_validator("caption_extension")
    @classmethod
    def _dot_extension(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise MsgError(Msg.of("config.extension_empty"))
        if any(c in v for c in "/\\\0"):
            raise MsgError(Msg.of("config.extension_bad"))
        return v if v.startswith(".") else "." + v

    @field_validator("alpha_background")
    @classmethod
    def _hex_colour(cls, v: str) -> str:
        if not re.fullmatch(r"#?[0-9a-fA-F]{6}", v.strip()):
            raise MsgError(Msg.of("config.hex_colour"))
        return "#" + v.strip().lstrip("#").lower()


class BucketSettings(_Group):
    max_resolution: str = Field("512,512", title="Max resolution", json_schema_extra=ui(basic=15), description="Training resolution as 'width,height' (or one number for a square).")
    enable_bucket: bool = Field(True, title="Enable buckets", json_schema_extra=ui(basic=16), description="Aspect-ratio buckets: train images of different shapes without squashing them.")
    min_bucket_reso: int = Field(256, ge=64, le=4096, title="Minimum bucket resolution", description="Smallest bucket side in pixels.")
    max_bucket_reso: int = Field(2048, ge=64, le=8192, title="Maximum bucket resolution", description="Largest bucket side in pixels.")
    bucket_reso_steps: int = Field(64, ge=1, le=512, title="Bucket resolution steps", description="Bucket sides are multiples of this (64 recommended for SD1.5).")
    bucket_no_upscale: bool = Field(True, title="Don't upscale bucket resolution", description="Never enlarge small images: their bucket is their own size rounded down.")

    @field_validator("max_resolution", mode="before")
    @classmethod
    def _resolution(cls, v: Any) -> str:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer():
            v = str(int(v))
        if isinstance(v, (list, tuple)) and len(v) == 2:
            v = f"{v[0]},{v[1]}"
        m = _RESOLUTION.match(str(v))
        if not m:
            raise MsgError(Msg.of("config.resolution_format"))
        w = int(m.group(1))
        h = int(m.group(2) or m.group(1))
        if not (64 <= w <= 8192 and 64 <= h <= 8192):
            raise MsgError(Msg.of("config.resolution_range"))
        return f"{w},{h}"

    @property
    def resolution(self) -> tuple[int, int]:
        w, h = self.max_resolution.split(",")
        return int(w), int(h)


class NetworkSettings(_Group):
    lora_type: Literal["Standard", "LoCon", "LoHa", "LoKr"] = Field(
        "Standard",
        title="LoRA type",
        description="Standard adapts attention and feed-forward layers; LoCon also the convolution blocks (3x3 "
        "convolutions, time-embedding and shortcut layers); LoHa and LoKr (LyCORIS) adapt the same layers as LoCon "
        "with Hadamard / Kronecker products.",
    )
    # le=100000: LyCORIS LoKr presets ask for full matrices with a huge rank (the Kohya GUI's 100000); the other
    # types are held to 1024 by a cross-field rule
    network_dim: int = Field(8, ge=1, le=100000, title="Network rank (dimension)", json_schema_extra=ui(basic=8), description="LoRA rank: capacity and file size (8-32 for styles and faces, up to 128 for complex concepts).")
    # 0 = the rank, as in sd-scripts networks/lora.py and LyCORIS (`if alpha is None or alpha == 0: alpha = lora_dim`)
    network_alpha: float = Field(1.0, ge=0, le=100000, title="Network alpha", json_schema_extra=ui(basic=9), description="Scales updates by alpha/rank; equal to the rank is a good start (0 = the rank).")
    conv_dim: int = Field(1, ge=1, le=100000, title="Convolution rank", description="LoCon, LoHa, LoKr: rank of the 3x3 convolution adapters.")
    conv_alpha: float = Field(1.0, ge=0, le=100000, title="Convolution alpha", description="LoCon, LoHa, LoKr: alpha of the 3x3 convolution adapters (0 = the convolution rank).")
    network_dropout: float = Field(0.0, ge=0.0, le=1.0, title="Network dropout", description="Dropout on the LoRA's hidden activations.")
    factor: int = Field(-1, ge=-1, le=8192, title="LoKr factor", description="LoKr: split each weight's sides near this number for the Kronecker product (-1 = near the square root).")
    decompose_both: bool = Field(False, title="LoKr: decompose both", description="LoKr: also make the smaller Kronecker factor low-rank.")
    use_tucker: bool = Field(False, title="Use Tucker decomposition", description="LoHa: Tucker (CP) decomposition of the 3x3 convolution adapters (fewer parameters).")
    rank_dropout: float = Field(0.0, ge=0.0, le=1.0, title="Rank dropout", description="LoHa, LoKr: probability of dropping each output row of the update during training.")
    module_dropout: float = Field(0.0, ge=0.0, le=1.0, title="Module dropout", description="LoHa, LoKr: probability of skipping a whole module's update for a step.")
    network_weights: str = Field("", title="Start from LoRA weights", json_schema_extra=ui(browse="file"), description="Start from this existing LoRA .safetensors file (continues its training).")
    # LyCORIS's dora_wd (lycoris/modules/locon.py weight_decompose), trained with peft's use_dora: a magnitude per
    # output channel (LyCORIS's default wd_on_output), saved as LyCORIS's `dora_scale` tensors
    dora_wd: bool = Field(False, title="DoRA (weight-decomposed)", description="Standard, LoCon: DoRA, which also learns each output channel's magnitude (saved as LyCORIS dora_scale; slower steps).")
    scale_weight_norms: float = Field(0.0, ge=0.0, le=100.0, title="Scale weight norms", description="Max-norm regularisation: scale down any module whose LoRA update norm exceeds this (0 = off, 1 typical).")

    @field_validator("factor")
    @classmethod
    def _factor(cls, v: int) -> int:
        if v == 0:
            raise MsgError(Msg.of("config.lokr_factor"))
        return v

    def alphas_resolved(self) -> "NetworkSettings":
        """These settings with an alpha of 0 replaced by its rank, as the network is built (0 means alpha = rank)."""
        return self.model_copy(update={"network_alpha": self.network_alpha or float(self.network_dim),
                                       "conv_alpha": self.conv_alpha or float(self.conv_dim)})


LYCORIS_TYPES = ("LoHa", "LoKr")


class OptimizerSettings(_Group):
    optimizer: str = Field("AdamW8bit", title="Optimizer", json_schema_extra=ui(basic=10), description="AdamW8bit saves memory; AdamW is the safe choice; or any module.Class.")
    optimizer_args: str = Field("", title="Optimizer extra arguments", description="Extra optimizer arguments as key=value pairs separated by spaces (e.g. weight_decay=0.01).")
    learning_rate: float = Field(1e-4, ge=0.0, le=10.0, title="Learning rate", json_schema_extra=ui(basic=11), description="Base learning rate; used for the UNet and text encoder when their own rate is empty.")
    unet_lr: float | None = Field(1e-4, ge=0.0, le=10.0, title="UNet learning rate", json_schema_extra=ui(basic=12), description="UNet learning rate (0 = do not train the UNet; empty = learning rate).")
    text_encoder_lr: float | None = Field(1e-4, ge=0.0, le=10.0, title="Text encoder learning rate", json_schema_extra=ui(basic=13), description="Text encoder learning rate (0 = UNet-only LoRA; empty = learning rate).")
    text_encoder_2_lr: float | None = Field(None, ge=0.0, le=10.0, title="Text encoder 2 learning rate", description="SDXL only: the second text encoder's (OpenCLIP ViT-bigG) learning rate; empty = the text encoder learning rate.")
    lr_scheduler: Scheduler = Field("cosine", title="LR scheduler", json_schema_extra=ui(basic=14), description="How the learning rate changes over the run.")
    lr_warmup: float = Field(10.0, ge=0.0, le=100.0, title="LR warm-up (% of steps)", description="Warm-up as a percentage of all steps (ignored when warm-up steps is set).")
    lr_warmup_steps: int = Field(0, ge=0, title="LR warm-up steps", description="Warm-up in steps; overrides the percentage when above 0.")
    lr_scheduler_num_cycles: int = Field(1, ge=1, le=1000, title="LR number of cycles", description="Restarts for cosine_with_restarts.")
    lr_scheduler_power: float = Field(1.0, gt=0.0, le=10.0, title="LR power", description="Power of the polynomial scheduler.")
    max_grad_norm: float = Field(1.0, ge=0.0, title="Max gradient norm", description="Clip gradients to this norm (0 = no clipping).")

    @field_validator("optimizer")
    @classmethod
    def _optimizer_name(cls, v: str) -> str:
        v = v.strip()
        if v in KNOWN_OPTIMIZERS or re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", v):
            return v
        raise MsgError(Msg.of("config.unknown_optimizer", choices=", ".join(KNOWN_OPTIMIZERS)))

    @field_validator("optimizer_args")
    @classmethod
    def _key_values(cls, v: str) -> str:
        parse_optimizer_args(v)
        return v.strip()


class TrainingSettings(_Group):
    """How long and on what: batch size, epochs or steps, gradient accumulation, the seed."""

    train_batch_size: int = Field(1, ge=1, le=256, title="Train batch size", json_schema_extra=ui(basic=3), description="Images per step; 1-2 for 8 GB of VRAM or less.")
    epoch: int = Field(1, ge=1, le=100000, title="Epochs", json_schema_extra=ui(basic=4), description="Passes over the dataset (each image x its repeats).")
    max_train_steps: int = Field(0, ge=0, title="Max train steps", description="Stop after this many steps; 0 = use the epochs (overrides them when above 0).")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, title="Gradient accumulation steps", description="Add up gradients over n batches before each optimizer step.")
    seed: int = Field(0, ge=0, le=2**32 - 1, title="Seed", description="Random seed; 0 = pick one and record it with the run.")
    # Validation loss as sd-scripts defines it (its validation doc, train_network.py; the flags keep its names, so
    # a Kohya GUI file's additional_parameters import them): the held-out images are never trained on.
    validation_split: float = Field(0.0, ge=0.0, le=1.0, title="Validation split", description="Share of each training concept folder held out for validation loss (0.1 = 10%); never trained on. 0 = none.")
    validation_seed: int = Field(0, ge=0, le=2**32 - 1, title="Validation seed", description="Seed of the validation split and of the validation noise; 0 = the training seed.")
    validate_every_n_steps: int = Field(0, ge=0, title="Validate every N steps", description="Also compute the validation loss every N steps; 0 = only at epoch ends.")
    validate_every_n_epochs: int = Field(1, ge=1, title="Validate every N epochs", description="Compute the validation loss at the end of every N-th epoch (1 = every epoch).")
    max_validation_steps: int = Field(0, ge=0, title="Max validation steps", description="Validate on at most this many batches; 0 = all validation images.")


class NoiseSettings(_Group):
    """The noise added to the latents (offset, multi-resolution pyramid, input perturbation)."""

    noise_offset: float = Field(0.0, ge=0.0, le=1.0, title="Noise offset", description="Noise offset: helps very dark or bright images (0.05-0.1).")
    multires_noise_iterations: int = Field(0, ge=0, le=64, title="Multires noise iterations", description="Multi-resolution (pyramid) noise iterations (0 = off, 6-10 typical).")
    multires_noise_discount: float = Field(0.3, ge=0.0, le=1.0, title="Multires noise discount", description="Discount of each multi-resolution noise level.")
    ip_noise_gamma: float = Field(0.0, ge=0.0, le=1.0, title="IP noise gamma", description="Input-perturbation noise (0 = off, about 0.1).")
    zero_terminal_snr: bool = Field(False, title="Zero terminal SNR", description="Rescale the noise schedule so the last timestep is pure noise (v-prediction fine-tunes such as NoobAI-XL V-Pred).")


class LossSettings(_Group):
    """How the loss is measured and weighted per timestep (loss type, Huber threshold, min-SNR)."""

    min_snr_gamma: float = Field(0.0, ge=0.0, le=100.0, title="Min SNR gamma", description="Min-SNR loss weighting gamma (0 = off, 5 recommended).")
    loss_type: Literal["l2", "huber", "smooth_l1"] = Field("l2", title="Loss type", description="Loss between predicted and true noise.")
    huber_c: float = Field(0.1, gt=0.0, le=10.0, title="Huber C", description="Huber / smooth L1 loss threshold.")
    huber_schedule: Literal["constant", "exponential", "snr"] = Field(
        "snr", title="Huber schedule", description="How the Huber threshold varies with the timestep (Kohya's schedules; snr is Kohya's default)."
    )


class PrecisionSettings(_Group):
    mixed_precision: Precision = Field("fp16", title="Mixed precision", json_schema_extra=ui(basic=6), description="Compute precision: bf16 on RTX 30xx and newer, fp16 on older cards, no = fp32.")
    save_precision: SavePrecision = Field("fp16", title="Save precision", json_schema_extra=ui(basic=7), description="Precision of the saved LoRA file.")
    full_fp16: bool = Field(False, title="Full fp16 training", description="Keep the LoRA weights themselves in fp16 (less memory, less stable).")
    full_bf16: bool = Field(False, title="Full bf16 training", description="Keep the LoRA weights themselves in bf16 (less memory).")
    no_half_vae: bool = Field(False, title="No half VAE", description="Keep the VAE in fp32 (SDXL's own VAE overflows in fp16 and gives black latents; not needed with an fp16-fixed VAE).")
    fp8_base: bool = Field(False, title="fp8 base model", description="Store the frozen UNet weights in fp8 (float8_e4m3fn) to save memory; needs a recent torch and GPU.")
    cache_text_encoder_outputs: bool = Field(False, title="Cache text encoder outputs", description="Encode every caption once before training (UNet-only LoRAs with fixed captions; saves memory and time).")
    cache_text_encoder_outputs_to_disk: bool = Field(False, title="Cache text encoder outputs to disk", description="Also keep the cached text encoder outputs on disk next to the images, reused by later runs.")
    gradient_checkpointing: bool = Field(False, title="Gradient checkpointing", description="Recompute activations in the backward pass: much less VRAM, about 20-30 % slower.")
    attention: Literal["sdpa", "xformers", "none"] = Field("sdpa", title="Attention", description="Attention kernel: sdpa (PyTorch's, recommended), xformers if installed, or none.")
    cache_latents: bool = Field(True, title="Cache latents", description="Encode every image once with the VAE before training (faster, less VRAM).")
    cache_latents_to_disk: bool = Field(False, title="Cache latents to disk", description="Also keep the cached latents on disk next to the images, reused by later runs.")
    channels_last: bool = Field(
        False, title="Channels-last memory layout", description="Keep the UNet in channels-last memory layout: faster convolutions on recent GPUs with fp16/bf16; same results."
    )
    dynamo_backend: Literal["no", "eager", "aot_eager", "inductor", "cudagraphs"] = Field(
        "no", title="Compile the UNet (torch.compile backend)", description="Compile the UNet with torch.compile and this backend (no = off; the Kohya GUI's Dynamo backend, sd-scripts' --torch_compile --dynamo_backend): the first steps are slow, later ones faster, same results; inductor needs a C++ compiler on the CPU."
    )


class SamplingSettings(_Group):
    sample_every_n_steps: int = Field(0, ge=0, title="Sample every n steps", json_schema_extra=ui(basic=19), description="Render sample images every n steps (0 = off).")
    sample_every_n_epochs: int = Field(0, ge=0, title="Sample every n epochs", json_schema_extra=ui(basic=18), description="Render sample images every n epochs (0 = off; wins over steps).")
    sample_at_first: bool = Field(False, title="Sample before training", description="Also render samples before the first step, to compare against.")
    sample_sampler: Sampler = Field("euler_a", title="Sample sampler", description="Sampler for sample images (a prompt's --ss overrides it).")
    sample_prompts: str = Field("", title="Sample prompts", json_schema_extra=ui(basic=20, lines=4), description="One prompt per line, Kohya syntax: text --n negative --w 512 --h 512 --s 28 --l 7 --d seed.")


class SavingSettings(_Group):
    save_model_as: Literal["safetensors"] = Field("safetensors", title="Save model as", description="File format of the LoRA (safetensors, which every UI loads).")
    save_every_n_epochs: int = Field(1, ge=0, title="Save every n epochs", json_schema_extra=ui(basic=5), description="Save a LoRA file every n epochs (0 = only the final file).")
    save_every_n_steps: int = Field(0, ge=0, title="Save every n steps", description="Also save every n steps (0 = off).")
    save_last_n_epochs: int = Field(0, ge=0, title="Keep last n epoch files", description="Keep only the newest n per-epoch files (0 = keep all).")
    save_last_n_steps: int = Field(0, ge=0, title="Keep last n steps of files", description="Keep only the per-step files of the last n steps (0 = keep all).")
    save_state: bool = Field(False, title="Save training state", description="Also save the full training state at each save and at stop, so the run can be resumed.")
    resume: str = Field("", title="Resume from saved state", json_schema_extra=ui(browse="dir"), description="Resume from this saved state folder (continues steps, epochs, schedule and file numbering).")
    save_diffusers_format: bool = Field(False, title="Also save in diffusers format", description="Also write the final LoRA in diffusers/peft format.")
    existing_output: Literal["refuse", "rename"] = Field(
        "refuse", title="If the output file exists", description="When a LoRA file of this name exists: refuse to start, or add a number to the new name."
    )


class LaunchSettings(_Group):
    # Names and meanings are accelerate launch's (and the Kohya GUI's "Accelerate launch" panel's, kohya_ss
    # kohya_gui/class_accelerate_launch.py): num_processes is the total over all machines.
    num_cpu_threads_per_process: int = Field(2, ge=1, le=256, title="CPU threads per core", json_schema_extra=ui(basic=17), description="CPU threads per training process.")
    num_processes: int = Field(1, ge=1, le=64, title="Number of processes", description="Training processes in total, over all machines (one per GPU).")
    num_machines: int = Field(
        1, ge=1, le=64, title="Number of machines", description="Machines taking part. Each one runs the same config with its own machine rank."
    )
    multi_gpu: bool = Field(False, title="Multi GPU", description="Train on several GPUs of this machine.")
    gpu_ids: str = Field("", title="GPU IDs", description="Which GPUs to use, e.g. 0,1 (empty = all).")
    machine_rank: int = Field(
        0, ge=0, le=63, title="Machine rank", description="This machine's number, 0 to number of machines - 1. Machine 0 writes the LoRA files, samples and progress."
    )
    main_process_ip: str = Field("", title="Main process IP", description="IP address of the machine of rank 0 (needed with several machines).")
    main_process_port: int = Field(0, ge=0, le=65535, title="Main process port", description="Port for the processes to talk over (0 = accelerate's default).")
    rdzv_backend: Literal["static", "c10d"] = Field(
        "static", title="Rendezvous backend", description="How the machines find each other (accelerate's rendezvous backend): static or c10d."
    )

    @field_validator("main_process_ip")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v and not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", v):
            raise MsgError(Msg.of("config.main_process_ip"))
        return v

    @field_validator("gpu_ids")
    @classmethod
    def _gpu_ids(cls, v: str) -> str:
        v = v.replace(" ", "")
        if v and not re.fullmatch(r"\d+(,\d+)*", v):
            raise MsgError(Msg.of("config.gpu_ids"))
        return v


class MetadataSettings(_Group):
    metadata_title: str = Field("", title="Title", description="Title stored in the LoRA file (shown by A1111 and ComfyUI).")
    metadata_author: str = Field("", title="Author", description="Author stored in the LoRA file.")
    metadata_description: str = Field("", title="Description", json_schema_extra=ui(lines=3), description="Description stored in the LoRA file.")
    metadata_license: str = Field("", title="License", description="License stored in the LoRA file.")
    metadata_tags: str = Field("", title="Tags", description="Comma-separated tags stored in the LoRA file.")
    metadata_trigger_phrase: str = Field("", title="Trigger phrase", description="The words that call up the LoRA in a prompt.")
    training_comment: str = Field("", title="Training comment", json_schema_extra=ui(lines=2), description="Free comment stored in the LoRA file.")


GROUPS: dict[str, type[_Group]] = {
    "model": ModelSettings,
    "folders": FolderSettings,
    "dataset": DatasetSettings,
    "buckets": BucketSettings,
    "network": NetworkSettings,
    "optimizer": OptimizerSettings,
    "training": TrainingSettings,
    "noise": NoiseSettings,
    "loss": LossSettings,
    "precision": PrecisionSettings,
    "sampling": SamplingSettings,
    "saving": SavingSettings,
    "launch": LaunchSettings,
    "metadata": MetadataSettings,
}


class TrainingConfig(BaseModel):
    """A whole run's settings. `TrainingConfig()` is the default, valid configuration."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: int = Field(SCHEMA_VERSION, description="Version of this file's layout (migrated on load).")
    model: ModelSettings = Field(default_factory=ModelSettings)
    folders: FolderSettings = Field(default_factory=FolderSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    buckets: BucketSettings = Field(default_factory=BucketSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    noise: NoiseSettings = Field(default_factory=NoiseSettings)
    loss: LossSettings = Field(default_factory=LossSettings)
    precision: PrecisionSettings = Field(default_factory=PrecisionSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    saving: SavingSettings = Field(default_factory=SavingSettings)
    launch: LaunchSettings = Field(default_factory=LaunchSettings)
    metadata: MetadataSettings = Field(default_factory=MetadataSettings)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "TrainingConfig":
        for rule in CROSS_FIELD_RULES:
            message = rule(self)
            if message:
                raise MsgError(message)
        return self

    # -- derived values, computed in one place ----------------------------------------------------------

    @property
    def effective_unet_lr(self) -> float:
        o = self.optimizer
        return o.learning_rate if o.unet_lr is None else o.unet_lr

    @property
    def effective_text_encoder_lr(self) -> float:
        o = self.optimizer
        return o.learning_rate if o.text_encoder_lr is None else o.text_encoder_lr

    @property
    def trains_unet(self) -> bool:
        return self.effective_unet_lr > 0

    @property
    def trains_text_encoder(self) -> bool:
        return self.effective_text_encoder_lr > 0

    @property
    def caches_latents(self) -> bool:
        return self.precision.cache_latents or self.precision.cache_latents_to_disk

    def warmup_steps(self, total_steps: int) -> int:
        o = self.optimizer
        if o.lr_warmup_steps > 0:
            return o.lr_warmup_steps
        # As the Kohya GUI computes it (round(lr_warmup * max_train_steps / 100), Python's half-to-even round),
        # so an imported config warms up for the same number of steps.
        return round(total_steps * o.lr_warmup / 100.0)

    def summary(self) -> list[str]:
        """Plain-language notes and warnings about what this configuration will do, shown before a run starts
        (English, naming settings by path: the CLI's text)."""
        return [str(note) for note in self.summary_messages()]

    def summary_messages(self) -> list[Msg]:
        """The same as coded messages: the GUI says them in the page's language with the on-screen labels."""
        return self.note_messages() + self.warning_messages()

    def note_messages(self) -> list[Msg]:
        """What this configuration will do that is worth knowing, though it is surely meant."""
        notes: list[Msg] = []
        if not self.trains_text_encoder:
            notes.append(Msg.of("config.note.unet_only", text_encoder_lr=Label("optimizer.text_encoder_lr")))
        if not self.trains_unet:
            notes.append(Msg.of("config.note.text_encoder_only", unet_lr=Label("optimizer.unet_lr")))
        if self.training.max_train_steps > 0:
            notes.append(Msg.of("config.note.max_steps", max_steps=Label("training.max_train_steps"), value=self.training.max_train_steps,
                                epochs=Label("training.epoch")))
        if self.precision.mixed_precision == "fp16" and self.precision.save_precision == "bf16":
            notes.append(Msg.of("config.note.fp16_saved_bf16", mixed=Label("precision.mixed_precision"), save=Label("precision.save_precision")))
        return notes

    def warning_messages(self) -> list[Msg]:
        """Settings that are allowed but probably not what the user meant: a learning rate far outside what the
        optimizer expects (a "0,0001" typed where a decimal comma is not read arrives as 1.0), a warm-up the
        scheduler ignores. The GUI asks about them before Start; `loratrainer train` prints them and starts."""
        o = self.optimizer
        out: list[Msg] = []
        if o.lr_scheduler == "adafactor":
            pass  # Adafactor finds its own step size and uses no rate (train/optimizers.py; Kohya's presets give it 1.0)
        elif o.optimizer in ADAPTIVE:
            # judged on the rates the run uses: Kohya files keep learning_rate at 0.0001 beside part rates of 1.0
            for path, value in self._used_rates():
                if value < MIN_ADAPTIVE_LR:
                    out.append(Msg.of("config.warn.lr_low", setting=Label(path), value=f"{value:g}", optimizer=o.optimizer))
        else:
            # every rate typed, used or not: a "0,0001" read as 1.0 is a typo in whichever box it was typed
            limit = max_learning_rate(o.optimizer)
            for name in ("learning_rate", "unet_lr", "text_encoder_lr", "text_encoder_2_lr"):
                value = getattr(o, name)
                if value is not None and value > limit:
                    out.append(Msg.of("config.warn.lr_high", setting=Label(f"optimizer.{name}"), value=f"{value:g}", optimizer=o.optimizer,
                                      limit=f"{limit:g}"))
        if o.lr_scheduler == "constant" and (o.lr_warmup > 0 or o.lr_warmup_steps > 0):
            warmup = Label("optimizer.lr_warmup_steps" if o.lr_warmup_steps > 0 else "optimizer.lr_warmup")
            out.append(Msg.of("config.warn.warmup_ignored", scheduler=Label("optimizer.lr_scheduler"), warmup=warmup))
        return out

    def _used_rates(self) -> list[tuple[str, float]]:
        """(setting, rate) for each learning rate the run will use, naming the setting it comes from (a part's own
        rate, else learning_rate; once each); a part switched off (0) uses none."""
        o = self.optimizer
        used: dict[str, float] = {}
        parts = [("unet_lr", self.trains_unet), ("text_encoder_lr", self.trains_text_encoder),
                 ("text_encoder_2_lr", self.trains_text_encoder and o.text_encoder_2_lr is not None)]  # SDXL's own, when set
        for name, trains in parts:
            own = getattr(o, name)
            if trains and own != 0:
                path = f"optimizer.{name}" if own is not None else "optimizer.learning_rate"
                used[path] = o.learning_rate if own is None else own
        return list(used.items())


# -- cross-field rules: each returns an error message (coded, naming the settings by Label) or None -----------


def _rule_augmentation_vs_cache(c: TrainingConfig) -> Msg | None:
    augs = [n for n in ("color_aug", "random_crop") if getattr(c.dataset, n)]
    if augs and c.caches_latents:
        return Msg.of("config.augmentation_vs_cache", aug=Label(f"dataset.{augs[0]}"), cache=Label("precision.cache_latents"),
                      cache_disk=Label("precision.cache_latents_to_disk"))
    return None


def _rule_something_trains(c: TrainingConfig) -> Msg | None:
    if not c.trains_unet and not c.trains_text_encoder:
        return Msg.of("config.nothing_trains", unet_lr=Label("optimizer.unet_lr"), text_encoder_lr=Label("optimizer.text_encoder_lr"))
    return None


def _rule_bucket_range(c: TrainingConfig) -> Msg | None:
    b = c.buckets
    if b.min_bucket_reso > b.max_bucket_reso:
        return Msg.of("config.bucket_range", min_reso=Label("buckets.min_bucket_reso"), min_value=b.min_bucket_reso,
                      max_reso=Label("buckets.max_bucket_reso"), max_value=b.max_bucket_reso)
    return None


def _rule_full_precision(c: TrainingConfig) -> Msg | None:
    p = c.precision
    mixed = Label("precision.mixed_precision")
    if p.full_fp16 and p.mixed_precision != "fp16":
        return Msg.of("config.full_needs_mixed", full=Label("precision.full_fp16"), mixed=mixed, precision="fp16")
    if p.full_bf16 and p.mixed_precision != "bf16":
        return Msg.of("config.full_needs_mixed", full=Label("precision.full_bf16"), mixed=mixed, precision="bf16")
    if p.full_fp16 and p.full_bf16:
        return Msg.of("config.full_both", full_fp16=Label("precision.full_fp16"), full_bf16=Label("precision.full_bf16"))
    return None


def _rule_multi_gpu(c: TrainingConfig) -> Msg | None:
    n = c.launch
    if n.num_processes > 1 and not n.multi_gpu and n.num_machines == 1 and n.gpu_ids and len(n.gpu_ids.split(",")) < n.num_processes:
        return Msg.of("config.gpu_ids_count", gpu_ids=Label("launch.gpu_ids"), count=len(n.gpu_ids.split(",")), processes=n.num_processes)
    return None


def _rule_machines(c: TrainingConfig) -> Msg | None:
    n = c.launch
    machines = dict(machines=Label("launch.num_machines"), count=n.num_machines)
    if n.machine_rank >= n.num_machines:
        return Msg.of("config.machine_rank_range", rank=Label("launch.machine_rank"), value=n.machine_rank, **machines)
    if n.num_machines > 1 and not n.main_process_ip:
        return Msg.of("config.machines_need_ip", ip=Label("launch.main_process_ip"), **machines)
    if n.num_processes % n.num_machines:
        return Msg.of("config.processes_per_machine", processes=Label("launch.num_processes"), value=n.num_processes, **machines)
    return None


def _rule_adafactor_scheduler(c: TrainingConfig) -> Msg | None:
    # The adafactor schedule reads the step size from the Adafactor optimizer itself (transformers' AdafactorSchedule).
    o = c.optimizer
    if o.lr_scheduler == "adafactor" and o.optimizer != "Adafactor":
        return Msg.of("config.adafactor_scheduler", scheduler=Label("optimizer.lr_scheduler"), optimizer=o.optimizer)
    return None


def _rule_rank_range(c: TrainingConfig) -> Msg | None:
    n = c.network
    if n.lora_type != "LoKr":
        for name in ("network_dim", "conv_dim"):
            if getattr(n, name) > 1024:
                return Msg.of("config.rank_over_1024", setting=Label(f"network.{name}"), lora_type=Label("network.lora_type"))
    return None


def _rule_lycoris_settings(c: TrainingConfig) -> Msg | None:
    """Settings only one family understands: refused by name rather than silently ignored."""
    n = c.network
    if n.lora_type in LYCORIS_TYPES:
        # peft's LoHa/LoKr have no hidden-activation dropout (LyCORIS warns it is not implemented either)
        if n.network_dropout:
            return Msg.of("config.not_for_lycoris", setting=Label("network.network_dropout"), kind=n.lora_type, default=0)
        if n.lora_type == "LoKr" and n.use_tucker:
            # ComfyUI's lokr.py calls torch.kron on the einsum result, which torch refuses (non-contiguous); its
            # loader logs an error and leaves the module out
            return Msg.of("config.lokr_tucker", setting=Label("network.use_tucker"))
        if n.dora_wd:  # peft's LoHa/LoKr have no DoRA (use_dora is LoRA's)
            return Msg.of("config.dora_not_lycoris", setting=Label("network.dora_wd"), kind=n.lora_type)
        if c.saving.save_diffusers_format:  # diffusers' loader reads LoRA, not LoHa/LoKr
            return Msg.of("config.not_for_lycoris", setting=Label("saving.save_diffusers_format"), kind=n.lora_type, default="off")
        return None
    if n.dora_wd and c.saving.save_diffusers_format:  # diffusers' LoRA layout has no magnitude vector
        return Msg.of("config.dora_diffusers", setting=Label("saving.save_diffusers_format"), dora=Label("network.dora_wd"))
    defaults = NetworkSettings()
    for name in ("factor", "decompose_both", "use_tucker", "rank_dropout", "module_dropout"):
        if getattr(n, name) != getattr(defaults, name):
            return Msg.of("config.lycoris_only", setting=Label(f"network.{name}"), lora_type=Label("network.lora_type"), kind=n.lora_type)
    return None


CROSS_FIELD_RULES: list[Callable[[TrainingConfig], Msg | None]] = [
    _rule_augmentation_vs_cache,
    _rule_something_trains,
    _rule_bucket_range,
    _rule_full_precision,
    _rule_multi_gpu,
    _rule_machines,
    _rule_adafactor_scheduler,
    _rule_rank_range,
    _rule_lycoris_settings,
]


# -- helpers shared by the trainer and the GUI ---------------------------------------------------------------


def parse_optimizer_args(text: str) -> dict[str, Any]:
    """'weight_decay=0.01 betas=0.9,0.99 decouple=True' -> {'weight_decay': 0.01, 'betas': (0.9, 0.99), ...}."""
    out: dict[str, Any] = {}
    for item in text.split():
        if "=" not in item:
            raise MsgError(Msg.of("config.optimizer_arg_not_kv", item=item))
        key, raw = item.split("=", 1)
        if not re.fullmatch(r"[A-Za-z_]\w*", key):
            raise MsgError(Msg.of("config.optimizer_arg_name", key=key))
        parts = [_literal(p) for p in raw.split(",")] if "," in raw else [_literal(raw)]
        out[key] = tuple(parts) if len(parts) > 1 else parts[0]
    return out


def _literal(raw: str) -> Any:
    low = raw.lower()
    if low in {"true", "false"}:
        return low == "true"
    if low in {"none", "null"}:
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
