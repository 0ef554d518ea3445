"""Metrics and the report folder of a LOSO run.

Metrics follow MEGC 2019: predictions of all folds are pooled, then
- accuracy,
- UF1 = the mean over classes of per-class F1 (= macro F1, `sklearn.metrics.f1_score`
  with `average="macro"` over every class, a class never predicted counting F1 = 0),
- UAR = the mean over classes of per-class recall (`recall_score`, `average="macro"`).
Per-dataset rows of the composite pool the predictions of that dataset's subjects.

`write_report(run_dir)` reads `run.json` and `folds/*.json` and writes `metrics.json`,
`confusion.json`, `confusion.png` and `report.md` (per-fold table, pooled metrics,
confusion matrix). With jittered rows (`Pairs.jittered`) a fold also holds its held-out
samples at a spotter's (onset, apex) (`spotted`), pooled the same way. The pooled held-out
probabilities also give the calibration (`mfvan.model.calibration`): the temperature that
fits them and the expected calibration error before and after.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def scores(labels, predictions, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = list(range(num_classes))
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predictions)) if len(labels) else 0.0,
        "uf1": float(
            f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)
        ),
        "uar": float(
            recall_score(labels, predictions, labels=classes, average="macro", zero_division=0)
        ),
    }


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    folds = [json.loads(p.read_text()) for p in sorted((run_dir / "folds").glob("*.json"))]
    return run, folds


def summarise(run_dir: Path) -> dict:
    """Pooled and per-dataset metrics, per-fold rows and the confusion matrix of a run."""
    from sklearn.metrics import confusion_matrix

    run, folds = load_run(run_dir)
    k = len(run["classes"])
    labels = [y for f in folds for y in f["labels"]]
    preds = [p for f in folds for p in f["predictions"]]
    per_dataset = {}
    prefixes = sorted({f["subject"].split("/")[0] for f in folds})
    if len(prefixes) > 1:
        for prefix in prefixes:
            sel = [f for f in folds if f["subject"].startswith(prefix + "/")]
            per_dataset[prefix] = scores(
                [y for f in sel for y in f["labels"]], [p for f in sel for p in f["predictions"]], k
            )
    spotted = [f["spotted"] for f in folds if "spotted" in f]
    probs = [p for f in folds for p in f.get("probabilities", [])]
    from mfvan.model.calibration import calibration_report

    return {
        "model": run["model"],
        "ablation": run.get("ablation"),
        "config": run.get("config", {}).get("name"),
        "motion": run.get("config", {}).get("motion", "none"),
        "classes": run["classes"],
        "pooled": scores(labels, preds, k),
        "spotted": scores(
            [y for s in spotted for y in s["labels"]],
            [p for s in spotted for p in s["predictions"]],
            k,
        )
        if spotted
        else None,
        "calibration": calibration_report(
            probs, labels, [f["subject"] for f in folds for _ in f["labels"]]
        )
        if len(probs) == len(labels) and labels
        else None,
        "per_dataset": per_dataset,
        "folds": [
            {"subject": f["subject"], **scores(f["labels"], f["predictions"], k)} for f in folds
        ],
        "confusion": confusion_matrix(labels, preds, labels=list(range(k))).tolist(),
    }


def plot_confusion(matrix, classes, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black"
        )
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_report(run_dir: Path) -> dict:
    """Write the report files of a LOSO run; returns its summary."""
    run_dir = Path(run_dir)
    summary = summarise(run_dir)
    name = summary["model"] + (f" ({summary['ablation']})" if summary["ablation"] else "")
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "confusion.json").write_text(
        json.dumps(
            {"classes": summary["classes"], "rows_true_columns_predicted": summary["confusion"]},
            indent=2,
        )
        + "\n"
    )
    plot_confusion(
        summary["confusion"], summary["classes"], run_dir / "confusion.png", f"{name}, LOSO pooled"
    )
    p = summary["pooled"]
    lines = [
        f"# {name}: leave-one-subject-out",
        "",
        f"{p['n']} samples, {len(summary['folds'])} folds, "
        f"classes: {', '.join(summary['classes'])}.",
        "",
        "| | accuracy | UF1 (macro F1) | UAR |",
        "|---|---|---|---|",
        f"| pooled | {p['accuracy']:.4f} | {p['uf1']:.4f} | {p['uar']:.4f} |",
    ]
    for dataset, s in summary["per_dataset"].items():
        lines.append(f"| {dataset} | {s['accuracy']:.4f} | {s['uf1']:.4f} | {s['uar']:.4f} |")
    if summary["spotted"]:
        s = summary["spotted"]
        lines.append(
            f"| at a spotter's (onset, apex), n {s['n']} | {s['accuracy']:.4f} | "
            f"{s['uf1']:.4f} | {s['uar']:.4f} |"
        )
    if summary["calibration"]:
        c = summary["calibration"]
        lines += [
            "",
            f"Calibration (pooled held-out probabilities): temperature {c['temperature']:.3f}; "
            f"expected calibration error {c['ece_before']:.4f} before, {c['ece_after']:.4f} "
            "after temperature scaling (each subject scaled by the temperature fitted on the "
            "others).",
        ]
    lines += ["", "![confusion matrix](confusion.png)", ""]
    if (run_dir / "attention.png").exists():
        lines += ["![per-scale attention on held-out pairs](attention.png)", ""]
    lines += [
        "## Folds",
        "",
        "| held-out subject | n | accuracy | macro F1 |",
        "|---|---|---|---|",
    ]
    for f in summary["folds"]:
        lines.append(f"| {f['subject']} | {f['n']} | {f['accuracy']:.3f} | {f['uf1']:.3f} |")
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def plot_attention(model, batch: dict, path: Path, title: str = "") -> None:
    """Per-scale class-token attention and the kept-patch mask over the apex, one row per
    sample: what each MFVAN branch looked at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    model.eval()
    with torch.no_grad():
        out = model.forward_features(*(batch[k] for k in model.inputs))
    scales = list(out["scales"])
    n = batch["apex"].shape[0]
    grid = model.cfg.grid
    fig, axes = plt.subplots(
        n, 1 + 2 * len(scales), figsize=(2 * (1 + 2 * len(scales)), 2 * n), squeeze=False
    )
    for i in range(n):
        apex = batch["apex"][i].mean(0).cpu().numpy()
        axes[i, 0].imshow(apex, cmap="gray")
        axes[i, 0].set_title("apex", fontsize=8)
        for j, scale in enumerate(scales):
            weights = out["scales"][scale]["weights"][i].reshape(grid, grid).cpu().numpy()
            mask = out["scales"][scale]["mask"][i].reshape(grid, grid).cpu().numpy()
            for k, (img, label) in enumerate(((weights, "attention"), (mask, "kept"))):
                ax = axes[i, 1 + 2 * j + k]
                ax.imshow(apex, cmap="gray")
                ax.imshow(
                    img,
                    cmap="inferno",
                    alpha=0.55,
                    extent=(-0.5, apex.shape[1] - 0.5, apex.shape[0] - 0.5, -0.5),
                )
                ax.set_title(f"{scale} {label}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
