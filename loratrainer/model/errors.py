"""What can go wrong with a model or LoRA file, as messages a user can act on (all are UserErrors).

No torch here: the coded messages of model/checkpoint.py are defined here so that the GUI process, which shows
them in the page's language (the LoRA tools' errors come from a subprocess as codes), knows them.
"""

from loratrainer.errors import UserError
from loratrainer.messages import define

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
})


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
