"""The public micro-expression datasets, read as their authors distribute them.

Every loader returns a `Dataset`: its class names and one `Sample` per usable (onset,
apex) pair, with paths to the two frames. Rows that cannot be used are dropped and rows
that needed fixing are fixed, and both are reported in `Dataset.notes`, never silently.

Sources: the formats below are those collected in docs/datasets.md (from the public
loader code of tvaranka/meb and others) and the datasets' papers: CASME II (Yan et al. 2014),
SAMM (Davison et al. 2016), SMIC (Li et al. 2013), MEGC 2019 (See et al. 2019), CAS(ME)^3
(Li et al. 2022). None of the datasets can be fetched here; the tests build small fixtures
in these layouts from SynthME frames (tests/fixtures.py).

- `casme2`  ROOT/CASME2-coding-*.xlsx, ROOT/CASME2_RAW_selected (or Cropped)/sub01/EP02_01f/
            img46.jpg. Five classes (happiness, disgust, repression, surprise, others);
            the few fear and sadness rows are dropped, as the 5-class protocol does.
- `samm`    ROOT/SAMM_Micro_FACS_Codes_v2.xlsx (a block of notes above the table; the
            header row is found by its "Subject" and "Filename" cells, row 14 in v2),
            ROOT/SAMM/006/006_1_2/006_05562.jpg (zero-padding varies: frames are matched
            by number). Five classes: anger, contempt, happiness, surprise, other; disgust,
            fear and sadness (a handful each) are dropped, as the common 5-class split does.
- `smic`    ROOT/HS/s1/micro/{negative,positive,surprise}/s1_ne_01/*.bmp; no annotation
            file: onset = first frame, offset = last. No apex is annotated: by default the
            middle frame (onset + offset) // 2, the common practice; `apex="motion"`
            takes the frame of largest optical-flow magnitude from the onset instead.
- `composite` MEGC 2019's 3DB-Combined: ROOT/combined_3class_gt.csv (no header: Dataset,
            Subject, Filename, Class; Class a name or 0/1/2 = negative/positive/surprise)
            and the three datasets in ROOT/casme2, ROOT/samm, ROOT/smic, each in its own
            layout. Subject ids are prefixed with the dataset, so they stay distinct.
- `casme3`  CAS(ME)^3 Part A: ROOT/part_A/annotation/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx
            (sheet "label"), frames ROOT/part_A/ME_A/{subject}/{filename}/color/{index}.jpg;
            subjects are spelled spNO.1 in the sheet and spNo.1 on disk; several samples
            can share a Filename (each row is a sample). Seven classes.
- `synthme` a SynthME set (ROOT/clips, CASME II's layout): five classes.

`label_set="3class"` relabels any of them to negative / positive / surprise with the MEGC
2019 mapping, dropping what it drops.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from mfvan.model.data import casme2

CLASSES_3 = ("negative", "positive", "surprise")
TO_3CLASS = {
    # CASME II
    "happiness": "positive",
    "disgust": "negative",
    "repression": "negative",
    "surprise": "surprise",
    # SAMM
    "anger": "negative",
    "contempt": "negative",
    "sadness": "negative",
    "fear": "negative",
    # SMIC
    "negative": "negative",
    "positive": "positive",
    # CAS(ME)^3
    "happy": "positive",
    "sad": "negative",
}
NATIVE_CLASSES = {
    "casme2": casme2.EMOTIONS,
    "synthme": casme2.EMOTIONS,
    "samm": ("anger", "contempt", "happiness", "surprise", "other"),
    "smic": CLASSES_3,
    "composite": CLASSES_3,
    "casme3": ("happy", "disgust", "fear", "anger", "sad", "surprise", "others"),
}


@dataclass(frozen=True)
class Sample:
    dataset: str
    subject: str  # unique across datasets: "casme2/sub01"
    name: str  # the sample's own name in its dataset
    onset: Path
    apex: Path
    emotion: str  # the dataset's own label, lower case
    label: int  # index into Dataset.classes


@dataclass
class Dataset:
    name: str
    classes: tuple[str, ...]
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        return sorted({s.subject for s in self.samples})

    def counts(self) -> dict[str, int]:
        return {c: sum(s.label == i for s in self.samples) for i, c in enumerate(self.classes)}


class DatasetError(ValueError):
    """A dataset folder that is not in the layout its loader reads; says what is missing."""


def frames_by_number(folder: Path) -> dict[int, Path]:
    """Image files of a folder by the number at the end of their names."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such frames folder")
    found = {}
    for path in folder.iterdir():
        m = casme2.FRAME_NUMBER.search(path.name)
        if m:
            found[int(m.group(1))] = path
    return found


def _fix_order(onset: int, apex: int, offset: int, where: str, notes: list[str]) -> int:
    """An apex outside [onset, offset] is a known annotation defect: use the middle."""
    if onset <= apex <= offset:
        return apex
    middle = (onset + offset) // 2
    notes.append(f"{where}: apex {apex} outside onset {onset}..offset {offset}, took {middle}")
    return middle


def _finish(name: str, rows, label_set: str, notes: list[str]) -> Dataset:
    """rows: (subject, sample name, onset path, apex path, emotion). Applies the label set."""
    classes = CLASSES_3 if label_set == "3class" else NATIVE_CLASSES[name]
    out = Dataset(name, tuple(classes), notes=notes)
    dropped: dict[str, int] = {}
    for subject, sample, onset, apex, emotion in rows:
        label = TO_3CLASS.get(emotion) if label_set == "3class" else emotion
        if label not in classes:
            dropped[emotion] = dropped.get(emotion, 0) + 1
            continue
        out.samples.append(
            Sample(name, f"{name}/{subject}", sample, onset, apex, emotion, classes.index(label))
        )
    for emotion, n in sorted(dropped.items()):
        notes.append(f"{n} sample(s) labelled {emotion!r} dropped: not in {label_set} classes")
    return out


def _sheet_rows(path: Path, sheet: str | None = None, header_keys=("Subject", "Filename")):
    """Rows of an .xlsx as dicts, the header row found by its key cells (SAMM's notes block)."""
    import openpyxl

    if not path.exists():
        raise DatasetError(f"{path}: annotation file not found")
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    ws = book[sheet] if sheet else book.worksheets[0]
    rows = ws.iter_rows(values_only=True)
    header = None
    for number, row in enumerate(rows, start=1):
        cells = [str(c).strip() if c is not None else "" for c in row]
        if all(k in cells for k in header_keys):
            header = cells
            break
        if number > 50:
            break
    if header is None:
        raise DatasetError(f"{path}: no header row with {', '.join(header_keys)}")
    out = [dict(zip(header, row, strict=False)) for row in rows if row and row[0] is not None]
    book.close()
    return out


def load_casme2(root: Path, label_set: str = "native") -> Dataset:
    root = Path(root)
    frames = next((f for f in ("CASME2_RAW_selected", "Cropped") if (root / f).is_dir()), None)
    if frames is None:
        raise DatasetError(f"{root}: neither CASME2_RAW_selected/ nor Cropped/ found")
    notes, rows = [], []
    for s in casme2.read_samples(root, frames=frames):
        if s.note:
            notes.append(s.note)
        apex = _fix_order(s.onset, s.apex, s.offset, f"sub{s.subject:02d}/{s.filename}", notes)
        rows.append(
            (
                f"sub{s.subject:02d}",
                s.filename,
                s.frame_path(s.onset),
                s.frame_path(apex),
                s.emotion,
            )
        )
    return _finish("casme2", rows, label_set, notes)


def load_synthme(root: Path, label_set: str = "native") -> Dataset:
    data = load_casme2(Path(root) / "clips", label_set)
    data.name = "synthme"
    data.samples = [
        Sample(
            "synthme",
            s.subject.replace("casme2/", "synthme/"),
            s.name,
            s.onset,
            s.apex,
            s.emotion,
            s.label,
        )
        for s in data.samples
    ]
    return data


def load_samm(root: Path, label_set: str = "native") -> Dataset:
    root = Path(root)
    notes, rows = [], []
    for line in _sheet_rows(root / "SAMM_Micro_FACS_Codes_v2.xlsx"):
        subject = f"{int(line['Subject']):03d}"
        filename = str(line["Filename"]).strip()
        where = f"SAMM {filename}"
        frames = frames_by_number(root / "SAMM" / subject / filename)
        onset = int(line["Onset Frame"])
        offset = int(line["Offset Frame"]) if line["Offset Frame"] not in (None, "", -1) else -1
        if offset <= onset:
            offset = max(frames)
            notes.append(f"{where}: offset missing or before onset, took the last frame {offset}")
        apex = _fix_order(onset, int(line["Apex Frame"]), offset, where, notes)
        if onset not in frames or apex not in frames:
            notes.append(f"{where}: onset {onset} or apex {apex} not on disk, sample dropped")
            continue
        rows.append(
            (
                subject,
                filename,
                frames[onset],
                frames[apex],
                str(line["Estimated Emotion"]).strip().lower(),
            )
        )
    return _finish("samm", rows, label_set, notes)


def load_smic(root: Path, label_set: str = "native", apex: str = "middle") -> Dataset:
    root = Path(root)
    base = root / "HS"
    if not base.is_dir():
        raise DatasetError(f"{root}: no HS/ folder (SMIC's high-speed camera part)")
    rows, notes = [], [f"SMIC has no apex annotation: apex = {apex} frame"]
    for subject_dir in sorted(base.iterdir(), key=lambda p: p.name):
        for emotion_dir in sorted((subject_dir / "micro").glob("*")):
            for clip in sorted(emotion_dir.iterdir()):
                frames = frames_by_number(clip)
                if len(frames) < 2:
                    notes.append(f"SMIC {clip.name}: fewer than two frames, dropped")
                    continue
                numbers = sorted(frames)
                peak = (
                    _motion_apex([frames[n] for n in numbers])
                    if apex == "motion"
                    else len(numbers) // 2
                )
                rows.append(
                    (
                        subject_dir.name,
                        clip.name,
                        frames[numbers[0]],
                        frames[numbers[peak]],
                        emotion_dir.name.lower(),
                    )
                )
    return _finish("smic", rows, label_set, notes)


def _motion_apex(paths: list[Path]) -> int:
    """Index of the frame of largest mean Farneback flow magnitude from the first."""
    import cv2
    import numpy as np

    def grey(p):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        return cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)

    first = grey(paths[0])
    magnitudes = [0.0]
    for p in paths[1:]:
        flow = cv2.calcOpticalFlowFarneback(first, grey(p), None, 0.5, 3, 15, 3, 5, 1.2, 0)
        magnitudes.append(float(np.sqrt((flow**2).sum(-1)).mean()))
    return int(np.argmax(magnitudes))


def load_composite(root: Path, label_set: str = "3class") -> Dataset:
    root = Path(root)
    table = root / "combined_3class_gt.csv"
    if not table.exists():
        raise DatasetError(f"{root}: combined_3class_gt.csv not found")
    parts = {
        "casme2": load_casme2(root / "casme2", "native"),
        "samm": load_samm(root / "samm", "native"),
        "smic": load_smic(root / "smic", "native"),
    }
    index = {
        (d, _subject_key(s.subject.split("/", 1)[1]), s.name): s
        for d, data in parts.items()
        for s in data.samples
    }
    notes = [f"{d}: {n}" for d, data in parts.items() for n in data.notes]
    out = Dataset("composite", CLASSES_3, notes=notes)
    with open(table, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if len(row) < 4:
                continue
            dataset, subject, filename, label = (c.strip() for c in row[:4])
            dataset = dataset.lower()
            label = CLASSES_3[int(label)] if label.isdigit() else label.lower()
            sample = index.get((dataset, _subject_key(subject), filename))
            if sample is None or label not in CLASSES_3:
                notes.append(
                    f"combined_3class_gt.csv line {line}: {dataset}/{subject}/{filename} "
                    f"({label}) not found in the dataset folders, skipped"
                )
                continue
            out.samples.append(
                Sample(
                    "composite",
                    f"{dataset}/{subject}",
                    filename,
                    sample.onset,
                    sample.apex,
                    sample.emotion,
                    CLASSES_3.index(label),
                )
            )
    return out


def _subject_key(subject: str) -> str:
    """'sub01', '1', '006', 's1' -> '1': subject spellings differ between files."""
    digits = re.findall(r"\d+", subject)
    return str(int(digits[-1])) if digits else subject


def load_casme3(root: Path, label_set: str = "native") -> Dataset:
    root = Path(root)
    part = root / "part_A"
    sheet = part / "annotation" / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
    notes, rows = [], []
    for number, line in enumerate(_sheet_rows(sheet, sheet="label"), start=2):
        subject_sheet = str(line["Subject"]).strip()
        subject = subject_sheet.replace("spNO.", "spNo.")
        filename = str(line["Filename"]).strip()
        emotion_key = next((k for k in line if k and k.strip().lower() == "emotion"), None)
        if emotion_key is None:
            raise DatasetError(f"{sheet}: no emotion column")
        frames = frames_by_number(part / "ME_A" / subject / filename / "color")
        onset, offset = int(line["Onset"]), int(line["Offset"])
        apex = _fix_order(
            onset, int(line["Apex"]), offset, f"CAS(ME)^3 {subject}/{filename}", notes
        )
        if onset not in frames or apex not in frames:
            notes.append(
                f"CAS(ME)^3 {subject}/{filename} row {number}: frames not on disk, dropped"
            )
            continue
        rows.append(
            (
                subject,
                f"{filename}#{number}",
                frames[onset],
                frames[apex],
                str(line[emotion_key]).strip().lower(),
            )
        )
    return _finish("casme3", rows, label_set, notes)


LOADERS = {
    "casme2": load_casme2,
    "samm": load_samm,
    "smic": load_smic,
    "composite": load_composite,
    "casme3": load_casme3,
    "synthme": load_synthme,
}


def load_dataset(name: str, root: Path, label_set: str = "native") -> Dataset:
    """Load dataset `name` from `root`; `label_set` "native" or "3class"."""
    if name not in LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(LOADERS)}")
    if name == "composite":
        return load_composite(root)
    return LOADERS[name](root, label_set)
