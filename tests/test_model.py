"""MFVAN: shapes, masking, gradients, losses, learning, weights files and ONNX export."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mfvan.model import losses
from mfvan.model.data import synth
from mfvan.model.mfvan import CONFIGS, MFVAN, SCALES, preprocess
from mfvan.model.weights import WeightsError, load_weights, save_weights, seal, sidecar_path

TINY = CONFIGS["tiny"]
CLASSES = ["negative", "positive", "surprise"]
ABLATIONS = [
    (False, ()),  # Global
    (True, ()),  # Global+RI
    (True, ("image",)),
    (True, ("s1",)),
    (True, ("s2",)),
    (True, ("s1", "s2")),
    (True, SCALES),
    (False, SCALES),
]


def _pair(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.in_chans, cfg.image_size, cfg.image_size)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", ["tiny", "demo", "paper"])
def test_every_config_gives_logits_and_per_scale_outputs_of_the_right_shape(name):
    cfg = CONFIGS[name]
    model = MFVAN(cfg).eval()
    onset, apex = _pair(cfg)
    with torch.no_grad():
        out = model.forward_features(onset, apex)
    assert out["logits"].shape == (2, cfg.num_classes)
    assert out["onset_pred"].shape == apex.shape
    n = cfg.grid * cfg.grid
    for scale in SCALES:
        s = out["scales"][scale]
        assert s["weights"].shape == s["mask"].shape == (2, n)
        assert s["z"].shape == s["cls"].shape == (2, cfg.dim)
        assert s["scale_logits"].shape == s["mask_logits"].shape == (2, cfg.num_classes)


@pytest.mark.parametrize(("identity_removal", "scales"), ABLATIONS)
def test_every_ablation_row_builds_and_classifies(identity_removal, scales):
    cfg = TINY.ablation(identity_removal, scales)
    model = MFVAN(cfg).eval()
    out = model.forward_features(*_pair(cfg))
    assert out["logits"].shape == (2, 3)
    assert set(out["scales"]) == set(scales)
    assert (model.teacher is not None) == identity_removal
    assert ("onset_pred" in out) == (identity_removal or any(s != "image" for s in scales))


def test_a_bad_config_is_refused_with_what_is_wrong():
    with pytest.raises(ValueError, match="unknown scale"):
        replace(TINY, scales=("s3",))
    with pytest.raises(ValueError, match="multiple of 4 \\* grid"):
        replace(TINY, image_size=30)


# ----------------------------------------------------------------------------- masking


def test_the_mask_keeps_patches_above_the_threshold_and_always_the_best_one():
    model = MFVAN(TINY).eval()
    with torch.no_grad():
        out = model.forward_features(*_pair(TINY, batch=4))
    n = TINY.grid**2
    for s in out["scales"].values():
        w, m = s["weights"], s["mask"]
        assert torch.allclose(w.sum(-1), torch.ones(4))
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        expected = w >= torch.minimum(torch.full_like(w, 1.0 / n), w.amax(-1, keepdim=True))
        assert torch.equal(m.bool(), expected)


def test_perturbing_a_masked_patch_leaves_the_fused_feature_unchanged():
    torch.manual_seed(1)
    model = MFVAN(TINY).eval()
    branch = model.branches["image"]
    x = torch.randn(1, TINY.in_chans, TINY.image_size, TINY.image_size)
    patch = TINY.patch_size("image")
    with torch.no_grad():
        before = branch(x)
    mask = before["mask"][0]
    assert 0 < mask.sum() < mask.numel(), "the test needs masked and kept patches"

    def perturbed(index):
        y = x.clone()
        row, col = divmod(index, TINY.grid)
        y[..., row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] += 0.02
        with torch.no_grad():
            return branch(y)

    # The patches furthest from the threshold, so the small perturbation cannot flip them.
    weights = before["weights"][0]
    masked = int(weights.argmin())
    after = perturbed(masked)
    assert torch.equal(after["mask"], before["mask"])
    torch.testing.assert_close(after["z"], before["z"], rtol=0, atol=1e-6)
    changed = perturbed(int(weights.argmax()))
    assert torch.equal(changed["mask"], before["mask"])
    assert (changed["z"] - before["z"]).abs().max() > 1e-4, "a kept patch must matter"


# ----------------------------------------------------------------------------- gradients and losses


@pytest.mark.parametrize(("identity_removal", "scales"), [(True, SCALES), (False, ()), (True, ())])
@pytest.mark.parametrize("source", ["student", "onset"])
def test_gradients_reach_every_parameter_the_active_losses_train(identity_removal, scales, source):
    cfg = replace(TINY.ablation(identity_removal, scales), identity_source=source)
    torch.manual_seed(0)
    model = MFVAN(cfg).train()
    onset, apex = _pair(cfg, batch=4)
    target = torch.tensor([0, 1, 2, 1])
    loss, terms = losses.total_loss(model, model.forward_features(onset, apex), onset, apex, target)
    loss.backward()
    assert set(terms) == {"global"} | ({"scale", "mask"} if scales else set()) | (
        {"ri"} if identity_removal else set()
    )
    silent = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().max() == 0)
    ]
    assert not silent, silent


def test_focal_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    weights = torch.tensor([1.0, 2.0, 3.0])
    p = torch.softmax(logits, -1)
    p0, p1 = float(p[0, 0]), float(p[1, 2])
    gamma = 2.0
    terms = [-((1 - p0) ** gamma) * np.log(p0) * 1.0, -((1 - p1) ** gamma) * np.log(p1) * 3.0]
    expected = sum(terms) / (1.0 + 3.0)
    got = losses.focal_loss(logits, target, gamma, weights)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_focal_loss_at_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    weights = torch.rand(5) + 0.1
    torch.testing.assert_close(
        losses.focal_loss(logits, target, 0.0), F.cross_entropy(logits, target)
    )
    torch.testing.assert_close(
        losses.focal_loss(logits, target, 0.0, weights),
        F.cross_entropy(logits, target, weight=weights),
    )


def test_class_weights_are_inverse_frequency_with_mean_one():
    w = losses.class_weights_from_counts([250, 109, 83])
    assert float(w.mean()) == pytest.approx(1.0)
    assert w[0] < w[1] < w[2]


def test_the_teacher_pretraining_loss_trains_the_teacher_alone():
    model = MFVAN(TINY).train()
    frames = _pair(TINY, batch=3)[0]
    losses.reconstruction_loss(model, frames).backward()
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {"teacher"}


# ----------------------------------------------------------------------------- learning


def synth_pairs(cfg, per_class=2, seed=0):
    """(onset, apex, label) tensors from SynthME clips, 3 classes, faces cropped square."""
    config = synth.CONFIGS["tiny"]
    onsets, apexes, labels = [], [], []
    emotions = {"happiness": 1, "disgust": 0, "surprise": 2}
    for subject in (1, 2):
        r = synth.SubjectRenderer(subject, seed, config)
        p = r.placement
        half = int(0.45 * p.h)
        box = (slice(int(p.cy) - half, int(p.cy) + half), slice(int(p.cx) - half, int(p.cx) + half))
        for i, (emotion, label) in enumerate(emotions.items()):
            for k in range(per_class // 2):
                clip, timeline = synth.make_clip(r, subject, 10 * i + k, seed, emotion=emotion)
                e = clip.expression
                onsets.append(r.render(timeline.state(e.onset))[box])
                apexes.append(r.render(timeline.state(e.apex))[box])
                labels.append(label)
    return (
        preprocess(np.stack(onsets), cfg),
        preprocess(np.stack(apexes), cfg),
        torch.tensor(labels),
    )


def test_the_tiny_model_overfits_a_handful_of_synthme_pairs():
    torch.manual_seed(0)
    model = MFVAN(TINY).train()
    onset, apex, target = synth_pairs(TINY, per_class=2)
    assert len(target) == 6
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(300):
        loss, _ = losses.total_loss(model, model.forward_features(onset, apex), onset, apex, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                accuracy = (model(onset, apex).argmax(-1) == target).float().mean()
            model.train()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"training accuracy {accuracy:.2f} after {step + 1} steps"


def test_preprocess_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((1, 8, 8), np.float32), TINY)
    with pytest.raises(ValueError, match="shape"):
        preprocess(np.zeros((8, 8), np.uint8), TINY)


# ----------------------------------------------------------------------------- weights files


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(3)
    model = MFVAN(TINY).eval()
    path = tmp_path / "tiny.safetensors"
    save_weights(model, path, CLASSES, training_data="SynthME tiny, seed 0 (test)")
    return model, path


def test_save_and_load_round_trip_exactly(saved):
    model, path = saved
    loaded, meta = load_weights(path, classes=CLASSES, image_size=32, in_chans=1, config=TINY)
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    onset, apex = _pair(TINY)
    assert torch.equal(model(onset, apex), loaded(onset, apex))
    assert meta["training_data"].startswith("SynthME")
    assert meta["preprocessing"]["normalise"] == "(x - 0.5) / 0.5"
    assert len(meta["git_commit"]) in (40, len("unknown"))


def _edit_sidecar(path, change, reseal=True):
    """Change the sidecar; `reseal`: and set its own hash again, as a tool that rewrites
    sidecars would (what is left to catch is what its fields say)."""
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    change(meta)
    side.write_text(json.dumps(seal(meta) if reseal else meta))


SIDECAR_EDITS = {
    "format version": (lambda m: m.update(format_version=99), "format version 99"),
    "format": (lambda m: m.update(format="something-else"), "not an mfvan weights sidecar"),
    "missing field": (lambda m: m.pop("classes"), "missing field"),
    "config dim": (lambda m: m["config"].update(dim=64), "tensors do not fit"),
    "config unknown field": (lambda m: m["config"].update(colour="red"), "unknown field"),
    "config invalid": (lambda m: m["config"].update(scales=["s9"]), "config is invalid"),
    "input size": (lambda m: m["input"].update(size=64), "disagrees with its config"),
    "class count": (lambda m: m.update(classes=["a", "b"]), "2 classes named"),
    "sha256": (lambda m: m.update(sha256="0" * 64), "sha256"),
    "config null": (lambda m: m.update(config=None), "field 'config' must be a map"),
    "input not a map": (lambda m: m.update(input="x"), "field 'input' must be a map"),
    "classes null": (lambda m: m.update(classes=None), "field 'classes' must be a list"),
    "classes twice": (lambda m: m.update(classes=["a", "a", "b"]), "distinct class names"),
}

# edits of a sealed sidecar by hand (not re-sealed): each would change what the model
# means while the tensors stay the same
UNSEALED_EDITS = {
    "classes swapped": lambda m: m["classes"].reverse(),
    "classes renamed": lambda m: m["classes"].__setitem__(0, "angry"),
    "heads 4 -> 8": lambda m: m["config"].update(heads=8),
    "mask_threshold": lambda m: m["config"].update(mask_threshold=0.5),
}


@pytest.mark.parametrize("case", list(UNSEALED_EDITS))
def test_a_sidecar_edited_by_hand_is_refused_by_its_own_hash(saved, case):
    _, path = saved
    version = load_weights(path)[1]["version"]
    _edit_sidecar(path, UNSEALED_EDITS[case], reseal=False)
    with pytest.raises(WeightsError, match="edited after it was written"):
        load_weights(path)
    # re-sealed, it loads (a hash is not a signature) but names another model version
    _edit_sidecar(path, lambda m: None)
    assert load_weights(path)[1]["version"] != version


@pytest.mark.parametrize("case", list(SIDECAR_EDITS))
def test_every_sidecar_mismatch_is_refused_with_what_differs(saved, case):
    _, path = saved
    change, message = SIDECAR_EDITS[case]
    _edit_sidecar(path, change)
    with pytest.raises(WeightsError, match=message):
        load_weights(path)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"classes": ["happiness", "other", "surprise"]}, "classes differ"),
        ({"image_size": 64}, "input size differ"),
        ({"in_chans": 3}, "input channels differ"),
        ({"config": replace(TINY, dim=64)}, "config differs .* in dim"),
    ],
)
def test_weights_that_are_not_what_the_caller_expects_are_refused(saved, expect, message):
    with pytest.raises(WeightsError, match=message):
        load_weights(saved[1], **expect)


def test_a_truncated_or_foreign_weights_file_gets_a_clear_error(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="sha256"):
        load_weights(path)
    # Even with a sidecar that vouches for it, garbage is refused by the reader.
    path.write_bytes(b"not a safetensors file at all")
    _edit_sidecar(
        path,
        lambda m: m.update(
            sha256=__import__("hashlib").sha256(b"not a safetensors file at all").hexdigest()
        ),
    )
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(path)
    with pytest.raises(WeightsError, match="no sidecar"):
        load_weights(tmp_path / "absent.safetensors")


# ----------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module", params=["tiny", "demo"])
def exported(request, tmp_path_factory):
    from mfvan.deploy.export import export_onnx, onnx_session

    torch.manual_seed(0)
    model = MFVAN(CONFIGS[request.param]).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    return model, onnx_session(path)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("inputs", ["random", "synthme"])
def test_the_onnx_export_runs_in_onnxruntime_and_matches_eager_torch(exported, batch, inputs):
    model, session = exported
    cfg = model.cfg
    if inputs == "random":
        onset, apex = _pair(cfg, batch=batch, seed=batch)
    else:
        onset, apex, _ = synth_pairs(cfg, per_class=6)
        onset, apex = onset[:batch], apex[:batch]
    with torch.no_grad():
        expected = model(onset, apex).numpy()
    got = session.run(None, {"onset": onset.numpy(), "apex": apex.numpy()})[0]
    assert got.shape == (batch, cfg.num_classes)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_bench_model_prints_both_engines_side_by_side(capsys):
    from mfvan.deploy.cli import main

    assert main(["bench", "model", "--config", "tiny", "--runs", "3", "--batches", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "MFLOPs per (onset, apex) pair" in out
    for engine in ("torch eager", "onnxruntime"):
        assert out.count(engine) >= 2
    assert "x the speed of torch eager" in out
