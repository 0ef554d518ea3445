"""MFVAN weights on disk: `NAME.safetensors` plus a JSON sidecar `NAME.json`.

The sidecar says what the tensors are: format and version, the full `MFVANConfig`, the
class names in output order, the input (size, channels), the preprocessing the network
expects and its inputs by name (`onset`, `apex`, and `motion`, the spot stage's flow, for
a motion config), what data trained it, the git commit of the code, and the sha256 of the tensor
file (so a sidecar cannot be paired with other weights), and `sidecar_sha256`, the sha256
of the sidecar's own fields (so classes renamed or swapped, or a config edited, are
refused: swapping `negative` and `positive` would invert every label). The model version
an event names (`meta["version"]`, `NAME@<tensors' hash>-<sidecar's hash>`) names both.
A hash is not a signature: it catches edits and corruption, not someone who rewrites the
hash too; protect the weights folder as you would the program. `load_weights` checks all
of it, each field's type, and what the caller expects, and refuses any mismatch with a
`WeightsError` whose message names the file and the field; a missing, truncated or
foreign file gets the same kind of message, never a traceback from deep inside a library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

from mfvan.model.mfvan import MFVAN, MFVANConfig, build_network

FORMAT = "mfvan-weights"
# 2: the sidecar is covered by its own hash, `sidecar_sha256`; 3: the sidecar names the
# network's inputs, which may include the spot stage's flow (`motion`): a reader of
# version 2 refuses it (it would not feed the flow), and version 2 files still load here
FORMAT_VERSION = 3
READS = (2, 3)
PREPROCESSING = {
    "crop": "aligned face (eyes level), square",
    "resize": "area interpolation to image_size x image_size",
    "scale": "uint8 / 255",
    "normalise": "(x - 0.5) / 0.5",
    "inputs": ["onset", "apex"],
}
MOTION_PREPROCESSING = (
    "the pair's onset-to-apex flow as the spot stage sends it (mfvan.kernels.motion."
    "pair_flow on the 128 px grey crops, head motion undone), area-resized to image_size, "
    "in px of a 128 px crop x MOTION_GAIN, with its optical strain x STRAIN_GAIN"
)


def preprocessing(cfg: MFVANConfig) -> dict:
    """The sidecar's `preprocessing`: what the network expects, inputs named in order."""
    out = {**PREPROCESSING, "inputs": list(cfg.inputs)}
    if cfg.motion != "none":
        out["motion"] = MOTION_PREPROCESSING
    return out


class WeightsError(ValueError):
    """Weights that cannot be used; the message names the file and what is wrong."""


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def current_git_commit() -> str:
    """The commit of the code that is running, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def save_weights(
    model: MFVAN,
    path: Path,
    classes: list[str],
    training_data: str,
    git_commit: str | None = None,
    calibration: dict | None = None,
) -> Path:
    """Write `path` (.safetensors) and its sidecar; returns the sidecar's path.
    `calibration`: the temperature (and how it was fitted: `calibration.calibration_report`
    and where its predictions came from) that the recognizer applies."""
    from safetensors.torch import save_file

    path = Path(path)
    if len(classes) != model.cfg.num_classes:
        raise WeightsError(f"{len(classes)} class names for a {model.cfg.num_classes}-class model")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT})
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(model.cfg),
        "classes": list(classes),
        "input": {"size": model.cfg.image_size, "channels": model.cfg.in_chans},
        "preprocessing": preprocessing(model.cfg),
        "training_data": training_data,
        "git_commit": git_commit or current_git_commit(),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    if calibration is not None:
        sidecar["calibration"] = calibration
    seal(sidecar)
    out = sidecar_path(path)
    out.write_text(json.dumps(sidecar, indent=2) + "\n")
    for written in (path, out):  # weights are not secret: a service user must read them,
        written.chmod(0o644)  # whatever the umask of whoever trained them
    return out


def _digest(meta: dict) -> str:
    fields = {k: v for k, v in meta.items() if k != "sidecar_sha256"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal(meta: dict) -> dict:
    """Set the sidecar's own hash, `sidecar_sha256`, over its other fields."""
    meta["sidecar_sha256"] = _digest(meta)
    return meta


def _is_hex64(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _is_classes(v) -> bool:
    return (
        isinstance(v, list)
        and len(v) >= 2
        and all(isinstance(c, str) and c for c in v)
        and len(set(v)) == len(v)
    )


def _is_input(v) -> bool:
    return isinstance(v, dict) and all(
        type(v.get(k)) is int and v[k] > 0 for k in ("size", "channels")
    )


def _is_calibration(v) -> bool:
    t = v.get("temperature") if isinstance(v, dict) else None
    return type(t) in (int, float) and 0.05 <= t <= 20


SIDECAR_FIELDS = {  # field -> (check, what it must be)
    "config": (lambda v: isinstance(v, dict), "a map of MFVANConfig fields"),
    "classes": (_is_classes, "a list of two or more distinct class names"),
    "input": (_is_input, "a map of positive integers size and channels"),
    "preprocessing": (lambda v: isinstance(v, dict), "a map"),
    "training_data": (lambda v: isinstance(v, str), "a string"),
    "git_commit": (lambda v: isinstance(v, str), "a string"),
    "sha256": (_is_hex64, "64 lowercase hex digits"),
    "sidecar_sha256": (_is_hex64, "64 lowercase hex digits"),
}


def read_sidecar(path: Path) -> dict:
    """The sidecar of weights file `path`, checked for format, version, its own hash and
    each field's type; `version` added (the model version events name)."""
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: no sidecar {side.name} beside it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsError(f"{side}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(
            f"{side}: not an mfvan weights sidecar (format is "
            f"{meta.get('format') if isinstance(meta, dict) else None!r})"
        )
    if meta.get("format_version") not in READS:
        raise WeightsError(
            f"{side}: format version {meta.get('format_version')!r}, this mfvan reads "
            f"versions {', '.join(map(str, READS))} (a newer mfvan wrote it, or re-save the "
            "weights with this one)"
        )
    missing = [k for k in SIDECAR_FIELDS if k not in meta]
    if missing:
        raise WeightsError(f"{side}: missing field(s) {', '.join(missing)}")
    if _digest(meta) != meta["sidecar_sha256"]:
        raise WeightsError(
            f"{side}: its fields do not match its sidecar_sha256: edited after it was "
            "written (classes, config or input changed?) or corrupted"
        )
    for key, (ok, what) in SIDECAR_FIELDS.items():
        if not ok(meta[key]):
            raise WeightsError(f"{side}: field {key!r} must be {what}, not {meta[key]!r:.60}")
    if "calibration" in meta and not _is_calibration(meta["calibration"]):
        raise WeightsError(
            f"{side}: field 'calibration' must be a map with a temperature 0.05-20, not "
            f"{meta['calibration']!r:.60}"
        )
    meta["version"] = f"{Path(path).stem}@{meta['sha256'][:12]}-{meta['sidecar_sha256'][:8]}"
    return meta


def temperature(meta: dict) -> float:
    """The temperature that calibrates the model's probabilities (`calibration` in the
    sidecar, fitted on held-out folds by `mfvan.model.calibration`); 1.0 without."""
    return float(meta.get("calibration", {}).get("temperature", 1.0))


def config_from_dict(data: dict) -> MFVANConfig:
    fields = {f.name for f in dataclasses.fields(MFVANConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise WeightsError(f"config has unknown field(s) {', '.join(unknown)}")
    data = dict(data)
    for key in ("student_widths", "scales"):
        if key in data:
            data[key] = tuple(data[key])
    try:
        return MFVANConfig(**data)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"config is invalid: {err}") from None


def load_weights(
    path: Path,
    classes: list[str] | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    config: MFVANConfig | None = None,
) -> tuple[MFVAN, dict]:
    """Build the model a weights file describes and load it, in eval mode.

    Expectations (`classes`, `image_size`, `in_chans`, `config`) are checked against the
    sidecar when given. Returns (model, sidecar).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_sidecar(path)
    cfg = config_from_dict(meta["config"])
    _expect(path, "classes", meta["classes"], classes)
    _expect(path, "input size", meta["input"].get("size"), image_size)
    _expect(path, "input channels", meta["input"].get("channels"), in_chans)
    if config is not None and config != cfg:
        differ = [
            f.name
            for f in dataclasses.fields(MFVANConfig)
            if getattr(config, f.name) != getattr(cfg, f.name)
        ]
        raise WeightsError(f"{path}: config differs from the expected one in {', '.join(differ)}")
    if meta["input"] != {"size": cfg.image_size, "channels": cfg.in_chans}:
        raise WeightsError(f"{path}: sidecar input {meta['input']} disagrees with its config")
    inputs = meta["preprocessing"].get("inputs", PREPROCESSING["inputs"])
    if list(inputs) != list(cfg.inputs):
        raise WeightsError(
            f"{path}: the sidecar names the inputs {inputs}, its config takes {list(cfg.inputs)}"
        )
    if len(meta["classes"]) != cfg.num_classes:
        raise WeightsError(
            f"{path}: {len(meta['classes'])} classes named for a {cfg.num_classes}-class config"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise WeightsError(
            f"{path}: contents do not match the sidecar's sha256 (truncated, "
            f"corrupted, or the sidecar of other weights)"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    model = build_network(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        detail = "; ".join(
            part
            for part in (
                missing and f"missing {', '.join(missing[:5])}",
                unexpected and f"unexpected {', '.join(unexpected[:5])}",
                shapes and f"shapes differ: {', '.join(shapes[:5])}",
            )
            if part
        )
        raise WeightsError(f"{path}: tensors do not fit the sidecar's config: {detail}")
    model.load_state_dict(tensors)
    return model.eval(), meta


def _expect(path: Path, what: str, found, wanted) -> None:
    def plain(value):  # JSON gives lists where callers may pass tuples
        return list(value) if isinstance(value, (list, tuple)) else value

    if wanted is not None and plain(found) != plain(wanted):
        raise WeightsError(f"{path}: {what} differ: the file has {found!r}, expected {wanted!r}")
