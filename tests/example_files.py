"""Write the files the README's examples name, from the slices committed under tests/data (`make examples`).

The README's commands send `examples/slice.png`, `examples/IM0001.dcm`, `examples/study/*.dcm` and so on: this makes
them, so that a newcomer can run each command as written. The DICOM files are the three committed tumor slices' FLAIR
channel as one MR series with a synthetic identity (`tests.dicom.builders`); nothing comes from outside the
repository. `tests/test_readme_commands.py` runs the README's commands on what this writes.

    python -m tests.example_files examples
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.lgg_data import TUMOR_SERIES, TUMOR_SLICE, read_slice


def write_example_files(folder: Path) -> list[Path]:
    """The README's example inputs in `folder` (made if missing); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    tumor = read_slice(TUMOR_SLICE)
    written = []
    for name in ("slice.png", "slice1.png"):
        Image.fromarray(tumor).save(folder / name)
        written.append(folder / name)
    # A 16-bit grey TIFF (the FLAIR channel), as scanners' exports often are.
    tifffile.imwrite(folder / "slice2.tif", tumor[:, :, 1].astype(np.uint16) * 16)
    written.append(folder / "slice2.tif")
    for number, path in zip((20, 21, 22), TUMOR_SERIES, strict=True):
        Image.fromarray(read_slice(path)).save(folder / f"slice_{number}.png")
        written.append(folder / f"slice_{number}.png")
    # One series, twice: as single files for curl and `brain-tumor predict`, and as a study folder for storescu.
    (folder / "study").mkdir(exist_ok=True)
    for number, dataset in enumerate(mr_series(tumor_channels()), start=1):
        data = to_bytes(dataset)
        for path in (folder / f"IM{number:04d}.dcm", folder / "study" / f"IM{number:04d}.dcm"):
            path.write_bytes(data)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.example_files", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the files (made if missing)")
    arguments = parser.parse_args(argv)
    written = write_example_files(arguments.folder)
    print(f"wrote {len(written)} example files in {arguments.folder}")


if __name__ == "__main__":
    main()
