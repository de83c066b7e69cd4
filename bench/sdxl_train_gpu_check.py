"""One short GPU check of the SDXL trainer options that only act on CUDA (run once, quoted in the report):
`python bench/sdxl_train_gpu_check.py OUT_DIR PRECISION [setting=value ...]` trains the tiny SDXL for 2 steps
through entry.train_run with that mixed precision and prints the outcome, the peak memory and the UNet's weight
dtypes (fp8_base: float8 frozen weights). Not part of the test suite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_train_support import small_config  # noqa: E402
from tests.tiny_sdxl import save_tiny_sdxl_diffusers  # noqa: E402


def main() -> None:
    from accelerate import Accelerator

    from loratrainer.train.entry import train_run
    from loratrainer.train.run_context import RunContext
    from loratrainer.train import setup

    root, precision = Path(sys.argv[1]), sys.argv[2]
    values = {k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}
    model = save_tiny_sdxl_diffusers(root / "tiny-sdxl")
    config = small_config(root, model, images=2, repeats=1, epoch=1, mixed_precision=precision, **values)
    (root / "run").mkdir(parents=True, exist_ok=True)
    seen = {}
    original = setup.load_and_adapt_models

    def spy(config, accelerator):
        out = original(config, accelerator)
        seen["unet_dtypes"] = sorted({str(p.dtype) for p in out[0].unet.parameters()})
        seen["vae_dtype"] = str(out[0].vae.dtype)
        return out

    setup.load_and_adapt_models = spy
    torch.cuda.reset_peak_memory_stats()
    outcome = train_run(config, RunContext(root / "run"), Accelerator(mixed_precision=precision))
    from safetensors.torch import load_file

    lora = load_file(str(root / "out" / "last.safetensors"))
    print(json.dumps({"precision": precision, **values, "status": outcome.status, "steps": outcome.step, **seen,
                      "finite": all(bool(torch.isfinite(v).all()) for v in lora.values()), "tensors": len(lora),
                      "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1), "device": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
