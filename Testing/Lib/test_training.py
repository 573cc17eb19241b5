"""Fine-tuning, distillation and evaluation on tiny synthetic data made here (no GPU, nothing downloaded)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeLightSAMLib.build import build_model
from DeLightSAMLib.checkpoint import load_model
from DeLightSAMLib.cli import main
from DeLightSAMLib.config import TINY_CONFIG
from DeLightSAMLib.errors import CheckpointError, DeLightSAMError
from DeLightSAMLib.modeling import ImageEncoder
from DeLightSAMLib.training import loops
from DeLightSAMLib.training.data import DataError, check_not_all_empty, open_dataset
from DeLightSAMLib.training.embedding_cache import EmbeddingCache
from DeLightSAMLib.training.metrics import hausdorff95, score, summarize
from DeLightSAMLib.overlay import line_thickness, outline
from DeLightSAMLib.training.overlays import write_overlay
from DeLightSAMLib.training.teachers import Teacher, ViTImageEncoder, load_teacher

CPU = torch.device("cpu")


def make_folder_dataset(root: Path, count: int = 24, seed: int = 0) -> Path:
    """Bright disks on dark noise, 64-128 px, in the paper's layout with a split file."""
    (root / "image_1024").mkdir(parents=True)
    (root / "mask_1024").mkdir()
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        size = int(rng.integers(64, 129))
        rows, cols = np.mgrid[0:size, 0:size]
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        mask = (rows - cy) ** 2 + (cols - cx) ** 2 < rng.uniform(0.12 * size, 0.25 * size) ** 2
        image = np.clip(40 + 160 * mask + rng.normal(0, 20, mask.shape), 0, 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(root / "image_1024" / f"case{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8) * 255), str(root / "mask_1024" / f"case{i}.png"))
        names.append(f"case{i}.png")
    third = count // 6
    splits = {
        "train": names[: count - 2 * third],
        "valid": names[count - 2 * third : count - third],
        "test": names[count - third :],
    }
    (root / "split.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("disks"))


def test_fine_tuning_learns_and_saves_a_strictly_loadable_checkpoint(disks, tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY_CONFIG)
    train_set, valid_set, test_set = (open_dataset(disks, split) for split in ("train", "valid", "test"))
    before = loops.evaluate(model, test_set, 1, CPU)["summary"]["dice"]["mean"]
    settings = loops.TrainSettings(
        modality=1, epochs=40, batch_size=4, learning_rate=1e-3, out_dir=str(tmp_path / "run")
    )
    result = loops.train(model, train_set, valid_set, settings, CPU)
    losses = [entry["loss"] for entry in result["history"]]
    assert losses[-1] < 0.6 * losses[0]
    reloaded, _ = load_model(tmp_path / "run" / "best.pth", TINY_CONFIG)  # official keys, strict
    after = loops.evaluate(reloaded, test_set, 1, CPU)["summary"]["dice"]["mean"]
    assert after > before + 0.2, (before, after)
    assert (tmp_path / "run" / "train.log").read_text().count('"epoch"') == 40


def test_only_the_chosen_groups_train_and_resume_continues(disks, tmp_path):
    torch.manual_seed(1)
    model = build_model(TINY_CONFIG)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_set = open_dataset(disks, "train")
    settings = loops.TrainSettings(
        modality=1, epochs=1, batch_size=8, learning_rate=1e-3, trainable=["queries"], out_dir=str(tmp_path / "run")
    )
    loops.train(model, train_set, None, settings, CPU)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {"mask_query.weight"}
    settings.epochs, settings.resume = 2, True
    result = loops.train(model, train_set, None, settings, CPU)
    assert [entry["epoch"] for entry in result["history"]] == [1, 2]


def test_metrics_equal_hand_computed_values():
    prediction = np.zeros((10, 10), bool)
    reference = np.zeros((10, 10), bool)
    prediction[2:4, 2:4] = True  # 4 pixels
    reference[2:4, 2:5] = True  # 6 pixels, 4 shared
    scores = score(prediction, reference)
    assert scores.dice == pytest.approx(2 * 4 / (4 + 6))
    assert scores.iou == pytest.approx(4 / 6)
    assert scores.precision == 1.0 and scores.recall == pytest.approx(4 / 6)
    shifted = np.zeros((10, 10), bool)
    shifted[2:4, 5:7] = True  # the 2x2 square moved 3 columns right
    assert hausdorff95(prediction, shifted) == pytest.approx(3.0)
    assert hausdorff95(prediction, shifted, spacing=(1.0, 0.5)) == pytest.approx(1.5)


def test_empty_mask_conventions():
    empty, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    both = score(empty, empty)
    assert (both.dice, both.iou, both.precision, both.recall, both.hd95) == (1.0, 1.0, 1.0, 1.0, 0.0)
    missed = score(empty, full)
    assert (missed.dice, missed.iou, missed.precision, missed.recall) == (0.0, 0.0, 0.0, 0.0) and math.isnan(
        missed.hd95
    )
    summary = summarize([both, missed])
    assert summary["hd95"] == {"mean": 0.0, "std": 0.0, "median": 0.0, "undefined": 1}
    assert summary["dice"]["mean"] == 0.5


def test_evaluate_writes_per_image_csv_summary_and_overlays(disks, tmp_path):
    result = loops.evaluate(build_model(TINY_CONFIG), open_dataset(disks, "test"), 1, CPU, tmp_path, overlays=True)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "image,dice,iou,hd95,precision,recall,seconds" and len(lines) == 1 + len(result["rows"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images"] == len(result["rows"]) and summary["images_per_second"] > 0
    assert len(list((tmp_path / "overlays").glob("*.png"))) == len(result["rows"])


def test_an_interrupted_evaluation_says_so_in_its_log_and_writes_no_metrics(disks, tmp_path):
    test_set = open_dataset(disks, "test")
    interrupted = _Recorded(test_set, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        loops.evaluate(build_model(TINY_CONFIG), interrupted, 1, CPU, tmp_path)
    assert (
        f"interrupted after 2 of {len(test_set)} images; no metrics written" in (tmp_path / "evaluate.log").read_text()
    )
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing-mask", "the mask for .*case3.png is missing"),
        ("size", "masks must match their images"),
        ("non-binary", "is not a binary mask"),
        ("no-split", "has no 'train' list"),
    ],
)
def test_bad_data_is_refused_naming_the_file(tmp_path, problem, message):
    root = make_folder_dataset(tmp_path / "data", count=6)
    if problem == "missing-mask":
        (root / "mask_1024" / "case3.png").unlink()
    elif problem == "size":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 12), np.uint8)), str(root / "mask_1024" / "case0.png"))
    elif problem == "non-binary":
        sitk.WriteImage(
            sitk.GetImageFromArray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 7),
            str(root / "mask_1024" / "case0.png"),
        )
    elif problem == "no-split":
        (root / "split.json").write_text(json.dumps({"test": ["case0.png"]}))
    with pytest.raises(DataError, match=message):
        dataset = open_dataset(root, "train")
        [dataset[i] for i in range(len(dataset))]


def test_all_empty_masks_and_cli_errors_are_one_line(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "data", count=6)
    for path in (root / "mask_1024").iterdir():
        sitk.WriteImage(
            sitk.GetImageFromArray(np.zeros(sitk.ReadImage(str(path)).GetSize()[::-1], np.uint8)), str(path)
        )
    with pytest.raises(DataError, match="every mask .* is empty"):
        check_not_all_empty(open_dataset(root, "train"))
    (root / "mask_1024" / "case1.png").unlink()
    code = main(
        ["evaluate", "--data", str(root), "--modality", "xray", "--split", "train", "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "case1.png is missing" in err


@pytest.mark.parametrize("command", ["evaluate", "train", "distill"])
def test_a_litemedsam_checkpoint_is_refused_in_one_line(tmp_path, capsys, litemedsam_weights_path, command):
    root = make_folder_dataset(tmp_path / "data", count=4)
    extra = {
        "evaluate": ["--modality", "xray", "--split", "train"],
        "train": ["--modality", "xray", "--epochs", "1"],
        "distill": ["--teacher", "mobilesam", "--teacher-checkpoint", str(tmp_path / "never-read.pt")],
    }[command]
    code = main(
        [
            command,
            "--data",
            str(root),
            "--checkpoint",
            str(litemedsam_weights_path),
            "--out",
            str(tmp_path / "out"),
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is LiteMedSAM, a box-prompted model" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def _write_volume(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(image, str(path))


def test_volume_datasets_give_foreground_and_as_many_background_slices(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    volume = np.random.default_rng(0).normal(0, 100, (10, 32, 40)).astype(np.int16)
    labels = np.zeros(volume.shape, np.uint8)
    labels[3:6, 10:20, 10:20] = 2  # three slices with foreground along k
    _write_volume(tmp_path / "images" / "ct1.nii.gz", volume)
    _write_volume(tmp_path / "labels" / "ct1.nii.gz", labels)
    dataset = open_dataset(tmp_path, "train")
    assert len(dataset) == 6
    foreground = [dataset[i][1].any() for i in range(len(dataset))]
    assert sum(foreground) == 3 and dataset[0][0].shape == (32, 40, 3) and dataset[0][0].dtype == np.uint8
    assert len(open_dataset(tmp_path, "train", label=2)) == 6
    assert len(open_dataset(tmp_path, "train", label=1)) == 0  # no voxel has label 1
    _write_volume(tmp_path / "labels" / "ct1.nii.gz", labels[:, :16])
    with pytest.raises(DataError, match="has size"):
        open_dataset(tmp_path, "train")
    (tmp_path / "labels" / "ct1.nii.gz").unlink()
    with pytest.raises(DataError, match="label map for .*ct1.nii.gz is missing"):
        open_dataset(tmp_path, "train")
    _write_volume(tmp_path / "labels" / "ct1.nii.gz", labels)
    data = (tmp_path / "images" / "ct1.nii.gz").read_bytes()
    (tmp_path / "images" / "ct1.nii.gz").write_bytes(data[: len(data) // 2])  # cut off: not trained on as zeros
    with pytest.raises(DeLightSAMError, match="ct1.nii.gz.*get the file again"):
        open_dataset(tmp_path, "train")


def _tiny_vit_teacher() -> Teacher:
    """A SAM-ViT teacher shrunk to the tiny student's embedding (32 x 16 x 16 at 256²)."""
    return Teacher(
        lambda: ViTImageEncoder(
            image_size=256,
            embed_dim=32,
            depth=2,
            num_heads=2,
            global_blocks=(1,),
            window_size=4,
            out_chans=TINY_CONFIG.prompt_embed_dim,
        )
    )


def test_distillation_lowers_the_embedding_error_training_only_the_adapters(disks, tmp_path):
    torch.manual_seed(3)
    published = {f"image_encoder.{k}": v for k, v in _tiny_vit_teacher().build().state_dict().items()}
    published["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(
        2, 128
    )  # SAM keeps these too
    torch.save(published, tmp_path / "sam_tiny.pth")
    teacher = load_teacher("sam_vit_tiny", str(tmp_path / "sam_tiny.pth"), _tiny_vit_teacher())
    model = build_model(TINY_CONFIG)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    settings = loops.TrainSettings(
        modality=0, epochs=6, batch_size=4, learning_rate=3e-3, out_dir=str(tmp_path / "distill")
    )
    result = loops.distill(model, teacher, open_dataset(disks, "train"), settings, CPU)
    mse = [entry["mse"] for entry in result["history"]]
    assert mse[-1] < mse[0]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert changed and all("med" in k for k in changed)
    reloaded, _ = load_model(result["checkpoint"], TINY_CONFIG)
    assert torch.equal(reloaded.state_dict()["mask_query.weight"], model.state_dict()["mask_query.weight"])


def test_mobilesam_teacher_loads_its_published_keys_and_refuses_others(tmp_path):
    plain = ImageEncoder(modality_adapters=False)
    keys = plain.state_dict()
    assert not any("med" in k for k in keys)
    published = {f"image_encoder.{k}": v for k, v in keys.items()}
    published["image_encoder.layers.1.blocks.0.attn.attention_bias_idxs"] = torch.zeros(49, 49, dtype=torch.long)
    torch.save(published, tmp_path / "mobile_sam.pt")
    teacher = load_teacher("mobilesam", str(tmp_path / "mobile_sam.pt"))
    assert not any(p.requires_grad for p in teacher.parameters())
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="is not a 'mobilesam' checkpoint"):
        load_teacher("mobilesam", str(tmp_path / "vit.pth"))


def test_two_processes_with_torchrun(disks, tmp_path):
    """DistributedDataParallel through PyTorch's launcher (gloo on the CPU): both ranks train, rank 0 saves; with the
    whole network in a process group train() sets up and destroys, and with the decoder side on cached embeddings
    in a group the script set up (train() uses it and leaves it). One training per process: PyTorch cannot be
    relied on to set a group up again in a process under torchrun (the new group reuses the old one's store keys)."""
    script = tmp_path / "ddp.py"
    script.write_text(f"""
import os
import sys

import torch
from DeLightSAMLib.build import build_model
from DeLightSAMLib.config import TINY_CONFIG
from DeLightSAMLib.training import loops
from DeLightSAMLib.training.data import open_dataset

name, groups = sys.argv[1], sys.argv[2].split(",")
if name == "ddp-cached":
    torch.distributed.init_process_group("gloo")
torch.manual_seed(0)
model = build_model(TINY_CONFIG)
settings = loops.TrainSettings(modality=1, epochs=2, batch_size=2, trainable=groups, out_dir={str(tmp_path)!r} + "/" + name)
result = loops.train(model, open_dataset({str(disks)!r}, "train"), None, settings, torch.device("cpu"))
group = int(torch.distributed.is_initialized())
os.write(1, f"RANK_DONE {{name}} {{len(result['history'])}} {{group}}\\n".encode())  # one write(2): the ranks share the pipe
if group:
    torch.distributed.destroy_process_group()
""")
    for name, groups, group_left in (
        ("ddp", "adapters,queries,prompt,decoder", "0"),  # train() destroyed the group it set up
        ("ddp-cached", "queries,prompt,decoder", "1"),  # the script's group is the script's to destroy
    ):
        completed = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
            + [name, groups],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr[-2000:]
        done = [line.split()[2:] for line in completed.stdout.splitlines() if line.startswith(f"RANK_DONE {name} ")]
        assert sorted(done) == [["0", group_left], ["2", group_left]]  # both ranks finish; rank 0 keeps the history
        load_model(tmp_path / name / "best.pth", TINY_CONFIG)
    assert "encoder frozen" in (tmp_path / "ddp-cached" / "train.log").read_text()  # the decoder side alone in DDP


# ---------------------------------------------------------------------------------------------- issue 14
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """4 training, 1 validation and 1 test image."""
    return make_folder_dataset(tmp_path_factory.mktemp("small"), count=6, seed=7)


def _count_encoded_images(model) -> list:
    counter = [0]
    model.SemiTViT.register_forward_hook(
        lambda module, inputs, output: counter.__setitem__(0, counter[0] + len(inputs[0]))
    )
    return counter


def test_a_frozen_encoder_encodes_each_image_once_and_the_losses_do_not_change(small, tmp_path):
    train_set, valid_set = open_dataset(small, "train"), open_dataset(small, "valid")
    runs = {}
    for cached in (True, False):
        torch.manual_seed(5)
        model = build_model(TINY_CONFIG)
        encoded = _count_encoded_images(model)
        settings = loops.TrainSettings(
            modality=1,
            epochs=3,
            batch_size=2,
            learning_rate=1e-3,
            embedding_cache=cached,
            trainable=["decoder", "queries", "prompt"],
            out_dir=str(tmp_path / f"cached-{cached}"),
        )
        runs[cached] = loops.train(model, train_set, valid_set, settings, CPU), encoded[0]
    (with_cache, encoded_with), (without, encoded_without) = runs[True], runs[False]
    assert encoded_with == len(train_set) + len(valid_set)  # once each, in the first epoch
    assert encoded_without == 3 * (len(train_set) + len(valid_set))
    for a, b in zip(with_cache["history"], without["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["valid_dice"] == pytest.approx(
            b["valid_dice"], abs=1e-6
        )
    assert [entry["loss"] for entry in with_cache["history"]] != [with_cache["history"][0]["loss"]] * 3  # it trained
    assert "encoder frozen: each image is encoded once" in (tmp_path / "cached-True" / "train.log").read_text()
    assert "embedding cache off: turned off" in (tmp_path / "cached-False" / "train.log").read_text()
    assert not (tmp_path / "cached-True" / "embedding_cache").exists()  # in memory; nothing left on disk


def test_cached_embeddings_are_keyed_by_the_image_and_the_encoder_weights(tmp_path):
    torch.manual_seed(0)
    encoder = build_model(TINY_CONFIG).SemiTViT
    calls = []
    encoder.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    images = torch.randn(3, 3, 256, 256)
    cache = EmbeddingCache(encoder, CPU, tmp_path / "cache", memory_bytes=0)  # everything goes to disk
    with torch.no_grad():
        expected = encoder(images)
    calls.clear()
    assert torch.equal(cache(images), expected) and calls == [3]
    assert torch.equal(cache(images), expected) and calls == [3]  # all found: the encoder did not run
    changed = images.clone()
    changed[1, 0, 0, 0] += 1e-3
    cache(changed)
    assert calls == [3, 1]  # only the changed image
    reopened = EmbeddingCache(encoder, CPU, tmp_path / "cache", memory_bytes=0)  # e.g. after --resume
    assert torch.equal(reopened(images), expected) and calls == [3, 1]
    with torch.no_grad():
        encoder.neck[0].weight.mul_(2)
        expected = encoder(images)
    calls.clear()
    reopened.refresh()
    assert torch.equal(reopened(images), expected) and calls == [3]  # new weights: every image again
    assert "3 images encoded, 3 embeddings reused" in reopened.describe()


class _Augmented(torch.utils.data.Dataset):
    """A dataset that does not declare ``augments = False``: its images may change every epoch."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


@pytest.mark.parametrize(
    "trainable, augmented, encodings, said",
    [
        (["decoder", "queries", "prompt"], False, 1, "encoder frozen: each image is encoded once"),
        (["decoder", "queries", "prompt"], True, 2, "embedding cache off: the training set may change its images"),
        (["adapters", "decoder"], False, 2, "embedding cache off: the encoder trains (group adapters)"),
    ],
)
def test_the_cache_is_used_only_with_a_frozen_encoder_and_a_dataset_without_augmentation(
    small, tmp_path, trainable, augmented, encodings, said
):
    torch.manual_seed(0)
    model, dataset = build_model(TINY_CONFIG), open_dataset(small, "train")
    encoded = _count_encoded_images(model)
    settings = loops.TrainSettings(modality=1, epochs=2, batch_size=4, trainable=trainable, out_dir=str(tmp_path))
    lines = []
    loops.train(
        model,
        _Augmented(dataset) if augmented else dataset,
        None,
        settings,
        CPU,
        report=lambda message, level: lines.append(message),
    )
    assert encoded[0] == encodings * len(dataset)  # once in all with the cache, once an epoch without
    assert lines[0].startswith(said)


def test_a_run_that_learns_nothing_ends_with_a_clear_warning(small, tmp_path):
    torch.manual_seed(2)
    model = build_model(TINY_CONFIG)
    model.mask_decoder.register_forward_hook(lambda module, inputs, output: output - 100)  # background everywhere
    lines = []
    settings = loops.TrainSettings(
        modality=1, epochs=2, batch_size=2, trainable=["queries"], out_dir=str(tmp_path / "run")
    )
    result = loops.train(
        model,
        open_dataset(small, "train"),
        open_dataset(small, "valid"),
        settings,
        CPU,
        report=lambda message, level: lines.append((level, message)),
    )
    assert [entry["valid_dice"] for entry in result["history"]] == [0.0, 0.0]
    warnings = [message for level, message in lines if level == logging.WARNING]
    assert len(warnings) == 1 and result["warnings"] == warnings
    assert "the model predicts background everywhere" in warnings[0]
    assert all(word in warnings[0] for word in ("--lr", "--trainable", "--checkpoint"))
    assert warnings[0] in (tmp_path / "run" / "train.log").read_text()


@pytest.fixture
def tiny_checkpoints(monkeypatch):
    """The CLI builds the tiny network (default-initialised) instead of loading a released checkpoint."""

    def load_tiny(checkpoint=None, config=None):
        torch.manual_seed(4)
        return build_model(TINY_CONFIG), None

    monkeypatch.setattr("DeLightSAMLib.checkpoint.load_model", load_tiny)


def _train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--modality",
        "xray",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--lr",
        "1e-3",
        "--trainable",
        "decoder,queries,prompt",
        "--out",
        str(out),
        *extra,
    ]


def test_train_prints_one_bar_and_one_summary_per_epoch_and_logs_per_image_details(
    small, tmp_path, capsys, tiny_checkpoints
):
    assert main(_train_command(small, tmp_path / "run")) == 0
    out, err = capsys.readouterr()
    summaries = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in summaries] == ["1/2", "2/2"]
    assert all("train loss" in line and "valid Dice" in line and line.endswith(" s") for line in summaries)
    assert "(best)" in summaries[0] and out.splitlines()[-1].startswith("best checkpoint: ")
    assert "encoder frozen" in out
    kept_bars = [line.rsplit("\r", 1)[-1] for line in err.split("\n") if "|" in line.rsplit("\r", 1)[-1]]
    assert [bar.split(":")[0] for bar in kept_bars] == ["epoch 1/2", "epoch 2/2"]
    assert all("100%" in bar and "loss=" in bar for bar in kept_bars)
    valid_names = json.loads((small / "split.json").read_text())["valid"]
    log = (tmp_path / "run" / "train.log").read_text()
    for name in valid_names:
        assert Path(name).stem not in out + err
        assert log.count(f"valid {Path(name).stem} ") == 2
    assert log.count('"epoch"') == 2 and all(line in log for line in summaries)


def test_evaluate_keeps_its_bar_and_writes_per_image_lines_only_to_its_log(small, tmp_path, capsys, tiny_checkpoints):
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(small),
                "--modality",
                "xray",
                "--split",
                "train",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    last_bar = err.rstrip("\n").rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]
    assert last_bar.startswith("evaluate: 100%") and "dice=" in last_bar
    log = (tmp_path / "eval" / "evaluate.log").read_text()
    for name in json.loads((small / "split.json").read_text())["train"]:
        assert Path(name).stem not in out + err and f"{Path(name).stem} " in log
    assert out.startswith("4 images: Dice ")


def test_ctrl_c_says_what_was_kept_and_resume_continues_with_one_based_epochs(
    small, tmp_path, capsys, tiny_checkpoints, monkeypatch
):
    steps = []
    real_loss = loops.mask_loss

    def interrupt_in_the_second_epoch(logits, masks):
        steps.append(1)
        if len(steps) == 3:  # 2 steps an epoch
            raise KeyboardInterrupt
        return real_loss(logits, masks)

    monkeypatch.setattr(loops, "mask_loss", interrupt_in_the_second_epoch)
    run = tmp_path / "run"
    assert main(_train_command(small, run)) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("delightsam: interrupted in epoch 2/2; kept ")
    assert f"{run / 'last.pth'} (after epoch 1:" in err and f"{run / 'best.pth'} (epoch 1, validation Dice" in err
    assert err.endswith("to continue, rerun the same command with --resume")
    monkeypatch.setattr(loops, "mask_loss", real_loss)

    assert main(_train_command(small, run, "--trainable", "decoder", "--resume")) == 2  # other groups: refused
    assert "was trained with trainable ['decoder', 'queries', 'prompt']" in capsys.readouterr().err
    assert main(_train_command(small, run, "--resume")) == 0
    out, err = capsys.readouterr()
    assert f"resuming from {run / 'last.pth'}: epoch 1 of 2 is done; continuing with epoch 2" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["2/2"]
    assert "epoch 1/2" not in err and "epoch 2/2: 100%" in err
    history = json.loads(torch.load(run / "last.pth", weights_only=True)["history"])
    assert [entry["epoch"] for entry in history] == [1, 2]


class _Recorded(torch.utils.data.Dataset):
    """A training set that records which items the loader reads, and presses Ctrl-C at item ``interrupt_at``."""

    augments = False

    def __init__(self, dataset, interrupt_at=None) -> None:
        self.dataset, self.interrupt_at, self.read = dataset, interrupt_at, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        if len(self.read) == self.interrupt_at:
            raise KeyboardInterrupt
        self.read.append(index)
        return self.dataset[index]


@pytest.mark.parametrize("trainable", [["decoder", "queries", "prompt"], ["adapters", "queries"]])
def test_a_resumed_run_is_the_run_it_continues(small, tmp_path, trainable):
    """Interrupted in epoch 2 and resumed, a run reads the uninterrupted run's batches in its order and gives its
    losses, validation scores and weights (with the embedding cache, and with the encoder training)."""
    valid_set = open_dataset(small, "valid")

    def run(out, dataset, resume=False):
        torch.manual_seed(5)
        model = build_model(TINY_CONFIG)
        settings = loops.TrainSettings(
            modality=1, epochs=3, batch_size=2, learning_rate=1e-3, trainable=trainable, out_dir=str(out), resume=resume
        )
        lines = []
        try:
            result = loops.train(
                model, dataset, valid_set, settings, CPU, report=lambda text, level: lines.append(text)
            )
        except loops.TrainingInterrupted as interrupted:
            return str(interrupted), lines
        return (result, model), lines

    probe = _Recorded(open_dataset(small, "train"))
    check_not_all_empty(probe)  # train() reads these items first, before any epoch
    before, epoch = len(probe.read), len(probe.dataset)
    whole = _Recorded(open_dataset(small, "train"))
    (uninterrupted, whole_model), _ = run(tmp_path / "whole", whole)
    first = _Recorded(open_dataset(small, "train"), interrupt_at=before + epoch + 1)  # an item into epoch 2
    kept, _ = run(tmp_path / "cut", first)
    assert kept.startswith("interrupted in epoch 2/3; kept ")
    second = _Recorded(open_dataset(small, "train"))
    (resumed, resumed_model), lines = run(tmp_path / "cut", second, resume=True)

    epochs = [whole.read[before + start : before + start + epoch] for start in range(0, 3 * epoch, epoch)]
    assert (
        first.read[before : before + epoch] == epochs[0] and second.read[before:] == epochs[1] + epochs[2]
    )  # the same batches
    assert epochs[1] != epochs[0] and sorted(epochs[1]) == sorted(epochs[0])  # each epoch shuffled anew
    for name in ("loss", "valid_dice"):
        assert [entry[name] for entry in resumed["history"]] == [entry[name] for entry in uninterrupted["history"]]
    for key, value in whole_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    log = (tmp_path / "cut" / "train.log").read_text()
    assert kept in log  # the Ctrl-C message is in the run's log like every other message
    assert lines[0] == (f"resuming from {tmp_path / 'cut' / 'last.pth'}: epoch 1 of 3 is done; continuing with epoch 2")
    assert lines[0] in log


def test_resume_without_last_checkpoint_is_refused_before_writing_anything(small, tmp_path, capsys, tiny_checkpoints):
    assert main(_train_command(small, tmp_path / "typo", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot resume:" in err and str(tmp_path / "typo" / "last.pth") in err
    assert not (tmp_path / "typo").exists()


def test_training_help_shows_the_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in (
        "(default: 20)",
        "(default: 4)",
        "(default: 0.0001)",
        "(default: 2)",
        "(default: adapters,queries,prompt,decoder)",
        "(default: runs/train)",
    ):
        assert default in text, default


def test_overlay_outlines_the_reference_on_all_four_sides_with_a_visible_width(tmp_path):
    reference = np.zeros((1024, 1024), bool)
    reference[200:800, 300:700] = True  # rows 200-799, columns 300-699
    width = line_thickness(reference.shape)
    assert width == 3 and line_thickness((2048, 512)) == 5  # 1/400 of the longer side
    band = outline(reference, width)
    for row, col in (
        (500, 300),
        (500, 300 + width - 1),
        (500, 699),
        (500, 699 - width + 1),  # left, right
        (200, 500),
        (200 + width - 1, 500),
        (799, 500),
        (799 - width + 1, 500),
    ):  # top, bottom
        assert band[row, col], (row, col)
    assert not band[500, 300 + width] and not band[500, 299] and not band[500, 500]
    assert band.sum() == reference.sum() - (600 - 2 * width) * (400 - 2 * width)  # closed: every edge pixel

    image = np.full((1024, 1024, 3), 100, np.uint8)
    prediction = np.zeros_like(reference)
    prediction[400:600, 400:600] = True
    write_overlay(image, prediction, reference, tmp_path / "overlay.png")
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "overlay.png")))
    for row, col in ((500, 300), (500, 699), (200, 500), (799, 500)):
        assert tuple(written[row, col]) == (0, 255, 0)
    assert tuple(written[500, 500]) == (178, 160, 50)  # half image, half yellow
    assert tuple(written[100, 100]) == (100, 100, 100)
