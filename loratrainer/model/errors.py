"""What can go wrong with a model or LoRA file, as messages a user can act on (all are UserErrors).

No torch here: the coded messages of model/checkpoint.py are defined here so that the GUI process, which shows
them in the page's language (the LoRA tools' errors come from a subprocess as codes), knows them.
"""

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

# model/checkpoint.py's messages; `what` is one of the model.what.* messages (in Korean they carry the noun "file")
define({
    "model.what.model": "model", "model.what.lora": "LoRA", "model.what.network_weights": "LoRA (network_weights)",
    "model.what.vae": "VAE",
    "model.file_missing": "The {what} file {path} does not exist.",
    "model.is_folder": "The {what} path {path} is a folder, not a checkpoint file.",
    "model.unreadable": "The {what} file {path} cannot be read ({detail}). It may be an incomplete download; download it again (.safetensors is the safer format).",
    "model.pickled_code": "The {what} file {path} holds Python objects besides its weights, so it is not loaded (loading them could run code). Use the .safetensors version of this model.",
    "model.not_a_checkpoint": "The {what} file {path} is not a checkpoint ({detail}).",
    "model.no_tensors": "The {what} file {path} holds no tensors.",
    "model.sd1_incomplete": "{path} is an SD1.x checkpoint without its {missing} weights; use a full model file.",
    "model.family.sdxl": "{path} is an SDXL checkpoint; loratrainer trains SD1.5 LoRAs only. Choose an SD1.5-based model.",
    "model.family.sd2": "{path} is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder, 1024-wide cross-attention); loratrainer trains SD1.5 LoRAs only. Choose an SD1.5-based model.",
    "model.family.sd1-inpainting": "{path} is an SD1.5 inpainting checkpoint (9 input channels); choose an ordinary SD1.5 model.",
    "model.family.sd3-or-flux": "{path} is an SD3 or Flux checkpoint; loratrainer trains SD1.5 LoRAs only.",
    "model.family.lora": "{path} is a LoRA file, not a base model. Put it in network_weights to continue training it, and choose an SD1.5 base model here.",
    "model.family.vae": "{path} is a VAE on its own; set it as the separate VAE and choose a full SD1.5 model here.",
    "model.family.diffusers-component": "{path} is a single diffusers component file; choose the whole diffusers folder (the one with model_index.json) or a single-file checkpoint.",
    "model.family.unknown": "{path} is not a Stable Diffusion checkpoint this program recognises.",
    # the parts a checkpoint may lack, joined as "{first} and {rest}" (one message per language, not " and ")
    "model.part.unet": "UNet", "model.part.text_encoder": "text encoder", "model.part.vae": "VAE",
    "model.part.text_encoder_1": "text encoder 1 (CLIP ViT-L)", "model.part.text_encoder_2": "text encoder 2 (OpenCLIP ViT-bigG)",
    "model.parts.and": "{first} and {rest}",
})

# model/loading.py, model/kohya_format.py, model/saving.py and model/lora.py (here, torch-free, for the same reason)
define({
    "model.base_missing": "The base model {source!r} does not exist. Choose an SD1.5 .safetensors/.ckpt file, a diffusers folder (the one holding model_index.json) or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5.",
    "model.vae_missing": "The VAE file {source} does not exist.",
    "model.vae_other_family.sdxl": "{path} is not an SDXL VAE (it looks like: {found}).",
    "model.vae_other_family.sd15": "{path} is not an SD1.5 VAE (it looks like: {found}).",
    "model.not_sd15_architecture": "{path} does not fit the SD1.5 architecture ({detail}).",
    "model.not_diffusers_folder": "{folder} is a folder but not a diffusers model (no model_index.json or unet/ inside). Choose the model's .safetensors/.ckpt file, or the folder that holds model_index.json.",
    "model.wide_family.sd2": "{source} is an SD2 model (cross-attention width {width}); choose an SD1.5 model.",
    "model.wide_family.sdxl": "{source} is an SDXL model (cross-attention width {width}); choose an SD1.5 model.",
    "model.tokenizer_mismatch": "The tokenizer ({where}) has {tokens} tokens but the text encoder of {source} has only {embeddings} embeddings: the model's tokenizer/ folder does not belong to its text_encoder/. Use the tokenizer files that came with the model.",
    "model.hub_offline": "{source!r} is not a local file or folder, and as a hub id it cannot be loaded: the hub cannot be reached and it is not in the local cache. Check the path, or download the model's .safetensors file and choose it (local files need no network).",
    "model.hub_failed": "Could not load {source!r} from the hub: {detail}",
    "model.lacks_weights": "{path} lacks {count} weights, e.g. {key}.",
    "model.nothing_to_train": "Both the UNet and the text encoder learning rates are 0: there is nothing to train.",
    "model.output_exists": "{path} exists; not overwriting it (choose another output name or allow overwriting).",
    "model.output_appeared": "{path} exists; not overwriting it.",
    "model.lora_non_finite": "The LoRA holds NaN or infinite values in {module}{more}; the file was not written. Training diverged: lower the learning rate, or use bf16 / no mixed precision instead of fp16.",
    "model.and_more": " and {count} more",
    # network_weights (continuing a LoRA) that does not fit the LoRA being trained
    "weights.not_kohya": "{path} is not a Kohya-format LoRA (unexpected key {key}); only lora_down/lora_up/alpha files (Kohya's Standard or LoCon LoRA) can be continued.",
    "weights.dora_file": "{path} is a DoRA file (dora_scale tensors) but DoRA is off; set DoRA (weight-decomposed) to on to continue it.",
    "weights.not_dora_file": "{path} is a LoRA file without DoRA but DoRA is on; set DoRA (weight-decomposed) to off to continue it.",
    "weights.lacks_factor": "{path}: module {name} lacks its lora_down or lora_up weight.",
    "weights.shape": "{path}: {name} has shape {shape} but the LoRA being trained needs {wanted} (rank {rank}). Set the rank ({setting}) to the file's, {file_rank}.",
    "weights.alpha": "{path}: {name} was trained with alpha {file_alpha} but alpha is set to {alpha}; set it to the file's value so the weights keep their strength.",
    "weights.dora_shape": "{path}: {name} is {got} but this module needs {wanted} (one magnitude per output channel, LyCORIS's wd_on_output layout); only such DoRA files can be continued.",
    "weights.other_type": "{path} is {what} but the LoRA type is {lora_type}; set the LoRA type to {kind} to continue it.",
    "weights.what.lycoris": "a LyCORIS {kind} file", "weights.what.lora": "a LoRA file (lora_down/lora_up)",
    "weights.kind.standard": "Standard or LoCon",
    "weights.unexpected_key": "{path}: unexpected key {key} in a {kind} file.",
    "weights.lycoris_shape": "{path}: {name} holds {shapes} but the {kind} being trained has {wanted}; set the rank ({setting}{extra}, use_tucker) to the file's.",
    "weights.unknown_module": "{path}: {why}",
    "weights.why.te_not_trained": "the file adapts the text encoder ({name}) but the text encoder is not trained (its learning rate is 0); set text_encoder_lr above 0, or its part of the file would be lost.",
    "weights.why.te_n_not_trained": "the file adapts text encoder {n} ({name}) but text encoder {n} is not trained (its learning rate is 0); set {setting} above 0, or its part of the file would be lost.",
    "weights.why.unet_not_trained": "the file adapts the UNet ({name}) but the UNet is not trained (unet_lr is 0).",
    "weights.why.sdxl_lora": "this is an SDXL LoRA (lora_te1_/lora_te2_ keys or input_blocks/output_blocks names); it cannot continue on SD1.5.",
    "weights.why.sd15_lora": "this is an SD1.5 LoRA (lora_te_ keys or down_blocks/up_blocks names); it cannot continue on SDXL.",
    "weights.why.locon": "the file is a LoCon LoRA ({name}); set the LoRA type to LoCon.",
    "weights.why.not_part_sd15": "module {name} is not part of this LoRA (an SD1.5 Kohya LoRA has lora_unet_/lora_te_ modules).",
    "weights.why.not_part_sdxl": "module {name} is not part of this LoRA (an SDXL Kohya LoRA has lora_unet_/lora_te1_/lora_te2_ modules).",
})


def parts_msg(parts: list[str]) -> Msg:
    """Part codes (`model.part.<part>`) said as one list: "UNet and text encoder and VAE"."""
    said = Msg.of(f"model.part.{parts[-1]}")
    for part in reversed(parts[:-1]):
        said = Msg.of("model.parts.and", first=Msg.of(f"model.part.{part}"), rest=said)
    return said


# model/sdxl.py's and model/components.py's messages, here (torch-free) because a trainer that refuses a base model
# ends its run with one of them (the `ended` event's msg), which the GUI and the CLI, never importing torch, must say
define({
    "model.sdxl.not_sdxl": "{path} is not an SDXL checkpoint (it looks like: {family}); choose an SDXL model or set Model family to auto.",
    "model.sdxl.incomplete": "{path} is an SDXL checkpoint without its {missing} weights; use a full model file.",
    "model.sdxl.shapes": "{path} does not fit the SDXL base architecture ({detail}). SDXL refiners and other variants cannot be trained.",
    "model.sdxl.not_a_folder_model": "{path} is a folder but not a diffusers model (no model_index.json or unet/ inside). Choose the model's .safetensors file, or the folder that holds model_index.json.",
    "model.sdxl.missing": "The base model {path} does not exist. Choose an SDXL .safetensors file, a diffusers folder (the one holding model_index.json) or a hub id such as stabilityai/stable-diffusion-xl-base-1.0.",
    "model.family_mismatch": "Model family is set to {wanted}, but {path} is {found_a} model. Set Model family to auto or {found}, or choose {wanted_a} model.",
})

class ModelFileMissing(UserError):
    """A model, VAE or LoRA path that does not exist."""


class NotSD15Checkpoint(UserError):
    """A readable checkpoint of another family (SDXL, SD2, SD3, a LoRA, a lone VAE, ...)."""


class CorruptModelFile(UserError):
    """A file that cannot be read as a checkpoint: truncated download, random bytes, wrong extension."""


class ModelNotAvailableOffline(UserError):
    """A hub id was given but the hub cannot be reached (or HF_HUB_OFFLINE is set) and nothing is cached."""


class NetworkWeightsMismatch(UserError):
    """network_weights does not fit the LoRA being trained (other rank, alpha, modules or shapes)."""


class NonFiniteLoraError(UserError):
    """A LoRA tensor holds NaN or infinity; the file is not written (it would load as a black image)."""


class OutputExists(UserError):
    """The LoRA file exists and overwriting was not asked for."""
