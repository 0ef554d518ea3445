"""Small datasets in each public dataset's exact on-disk layout, drawn by SynthME.

A few subjects, a few samples each, five frames per sample (onset, rising, apex, falling,
offset), with the annotation files as their authors distribute them, defects included.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from mfvan.model.data import casme2, synth

# No nuisances: the loaders, not the generator, are under test here.
TINY = replace(synth.CONFIGS["tiny"], clip_nuisances=synth.Nuisances.none())
EMOTION_FOR = {  # which SynthME emotion draws each dataset label
    "happiness": "happiness",
    "positive": "happiness",
    "happy": "happiness",
    "disgust": "disgust",
    "repression": "repression",
    "negative": "disgust",
    "anger": "disgust",
    "fear": "repression",
    "contempt": "repression",
    "sad": "repression",
    "surprise": "surprise",
    "others": "others",
    "other": "others",
}


def sample_frames(subject: int, index: int, label: str, n: int = 5) -> list[np.ndarray]:
    """n RGB frames of one micro-expression, apex in the middle."""
    r = synth.SubjectRenderer(subject, 11, TINY)
    clip, timeline = synth.make_clip(r, subject, index, 11, emotion=EMOTION_FOR[label])
    e = clip.expression
    times = np.linspace(e.onset, e.apex + (e.apex - e.onset), n).round().astype(int)
    return [r.render(timeline.state(int(t))) for t in times]


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rgb[..., ::-1])


def write_casme2(root: Path) -> list[tuple]:
    """2 subjects; one row with ApexFrame '/' (a real CASME II defect) and a 'fear' row."""
    rows = []
    plan = [
        (1, "EP02_01f", "happiness"),
        (1, "EP03_02", "repression"),
        (1, "EP04_01", "fear"),
        (2, "EP01_12", "surprise"),
        (2, "EP05_03", "disgust"),
    ]
    for k, (subject, filename, emotion) in enumerate(plan):
        first = 40 + 7 * k
        for i, frame in enumerate(sample_frames(subject, k, emotion)):
            _write(
                root
                / "CASME2_RAW_selected"
                / f"sub{subject:02d}"
                / filename
                / f"img{first + i}.jpg",
                frame,
            )
        apex = "/" if k == 3 else first + 2
        rows.append((subject, filename, None, first, apex, first + 4, None, "12", emotion))
    casme2.write_sheet(root / "CASME2-coding-20140508.xlsx", rows)
    return rows


def write_samm(root: Path) -> None:
    """SAMM v2: notes above the table, header on row 14; one apex after the offset."""
    import openpyxl

    book = openpyxl.Workbook()
    ws = book.active
    ws.append(["SAMM: Spontaneous Actions and Micro-Movements"])
    for i in range(12):
        ws.append([f"note line {i + 1}"] if i % 3 == 0 else [])
    ws.append(
        [
            "Subject",
            "Filename",
            "Inducement Code",
            "Onset Frame",
            "Apex Frame",
            "Offset Frame",
            "Duration",
            "Micro",
            "Action Units",
            "Estimated Emotion",
            "Objective Classes",
            "Notes",
        ]
    )
    plan = [
        (6, "006_1_2", "Anger", 5562, 5),
        (6, "006_1_5", "Happiness", 1021, 4),
        (7, "007_3_1", "Surprise", 330, 6),
        (7, "007_6_2", "Fear", 2201, 5),
    ]
    for k, (subject, filename, emotion, onset, pad) in enumerate(plan):
        for i, frame in enumerate(sample_frames(subject - 4, k, emotion.lower())):
            _write(
                root
                / "SAMM"
                / f"{subject:03d}"
                / filename
                / f"{subject:03d}_{onset + i:0{pad}d}.jpg",
                frame,
            )
        apex = onset + 9 if k == 2 else onset + 2  # k == 2: apex after the offset, a defect
        ws.append(
            [
                subject,
                filename,
                1,
                onset,
                apex,
                onset + 4,
                5,
                "Micro - 1/2",
                "R12",
                emotion,
                "I",
                "",
            ]
        )
    book.save(root / "SAMM_Micro_FACS_Codes_v2.xlsx")


def write_smic(root: Path) -> None:
    """SMIC HS: s1 and s2, one clip per class folder, bmp frames."""
    for subject in (1, 2):
        for k, (folder, short) in enumerate(
            (("negative", "ne"), ("positive", "po"), ("surprise", "sur"))
        ):
            clip = root / "HS" / f"s{subject}" / "micro" / folder / f"s{subject}_{short}_01"
            for i, frame in enumerate(sample_frames(subject, k, folder)):
                clip.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(clip / f"image{100200 + i:06d}.bmp"), frame[..., ::-1])


def write_composite(root: Path) -> None:
    """The three datasets in their own folders and MEGC 2019's label file."""
    write_casme2(root / "casme2")
    write_samm(root / "samm")
    write_smic(root / "smic")
    rows = [
        ("casme2", "sub01", "EP02_01f", "positive"),
        ("casme2", "sub01", "EP03_02", "negative"),
        ("casme2", "sub02", "EP01_12", "surprise"),
        ("samm", "006", "006_1_2", "0"),
        ("samm", "007", "007_3_1", "2"),
        ("smic", "s1", "s1_po_01", "1"),
        ("smic", "s2", "s2_ne_01", "0"),
        ("smic", "s2", "s2_sur_01", "surprise"),
    ]
    with open(root / "combined_3class_gt.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def write_casme3(root: Path) -> None:
    """CAS(ME)^3 Part A: sheet 'label', spNO.1 in the sheet and spNo.1 on disk, two samples
    sharing one Filename."""
    import openpyxl

    book = openpyxl.Workbook()
    ws = book.active
    ws.title = "label"
    ws.append(
        ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]
    )
    plan = [
        ("spNO.1", "a", 10, "happy"),
        ("spNO.1", "a", 30, "surprise"),
        ("spNO.2", "b", 5, "disgust"),
    ]
    for k, (subject, filename, onset, emotion) in enumerate(plan):
        folder = root / "part_A" / "ME_A" / subject.replace("NO", "No") / filename / "color"
        for i, frame in enumerate(sample_frames(1 + k % 2, k, emotion)):
            _write(folder / f"{onset + i}.jpg", frame)
        ws.append([subject, filename, onset, onset + 2, onset + 4, "12", "1", emotion])
    sheet = root / "part_A" / "annotation" / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
    sheet.parent.mkdir(parents=True, exist_ok=True)
    book.save(sheet)
