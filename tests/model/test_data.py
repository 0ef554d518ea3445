"""Dataset loaders on fixtures in each dataset's exact layout; faces, pairs, LOSO, metrics,
resume, and a tiny end-to-end train + eval."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from fixtures import write_casme2, write_casme3, write_composite, write_samm, write_smic

from mfvan.kernels.faces import FaceDetector, make_crop
from mfvan.model.data import synth
from mfvan.model.data.datasets import DatasetError, load_dataset
from mfvan.model.data.pairs import build_pairs, flow_features
from mfvan.model.evaluate import scores
from mfvan.model.mfvan import CONFIGS
from mfvan.model.train import TRAIN_PRESETS, build_model, loso_folds, train

# ----------------------------------------------------------------------------- loaders


def test_casme2_reads_its_sheet_and_frames_and_reports_its_defects(tmp_path):
    write_casme2(tmp_path)
    data = load_dataset("casme2", tmp_path)
    assert data.classes == ("happiness", "disgust", "repression", "surprise", "others")
    assert [(s.subject, s.name, s.emotion) for s in data.samples] == [
        ("casme2/sub01", "EP02_01f", "happiness"),
        ("casme2/sub01", "EP03_02", "repression"),
        ("casme2/sub02", "EP01_12", "surprise"),
        ("casme2/sub02", "EP05_03", "disgust"),
    ]
    assert data.samples[0].onset.name == "img40.jpg" and data.samples[0].apex.name == "img42.jpg"
    assert data.samples[2].apex.name == "img63.jpg"  # '/' apex: the middle frame
    assert any("ApexFrame '/'" in n for n in data.notes)
    assert any("'fear' dropped" in n for n in data.notes)
    three = load_dataset("casme2", tmp_path, "3class")
    assert [three.classes[s.label] for s in three.samples] == [
        "positive",
        "negative",
        "negative",
        "surprise",
        "negative",
    ]


def test_samm_finds_the_header_below_the_notes_and_matches_padded_frame_numbers(tmp_path):
    write_samm(tmp_path)
    data = load_dataset("samm", tmp_path)
    assert [(s.subject, s.name, s.emotion) for s in data.samples] == [
        ("samm/006", "006_1_2", "anger"),
        ("samm/006", "006_1_5", "happiness"),
        ("samm/007", "007_3_1", "surprise"),
    ]
    assert data.samples[0].onset.name == "006_05562.jpg"
    assert data.samples[1].apex.name == "006_1023.jpg"
    assert data.samples[2].apex.name == "007_000332.jpg"  # apex after offset -> middle
    assert any("outside onset" in n for n in data.notes)
    assert len(load_dataset("samm", tmp_path, "3class").samples) == 4  # fear -> negative


@pytest.mark.parametrize("apex", ["middle", "motion"])
def test_smic_takes_first_and_last_frames_and_says_which_apex_it_chose(tmp_path, apex):
    from mfvan.model.data.datasets import load_smic

    write_smic(tmp_path)
    data = load_smic(tmp_path, apex=apex)
    assert len(data.samples) == 6 and data.subjects == ["smic/s1", "smic/s2"]
    assert {data.classes[s.label] for s in data.samples} == {"negative", "positive", "surprise"}
    first = data.samples[0]
    assert first.onset.name == "image100200.bmp"
    assert f"apex = {apex} frame" in data.notes[0]
    # The fixture's frames rise to the apex in the middle and fall after it.
    assert first.apex.name == "image100202.bmp"


def test_the_composite_relabels_three_datasets_and_keeps_their_subjects_apart(tmp_path):
    write_composite(tmp_path)
    data = load_dataset("composite", tmp_path)
    assert data.classes == ("negative", "positive", "surprise")
    assert len(data.samples) == 8
    assert {s.subject.split("/")[0] for s in data.samples} == {"casme2", "samm", "smic"}
    assert "casme2/sub01" in data.subjects and "smic/s1" in data.subjects
    assert len(data.subjects) == 6
    labels = {(s.subject, s.name): data.classes[s.label] for s in data.samples}
    assert labels[("samm/006", "006_1_2")] == "negative"
    assert labels[("smic/s1", "s1_po_01")] == "positive"


def test_casme3_maps_subject_spellings_and_keeps_samples_that_share_a_filename(tmp_path):
    write_casme3(tmp_path)
    data = load_dataset("casme3", tmp_path)
    assert [(s.subject, s.emotion) for s in data.samples] == [
        ("casme3/spNo.1", "happy"),
        ("casme3/spNo.1", "surprise"),
        ("casme3/spNo.2", "disgust"),
    ]
    assert data.samples[0].name != data.samples[1].name
    assert data.samples[1].onset.name == "30.jpg" and data.samples[1].apex.name == "32.jpg"


def test_a_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="CASME2_RAW_selected"):
        load_dataset("casme2", tmp_path)
    with pytest.raises(DatasetError, match="annotation file not found"):
        load_dataset("samm", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("mmew", tmp_path)


# ----------------------------------------------------------------------------- faces and pairs


def test_faces_are_found_aligned_and_cropped_on_synthme_frames():
    detector = FaceDetector()
    stream = synth.SynthStream(synth.CONFIGS["standard"], subject=2, seed=1)
    frame = stream.frame(50).image
    box = detector.detect(frame)
    assert box is not None
    eyes = detector.eyes(frame, box)
    assert eyes is not None
    (lx, ly), (rx, ry) = eyes
    crop = make_crop(box, 64, eyes)
    aligned = crop.matrix @ np.array([[lx, rx], [ly, ry], [1.0, 1.0]])
    assert abs(aligned[1, 0] - aligned[1, 1]) < 0.5, "the eyes are level in the crop"
    assert crop.apply(frame).shape == (64, 64, 3)


def test_the_tracker_detects_on_a_media_time_schedule_and_keeps_a_steady_crop_between():
    from mfvan.kernels.faces import FaceTracker, TrackerParams

    class CountingDetector(FaceDetector):
        calls = 0

        def detect(self, image, near=None):
            CountingDetector.calls += 1
            return super().detect(image, near)

    tracker = FaceTracker(CountingDetector(), size=64, params=TrackerParams(redetect_s=0.05))
    stream = synth.SynthStream(synth.CONFIGS["tiny"], subject=1, seed=2)  # 200 fps
    frames = [stream.frame(t) for t in range(25)]
    crops = [tracker.update(f.image, f.timestamp_ns) for f in frames]
    assert CountingDetector.calls == 3  # frames 0, 10 and 20 (0, 50 and 100 ms)
    assert all(c is not None and c.apply(stream.frame(0).image).shape == (64, 64, 3) for c in crops)
    assert crops[1] is crops[9], "no new crop between detections"


def test_pairs_are_cropped_once_and_cached_by_their_settings(tiny_set, tmp_path):
    data = load_dataset("synthme", tiny_set, "3class")
    pairs = build_pairs(data, 32, 1, cache_dir=tmp_path)
    assert pairs.onset.shape == (len(data.samples), 32, 32, 1) and pairs.onset.dtype == np.uint8
    assert pairs.found.mean() >= 0.9
    again = build_pairs(data, 32, 1, cache_dir=tmp_path)
    assert np.array_equal(again.apex, pairs.apex) and len(list(tmp_path.glob("*.npz"))) == 1
    build_pairs(data, 48, 1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2, "other settings, another cache"
    flow = flow_features(pairs.onset[:2], pairs.apex[:2])
    assert flow.shape == (2, 3, 32, 32) and np.abs(flow[:, :2]).max() > 0


# ----------------------------------------------------------------------------- protocol


def test_loso_holds_out_each_subject_once_and_never_trains_on_it():
    subjects = np.array(["a/1", "a/1", "b/2", "c/3", "b/2", "c/3", "c/3"])
    folds = loso_folds(subjects)
    assert [f[0] for f in folds] == ["a/1", "b/2", "c/3"]
    tested = np.concatenate([f[2] for f in folds])
    assert sorted(tested.tolist()) == list(range(len(subjects)))
    for subject, train_idx, test_idx in folds:
        assert set(subjects[test_idx]) == {subject}
        assert subject not in set(subjects[train_idx])


def test_uf1_and_uar_match_hand_computed_values():
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 0, 1, 2, 1, 0, 2, 2, 2, 0]
    # class 0: tp 2, fp 2, fn 2 -> P 0.5, R 0.5, F1 0.5
    # class 1: tp 1, fp 1, fn 1 -> P 0.5, R 0.5, F1 0.5
    # class 2: tp 3, fp 1, fn 1 -> P 0.75, R 0.75, F1 0.75
    s = scores(labels, preds, 3)
    assert s["accuracy"] == pytest.approx(0.6)
    assert s["uf1"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    assert s["uar"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    # A class never predicted counts F1 = 0, and recall averages over every class.
    s = scores([0, 1, 2], [0, 0, 0], 3)
    # class 0: P 1/3, R 1 -> F1 0.5; classes 1 and 2: F1 0.
    assert s["uf1"] == pytest.approx(0.5 / 3)
    assert s["uar"] == pytest.approx(1 / 3)


@pytest.mark.slow
def test_an_interrupted_training_resumes_and_ends_exactly_as_an_uninterrupted_one(
    tiny_set, tmp_path
):
    pairs = build_pairs(load_dataset("synthme", tiny_set, "3class"), 32, 1)
    tcfg = replace(TRAIN_PRESETS["tiny"], epochs=3)
    cfg = replace(CONFIGS["tiny"], num_classes=3)

    torch.manual_seed(0)
    straight = train(build_model("mfvan", cfg), pairs, tcfg)

    class Interrupt(Exception):
        pass

    def stop_after_two(epoch, phase, loss):
        if epoch == 1:
            raise Interrupt

    checkpoint = tmp_path / "ckpt.pt"
    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        train(build_model("mfvan", cfg), pairs, tcfg, checkpoint, on_epoch=stop_after_two)
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 1
    torch.manual_seed(123)  # a fresh process: nothing carried over but the checkpoint
    resumed = train(build_model("mfvan", cfg), pairs, tcfg, checkpoint)
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_tiny_end_to_end_loso_training_and_evaluation(tiny_set, tmp_path, capsys):
    from mfvan.deploy.cli import main

    run = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "synthme",
        "--data",
        str(tiny_set),
        "--config",
        "tiny",
        "--loso",
        "--out",
        str(run),
        "--cache",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0
    assert "LOSO pooled: accuracy" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert [f["subject"] for f in metrics["folds"]] == [
        "synthme/sub01",
        "synthme/sub02",
        "synthme/sub03",
    ]
    assert metrics["pooled"]["n"] == sum(f["n"] for f in metrics["folds"])
    assert sum(map(sum, metrics["confusion"])) == metrics["pooled"]["n"]
    for name in ("report.md", "confusion.png", "confusion.json", "attention.png"):
        assert (run / name).exists()
    assert not list((run / "checkpoints").glob("*.pt")), "finished folds leave no checkpoint"
    # Rerunning skips finished folds; `mfvan eval` rebuilds the same report.
    assert main(args) == 0
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text()) == metrics
    # Without --loso: train on everything, save weights, evaluate them on the data.
    capsys.readouterr()
    everything = tmp_path / "all"
    args = [a for a in args if a != "--loso"]
    args[args.index(str(run))] = str(everything)
    assert main(args) == 0
    (weights,) = everything.glob("*.safetensors")
    assert (
        main(
            [
                "eval",
                "--weights",
                str(weights),
                "--data",
                str(tiny_set),
                "--cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "(trained on: synthme (3class) at" in out
    assert "synthme: 13 samples, accuracy" in out
