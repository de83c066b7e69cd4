"""The trainer's per-concern pieces, each on its own: captions, tokens, noise, loss, saving policy,
optimizers, schedules, batches across processes, the latent cache."""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import random

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from loratrainer.config import DatasetSettings, LossSettings, NoiseSettings, SavingSettings, TrainingConfig, with_values
from loratrainer.data.check import check_dataset
from loratrainer.train import latent_cache, optimizers
from loratrainer.train.captions import captions_static, process_caption
from loratrainer.run.files import checkpoint_name
from loratrainer.train.checkpoints import CheckpointKeeper, Progress, save_due
from loratrainer.train.dataset import EpochBatchSampler
from loratrainer.train.loss import diffusion_loss, elementwise_loss, huber_threshold, sample_weights
from loratrainer.train.noise import pyramid_noise_like, sample_noise
from loratrainer.train.schedulers import build_lr_scheduler
from loratrainer.train.text import TextCache, encode, tokenize
from tests.datasets import make_image
from tests.tiny_sd import build_tiny_components


# -- captions ---------------------------------------------------------------------------------------------------

def test_caption_rules_keep_tokens_shuffle_and_dropout():
    caption = "sks person, red hat, smiling, outdoors, blue sky"
    rules = DatasetSettings(shuffle_caption=True, keep_tokens=1)
    shuffled = {process_caption(caption, rules, 1, random.Random(i)) for i in range(20)}
    assert len(shuffled) > 1 and all(c.startswith("sks person, ") for c in shuffled)
    assert all(sorted(c.split(", ")) == sorted(caption.split(", ")) for c in shuffled)
    assert process_caption(caption, DatasetSettings(caption_dropout_every_n_epochs=2), 4, random.Random(0)) == ""
    assert process_caption(caption, DatasetSettings(caption_dropout_every_n_epochs=2), 3, random.Random(0)) == caption
    assert process_caption(caption, DatasetSettings(caption_dropout_rate=1.0), 1, random.Random(0)) == ""
    dropped = process_caption(caption, DatasetSettings(keep_tokens=1, caption_tag_dropout_rate=1.0), 1, random.Random(0))
    assert dropped == "sks person"
    assert captions_static(DatasetSettings()) and not captions_static(DatasetSettings(shuffle_caption=True))


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
    offset = sample_noise(latents, NoiseSettings(noise_offset=1.0))
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
    l2 = elementwise_loss(pred, target, LossSettings(loss_type="l2")).mean()
    huber = elementwise_loss(pred, target, LossSettings(loss_type="huber", huber_c=0.1)).mean()
    assert l2 == 9.0 and huber < 1.0  # Huber grows linearly for big errors
    t = torch.tensor([10, 900])
    c = huber_threshold(sched, t, LossSettings(loss_type="huber", huber_c=0.1, huber_schedule="snr"))
    assert c.shape == (2, 1, 1, 1) and c[0] > c[1] >= 0.1  # the snr schedule: a large c at low noise
    assert torch.allclose(huber_threshold(sched, t, LossSettings(loss_type="huber", huber_c=0.1, huber_schedule="constant")).flatten(), torch.tensor([0.1, 0.1]))
    w = sample_weights(sched, t, torch.tensor([False, True]), LossSettings(min_snr_gamma=5.0), prior_loss_weight=0.5)
    assert w[0] < 1.0 and w[1] <= 0.5  # min-SNR damps the low-noise step; the reg sample carries the prior weight
    assert diffusion_loss(pred, target, torch.tensor([1.0, 0.0]), LossSettings()) == 4.5


# -- saving policy ----------------------------------------------------------------------------------------------------

def test_needs_save_follows_kohya():
    saving = SavingSettings(save_every_n_epochs=2, save_every_n_steps=5)
    assert save_due(saving, Progress(10, 2, 100, 10, epoch_done=True)) == "epoch"
    assert save_due(saving, Progress(10, 3, 100, 10, epoch_done=True)) is None
    assert save_due(saving, Progress(15, 2, 100, 10)) == "step"
    assert save_due(saving, Progress(16, 2, 100, 10)) is None
    assert save_due(saving, Progress(100, 10, 100, 10, epoch_done=True)) == "epoch"  # the last epoch too, then the final file
    assert save_due(saving, Progress(100, 9, 100, 10)) is None  # the last step: only the final file
    p = Progress(500, 3, 1000, 10)
    assert checkpoint_name("x", "epoch", p) == "x-000003.safetensors"
    assert checkpoint_name("x", "step", p) == "x-step00000500.safetensors"
    assert checkpoint_name("x", "final", p) == "x.safetensors" and checkpoint_name("x", "interrupted", p) == "x-interrupted.safetensors"


def test_keep_last_n_removes_only_this_runs_files(tmp_path):
    (tmp_path / "x-000001.safetensors").write_bytes(b"from an earlier run")
    keeper = CheckpointKeeper(tmp_path, "x", SavingSettings(save_every_n_epochs=1, save_every_n_steps=2, save_last_n_epochs=2, save_last_n_steps=4), lambda path, p: path.write_bytes(b"new"))
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
        assert str(exc).startswith(str(OPTIMIZERS[name].unavailable_hint(name))), exc
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


def _lion_reference(p, grads, lr, betas, weight_decay):
    """Lion as the paper writes it (Chen et al. 2023, Algorithm 2): decoupled weight decay, the sign of the
    interpolated momentum, then the momentum update with beta2."""
    m = torch.zeros_like(p)
    for g in grads:
        p = p * (1 - lr * weight_decay)
        p = p - lr * torch.sign(betas[0] * m + (1 - betas[0]) * g)
        m = betas[1] * m + (1 - betas[1]) * g
    return p


def test_lion_fallback_follows_the_paper_over_several_steps():
    torch.manual_seed(0)
    grads = [torch.randn(5) for _ in range(4)] + [torch.full((5,), 1e-3)]  # the last: small, against the momentum
    start = torch.randn(5)
    frozen = torch.nn.Parameter(torch.ones(2))  # no gradient (a part that does not train): left alone, not the end
    p = torch.nn.Parameter(start.clone())
    opt = optimizers.Lion([frozen, p], lr=0.01, betas=(0.8, 0.95), weight_decay=0.5)
    for g in grads:
        p.grad = g.clone()
        assert opt.step(closure=lambda: 42.0) == 42.0  # a closure's loss is returned, as torch optimizers do
    assert torch.allclose(p.detach(), _lion_reference(start, grads, 0.01, (0.8, 0.95), 0.5), atol=1e-6)
    assert torch.equal(frozen.detach(), torch.ones(2))
    # lion-pytorch's defaults, so "Lion" trains the same with or without the package
    assert optimizers.Lion([torch.nn.Parameter(torch.ones(1))]).defaults == {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}


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

def process_batches(samples, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """One process's batches of an epoch as sample indices, as the trainer's sampler yields them."""
    sampler = EpochBatchSampler(samples, batch_size, seed, rank, world)
    sampler.set_epoch(epoch)
    return [[key[0] for key in batch] for batch in sampler]


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
    # Adafactor finding its own step size, as sd-scripts sets it up for lr_scheduler=adafactor: relative steps scaled
    # by each parameter's size, no warm-up unless optimizer_args asks for it
    assert (opt.defaults["relative_step"], opt.defaults["scale_parameter"], opt.defaults["warmup_init"]) == (True, True, False)
    asked = optimizers.build_optimizer(_opt_config(optimizer="Adafactor", lr_scheduler="adafactor", optimizer_args="warmup_init=True"),
                                       [{"params": [torch.nn.Parameter(torch.ones(2))]}])
    assert asked.defaults["warmup_init"] is True
    # with its own step size, a parameter 10x larger moves 10x further (scale_parameter): the first step of each
    small, large = torch.nn.Parameter(torch.ones(4, 4)), torch.nn.Parameter(torch.full((4, 4), 10.0))
    for p in (small, large):
        o = optimizers.build_optimizer(config, [{"params": [p]}])
        p.grad = torch.ones(4, 4)
        o.step()
    assert float(10.0 - large.detach()[0, 0]) == pytest.approx(10 * float(1.0 - small.detach()[0, 0]), rel=1e-3)


def test_optimizer_args_override_the_tables_defaults():
    params = [{"params": [torch.nn.Parameter(torch.ones(3))], "lr": 0.5}]
    sgd = optimizers.build_optimizer(_opt_config(optimizer="SGDNesterov", optimizer_args="momentum=0.5"), params)
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["nesterov"]  # the listed default kept where not overridden


def test_random_crop_and_colour_augmentation(tmp_path):
    from loratrainer.data.samples import TrainSample
    from loratrainer.train.dataset import load_training_image

    from PIL import Image

    path = tmp_path / "a.png"
    ramp = Image.new("RGB", (96, 64))  # a horizontal ramp shows where the crop was taken
    ramp.putdata([(x * 2, 40, 40) for y in range(64) for x in range(96)])
    ramp.save(path)
    sample = TrainSample(path, "c", False, tmp_path, 1, False, (96, 64), (64, 64), (96, 64))
    crops = {load_training_image(sample, "#ffffff", random.Random(i), False, random_crop=True).getpixel((0, 0))[0]
             for i in range(12)}
    assert len(crops) > 3  # different offsets
    centre = load_training_image(sample, "#ffffff", random.Random(0), False).getpixel((0, 0))[0]
    assert centre == 32  # (96 - 64) / 2 = 16 px in, ramp value 2 x 16
    shifted = {load_training_image(sample, "#ffffff", random.Random(i), False, color_aug=True).getpixel((10, 10))
               for i in range(8)}
    assert len(shifted) > 1


# -- the training batches and items (train/dataset.py), without a model ----------------------------------------------------

def _samples(n: int, repeats: int = 1, reg: int = 0):
    from pathlib import Path

    from loratrainer.data.samples import TrainSample

    return [TrainSample(Path(f"/d/img{i}.png"), f"cap {i}", False, Path("/d"), repeats, i >= n - reg, (64, 64), (64, 64), (64, 64))
            for i in range(n)]


def _keys(sampler) -> list:
    return [key for batch in sampler for key in batch]


def test_train_dataset_splits_the_epochs_batches_between_processes_as_accelerate_pads_them():
    from loratrainer.data.steps import epoch_batches
    from loratrainer.train.dataset import EpochBatchSampler

    samples = _samples(5)
    order = [[samples.index(s) for s in b] for b in epoch_batches(samples, 1, 42, 1)]  # 5 batches of 1
    for world, expected in [(1, [order]), (2, [order[0::2], order[1::2] + [order[0]]]),
                            (3, [[order[0], order[3]], [order[1], order[4]], [order[2], order[0]]])]:
        got = [process_batches(samples, 1, 42, 1, rank, world) for rank in range(world)]
        assert got == expected, world  # batch i goes to process i % world; the list is padded from its start
        assert [len(EpochBatchSampler(samples, 1, 42, rank, world)) for rank in range(world)] == [len(e) for e in expected]


def test_train_dataset_counts_each_images_uses_over_the_whole_epoch_so_any_process_gets_the_same_noise():
    from loratrainer.train.dataset import EpochBatchSampler

    samples = _samples(3, repeats=3)  # every image 3 times an epoch
    one = _keys(EpochBatchSampler(samples, 1, 7, 0, 1))
    uses: dict[int, list[int]] = {}
    for i, epoch, b, slot, use in one:
        uses.setdefault(i, []).append(use)
        assert (epoch, slot) == (1, 0)
    assert uses == {0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2]}  # the k-th use, in the order of the batch list
    two = _keys(EpochBatchSampler(samples, 1, 7, 0, 2)) + _keys(EpochBatchSampler(samples, 1, 7, 1, 2))
    assert sorted({(i, u) for i, _, _, _, u in two}) == sorted((i, u) for i, _, _, _, u in one)


def test_train_dataset_sampler_starts_at_epoch_1_and_a_resume_skips_what_was_trained():
    from loratrainer.train.dataset import EpochBatchSampler

    samples = _samples(4)
    sampler = EpochBatchSampler(samples, 1, 3, 0, 1)
    fresh = list(sampler)
    assert len(fresh) == len(sampler) == 4 and {k[1] for b in fresh for k in b} == {1}
    assert [b[0][2] for b in fresh] == [0, 1, 2, 3]
    sampler.set_epoch(2, skip_batches=3)
    rest = list(sampler)
    assert len(sampler) == 1 and len(rest) == 1 and rest[0][0][1:3] == (2, 3)  # epoch 2's batch 3, numbered as such
    assert [i for i, *_ in rest[0]] == process_batches(samples, 1, 3, 2, 0, 1)[3]
    sampler.set_epoch(3)  # the next epoch, not a resume: all of it
    assert len(sampler) == len(list(sampler)) == 4


def test_train_dataset_loader_keeps_workers_only_when_there_are_workers():
    from loratrainer.train.dataset import EpochBatchSampler, TrainDataset, build_loader

    samples = _samples(2)
    ds = TrainDataset(samples, _opt_config(), seed=1, latents={0: (torch.zeros(1), None), 1: (torch.ones(1), None)})
    sampler = EpochBatchSampler(samples, 1, 1, 0, 1)
    # persistent workers asked with 0 workers: loads in the training process (torch refuses persistent without workers)
    loader = build_loader(ds, sampler, _opt_config(max_data_loader_n_workers=0, persistent_data_loader_workers=True))
    assert loader.num_workers == 0 and not loader.persistent_workers and len(list(loader)) == 2
    loader = build_loader(ds, sampler, _opt_config(max_data_loader_n_workers=1, persistent_data_loader_workers=True))
    assert loader.num_workers == 1 and loader.persistent_workers


def test_train_dataset_noise_seed_is_a_63_bit_hash_of_seed_epoch_image_and_use():
    import hashlib

    from loratrainer.train.dataset import noise_seed

    expected = int.from_bytes(hashlib.blake2b(b"loratrainer-noise:42:3:5:1", digest_size=8).digest(), "little") >> 1
    assert noise_seed(42, 3, 5, 1) == expected
    seeds = {noise_seed(s, e, i, u) for s in (1, 2) for e in (1, 2) for i in (0, 1) for u in (0, 1)}
    assert len(seeds) == 16 and all(0 <= x < 2**63 for x in seeds)  # torch.Generator.manual_seed takes it


def test_train_dataset_items_and_batches_carry_what_the_loop_reads():

    from loratrainer.train.dataset import TrainDataset, collate, noise_seed

    samples = _samples(2, reg=1)
    latents = {0: (torch.zeros(4, 8, 8), torch.ones(4, 8, 8)), 1: (torch.full((4, 8, 8), 2.0), None)}
    ds = TrainDataset(samples, _opt_config(), seed=9, latents=latents)
    assert len(ds) == 2
    a, b = ds[(0, 2, 5, 0, 1)], ds[(1, 2, 5, 1, 0)]
    assert (a["caption"], a["is_reg"], a["noise_seed"]) == ("cap 0", False, noise_seed(9, 2, 0, 1))
    assert (b["caption"], b["is_reg"], b["noise_seed"]) == ("cap 1", True, noise_seed(9, 2, 1, 0))
    assert torch.equal(a["latents"], torch.zeros(4, 8, 8))  # no flip asked: the plain latents
    flipping = TrainDataset(samples, _opt_config(flip_aug=True), seed=9, latents=latents)
    got = {float(flipping[(0, 1, k, 0, 0)]["latents"].mean()) for k in range(20)}
    assert got == {0.0, 1.0}  # flip_aug: the cached flipped latents about half of the draws
    batch = collate([a, b])
    assert batch["latents"].shape == (2, 4, 8, 8) and batch["captions"] == ["cap 0", "cap 1"]
    assert batch["is_reg"].dtype == torch.bool and batch["is_reg"].tolist() == [False, True]
    assert batch["noise_seeds"] == [a["noise_seed"], b["noise_seed"]]
    pixels = collate([{"pixels": torch.zeros(3, 2, 2), "caption": "", "is_reg": False, "noise_seed": 1}])
    assert "pixels" in pixels and "latents" not in pixels


def test_train_dataset_image_tensor_and_hue_shift():
    from PIL import Image

    from loratrainer.train.dataset import image_tensor, shift_hue

    t = image_tensor(Image.new("RGB", (3, 2), (255, 0, 0)))
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32  # (channels, height, width) as the VAE takes it
    assert t[0].eq(1.0).all() and t[1].eq(-1.0).all() and t[2].eq(-1.0).all()  # [0, 255] -> [-1, 1], red first
    grey = Image.new("RGB", (2, 2), (128, 128, 128))
    assert shift_hue(grey, 0.03).tobytes() == grey.tobytes()  # no hue to shift
    green = Image.new("RGB", (2, 2), (0, 255, 0))
    r, g, b = shift_hue(green, 1 / 3).getpixel((0, 0))  # a third of the hue circle: green -> blue
    assert b > 200 and r < 30 and g < 30, (r, g, b)
    r, g, b = shift_hue(green, -1 / 3).getpixel((0, 0))  # and the other way: green -> red
    assert r > 200 and g < 30 and b < 30, (r, g, b)



def test_train_dataset_colour_augmentation_shifts_hue_by_at_most_sd_scripts_8_of_180(tmp_path):
    # sd-scripts: albumentations HueSaturationValue(hue_shift_limit=8), in OpenCV's hue units of 180 to the circle:
    # at most 8/180 of the circle either way, which is 11 of the 256 hue steps of PIL's HSV
    from PIL import Image

    from loratrainer.data.samples import TrainSample
    from loratrainer.train.dataset import load_training_image

    path = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(path)
    sample = TrainSample(path, "c", False, tmp_path, 1, False, (64, 64), (64, 64), (64, 64))
    hues = []
    for i in range(300):
        image = load_training_image(sample, "#ffffff", random.Random(i), False, color_aug=True)
        h = image.convert("HSV").getpixel((5, 5))[0]
        hues.append(h - 256 if h > 128 else h)  # red is hue 0: the shift, signed
    # 11 steps either way; PIL's HSV -> RGB -> HSV round trip of pure red reads a shift of -k as -k and +k as k - 1
    assert (min(hues), max(hues)) == (-11, 10) and len(set(hues)) > 15
