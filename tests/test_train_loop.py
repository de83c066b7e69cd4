"""The loop in-process on the tiny model: it learns, a zero learning rate changes nothing, the step count."""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import torch
from accelerate import Accelerator

from loratrainer.train.loop import compute_loss, train
from loratrainer.train.setup import build_trainer


class _Quiet:
    def __init__(self):
        self.losses = []

    def step(self, step, epoch, loss, lr):
        self.losses.append(loss)

    def epoch_end(self, epoch, step):
        pass


def _trainer(tmp_path, model, **values):
    config = small_config(tmp_path, model, **values)
    t = build_trainer(config, tmp_path, Accelerator(cpu=True), seed=7)
    saved = []  # (kind, step, epoch) of every file the loop saved
    from loratrainer.train.saving import Saver

    t.saver = saver = Saver(t, write=lambda path, p: None)
    save = saver.save

    def recording(kind, p=None):
        p = p or saver.progress()
        saved.append((kind, p.step, p.epoch))
        save(kind, p)

    saver.save = recording
    return t, saved


def _fixed_eval_loss(t, batch, n=8) -> float:
    """The loss over fixed noise and timesteps, so that before/after differ only by the weights."""
    with torch.no_grad():
        state = torch.random.get_rng_state()
        torch.manual_seed(1234)
        losses = [compute_loss(t, batch).item() for _ in range(n)]
        torch.random.set_rng_state(state)
    return sum(losses) / len(losses)


def test_training_lowers_the_loss_on_a_fixed_evaluation(tmp_path, tiny_model):
    t, saved = _trainer(tmp_path, tiny_model, images=1, repeats=64, epoch=1, train_batch_size=4,
                        learning_rate=1e-2, unet_lr=1e-2, text_encoder_lr=0, network_dim=8, network_alpha=8)
    batch = next(iter(t.loader))
    before = _fixed_eval_loss(t, batch)
    outcome = train(t, _Quiet())
    after = _fixed_eval_loss(t, batch)
    assert outcome.status == "finished" and outcome.step == t.total_steps == 16
    print("fixed-evaluation loss before/after", before, after)
    assert after < 0.8 * before, (before, after)


def test_zero_learning_rate_leaves_lora_up_zero(tmp_path, tiny_model):
    t, _ = _trainer(tmp_path, tiny_model, epoch=1)
    for group in t.optimizer.param_groups:
        group["lr"] = 0.0
    t.lr_scheduler.base_lrs = [0.0] * len(t.lr_scheduler.base_lrs)
    train(t, _Quiet())
    ups = [p for n, p in t.handle.unet.named_parameters() if ".lora_B." in n]
    ups += [p for n, p in t.handle.text_encoder.named_parameters() if ".lora_B." in n]
    assert ups and all(torch.count_nonzero(p) == 0 for p in ups)


def test_the_loop_runs_the_planned_steps_with_accumulation_and_saves_by_policy(tmp_path, tiny_model):
    # 3 images x 2 repeats at batch 2 = 3 batches; accumulation 2 -> 2 steps per epoch (the last one short)
    t, saved = _trainer(tmp_path, tiny_model, epoch=3, gradient_accumulation_steps=2, save_every_n_steps=3)
    steps, backwards = _count_calls(t.optimizer, "step"), _count_calls(t.accelerator, "backward")
    before = [p.detach().clone() for p in t.params]
    outcome = train(t, _Quiet())
    assert t.report.steps.steps_per_epoch == 2 and outcome.step == 6
    # the optimizer really stepped once per counted step, over 3 micro-batches per epoch (2 + a short 1)
    assert steps() == 6 and backwards() == 9 and t.lr_scheduler.last_epoch == 6
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, t.params))  # and the LoRA weights moved
    assert saved == [("epoch", 2, 1), ("step", 3, 2), ("epoch", 4, 2), ("epoch", 6, 3), ("final", 6, 3)]


def _count_calls(obj, name: str):
    calls = []
    real = getattr(obj, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    setattr(obj, name, counted)
    return lambda: len(calls)


def test_an_epoch_cut_short_by_max_train_steps_gets_no_epoch_file(tmp_path, tiny_model):
    t, saved = _trainer(tmp_path, tiny_model, max_train_steps=5)  # 3 steps per epoch: the second epoch stops at 5
    train(t, _Quiet())
    assert saved == [("epoch", 3, 1), ("final", 5, 2)]


def test_regularisation_images_double_the_steps_and_carry_the_prior_weight(tmp_path, tiny_model):
    from tests.datasets import make_dataset

    reg = make_dataset(tmp_path / "reg", {"1_person": 6})
    t, saved = _trainer(tmp_path, tiny_model, epoch=1, reg_data_dir=str(reg), prior_loss_weight=0.5)
    assert t.report.steps.reg_samples_per_epoch == 6 and t.total_steps == 6  # 6 train + 6 reg samples, batch 2
    seen = []
    t.loader.collate_fn = _recording(t.loader.collate_fn, seen)
    weighted = []
    from loratrainer.train import loop

    def recording_weights(scheduler, timesteps, is_reg, s, prior_loss_weight=1.0):
        w = loop_sample_weights(scheduler, timesteps, is_reg, s, prior_loss_weight)
        weighted.append((is_reg.clone(), w.detach().clone()))
        return w

    loop_sample_weights = loop.sample_weights
    loop.sample_weights = recording_weights
    try:
        assert train(t, _Quiet()).step == 6
    finally:
        loop.sample_weights = loop_sample_weights
    assert sum(seen) == 6  # every reg sample went through the loss once
    # ... weighted by prior_loss_weight, the training images by 1, in the loss the loop optimises
    reg = torch.cat([r for r, _ in weighted])
    weights = torch.cat([w for _, w in weighted])
    assert int(reg.sum()) == 6 and torch.all(weights[reg] == 0.5) and torch.all(weights[~reg] == 1.0)


def _recording(collate, seen):
    def wrapped(items):
        batch = collate(items)
        seen.append(int(batch["is_reg"].sum()))
        return batch

    return wrapped


def test_locon_network_weights_continue_from_a_saved_file(tmp_path, tiny_model):
    from loratrainer.model.kohya_format import lora_state_dict
    from loratrainer.model.saving import save_lora

    first, _ = _trainer(tmp_path / "a", tiny_model, epoch=1, lora_type="LoCon", conv_dim=2, conv_alpha=1, learning_rate=1e-2, unet_lr=1e-2)
    train(first, _Quiet())
    state = lora_state_dict(first.handle, "float")
    assert any("resnets" in k for k in state)  # LoCon adapted the 3x3 convolutions
    save_lora(tmp_path / "start.safetensors", state, {})
    second, _ = _trainer(tmp_path / "b", tiny_model, epoch=1, lora_type="LoCon", conv_dim=2, conv_alpha=1,
                         network_weights=str(tmp_path / "start.safetensors"))
    again = lora_state_dict(second.handle, "float")
    assert all(torch.allclose(state[k], again[k]) for k in state)


def test_gradient_checkpointing_is_on_in_both_trained_models_and_training_still_runs(tmp_path, tiny_model):
    t, _ = _trainer(tmp_path, tiny_model, epoch=1, gradient_checkpointing=True)
    assert t.components.unet.is_gradient_checkpointing and t.components.text_encoder.is_gradient_checkpointing
    assert t.components.unet.training and t.components.text_encoder.training  # checkpointing acts only in train mode
    assert train(t, _Quiet()).status == "finished"
