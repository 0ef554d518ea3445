"""MFVAN: shapes, masking, gradients, losses, learning, weights files and ONNX export."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mfvan.model import losses
from mfvan.model.data import synth
from mfvan.model.mfvan import CONFIGS, MFVAN, MOTIONS, SCALES, preprocess
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


def _inputs(cfg, batch=2, seed=0):
    """Random inputs of every name the config takes (`cfg.inputs`), in order."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, *cfg.input_shape(n), generator=g) for n in cfg.inputs)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", ["tiny", "demo", "motion", "paper"])
def test_every_config_gives_logits_and_per_scale_outputs_of_the_right_shape(name):
    cfg = CONFIGS[name]
    model = MFVAN(cfg).eval()
    onset, apex, *motion = _inputs(cfg)
    with torch.no_grad():
        out = model.forward_features(onset, apex, *motion)
    assert out["logits"].shape == (2, cfg.num_classes)
    assert out["onset_pred"].shape == apex.shape
    n = cfg.grid * cfg.grid
    for scale in SCALES:
        s = out["scales"][scale]
        assert s["weights"].shape == s["mask"].shape == (2, n)
        assert s["z"].shape == s["cls"].shape == (2, cfg.dim)
        assert s["scale_logits"].shape == s["mask_logits"].shape == (2, cfg.num_classes)


@pytest.mark.parametrize("motion", MOTIONS)
def test_the_motion_enters_where_the_config_says(motion):
    """ "branch": a fourth ViT branch (its z fused, its scale and mask logits in the losses);
    "global": three more channels of the global encoder; "both"; "none": the paper's."""
    cfg = replace(TINY, motion=motion)
    model = MFVAN(cfg).eval()
    assert cfg.inputs == (("onset", "apex", "motion") if motion != "none" else ("onset", "apex"))
    inputs = _inputs(cfg)
    with torch.no_grad():
        out = model.forward_features(*inputs)
    assert out["logits"].shape == (2, 3)
    assert ("motion" in out["scales"]) == (motion in ("branch", "both"))
    first = model.global_encoder.net[0][0]
    assert first.in_channels == 1 + (3 if motion in ("global", "both") else 0)
    if motion == "none":
        return
    with pytest.raises(ValueError, match="takes inputs"):
        model(*inputs[:2])
    # the motion input is read: changing it changes the logits
    with torch.no_grad():
        changed = model(inputs[0], inputs[1], inputs[2] + 1.0)
    assert (changed - out["logits"]).abs().max() > 1e-4


def test_the_motion_input_is_the_spot_stages_flow_preprocessed():
    """`prepare_inputs` from crops and the flow the spot stage sends: u, v resized and in
    px of a 128 px crop x MOTION_GAIN, the strain beside; without flow, the same flow is
    computed from the crops (what the recognizer does for an older spot stage's pair)."""
    from mfvan.kernels.motion import wire_flow
    from mfvan.model.mfvan import MOTION_GAIN, pair_flows, prepare_inputs, preprocess_motion

    cfg = CONFIGS["motion"]
    flow = np.zeros((1, 128, 128, 2), np.float16)
    flow[..., 0] = 0.5  # half a pixel to the right everywhere
    x = preprocess_motion(flow, cfg.image_size)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], torch.full((64, 64), 0.5 * MOTION_GAIN))
    assert float(x[0, 1].abs().max()) == 0 and float(x[0, 2].abs().max()) < 1e-6, "no strain"
    rng = np.random.default_rng(0)
    onset = rng.integers(0, 256, (2, 128, 128), dtype=np.uint8)
    apex = np.roll(onset, 1, axis=2)
    sent = np.stack([wire_flow(a, b) for a, b in zip(onset, apex, strict=True)])
    given = prepare_inputs(cfg, onset, apex, sent)
    computed = prepare_inputs(cfg, onset, apex)
    assert list(given) == ["onset", "apex", "motion"]
    torch.testing.assert_close(given["motion"], computed["motion"], atol=0.01, rtol=0)
    assert pair_flows(onset, apex).shape == (2, 128, 128, 2)
    assert list(prepare_inputs(CONFIGS["demo"], onset, apex, sent)) == ["onset", "apex"]


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


def synth_pairs(cfg, per_class=2, seed=0, motion=False):
    """(onset, apex, label) tensors from SynthME clips, 3 classes, faces cropped square;
    with `motion`, the pairs' motion input too (`pair_flow` of the crops)."""
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
    out = (
        preprocess(np.stack(onsets), cfg),
        preprocess(np.stack(apexes), cfg),
        torch.tensor(labels),
    )
    if not motion:
        return out
    from mfvan.model.mfvan import pair_flows, preprocess_motion

    return (*out, preprocess_motion(pair_flows(np.stack(onsets), np.stack(apexes)), cfg.image_size))


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


def test_weights_are_readable_by_others_whatever_the_umask(tmp_path):
    """A service user must read weights that root trained (they are not secret)."""
    import os
    import stat

    old = os.umask(0o077)
    try:
        save_weights(MFVAN(TINY).eval(), tmp_path / "w.safetensors", CLASSES, "test")
    finally:
        os.umask(old)
    for name in ("w.safetensors", "w.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


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


def test_weights_of_the_previous_format_still_load(saved):
    """A format-2 file (before the sidecar named its inputs; the `demo` and `paper` weights
    of earlier releases) loads as the network without the motion input."""
    model, path = saved

    def older(meta):
        meta["format_version"] = 2
        del meta["config"]["motion"]
        meta["preprocessing"].pop("inputs")

    _edit_sidecar(path, older)
    loaded, meta = load_weights(path)
    assert loaded.cfg.motion == "none" and loaded.inputs == ("onset", "apex")
    onset, apex = _pair(TINY)
    assert torch.equal(model(onset, apex), loaded(onset, apex))


def test_motion_weights_name_their_inputs_and_carry_their_calibration(tmp_path):
    from mfvan.model.weights import FORMAT_VERSION, temperature

    cfg = replace(TINY, motion="both")
    model = MFVAN(cfg).eval()
    path = tmp_path / "motion.safetensors"
    calibration = {"temperature": 1.7, "ece_before": 0.09, "ece_after": 0.02}
    save_weights(model, path, CLASSES, "test", calibration=calibration)
    loaded, meta = load_weights(path)
    assert meta["format_version"] == FORMAT_VERSION == 3
    assert meta["preprocessing"]["inputs"] == ["onset", "apex", "motion"]
    assert "pair_flow" in meta["preprocessing"]["motion"]
    assert temperature(meta) == 1.7 and loaded.cfg.motion == "both"
    inputs = _inputs(cfg)
    assert torch.equal(model(*inputs), loaded(*inputs))


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
    "inputs": (
        lambda m: m["preprocessing"].update(inputs=["onset", "apex", "motion"]),
        r"names the inputs \['onset', 'apex', 'motion'\], its config takes \['onset', 'apex'\]",
    ),
    "calibration": (
        lambda m: m.update(calibration={"temperature": 0}),
        "'calibration' must be a map with a temperature",
    ),
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


@pytest.fixture(scope="module", params=["tiny", "demo", "motion"])
def exported(request, tmp_path_factory):
    from mfvan.deploy.inference.export import export_onnx, onnx_session

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
        tensors = _inputs(cfg, batch=batch, seed=batch)
    else:
        onset, apex, _, motion = synth_pairs(cfg, per_class=6, motion=True)
        tensors = (onset[:batch], apex[:batch], motion[:batch])[: len(cfg.inputs)]
    with torch.no_grad():
        expected = model(*tensors).numpy()
    feed = {name: x.numpy() for name, x in zip(cfg.inputs, tensors, strict=True)}
    assert [i.name for i in session.get_inputs()] == list(cfg.inputs)
    got = session.run(None, feed)[0]
    assert got.shape == (batch, cfg.num_classes)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_bench_model_prints_both_engines_side_by_side(capsys):
    from mfvan.deploy.cli import main

    argv = ["bench", "model", "--config", "tiny", "--runs", "3", "--batches", "1", "2"]
    # `tiny` has no motion input: the baselines are timed as served, on the motion
    assert main([*argv, "--models", "mfvan", "region-motion", "off-apexnet"]) == 0
    out = capsys.readouterr().out
    assert out.count("MFLOPs per (onset, apex) pair") == 3
    for engine in ("torch eager", "onnxruntime"):
        assert out.count(engine) >= 6
    assert "x the speed of torch eager" in out
    assert "onnxruntime, batch 1: region-motion costs" in out
