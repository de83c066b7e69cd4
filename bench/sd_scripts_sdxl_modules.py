"""Record the LoRA modules sd-scripts' own network code builds for full-size SDXL (the fixture
tests/fixtures/sd_scripts_sdxl_lora_modules.json that tests/test_model_sdxl_full_size.py compares ours with).

Runs in a SEPARATE environment with sd-scripts' own pinned libraries (never the project's .venv): its
networks/lora.py create_network() on sd-scripts' SdxlUNet2DConditionModel and the two transformers text encoders
built exactly as library/sdxl_model_util.load_models_from_sdxl_checkpoint builds them, all on the meta device (no
weights, no memory). Standard (networks.lora, dim 4 / alpha 1) and LoCon (+ network_args conv_dim 2 / conv_alpha 1).

    git -C sd-scripts.git archive HEAD | tar -x -C /tmp/sd-scripts-src
    /tmp/sdscripts-venv/bin/python bench/sd_scripts_sdxl_modules.py /tmp/sd-scripts-src COMMIT > tests/fixtures/sd_scripts_sdxl_lora_modules.json
"""

import json
import sys

src, commit = sys.argv[1], sys.argv[2]
sys.path.insert(0, src)

import torch  # noqa: E402
import transformers  # noqa: E402
import diffusers  # noqa: E402
from accelerate import init_empty_weights  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from library import sdxl_original_unet  # noqa: E402
from networks import lora  # noqa: E402

COMMON = dict(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-05, dropout=0.0, attention_dropout=0.0,
              initializer_range=0.02, initializer_factor=1.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
              model_type="clip_text_model")
with init_empty_weights():  # sdxl_model_util.load_models_from_sdxl_checkpoint's models
    unet = sdxl_original_unet.SdxlUNet2DConditionModel()
    te1 = CLIPTextModel._from_config(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                    num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768, **COMMON))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                     num_attention_heads=20, hidden_act="gelu", projection_dim=1280, **COMMON))

cases = {}
for case, kwargs in (("Standard", {}), ("LoCon", {"conv_dim": "2", "conv_alpha": "1"})):
    network = lora.create_network(1.0, 4, 1.0, None, [te1, te2], unet, **kwargs)
    cases[case] = {m.lora_name: m.lora_dim for m in network.text_encoder_loras + network.unet_loras}

json.dump({
    "source": "kohya-ss/sd-scripts networks/lora.py create_network (SDXL: library/sdxl_original_unet.py, "
              "library/sdxl_model_util.py text encoders), run by bench/sd_scripts_sdxl_modules.py on the meta device",
    "commit": commit,
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "diffusers": diffusers.__version__},
    "network_dim": 4, "conv_dim": 2,
    "modules": cases,  # Kohya module name -> rank sd-scripts gives it
}, sys.stdout, indent=1, sort_keys=True)
