"""Record the LoRA modules sd-scripts' own network code builds for full-size SD1.5 (the fixture
tests/fixtures/sd_scripts_sd15_lora_modules.json that tests/test_model_sd15_full_size.py compares ours with).

Runs in a SEPARATE environment with sd-scripts' own pinned libraries (never the project's .venv), like
bench/sd_scripts_sdxl_modules.py (which says how /tmp/sdscripts-venv was made): networks/lora.py create_network() on
the models library/model_util.load_models_from_stable_diffusion_checkpoint builds for SD1.5 (v2=False): sd-scripts'
own library/original_unet.UNet2DConditionModel(**create_unet_diffusers_config(False)) and the transformers
CLIPTextModel of its v1 CLIPTextConfig, all on the meta device (no weights, no memory). Standard (networks.lora,
dim 4 / alpha 1) and LoCon (+ network_args conv_dim 2 / conv_alpha 1) with the rank sd-scripts gives each module;
with lycoris-lora installed also LoHa and LoKr (lycoris.kohya, algo loha / lokr, conv_dim 2, LyCORIS's default
preset "full", the Kohya GUI's LyCORIS_preset default) with the rank LyCORIS gives each module.

    git -C sd-scripts.git archive HEAD library networks | tar -x -C /tmp/sd-scripts-src
    /tmp/sdscripts-venv/bin/python bench/sd_scripts_sd15_modules.py /tmp/sd-scripts-src COMMIT tests/fixtures/sd_scripts_sd15_lora_modules.json
"""

import json
import sys

src, commit, out = sys.argv[1], sys.argv[2], sys.argv[3]  # LyCORIS logs to stdout: the JSON goes to a file
sys.path.insert(0, src)

import torch  # noqa: E402
import transformers  # noqa: E402
import diffusers  # noqa: E402
from accelerate import init_empty_weights  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from library import model_util, original_unet  # noqa: E402
from networks import lora  # noqa: E402

with init_empty_weights():  # model_util.load_models_from_stable_diffusion_checkpoint(v2=False)'s models
    unet = original_unet.UNet2DConditionModel(**model_util.create_unet_diffusers_config(False))
    te = CLIPTextModel._from_config(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-05, dropout=0.0, attention_dropout=0.0,
        initializer_range=0.02, initializer_factor=1.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        model_type="clip_text_model", projection_dim=768, torch_dtype="float32"))

cases = {}
for case, kwargs in (("Standard", {}), ("LoCon", {"conv_dim": "2", "conv_alpha": "1"})):
    network = lora.create_network(1.0, 4, 1.0, None, te, unet, **kwargs)
    cases[case] = {m.lora_name: m.lora_dim for m in network.text_encoder_loras + network.unet_loras}

# sd-scripts' --network_module lycoris.kohya (LyCORIS from PyPI, lycoris-lora) on the same models
lycoris_version = lycoris_full_error = None
try:
    from lycoris import kohya as lycoris_kohya
except ImportError:
    lycoris_kohya = None
if lycoris_kohya is not None:
    from importlib.metadata import version

    lycoris_version = version("lycoris-lora")
    from lycoris import config as lycoris_config

    def lycoris_modules(algo):
        network = lycoris_kohya.create_network(1.0, 4, 1.0, None, te, unet, algo=algo, conv_dim="2", conv_alpha="1")
        return {m.lora_name: m.lora_dim for m in network.text_encoder_loras + network.unet_loras}

    try:
        lycoris_modules("loha")
    except AssertionError as exc:  # 4.1.3: "duplicated lora name: lora_unet_time_embedding_linear_1"
        lycoris_full_error = str(exc)
    # The "full" preset lists the class TimestepEmbedding (added for Anima) and the name time_embedding.linear_1:
    # on SD1.5 both select time_embedding.linear_1 and LyCORIS refuses the duplicate. Without that class (the
    # preset as it was before), LyCORIS builds its full SD1.5 set.
    full = lycoris_config.PRESET["full"]
    full["unet_target_module"] = [m for m in full["unet_target_module"] if m != "TimestepEmbedding"]
    for case, algo in (("LoHa", "loha"), ("LoKr", "lokr")):
        cases[case] = lycoris_modules(algo)

json.dump({
    "source": "kohya-ss/sd-scripts networks/lora.py create_network (SD1.5: library/original_unet.py, "
              "library/model_util.py create_unet_diffusers_config and the v1 CLIPTextConfig), and lycoris-lora's "
              "lycoris/kohya.py create_network (preset full), run by bench/sd_scripts_sd15_modules.py on the meta device",
    "commit": commit,
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "diffusers": diffusers.__version__,
                 "lycoris-lora": lycoris_version},
    "lycoris_full_preset_error": lycoris_full_error,  # LyCORIS's own "full" preset, unchanged, on SD1.5
    "lycoris_preset": "full without the class TimestepEmbedding",
    "network_dim": 4, "conv_dim": 2,
    "modules": cases,  # Kohya module name -> rank sd-scripts (LoHa/LoKr: LyCORIS) gives it
}, open(out, "w", encoding="utf-8"), indent=1, sort_keys=True)
