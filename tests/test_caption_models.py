"""BLIP, GIT and a WD14-style tagger end to end, with tiny random models the tests build and save themselves.

Random weights generate gibberish: the tests check structure (files written, prefix and postfix, counts,
skips, backups), and for the tagger, whose tiny ONNX model is built by hand, the exact tags.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from loratrainer.caption import BlipOptions, CaptionRunOptions, TaggerOptions, caption_folder
from loratrainer.cli import main
from loratrainer.errors import UserError
from loratrainer.compat import hide_broken_torchvision
from tests.datasets import RED, make_caption, make_image, make_truncated_jpeg

hide_broken_torchvision()  # the tests import transformers themselves, before any captioner does
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]
TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
TINY_VISION = dict(TINY, image_size=32, patch_size=8)


def _tokenizer(folder: Path):
    from transformers import BertTokenizer

    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"))


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("tiny-blip")
    text = dict(TINY, vocab_size=len(VOCAB), max_position_embeddings=64, bos_token_id=2, sep_token_id=3,
                pad_token_id=0, eos_token_id=3)
    config = BlipConfig(text_config=text, vision_config=TINY_VISION, projection_dim=32, image_text_hidden_size=32)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), _tokenizer(folder)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def git_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    folder = tmp_path_factory.mktemp("tiny-git")
    config = GitConfig(vision_config=TINY_VISION, vocab_size=len(VOCAB), max_position_embeddings=64, bos_token_id=2,
                       eos_token_id=3, pad_token_id=0, **TINY)
    torch.manual_seed(0)
    GitForCausalLM(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    GitProcessor(images, _tokenizer(folder)).save_pretrained(folder)
    return folder


# The tiny tagger: tag probabilities from the mean of each input channel, so the expected tags are known.
# Columns of the MatMul read the channels in BGR order, as the real taggers do: (B, G, R) weights, bias.
TAGS = [  # name, category, (wB, wG, wR), bias
    ("general", 9, (0, 0, 0), 2.0),
    ("sensitive", 9, (0, 0, 0), 0.0),
    ("questionable", 9, (0, 0, 0), -1.0),
    ("explicit", 9, (0, 0, 0), -2.0),
    ("red_hair", 0, (0, 0, 0.1), -12.8),  # on when red is high
    ("blue_sky", 0, (0.1, 0, 0), -12.8),  # on when blue is high: a tagger fed RGB would say this for red
    ("^_^", 0, (0, 0, 0), 5.0),  # always on; a kaomoji keeps its underscore
    ("solo", 0, (0, 0, 0), -0.6),  # p = 0.354: just over the 0.35 default threshold
    ("hatsune_miku", 4, (0, 0, 0.1), -12.8),  # a character, on with red
    ("weak_tag", 0, (0, 0, 0), -1.5),  # p = 0.18
]
SIZE = 32


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("tiny-wd14")
    weights = np.array([t[2] for t in TAGS], dtype=np.float32).T  # (3, n_tags)
    bias = np.array([t[3] for t in TAGS], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input_1:0"], ["means"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["means", "w"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
        ],
        "tiny_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(TAGS)])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    with open(folder / "selected_tags.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows([i, name, cat, 100] for i, (name, cat, _, _) in enumerate(TAGS))
    return folder


def _folder(root: Path) -> Path:
    make_image(root / "a.png", (40, 30))
    make_image(root / "b.jpg", (30, 40), RED)
    make_image(root / "c.webp", (32, 32))
    make_caption(make_image(root / "kept.png"), "hand written")
    make_truncated_jpeg(root / "broken.jpg")
    return root


def test_blip_cli_writes_captions_with_prefix_and_postfix(blip_dir, tmp_path, capsys):
    folder = _folder(tmp_path)
    argv = ["caption", str(folder), "--model", str(blip_dir), "--prefix", "sks", "--postfix", "style",
            "--batch-size", "2", "--num-beams", "2", "--min-length", "2", "--max-length", "8"]
    assert main(argv) == 0
    for stem in "abc":
        text = (folder / f"{stem}.txt").read_text(encoding="utf-8")
        assert text.startswith("sks w") and text.endswith(" style\n") and text.count("\n") == 1
    assert (folder / "kept.txt").read_text() == "hand written"
    out = capsys.readouterr().out
    assert "3 captions written" in out and "1 skipped: caption exists" in out and "broken.jpg" in out


def test_blip_sampling_and_overwrite_with_backup(blip_dir, tmp_path):
    folder = _folder(tmp_path)
    options = BlipOptions(model=str(blip_dir), beam_search=False, top_p=0.5, min_length=1, max_length=6)
    report = caption_folder(CaptionRunOptions(folder, overwrite=True, batch_size=3), options)
    assert len(report.written) == 4 and report.skipped_existing == []
    assert (report.backup_dir / "kept.txt").read_text() == "hand written"
    assert (folder / "kept.txt").read_text() != "hand written"


def test_git_cli(git_dir, tmp_path, capsys):
    folder = _folder(tmp_path)
    assert main(["caption", str(folder), "--captioner", "git", "--model", str(git_dir), "--max-length", "6",
                 "--prefix", "sks"]) == 0
    assert all((folder / f"{s}.txt").read_text().startswith("sks w") for s in "abc")
    assert "3 captions written" in capsys.readouterr().out


def test_tagger_tags_follow_the_bgr_convention_thresholds_and_order(tagger_dir, tmp_path):
    make_image(tmp_path / "red.png", (40, 40), RED)
    make_image(tmp_path / "wide_red.png", (64, 16), RED)  # padded with white to a square, resized to 32
    make_image(tmp_path / "green.png", (40, 40))
    report = caption_folder(CaptionRunOptions(tmp_path, prefix="sks"), TaggerOptions(model=str(tagger_dir)))
    assert len(report.written) == 3
    assert (tmp_path / "red.txt").read_text() == "sks, hatsune miku, red hair, ^_^, solo\n"
    assert (tmp_path / "green.txt").read_text() == "sks, ^_^, solo\n"
    # padded with white to a square: 3/4 of it is white, so blue is high too (a black pad would not say blue sky)
    assert (tmp_path / "wide_red.txt").read_text() == "sks, hatsune miku, red hair, blue sky, ^_^, solo\n"


def test_tagger_options(tagger_dir, tmp_path):
    make_image(tmp_path / "red.png", (40, 40), RED)
    options = TaggerOptions(model=str(tagger_dir), general_threshold=0.1, character_threshold=1.0,
                            undesired_tags=("red_hair",), tag_separator=" | ", include_rating=True,
                            replace_underscores=False)
    caption_folder(CaptionRunOptions(tmp_path), options)
    assert (tmp_path / "red.txt").read_text() == "general | ^_^ | solo | weak_tag\n"


def test_tagger_cli_thresholds_and_bad_folder(tagger_dir, tmp_path, capsys):
    make_image(tmp_path / "img" / "red.png", (40, 40), RED)
    argv = ["caption", str(tmp_path / "img"), "--captioner", "wd14", "--model", str(tagger_dir)]
    assert main([*argv, "--thresholds", "0.5", "0.5", "--undesired-tags", "^_^, red hair"]) == 0
    assert (tmp_path / "img" / "red.txt").read_text() == "hatsune miku\n"
    empty = tmp_path / "empty-model"
    empty.mkdir()
    assert main(["caption", str(tmp_path / "img"), "--captioner", "wd14", "--model", str(empty), "--overwrite"]) == 2
    assert "lacks model.onnx and selected_tags.csv" in capsys.readouterr().err


def test_tagger_without_onnxruntime_says_what_to_install(tagger_dir, tmp_path, monkeypatch):
    make_image(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match="pip install onnxruntime"):
        caption_folder(CaptionRunOptions(tmp_path), TaggerOptions(model=str(tagger_dir)))


@pytest.mark.parametrize("captioner", ["blip", "git", "wd14"])
def test_offline_hub_id_gives_one_clear_message(tmp_path, capsys, monkeypatch, captioner):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_image(tmp_path / "a.png")
    make_caption(tmp_path / "a.png", "old")
    argv = ["caption", str(tmp_path), "--captioner", captioner, "--model", "no-such-user/made-up-captioner-7"]
    rc = main([*argv, "--overwrite"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "no-such-user/made-up-captioner-7" in err and "Download it once" in err and "local folder" in err
    assert (tmp_path / "a.txt").read_text() == "old" and not (tmp_path / ".caption-backups").exists()


def test_missing_local_model_folder(tmp_path, capsys):
    make_image(tmp_path / "a.png")
    assert main(["caption", str(tmp_path), "--model", str(tmp_path / "models" / "blip")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_model_for_another_captioner_is_refused_not_loaded_with_random_weights(git_dir, blip_dir, tmp_path, capsys):
    make_image(tmp_path / "a.png")
    assert main(["caption", str(tmp_path), "--model", str(git_dir)]) == 2  # BLIP (the default) given a GIT folder
    assert "is a 'git' model, not a 'blip' model: choose the git captioner" in capsys.readouterr().err
    assert main(["caption", str(tmp_path), "--captioner", "git", "--model", str(blip_dir)]) == 2
    assert "choose the blip captioner" in capsys.readouterr().err
    assert not (tmp_path / "a.txt").exists()


def _damage_safetensors(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _damage_onnx(folder: Path) -> None:
    (folder / "model.onnx").write_bytes(b"not a model")


def _damage_tags(folder: Path) -> None:
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n0,general,rating,1\n")


@pytest.mark.parametrize("captioner, damage, says", [
    ("blip", _damage_safetensors, "cannot load the model in"),
    ("wd14", _damage_onnx, "cannot load the tagger model"),
    ("wd14", _damage_tags, "is not a tagger tag list"),
])
def test_a_damaged_model_folder_is_one_line_not_a_traceback(request, tmp_path, capsys, captioner, damage, says):
    import shutil

    model = shutil.copytree(request.getfixturevalue("blip_dir" if captioner == "blip" else "tagger_dir"),
                            tmp_path / "model")
    damage(model)
    make_caption(make_image(tmp_path / "img" / "a.png"), "old")
    assert main(["caption", str(tmp_path / "img"), "--captioner", captioner, "--model", str(model), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len([x for x in err.splitlines() if x.startswith("error")]) == 1
    assert (tmp_path / "img" / "a.txt").read_text() == "old" and not (tmp_path / "img" / ".caption-backups").exists()


@pytest.mark.parametrize("captioner", ["blip", "git", "wd14"])
def test_acceptance_every_captioner_keeps_backs_up_refuses_and_skips(request, tmp_path, capsys, captioner):
    """Issue 6's acceptance lines, the same for each model path: prefix and postfix, existing captions
    byte-identical after a default run, backups on overwrite, a truncated image listed, duplicate stems refused."""
    model = request.getfixturevalue({"blip": "blip_dir", "git": "git_dir", "wd14": "tagger_dir"}[captioner])
    folder = _folder(tmp_path / "img")
    kept = make_caption(folder / "kept.png", "hand written\r\n", bom=True).read_bytes()
    argv = ["caption", str(folder), "--captioner", captioner, "--model", str(model), "--prefix", "sks",
            "--postfix", "style", *(["--max-length", "6"] if captioner != "wd14" else [])]
    sep = ", " if captioner == "wd14" else " "

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 captions written" in out and "1 skipped: caption exists" in out and "broken.jpg" in out
    assert (folder / "kept.txt").read_bytes() == kept and not (folder / "broken.txt").exists()
    first = {s: (folder / f"{s}.txt").read_bytes() for s in "abc"}
    for text in first.values():
        assert text.startswith(f"sks{sep}".encode()) and text.endswith(f"{sep}style\n".encode())

    assert main([*argv, "--overwrite"]) == 0
    backup = next((folder / ".caption-backups").iterdir())
    assert (backup / "kept.txt").read_bytes() == kept
    assert {s: (backup / f"{s}.txt").read_bytes() for s in "abc"} == first
    assert (folder / "kept.txt").read_bytes().startswith(f"sks{sep}".encode())

    make_image(folder / "a.jpg")
    before = {p: p.read_bytes() for p in folder.glob("*.txt")}
    assert main([*argv, "--overwrite"]) == 2
    assert "a.jpg" in capsys.readouterr().err and {p: p.read_bytes() for p in folder.glob("*.txt")} == before


@pytest.mark.parametrize("options, sent", [
    (dict(num_beams=3, top_p=0.5, min_length=2, max_length=7),  # beam search: top_p is not used
     dict(do_sample=False, num_beams=3, min_length=2, max_length=7)),
    (dict(beam_search=False, num_beams=3, top_p=0.5, min_length=2, max_length=7),  # sampling: one beam, top_p
     dict(do_sample=True, num_beams=1, top_p=0.5, min_length=2, max_length=7)),
])
def test_blip_generation_settings_reach_the_model_as_kohya_uses_them(blip_dir, options, sent):
    from PIL import Image

    from loratrainer.caption import make_captioner

    captioner = make_captioner(BlipOptions(model=str(blip_dir), **options))
    seen, generate = [], captioner.model.generate

    def spy(**kwargs):
        ids = generate(**kwargs)
        seen.append((kwargs, ids.shape[-1]))
        return ids

    captioner.model.generate = spy
    assert len(captioner.caption([Image.new("RGB", (40, 30), "red")] * 2)) == 2
    (kwargs, length), = seen
    assert {k: v for k, v in kwargs.items() if k != "pixel_values"} == sent and 2 <= length <= 7


@pytest.mark.parametrize("captioner", ["blip", "wd14"])
def test_a_local_model_folder_works_without_network_and_never_asks_the_hub(request, tmp_path, captioner):
    """No HF_HUB_OFFLINE here (conftest sets it): a hub name that does not resolve would show as retries."""
    import os
    import subprocess

    model = request.getfixturevalue("blip_dir" if captioner == "blip" else "tagger_dir")
    make_image(tmp_path / "img" / "a.png", (40, 30), RED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_ENDPOINT="https://hub.invalid", HF_HOME=str(tmp_path / "hf-home"))
    done = subprocess.run([sys.executable, "-m", "loratrainer", "caption", str(tmp_path / "img"), "--captioner",
                           captioner, "--model", str(model), "--max-length", "6"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and "1 captions written" in done.stdout, done.stderr
    assert "hub.invalid" not in done.stderr and "Retrying" not in done.stderr, done.stderr


@pytest.mark.parametrize("device, says", [("gpu", "is not a device"), ("cuda:99", "CUDA GPU")])
def test_a_device_that_cannot_be_used_is_one_line(blip_dir, tmp_path, capsys, device, says):
    make_image(tmp_path / "a.png")
    assert main(["caption", str(tmp_path), "--model", str(blip_dir), "--device", device]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and not (tmp_path / "a.txt").exists()


@pytest.mark.parametrize("device, says", [("gpu", "is not a device"), ("cuda", "pip install onnxruntime-gpu")])
def test_tagger_device_that_cannot_be_used_is_one_line(tagger_dir, tmp_path, capsys, device, says):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and device == "cuda":
        pytest.skip("this onnxruntime can use the GPU")
    make_image(tmp_path / "a.png")
    assert main(["caption", str(tmp_path), "--captioner", "wd14", "--model", str(tagger_dir), "--device", device]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "a.txt").exists()
