"""Where the shipped SD1.5 configuration lives (see loratrainer/assets/sd15/README.md)."""

from pathlib import Path

# A diffusers repository layout without weights: model_index.json, unet/, vae/, text_encoder/, scheduler/, tokenizer/
SD15_CONFIG_DIR = Path(__file__).resolve().parent.parent / "assets" / "sd15"
