"""CASME II on disk: the coding spreadsheet and the frame folders, read and written.

Relies on these facts of the distribution (docs/datasets.md): frames live in
`CASME2_RAW_selected/sub01/EP02_01f/img46.jpg` (or `Cropped/.../reg_img46.jpg`), the frame
numbers in the sheet are the numbers in the file names, and the sheet
`CASME2-coding-20140508.xlsx` has the columns `Subject, Filename, (blank), OnsetFrame,
ApexFrame, OffsetFrame, (blank), Action Units, Estimated Emotion` with `Subject` an
integer (folder `sub%02d`). Some ApexFrame cells hold `/` (no apex annotated): such a
row is kept, its apex resolved to the middle frame, and the resolution reported in
`Sample.note`, never silently.

SynthME writes its clips in this layout (`write_sheet`) so that this reader reads them
unchanged. Imports nothing of this project.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

SHEET_COLUMNS = (
    "Subject",
    "Filename",
    None,
    "OnsetFrame",
    "ApexFrame",
    "OffsetFrame",
    None,
    "Action Units",
    "Estimated Emotion",
)
EMOTIONS = ("happiness", "disgust", "repression", "surprise", "others")
# The frame number at the end of an image file name: img46.jpg, 006_05562.jpg, 30.jpg.
FRAME_NUMBER = re.compile(r"(\d+)\.(?:jpg|jpeg|png|bmp)$", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    """One coded micro-expression: frame numbers as in the file names."""

    subject: int
    filename: str
    onset: int
    apex: int
    offset: int
    action_units: str
    emotion: str
    frames_dir: Path
    note: str = ""

    def frame_path(self, number: int) -> Path:
        """The image of frame `number` (either release's naming, `img46` or `reg_img46`)."""
        for name in (f"img{number}.jpg", f"reg_img{number}.jpg"):
            path = self.frames_dir / name
            if path.exists():
                return path
        raise FileNotFoundError(f"{self.frames_dir}: no image for frame {number}")

    def frame_numbers(self) -> list[int]:
        """The frame numbers present on disk, sorted."""
        found = (FRAME_NUMBER.search(p.name) for p in self.frames_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)


class SheetError(ValueError):
    """The coding sheet is not in CASME II's format; the message names what is wrong."""


def find_sheet(root: Path) -> Path:
    """The coding sheet under `root`: `CASME2-coding-*.xlsx` (the 2014 sheet, the updated
    copy, or SynthME's)."""
    sheets = sorted(Path(root).glob("CASME2-coding-*.xlsx"))
    if not sheets:
        raise FileNotFoundError(f"{root}: no CASME2-coding-*.xlsx coding sheet")
    return sheets[-1]


def read_samples(root: Path, frames: str = "CASME2_RAW_selected") -> list[Sample]:
    """All coded samples under a CASME II root, in sheet order."""
    import openpyxl

    root = Path(root)
    sheet_path = find_sheet(root)
    book = openpyxl.load_workbook(sheet_path, read_only=True, data_only=True)
    rows = book.worksheets[0].iter_rows(values_only=True)
    header = next(rows, None)
    if header is None:
        raise SheetError(f"{sheet_path}: empty sheet")
    index = {name: i for i, name in enumerate(header) if name is not None}
    missing = [c for c in SHEET_COLUMNS if c is not None and c not in index]
    if missing:
        raise SheetError(f"{sheet_path}: missing column(s) {', '.join(missing)}")
    samples = []
    for line, row in enumerate(rows, start=2):
        if row is None or row[index["Subject"]] is None:
            continue
        subject = int(row[index["Subject"]])
        filename = str(row[index["Filename"]]).strip()
        onset = _frame(row[index["OnsetFrame"]], sheet_path, line, "OnsetFrame")
        offset = _frame(row[index["OffsetFrame"]], sheet_path, line, "OffsetFrame")
        apex_cell = row[index["ApexFrame"]]
        note = ""
        if isinstance(apex_cell, str) and apex_cell.strip() == "/":
            apex = (onset + offset) // 2
            note = f"row {line}: ApexFrame '/', apex taken as the middle frame {apex}"
        else:
            apex = _frame(apex_cell, sheet_path, line, "ApexFrame")
        samples.append(
            Sample(
                subject=subject,
                filename=filename,
                onset=onset,
                apex=apex,
                offset=offset,
                action_units=str(row[index["Action Units"]] or ""),
                emotion=str(row[index["Estimated Emotion"]]).strip().lower(),
                frames_dir=root / frames / f"sub{subject:02d}" / filename,
                note=note,
            )
        )
    book.close()
    return samples


def _frame(cell, sheet_path: Path, line: int, column: str) -> int:
    try:
        return int(cell)
    except (TypeError, ValueError):
        raise SheetError(
            f"{sheet_path}: row {line}, {column} is {cell!r}, not a frame number"
        ) from None


# A fixed date keeps the written workbook byte-identical from run to run.
_FIXED_DATE = datetime(2014, 5, 8)


def write_sheet(path: Path, rows: list[tuple]) -> None:
    """Write a coding sheet with CASME II's columns; `rows` follow `SHEET_COLUMNS`.

    The output is byte-identical for identical rows: the workbook's dates and the zip
    entries' timestamps are fixed.
    """
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append([name or "" for name in SHEET_COLUMNS])
    for row in rows:
        sheet.append(list(row))
    book.properties.created = _FIXED_DATE
    book.properties.modified = _FIXED_DATE
    book.properties.creator = "SynthME"
    raw = io.BytesIO()
    book.save(raw)
    Path(path).write_bytes(_fixed_zip_times(raw.getvalue()))


def _fixed_zip_times(data: bytes) -> bytes:
    """Rewrite an .xlsx with fixed zip timestamps and a fixed `modified` date (openpyxl
    stamps the time of saving there, whatever the workbook says)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    stamp = f"{_FIXED_DATE:%Y-%m-%dT%H:%M:%SZ}"
    modified = f'<dcterms:modified xsi:type="dcterms:W3CDTF">{stamp}</dcterms:modified>'
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                content = re.sub(
                    rb"<dcterms:modified[^>]*>[^<]*</dcterms:modified>", modified.encode(), content
                )
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(fixed, content)
    return out.getvalue()
