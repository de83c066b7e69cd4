"""The trainer's per-concern pieces, each on its own: captions, tokens, noise, loss, saving policy,
optimizers, schedules, batches across processes, the latent cache."""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import random

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from loratrainer.config import TrainingConfig, with_values
from loratrainer.data.check import check_dataset
from loratrainer.train import latent_cache, optimizers
from loratrainer.train.captions import CaptionRules, process_caption
from loratrainer.launch.run_files import checkpoint_name
from loratrainer.train.checkpoints import CheckpointKeeper, Progress, SavePolicy
from loratrainer.train.dataset import process_batches
from loratrainer.train.loss import LossSettings, diffusion_loss, elementwise_loss, huber_threshold, sample_weights
from loratrainer.train.noise import NoiseSettings, pyramid_noise_like, sample_noise
from loratrainer.train.schedulers import build_lr_scheduler
from loratrainer.train.text import TextCache, encode, tokenize
from tests.datasets import make_image
from tests.tiny_sd import build_tiny_components


# -- captions ---------------------------------------------------------------------------------------------------

def test_caption_rules_keep_tokens_shuffle_and_dropout():
    caption = "sks person, red hat, smiling, outdoors, blue sky"
    rules = CaptionRules(shuffle=True, keep_tokens=1)
    shuffled = {process_caption(caption, rules, 1, random.Random(i)) for i in range(20)}
    assert len(shuffled) > 1 and all(c.startswith("sks person, ") for c in shuffled)
    assert all(sorted(c.split(", ")) == sorted(caption.split(", ")) for c in shuffled)
    assert process_caption(caption, CaptionRules(dropout_every_n_epochs=2), 4, random.Random(0)) == ""
    assert process_caption(caption, CaptionRules(dropout_every_n_epochs=2), 3, random.Random(0)) == caption
    assert process_caption(caption, CaptionRules(dropout_rate=1.0), 1, random.Random(0)) == ""
    dropped = process_caption(caption, CaptionRules(keep_tokens=1, tag_dropout_rate=1.0), 1, random.Random(0))
    assert dropped == "sks person"
    assert CaptionRules().is_static and not CaptionRules(shuffle=True).is_static


# -- text encoder: Kohya's chunking and clip skip ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components()


@pytest.mark.parametrize("max_len, width", [(75, 77), (150, 152), (225, 227)])
def test_long_captions_are_encoded_in_75_token_windows(tiny, max_len, width):
    ids = tokenize(tiny.tokenizer, ["a photo of " + "word " * 200, "short"], max_len)
    assert ids.shape == (2, max_len // 75, 77)
    assert (ids[:, :, 0] == tiny.tokenizer.bos_token_id).all()  # every window starts with BOS
    te = tiny.text_encoder
    hidden = encode(te, te.final_layer_norm, ids, 1, torch.device("cpu"))
    assert hidden.shape == (2, width, 32)


def test_clip_skip_uses_an_earlier_layer_and_the_cache_encodes_once(tiny):
    te = tiny.text_encoder
    ids = tokenize(tiny.tokenizer, ["a cat"], 75)
    with torch.no_grad():
        last = encode(te, te.final_layer_norm, ids, 1, torch.device("cpu"))
        skip = encode(te, te.final_layer_norm, ids, 2, torch.device("cpu"))
    assert not torch.allclose(last, skip)
    calls = []
    cache = TextCache()

    def compute(texts):
        calls.append(list(texts))
        return torch.stack([torch.full((2,), float(len(t))) for t in texts])

    out = cache.get(["a", "bb", "a"], compute)
    cache.get(["bb", "a"], compute)
    assert calls == [["a", "bb"]] and out[:, 0].tolist() == [1.0, 2.0, 1.0]


# -- noise and loss -------------------------------------------------------------------------------------------------

def test_noise_offset_and_pyramid_noise():
    torch.manual_seed(0)
    latents = torch.zeros(64, 4, 8, 8)
    plain = sample_noise(latents, NoiseSettings())
    offset = sample_noise(latents, NoiseSettings(offset=1.0))
    # the offset adds one value per image and channel: the per-channel means spread out
    assert offset.mean(dim=(2, 3)).std() > 3 * plain.mean(dim=(2, 3)).std()
    pyramid = pyramid_noise_like(torch.randn(2, 4, 32, 32), iterations=4, discount=0.5)
    assert abs(float(pyramid.std()) - 1.0) < 1e-4


def test_pyramid_noise_levels_start_at_full_resolution_as_kohya():
    # sd-scripts' pyramid_noise_like loops i in range(iterations): level 0 is full-resolution noise of weight 1
    noise = torch.randn(2, 4, 16, 16)
    random.seed(0), torch.manual_seed(0)
    one_level = pyramid_noise_like(noise.clone(), iterations=1, discount=0.3)
    random.seed(0), torch.manual_seed(0)
    random.random()
    expected = noise + torch.randn(2, 4, 16, 16)
    assert torch.allclose(one_level, expected / expected.std(), atol=1e-6)


def test_loss_types_weights_and_v_prediction():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pred, target = torch.zeros(2, 4, 2, 2), torch.full((2, 4, 2, 2), 3.0)
    l2 = elementwise_loss(pred, target, LossSettings("l2")).mean()
    huber = elementwise_loss(pred, target, LossSettings("huber", 0.1)).mean()
    assert l2 == 9.0 and huber < 1.0  # Huber grows linearly for big errors
    t = torch.tensor([10, 900])
    c = huber_threshold(sched, t, LossSettings("huber", 0.1, "snr"))
    assert c.shape == (2, 1, 1, 1) and c[0] > c[1] >= 0.1  # the snr schedule: a large c at low noise
    assert torch.allclose(huber_threshold(sched, t, LossSettings("huber", 0.1, "constant")).flatten(), torch.tensor([0.1, 0.1]))
    w = sample_weights(sched, t, torch.tensor([False, True]), LossSettings(min_snr_gamma=5.0, prior_loss_weight=0.5))
    assert w[0] < 1.0 and w[1] <= 0.5  # min-SNR damps the low-noise step; the reg sample carries the prior weight
    assert diffusion_loss(pred, target, torch.tensor([1.0, 0.0]), LossSettings()) == 4.5


# -- saving policy ----------------------------------------------------------------------------------------------------

def test_needs_save_follows_kohya():
    policy = SavePolicy(every_n_epochs=2, every_n_steps=5)
    assert policy.needs_save(Progress(10, 2, 100, 10, epoch_done=True)) == "epoch"
    assert policy.needs_save(Progress(10, 3, 100, 10, epoch_done=True)) is None
    assert policy.needs_save(Progress(15, 2, 100, 10)) == "step"
    assert policy.needs_save(Progress(16, 2, 100, 10)) is None
    assert policy.needs_save(Progress(100, 10, 100, 10, epoch_done=True)) == "epoch"  # the last epoch too, then the final file
    assert policy.needs_save(Progress(100, 9, 100, 10)) is None  # the last step: only the final file
    p = Progress(500, 3, 1000, 10)
    assert checkpoint_name("x", "epoch", p) == "x-000003.safetensors"
    assert checkpoint_name("x", "step", p) == "x-step00000500.safetensors"
    assert checkpoint_name("x", "final", p) == "x.safetensors" and checkpoint_name("x", "interrupted", p) == "x-interrupted.safetensors"


def test_keep_last_n_removes_only_this_runs_files(tmp_path):
    (tmp_path / "x-000001.safetensors").write_bytes(b"from an earlier run")
    keeper = CheckpointKeeper(tmp_path, "x", SavePolicy(1, 2, last_n_epochs=2, last_n_steps=4), lambda path, p: path.write_bytes(b"new"))
    for epoch in (2, 3, 4):
        keeper.save("epoch", Progress(epoch * 10, epoch, 100, 10, True))
    for step in (2, 4, 6, 8):
        keeper.save("step", Progress(step, 1, 100, 10))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x-000001.safetensors", "x-000003.safetensors", "x-000004.safetensors",
                     "x-step00000006.safetensors", "x-step00000008.safetensors"]


# -- optimizers and schedules ---------------------------------------------------------------------------------------

def _opt_config(**values) -> TrainingConfig:
    return with_values(TrainingConfig(), values)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
@pytest.mark.parametrize("name, instead", [("AdamW8bit", "AdamW"), ("Lion8bit", "Lion"), ("PagedAdamW8bit", "AdamW")])
def test_8bit_optimizers_without_cuda_say_what_to_use(name, instead):
    with pytest.raises(optimizers.OptimizerUnavailable, match=f"{name} needs bitsandbytes with a CUDA GPU; use {instead}"):
        optimizers.optimizer_spec(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_default_adamw8bit_is_refused_before_launch_without_cuda(tmp_path):
    from loratrainer.launch.start import LaunchRefused, start_run

    (tmp_path / "model").mkdir()  # the base model is checked before the optimizer (launch.path_checks)
    config = small_config(tmp_path, tmp_path / "model", optimizer="AdamW8bit")
    with pytest.raises(LaunchRefused, match="^AdamW8bit needs bitsandbytes with a CUDA GPU; use AdamW$"):
        start_run(config)
    assert not (tmp_path / "out" / "log").exists()  # no run folder, nothing started


@pytest.mark.parametrize("optimizer, loaded", [("AdamW", False), ("AdamW8bit", True)])
def test_the_trainer_imports_bitsandbytes_only_for_an_8bit_optimizer(tmp_path, optimizer, loaded):
    # its import prints "Failed to load CPU gemm_4bit_forward" on every CPU run (peft imports it unconditionally)
    import subprocess
    import sys

    from loratrainer.config import save_config

    save_config(_opt_config(optimizer=optimizer, mixed_precision="no"), tmp_path / "config.json")
    code = ("import sys, loratrainer.train.entry as e; e.train_run = lambda *a: sys.exit(0); "  # everything up to training
            f"e.main(['--run-dir', {str(tmp_path)!r}])")
    code = f"import atexit, sys; atexit.register(lambda: print('bnb', sys.modules.get('bitsandbytes') is not None)); {code}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert f"bnb {loaded}" in proc.stdout, proc.stderr[-2000:]
    if not loaded:
        assert "gemm_4bit" not in proc.stderr


def test_several_machines_need_the_main_address_a_rank_below_the_count_and_a_multiple_of_processes():
    # without main_process_ip accelerate would wait forever for the other machines
    with pytest.raises(ValueError, match="launch.num_machines is 2: set launch.main_process_ip"):
        _opt_config(num_machines=2, num_processes=2)
    with pytest.raises(ValueError, match=r"launch.machine_rank \(2\) must be below launch.num_machines \(2\)"):
        _opt_config(num_machines=2, num_processes=2, main_process_ip="10.0.0.1", machine_rank=2)
    with pytest.raises(ValueError, match=r"launch.num_processes \(3\) is the total over all machines: it must be a multiple"):
        _opt_config(num_machines=2, num_processes=3, main_process_ip="10.0.0.1")
    with pytest.raises(ValueError, match="IP address or host name"):
        _opt_config(main_process_ip="10.0.0.1; rm -rf /")
    ok = _opt_config(num_machines=2, num_processes=4, main_process_ip="10.0.0.1", machine_rank=1).launch
    assert (ok.num_machines, ok.machine_rank, ok.rdzv_backend) == (2, 1, "static")


def test_optimizers_build_with_their_defaults_and_args():
    params = [{"params": [torch.nn.Parameter(torch.ones(3))], "lr": 0.5}]
    sgd = optimizers.build_optimizer(_opt_config(optimizer="SGDNesterov"), params)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    custom = optimizers.build_optimizer(_opt_config(optimizer="torch.optim.RMSprop", optimizer_args="alpha=0.9 centered=True"), params)
    assert isinstance(custom, torch.optim.RMSprop) and custom.defaults["centered"] and custom.param_groups[0]["lr"] == 0.5
    adamw = optimizers.build_optimizer(_opt_config(optimizer="AdamW", optimizer_args="weight_decay=0.05 betas=0.9,0.98"), params)
    assert adamw.defaults["betas"] == (0.9, 0.98)
    with pytest.raises(optimizers.OptimizerUnavailable, match="could not be imported"):
        optimizers.optimizer_spec("torch.optim.NoSuchOptim")
    with pytest.raises(optimizers.OptimizerUnavailable, match="not from a known optimizer package"):
        optimizers.optimizer_spec("nosuch.Optim")  # only the optimizer packages are imported from


@pytest.mark.parametrize("name", sorted(__import__("loratrainer.config.optimizer_table").config.optimizer_table.KNOWN_OPTIMIZERS))
def test_every_listed_optimizer_builds_or_says_what_to_do(name):
    """The schema's choices and the trainer's builder are one table: each name builds here (the SGD family with
    its listed defaults) or is refused with what to install or use instead."""
    from loratrainer.config.optimizer_table import OPTIMIZERS

    params = [{"params": [torch.nn.Parameter(torch.ones(3))], "lr": 1e-3}]
    try:
        opt = optimizers.build_optimizer(_opt_config(optimizer=name), params)
    except optimizers.OptimizerUnavailable as exc:
        assert str(exc).startswith(OPTIMIZERS[name].unavailable_hint(name)), exc
        return
    assert all(opt.defaults[k] == v for k, v in OPTIMIZERS[name].defaults.items())


def test_the_optimizer_table_and_the_schema_load_without_torch():
    import subprocess
    import sys

    code = "import sys, loratrainer.config, loratrainer.config.optimizer_table; assert 'torch' not in sys.modules, 'torch'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).returncode == 0


def test_lion_fallback_moves_by_the_sign():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = optimizers.Lion([p], lr=0.1)
    p.grad = torch.tensor([2.0, -0.5, 0.0])
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([-0.1, 0.1, 0.0]))


@pytest.mark.parametrize("values, at_0, at_10", [
    ({"lr_scheduler": "cosine", "lr_warmup": 10.0}, 0.0, 1.0),
    ({"lr_scheduler": "linear", "lr_warmup_steps": 20}, 0.0, 0.5),
    ({"lr_scheduler": "constant", "lr_warmup": 10.0}, 1.0, 1.0),  # constant ignores warm-up (as the summary says)
])
def test_warmup_as_ratio_or_steps(values, at_0, at_10):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    sched = build_lr_scheduler(_opt_config(**values), opt, total_steps=100)
    lrs = []
    for _ in range(11):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(at_0) and lrs[10] == pytest.approx(at_10)


# -- batches across processes -------------------------------------------------------------------------------------------

def test_processes_split_the_batches_evenly_and_cover_them(tmp_path, tiny_model):
    config = small_config(tmp_path, tiny_model, images=5, repeats=1, train_batch_size=1)
    samples = check_dataset(config).samples
    one = process_batches(samples, 1, 42, 1, 0, 1)
    r0, r1 = process_batches(samples, 1, 42, 1, 0, 2), process_batches(samples, 1, 42, 1, 1, 2)
    assert len(r0) == len(r1) == 3  # ceil(5 / 2): the shorter one is padded, as data.steps counts
    assert sorted(b[0] for b in r0 + r1[:2]) == sorted(b[0] for b in one)
    assert process_batches(samples, 1, 42, 2, 0, 1) != one  # another epoch, another order


@pytest.mark.parametrize("batch_size, world, skip", [(1, 1, 0), (2, 1, 1), (1, 2, 0), (2, 3, 0), (1, 2, 2)])
def test_sampler_length_is_what_it_yields(tmp_path, tiny_model, batch_size, world, skip):
    from loratrainer.train.dataset import EpochBatchSampler

    config = small_config(tmp_path, tiny_model, images=5, repeats=1, train_batch_size=1)
    samples = check_dataset(config).samples
    for rank in range(world):
        sampler = EpochBatchSampler(samples, batch_size, 42, rank, world)
        for epoch in (1, 2):
            sampler.set_epoch(epoch, skip_batches=skip)
            assert len(sampler) == len(list(sampler)) == len(process_batches(samples, batch_size, 42, epoch, rank, world)) - skip


# -- latent cache ----------------------------------------------------------------------------------------------------------

def test_disk_latent_cache_names_reuse_invalidation_and_foreign_files(tmp_path, tiny_model, tiny):
    config = small_config(tmp_path, tiny_model, images=2, repeats=1)
    samples = check_dataset(config).samples
    calls = []
    vae = _CountingVae(tiny.vae, calls)
    kwargs = dict(flip=True, to_disk=True, background="#ffffff", vae_id="tiny", device="cpu", dtype=torch.float32)
    first = latent_cache.cache_latents(samples, vae, **kwargs)
    paths = [latent_cache.npz_path(s) for s in samples]
    assert [p.name for p in paths] == ["img_000_0064x0064_sd.npz", "img_001_0064x0064_sd.npz"]
    assert len(calls) == 4 and first[0][1] is not None  # flipped latents cached too
    with np.load(paths[0]) as npz:
        assert {"latents", "latents_flipped", "original_size", "crop_ltrb", latent_cache.FINGERPRINT_KEY} <= set(npz.files)
        assert npz["latents"].shape == (4, 8, 8)
    calls.clear()
    again = latent_cache.cache_latents(samples, vae, **kwargs)
    assert calls == [] and torch.equal(again[1][0], first[1][0])  # reused from disk
    make_image(samples[0].image_path, (64, 64), color=(10, 20, 30))  # the image changed: recomputed
    latent_cache.cache_latents(samples, vae, **kwargs)
    assert len(calls) == 2
    with open(paths[1], "wb") as fh:
        np.savez(fh, latents=np.zeros((4, 8, 8), np.float32))  # e.g. written by Kohya
    foreign = paths[1].read_bytes()
    latent_cache.cache_latents(samples, vae, **kwargs)
    assert paths[1].read_bytes() == foreign  # never touched


def test_processes_encode_disjoint_shares_of_the_latent_cache(tmp_path, tiny_model, tiny):
    config = small_config(tmp_path, tiny_model, images=3, repeats=1)
    samples = check_dataset(config).samples
    calls = []
    kwargs = dict(flip=False, to_disk=True, background="#ffffff", vae_id="tiny", device="cpu", dtype=torch.float32, world=2)
    shares = [latent_cache.cache_latents(samples, _CountingVae(tiny.vae, calls), rank=r, **kwargs) for r in (0, 1)]
    assert sorted(shares[0]) == [0, 2] and sorted(shares[1]) == [1] and len(calls) == 3  # each image encoded once
    assert all(latent_cache.npz_path(s).exists() for s in samples)  # each process wrote its own share


class _CountingVae:
    def __init__(self, vae, calls):
        self.vae, self.calls = vae, calls

    def encode(self, pixels):
        self.calls.append(pixels.shape)
        return self.vae.encode(pixels)




def test_adafactor_schedule_and_relative_step():
    params = [{"params": [torch.nn.Parameter(torch.ones(4, 4))], "lr": 1e-4}]
    config = _opt_config(optimizer="Adafactor", lr_scheduler="adafactor")
    opt = optimizers.build_optimizer(config, params)
    sched = build_lr_scheduler(config, opt, total_steps=10)
    opt.param_groups[0]["params"][0].grad = torch.ones(4, 4)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["relative_step"] and sched.get_last_lr()[0] > 0


def test_random_crop_and_colour_augmentation(tmp_path):
    from loratrainer.data.samples import TrainSample
    from loratrainer.train.dataset import Augment, load_training_image

    from PIL import Image

    path = tmp_path / "a.png"
    ramp = Image.new("RGB", (96, 64))  # a horizontal ramp shows where the crop was taken
    ramp.putdata([(x * 2, 40, 40) for y in range(64) for x in range(96)])
    ramp.save(path)
    sample = TrainSample(path, "c", False, tmp_path, 1, False, (96, 64), (64, 64), (96, 64))
    crops = {load_training_image(sample, "#ffffff", Augment(random_crop=True), random.Random(i), False).getpixel((0, 0))[0]
             for i in range(12)}
    assert len(crops) > 3  # different offsets
    centre = load_training_image(sample, "#ffffff", Augment(), random.Random(0), False).getpixel((0, 0))[0]
    assert centre == 32  # (96 - 64) / 2 = 16 px in, ramp value 2 x 16
    shifted = {load_training_image(sample, "#ffffff", Augment(color=True), random.Random(i), False).getpixel((10, 10))
               for i in range(8)}
    assert len(shifted) > 1
