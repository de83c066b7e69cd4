"""Where the shipped model configurations live (see loratrainer/assets/sd15/README.md and loratrainer/assets/sdxl/README.md)."""

from pathlib import Path

_ASSETS = Path(__file__).resolve().parent.parent / "assets"
# A diffusers repository layout without weights: model_index.json, unet/, vae/, text_encoder/, scheduler/, tokenizer/
SD15_CONFIG_DIR = _ASSETS / "sd15"
# The same for stabilityai/stable-diffusion-xl-base-1.0, with text_encoder_2/ and tokenizer_2/
SDXL_CONFIG_DIR = _ASSETS / "sdxl"
