"""Messages that come from the rest of the program (dataset problems, start refusals, how a run ended) are said
in the page's language: every coded message has a Korean template, and a Korean page shows a broken dataset,
a refused start and a failed run without one English sentence (file names, setting names and quoted errors
aside). The CLI keeps its English lines, which are the same messages rendered in English."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from loratrainer.gui.i18n import Translator, table
from tests.datasets import make_caption, make_concept, make_image, make_junk, make_truncated_jpeg, make_zero_byte
from tests.i18n_audit import message_templates

HANGUL = re.compile(r"[\uac00-\ud7a3]")
# Two English words in a row, once file names, paths, `code`, setting names and severity columns are taken out.
ENGLISH_PHRASE = re.compile(r"\b[A-Za-z]{2,}[,:;]?\s+[A-Za-z]{2,}\b")


def english_phrases(text: str) -> list[str]:
    """Runs of two English words; what is taken out first (names, paths, quoted text) leaves a mark that breaks
    a run, so a list of setting names is not a sentence."""
    cut = " \u00a7 "
    text = re.sub(r"`[^`]*`|'[^']*'", cut, text)  # quoted names and error details (' inside code blocks)
    text = re.sub(r"\S*[/\\]\S*", cut, text)  # paths
    text = re.sub(r"\S+\.[A-Za-z0-9]{2,}\b", cut, text)  # file names, dotted setting names
    text = re.sub(r"\S*_\S*", cut, text)  # setting and folder names (bucket_reso_steps, 10_dog)
    text = re.sub(r"\b(SD1\.5|MB|px|UTF-8|png|jpg|jpeg|webp|bmp|LoRA|NaN|bf16|GPU|Stable Diffusion|Kohya GUI|Weights & Biases|Hugging Face)\b", cut, text)
    return ENGLISH_PHRASE.findall(text)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_coded_message_has_a_korean_template_with_the_same_placeholders():
    templates = message_templates()
    ko = table("ko")
    assert len(templates) > 40
    missing = [code for code in templates if not ko.get(f"msg.{code}", "").strip()]
    assert missing == []
    differ = [code for code, text in templates.items() if _fields(text) != _fields(ko[f"msg.{code}"])]
    assert differ == []
    names = {"model.part.unet", "model.part.vae"}  # a model part's name, the same in Korean
    assert not [code for code in templates if code not in names and not HANGUL.search(ko[f"msg.{code}"])]
    # English lives beside the code, not in en.json (one source, no drift).
    assert not [k for k in table("en") if k.startswith("msg.")]


def broken_dataset(root: Path) -> Path:
    """One of (almost) every dataset problem the check can find."""
    concept = make_concept(root, "10_dog", 3, captions=False)
    make_zero_byte(concept / "empty.png")
    make_truncated_jpeg(concept / "broken.jpg")
    (concept / "notanimage.png").write_bytes(b"this is text")
    make_image(concept / "tiny.png", (16, 16))
    make_image(concept / "twin.png")
    make_image(concept / "twin.jpg")
    make_caption(concept / "latin1.png", "x")
    make_image(concept / "latin1.png")
    (concept / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    make_image(concept / "multi.png")
    (concept / "multi.txt").write_text("first line\nsecond line\n")
    (concept / "a.caption").write_text("other captions")
    (concept / "notes.doc").write_text("x")
    (concept / "sub").mkdir()
    make_junk(concept, ["Thumbs.db", ".DS_Store"])
    make_concept(root, "dog_no_repeats", 1)
    make_concept(root, "0_zero", 1)
    (root / "5_empty").mkdir()
    make_image(root / "loose.png")
    return root


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    from loratrainer.gui.server import neutralise_gradio_env

    temp = neutralise_gradio_env()
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    out = {}
    for lang in ("en", "ko"):
        state = tmp_path_factory.mktemp(f"state-{lang}")
        out[lang] = build_page(lang, Jobs(state), Display(temp / f"display-{lang}"))[1]
    return out


def _form(ui, **fields) -> dict:
    from loratrainer.config import TrainingConfig

    data = ui.show_config(TrainingConfig())
    for path, value in fields.items():
        data[ui.fields[path]] = value
    return data


def test_korean_dataset_check_of_a_broken_dataset_has_no_english_sentence(pages, tmp_path):
    root = broken_dataset(tmp_path / "img")
    fields = {"folders.train_data_dir": str(root), "buckets.bucket_reso_steps": 48}
    out = {}
    for lang, ui in pages.items():
        result = ui.handlers["dataset"].check(_form(ui, **fields))
        out[lang] = (result[ui.named["problems"]], result[ui.named["problem_images"]], result[ui.named["check_summary"]])
    en_rows, _, _ = out["en"]
    ko_rows, ko_thumbs, ko_summary = out["ko"]
    codes = {p.code for p in result[pages["ko"].named["report"]].problems}
    assert {"check.skipped", "check.uncaptioned", "check.duplicate_stem", "folder.no_prefix", "folder.zero_repeats", "folder.no_images",
            "folder.loose_images", "folder.ignored_files", "folder.subfolders", "check.reso_steps", "check.multiline",
            "caption.not_utf8", "check.too_small_skipped"} <= codes
    assert len(ko_rows) == len(en_rows) >= 12
    # the English page shows English sentences (so the check below is not vacuous) ...
    assert all(english_phrases(row[2]) for row in en_rows)
    # ... and the Korean page shows none: every line is Korean.
    leftovers = [(row[2], english_phrases(row[2])) for row in ko_rows if english_phrases(row[2]) or not HANGUL.search(row[2])]
    assert leftovers == []
    assert not [c for _, c in ko_thumbs if english_phrases(c)]
    assert HANGUL.search(ko_summary)


def test_english_page_and_cli_say_the_same_line(pages, tmp_path):
    """The English page renders the coded message; it must equal the English line the CLI prints."""
    from loratrainer.config import TrainingConfig, with_values
    from loratrainer.data.check import check_dataset

    root = broken_dataset(tmp_path / "img")
    report = check_dataset(with_values(TrainingConfig(), {"folders.train_data_dir": str(root)}))
    en = Translator("en")
    assert [en.problem(p) for p in report.problems] == [p.message for p in report.problems]
    assert all(p.code for p in report.problems)
    assert "ERROR" in report.format_text() and "skipped: the file is empty" in report.format_text()


def test_korean_start_refusals_are_korean(pages, tmp_path):
    ui = pages["ko"]
    h = ui.handlers["training"]
    root = broken_dataset(tmp_path / "img")
    status = h.start(_form(ui, **{"folders.train_data_dir": str(root), "folders.output_dir": str(tmp_path / "model")}))[ui.named["run_message"]]
    assert status.startswith("**시작하지 않았습니다.**") and "데이터셋 확인" in status
    body = status.split("```")[1]
    assert len(body.strip().splitlines()) >= 10
    assert [line for line in body.splitlines() if english_phrases(line.split(": ", 2)[-1])] == []
    # not the dataset: the output file exists and existing_output is refuse
    make_concept(tmp_path / "ok", "10_dog", 2)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "last.safetensors").write_bytes(b"x")
    status = h.start(_form(ui, **{"folders.train_data_dir": str(tmp_path / "ok"), "folders.output_dir": str(tmp_path / "model"),
                                  "folders.output_name": "last", "saving.existing_output": "refuse", "optimizer.optimizer": "AdamW"}))[ui.named["run_message"]]
    assert "덮어쓰지 않습니다" in status and not english_phrases(status), status
    assert ui.jobs.runs() == []


def _coded_reason(name: str):
    """The coded reasons train/entry.py writes into the `ended` event (run/outcomes.py), by outcome."""
    from loratrainer.messages import Msg
    from loratrainer.run import outcomes

    return {"nan_file": outcomes.nan_at(3, 1, "/m/lora-000001.safetensors"), "nan_nothing": outcomes.nan_at(3, 1, None),
            "oom": outcomes.oom_at("sampling", 3, 4, 512), "disk_full": Msg.of("run.disk_full_at", path="/x/a.safetensors"),
            "error": Msg.of("run.error_detail", detail="ValueError: bad thing happened")}[name]


@pytest.mark.parametrize(
    "status,coded,expected,english",
    [
        ("nan", "nan_file", "lora-000001", "The last good file is /m/lora-000001.safetensors"),
        ("nan", "nan_nothing", "저장된 파일이 없습니다", "No file was saved"),
        ("oom", "oom", "3 스텝 후", "while sample images were made after 3 steps (batch size 4, resolution 512)"),
        ("disk_full", "disk_full", "/x/a.safetensors", "Could not write /x/a.safetensors"),
        ("error", "error", "`ValueError: bad thing happened`", "ValueError: bad thing happened"),
    ],
)
def test_korean_run_end_reasons_are_korean(tmp_path, status, coded, expected, english):
    """The trainer's `ended` event carries its reason coded: the Korean page says it in Korean, the English page in
    English (the event's English `reason`, which the CLI prints, is not what the page shows)."""
    from loratrainer.run import events, outcomes
    from loratrainer.run import files as run_files
    from loratrainer.gui.jobs import Jobs
    from loratrainer.gui.run_view import status_line

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    msg = _coded_reason(coded)
    with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
        w.emit("started", total_steps=8, steps_per_epoch=4, epochs=2, num_processes=1, images=4, samples_per_epoch=4, seed=1, pid=999999)
        w.emit("ended", status=status, reason="the trainer's English words", step=3, epoch=1, exit_code=1, msg=outcomes.to_event(msg))
    view = Jobs(tmp_path / "state").view(run_dir)
    ko = status_line(view, Translator("ko"))
    assert expected in ko and HANGUL.search(ko)
    assert english_phrases(ko) == [], ko
    en = status_line(view, Translator("en"))
    assert english in en and "English words" not in en


def test_the_queue_says_why_each_run_ended_in_the_page_language(pages, tmp_path, monkeypatch):
    """The Queue table's Reason comes from each run's events (the page's one reader): after Stop it says where the run
    stopped and what it saved (the queue file's reason is empty then), an out-of-memory run says it in Korean."""
    from loratrainer.config import TrainingConfig, with_values
    from loratrainer.launch.run_queue import RunQueue
    from loratrainer.run import events, outcomes
    from loratrainer.run import files as run_files

    monkeypatch.setenv("LORATRAINER_CONFIG_DIR", str(tmp_path / "config"))
    queue = RunQueue(tmp_path / "config")
    rows = {}
    for name, status, ended, saved in (("stopped", "stopped", {"reason": ""}, "stopped-interrupted.safetensors"),
                                       ("oom", "oom", {"reason": "out of GPU memory ...", "msg": outcomes.to_event(outcomes.oom_at("training", 5, 2, 512))}, None)):
        run_dir = tmp_path / "log" / f"{name}_20260101-000000"
        run_dir.mkdir(parents=True)
        with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
            w.emit("started", total_steps=8, steps_per_epoch=4, epochs=2, num_processes=1, images=4, seed=1, pid=999999)
            if saved:
                w.emit("checkpoint", path=str(tmp_path / "model" / saved), kind="interrupted", epoch=2, step=5)
            w.emit("ended", status=status, step=5, epoch=2, exit_code=events.EXIT_CODES[status], **ended)
        item = queue.add(with_values(TrainingConfig(), {"output_name": name}))
        queue.update(item.id, status=status, run_dir=str(run_dir), reason="")  # what the runner records after Stop
        rows[name] = item.id
    ko = {row[1]: row[5] for row in pages["ko"].handlers["queue"].refresh()[pages["ko"].named["queue_table"]]}
    en = {row[1]: row[5] for row in pages["en"].handlers["queue"].refresh()[pages["en"].named["queue_table"]]}
    assert en[rows["stopped"]] == "Stopped at step 5; saved stopped-interrupted.safetensors."
    assert "5 스텝에서 중지했습니다" in ko[rows["stopped"]] and "stopped-interrupted.safetensors" in ko[rows["stopped"]]
    assert en[rows["oom"]] == "It happened in a training step after 5 steps (batch size 2, resolution 512)."
    assert "학습 스텝 중" in ko[rows["oom"]] and english_phrases(ko[rows["oom"]]) == []


def test_a_run_ended_before_reasons_were_coded_still_says_how_it_ended(tmp_path):
    """An events.jsonl of an older trainer (an English `reason`, no `msg`): the Korean page says the outcome in Korean
    and quotes the trainer's English reason as the detail; the English page says the reason as it is."""
    from loratrainer.run import events
    from loratrainer.run import files as run_files
    from loratrainer.gui.jobs import Jobs
    from loratrainer.gui.run_view import status_line

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    reason = "out of GPU memory during training at batch size 4, resolution 512,512: lower train_batch_size"
    (run_dir / run_files.EVENTS_FILE).write_text(
        '{"event": "started", "time": "2026-01-01T00:00:00.000+00:00", "total_steps": 8, "steps_per_epoch": 4, "epochs": 2, "seed": 1, "pid": 999999}\n'
        '{"event": "ended", "time": "2026-01-01T00:01:00.000+00:00", "status": "oom", "reason": "' + reason + '", "step": 3, "epoch": 1, "exit_code": 12}\n')
    view = Jobs(tmp_path / "state").view(run_dir)
    assert view.outcome == "oom" and not view.alive
    ko = status_line(view, Translator("ko"))
    assert ko.startswith("GPU 메모리가 부족합니다.") and f"`{reason}`" in ko and english_phrases(ko) == [], ko
    assert reason in status_line(view, Translator("en"))


def test_korean_kohya_import_and_export_reports_are_korean(pages, tmp_path):
    """The report of what a Kohya config import changed or ignored, and of a Kohya export, on the Korean page."""
    import json

    ui = pages["ko"]
    h = ui.handlers["training"]
    kohya = {
        "LoRA_type": "LyCORIS/LoCon", "use_8bit_adam": True, "optimizer": "AdamW", "lora_network_weights": "",
        "max_train_epochs": "", "save_model_as": "ckpt", "wandb_api_key": "secret", "mem_eff_attn": True,
        "noise_offset_type": "Multires", "noise_offset": 0.1, "multires_noise_iterations": 6, "v2": False,
        "learning_rate": 0.0001, "unet_lr": "", "network_dim": "8", "epoch": 2, "caption_extension": "",
        "bucket_reso_steps": 32, "output_dir": "C:\\Users\\me\\model", "optimizer_args": '"weight_decay=0.01," "betas=0.9,0.99"',
        "additional_parameters": "--max_grad_norm=0 --lr_scheduler_type CosineAnnealingLR",
    }
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(kohya))
    data = _form(ui)
    data[ui.named["config_path"]], data[ui.named["config_upload"]] = str(path), None
    message = h.load_file(data)[ui.named["config_message"]]
    body = message.split("```")[1]
    lines = [line for line in body.strip().splitlines() if line.strip()]
    assert len(lines) >= 12, body
    leftovers = [line for line in lines if english_phrases(line)]
    assert leftovers == [], leftovers
    assert sum(1 for line in lines if HANGUL.search(line)) >= 10
    assert "secret" not in message and "(숨김)" in message
    # the English page (and the CLI) keep the English lines
    en = pages["en"]
    data = _form(en)
    data[en.named["config_path"]], data[en.named["config_upload"]] = str(path), None
    assert "MUST BE CHANGED BEFORE TRAINING" in en.handlers["training"].load_file(data)[en.named["config_message"]]
    # a file for another model family is refused, in the page's language
    path.write_text(json.dumps({**kohya, "v2": True}))
    assert "Stable Diffusion 2 config (v2 = true)" in en.handlers["training"].load_file(data)[en.named["config_message"]]
    data = _form(ui)
    data[ui.named["config_path"]], data[ui.named["config_upload"]] = str(path), None
    refused = h.load_file(data)[ui.named["config_message"]]
    assert "Stable Diffusion 2" in refused and "(v2 = true)" in refused and HANGUL.search(refused)
    assert english_phrases(refused.replace("Stable Diffusion 2", "")) == [], refused
    # export: settings Kohya cannot express
    data = _form(ui, **{"dataset.undersized_images": "refuse", "noise.multires_noise_iterations": 6, "noise.noise_offset": 0.1})
    data[ui.named["config_path"]] = str(tmp_path / "out.json")
    message = h.save_kohya(data)[ui.named["config_message"]]
    body = message.split("```")[1]
    lines = [line for line in body.strip().splitlines() if line.strip()]
    assert lines and [line for line in lines if english_phrases(line)] == []


def test_every_launch_refusal_is_a_coded_message():
    """Start refusals reach the page: each `raise LaunchRefused(...)` gives a Msg (translated by code), or the
    dataset report. A plain English string would stay English on the Korean page."""
    import ast

    root = Path(__file__).resolve().parent.parent / "loratrainer"
    plain = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "LaunchRefused":
                arg = node.args[0] if node.args else None
                coded = isinstance(arg, ast.Call) and ast.unparse(arg.func) == "Msg.of"
                if not coded and not any(k.arg == "report" for k in node.keywords):
                    plain.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert plain == [], "give these refusals a code (loratrainer/messages.py) and a Korean template:\n" + "\n".join(plain)


def test_korean_captioning_and_editor_errors_are_korean(pages, tmp_path):
    """What the user can get wrong on Utilities (a missing folder, an empty fixed text, images sharing a name,
    an empty find text) is said in Korean."""
    from tests.test_gui_runs import _caption_form

    ui = pages["ko"]
    u = ui.handlers["utilities"]
    folder = make_concept(tmp_path, "10_house", 2, captions=False)
    make_image(folder / "img_000.jpg")  # img_000.png and img_000.jpg would share one caption file
    said = [
        list(u.caption(_caption_form(ui, cap_folder=str(tmp_path / "missing"))))[-1],
        list(u.caption(_caption_form(ui, cap_folder=str(folder), fixed_text="  ")))[-1],
        list(u.caption(_caption_form(ui, cap_folder=str(folder))))[-1],
        u.editor_page(str(tmp_path / "missing"), "", 1, ".txt")[ui.named["ed_message"]],
        u.editor_replace(str(folder), "", "x", ".txt"),
    ]
    assert all(HANGUL.search(s) for s in said), said
    assert [s for s in said if english_phrases(s)] == [], said
    assert "img_000.png + img_000.jpg" in said[2] or "img_000.jpg + img_000.png" in said[2]
    assert not list(folder.glob("*.txt"))  # nothing was captioned


def test_korean_form_errors_name_the_field_in_korean(pages, tmp_path):
    """A bad value on the form (rank 0, a rate that is not a number) is said per field, by its Korean label."""
    ui = pages["ko"]
    data = _form(ui)
    data[ui.fields["network.network_dim"]] = 0
    data[ui.fields["optimizer.learning_rate"]] = "fast"
    data[ui.fields["folders.output_dir"]] = str(tmp_path / "model")
    for text in (ui.handlers["training"].show_command(data)[ui.named["run_message"]], ui.handlers["training"].start(data)[ui.named["run_message"]]):
        assert Translator("ko").label("network.network_dim") in text, text
        assert "이상이어야 합니다" in text and "숫자여야 합니다" in text, text
        assert english_phrases(text) == [], text
    assert ui.jobs.runs() == []
    en = pages["en"]
    data = _form(en)
    data[en.fields["network.network_dim"]] = 0
    text = en.handlers["training"].show_command(data)[en.named["run_message"]]
    assert "must be at least 1" in text and "Network rank" in text, text


def test_korean_refusal_of_an_8bit_optimizer_without_cuda(pages, tmp_path):
    from loratrainer.machine.eight_bit import refusal

    if refusal("AdamW8bit") is None:
        pytest.skip("this machine can run AdamW8bit")
    ui = pages["ko"]
    make_concept(tmp_path / "img", "10_dog", 2)
    status = ui.handlers["training"].start(_form(ui, **{"folders.train_data_dir": str(tmp_path / "img"), "folders.output_dir": str(tmp_path / "model"),
                                                         "optimizer.optimizer": "AdamW8bit"}))[ui.named["run_message"]]
    assert "옵티마이저를 쓸 수 없습니다" in status and english_phrases(status) == [], status
    assert ui.jobs.runs() == []


@pytest.mark.parametrize("outcome,expected", [("killed (signal 9)", "시그널 9"), ("error (exit code 3)", "종료 코드 3")])
def test_korean_killed_and_exit_code_are_korean(tmp_path, outcome, expected):
    from loratrainer.gui.jobs import JobView
    from loratrainer.gui.run_view import status_line

    from loratrainer.run.events import RunState

    state = RunState(status="running", step=3, total_steps=8, epoch=1, epochs=2)  # no `ended` event: the process says
    view = JobView(tmp_path, state, False, outcome, "")
    ko = status_line(view, Translator("ko"))
    assert expected in ko and english_phrases(ko) == [] and "signal" not in ko and "exit code" not in ko, ko
    assert outcome in status_line(view, Translator("en"))


@pytest.mark.parametrize(
    "values",
    [
        {"network.network_dim": 0},
        {"training.epoch": -1},
        {"buckets.max_resolution": "abc"},
        {"buckets.max_resolution": "32,32"},
        {"dataset.color_aug": True},
        {"optimizer.optimizer": "NoSuchOptimizer"},
        {"optimizer.optimizer_args": "decay"},
        {"optimizer.lr_scheduler": "bogus"},
        {"folders.output_name": ""},
        {"folders.output_name": "a/b"},
        {"dataset.alpha_background": "white"},
        {"launch.gpu_ids": "one"},
        {"optimizer.unet_lr": 0, "optimizer.text_encoder_lr": 0},
        {"buckets.min_bucket_reso": 1024, "buckets.max_bucket_reso": 512},
        {"precision.full_fp16": True, "precision.mixed_precision": "bf16"},
        {"optimizer.lr_scheduler": "adafactor", "optimizer.optimizer": "AdamW"},
    ],
)
def test_korean_schema_validator_messages_are_korean(pages, values):
    """Our validators' and cross-field rules' complaints name the settings by their Korean label; the CLI's
    English line (the FormError's text) is pydantic's, as before."""
    from loratrainer.gui.form import FormError, values_to_config

    ui = pages["ko"]
    data = _form(ui)
    for path, value in values.items():
        data[ui.fields[path]] = value
    text = ui.handlers["training"].show_command(data)[ui.named["run_message"]]
    assert HANGUL.search(text) and english_phrases(text) == [], text
    ko = Translator("ko")
    assert any(ko.label(path) in text for path in values), text
    with pytest.raises(FormError) as err:
        values_to_config(values)
    assert not HANGUL.search(str(err.value)), str(err.value)  # the CLI's line stays English


def test_cli_schema_messages_are_unchanged():
    from loratrainer.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"dataset": {"color_aug": True}, "buckets": {"max_resolution": "abc"}}, "x.json")
    assert "must be 'width,height' such as 512,512 (got 'abc')" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config_from_dict({"dataset": {"color_aug": True}}, "x.json")
    assert ("dataset.color_aug changes the image every step, so latents cannot be cached: turn off precision.cache_latents "
            "and precision.cache_latents_to_disk, or the augmentation") in str(err.value)


def test_korean_captioner_errors_and_skip_reasons_are_korean(pages, tmp_path, monkeypatch):
    """Model loading (a missing folder, offline, a damaged cache, a foreign folder), bad captioner settings,
    images skipped as unreadable and editor mistakes are said in Korean on the Utilities tab."""
    from loratrainer.caption import hub, run
    from tests.test_gui_runs import _caption_form

    ui = pages["ko"]
    u = ui.handlers["utilities"]
    folder = make_concept(tmp_path, "10_house", 2, captions=False)

    def last(**values) -> str:
        return list(u.caption(_caption_form(ui, cap_folder=str(folder), **values)))[-1]

    def loading(loader):
        def make(options):
            return hub.load("someone/some-captioner", loader)
        return make

    def not_cached(name, local_files_only=False):
        raise OSError("not in the cache")

    def damaged(name, local_files_only=False):
        raise ValueError("Error while deserializing header")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    said = [last(cap_method="wd14", wd14_model=str(tmp_path / "no-such-model"))]  # a model folder that does not exist
    (tmp_path / "tagger").mkdir()
    said.append(last(cap_method="wd14", wd14_model=str(tmp_path / "tagger")))  # a folder without the tagger's files
    said.append(last(cap_method="blip", blip_top_p=2))  # a captioner setting out of range
    said.append(last(cap_extension="a/b"))
    monkeypatch.setattr(run, "make_captioner", loading(not_cached))
    said.append(last(cap_method="blip"))  # not cached, hub unreachable
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    said.append(last(cap_method="blip"))  # offline mode
    monkeypatch.setattr(run, "make_captioner", loading(damaged))
    said.append(last(cap_method="blip"))  # damaged in the cache
    # editor mistakes
    said.append(u.editor_save(str(folder), "/etc/passwd", "x", ".txt")[0])
    said.append(u.editor_save(str(folder), str(tmp_path / "elsewhere.png"), "x", ".txt", [])[0])
    assert all(s.startswith("**오류:**") for s in said[:7]), said
    assert all(HANGUL.search(s) for s in said), said
    assert [(s, english_phrases(s)) for s in said if english_phrases(s)] == []
    assert "HF_HUB_OFFLINE" in said[5] and "deserializing" in said[6]
    assert not list(folder.glob("*.txt"))

    # unreadable images are skipped, each with its reason in Korean; the good ones are captioned
    make_zero_byte(folder / "empty.png")
    make_truncated_jpeg(folder / "broken.jpg")
    (folder / "notanimage.png").write_bytes(b"this is text")
    monkeypatch.undo()
    done = last(fixed_text="a house")
    lines = done.split("\n\n")
    assert "캡션 2개 작성" in lines[0] and "3개 실패" in lines[0], done
    failed = [line for line in lines if line.startswith("- ")]
    assert len(failed) == 3 and all(HANGUL.search(line) for line in failed), failed
    assert [line for line in failed if english_phrases(line)] == [], failed
    # the English page keeps the English reasons (as the CLI prints them)
    en = pages["en"].handlers["utilities"]
    (folder / "img_000.txt").unlink()
    (folder / "img_001.txt").unlink()
    done = list(en.caption(_caption_form(pages["en"], cap_folder=str(folder), fixed_text="a house")))[-1]
    assert "the file is empty (0 bytes)" in done, done


def test_killed_is_said_once(tmp_path):
    """Issue 22: the status read "killed (killed (signal 9))"."""
    from loratrainer.gui.jobs import JobView
    from loratrainer.gui.run_view import status_line

    from loratrainer.run.events import RunState

    state = RunState(status="running", step=3, total_steps=8, epoch=1, epochs=2)  # no `ended` event: the process says
    view = JobView(tmp_path, state, False, "killed (signal 9)", "")
    text = status_line(view, Translator("en"))
    assert text.count("killed") == 1 and "(signal 9)" in text, text


def test_korean_refusal_of_a_bad_sample_prompt_says_the_line_in_korean(pages, tmp_path):
    """The prompt parser's reason (naming the option and the line) was English inside the Korean refusal."""
    ui = pages["ko"]
    make_concept(tmp_path / "img", "10_dog", 2)
    status = ui.handlers["training"].start(_form(ui, **{"folders.train_data_dir": str(tmp_path / "img"), "folders.output_dir": str(tmp_path / "model"),
                                                         "sampling.sample_every_n_epochs": 1, "sampling.sample_prompts": "a dog --w",
                                                         "optimizer.optimizer": "AdamW"}))[ui.named["run_message"]]
    assert "1번째 줄" in status and "--w에 값(너비)이 필요합니다" in status and english_phrases(status) == [], status
    assert ui.jobs.runs() == []
