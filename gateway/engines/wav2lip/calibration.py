"""``python -m gateway.engines.wav2lip.calibration PHOTO… --out faces.npz``: the Wav2Lip face inputs of real
portraits, made as a session makes them, for the int8 export's calibration
(``python -m export quantize --calibration-audio SPEECH --calibration-faces faces.npz``).

The face finder lives here, in the gateway; the export reads only the arrays, so it needs none of it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gateway.engines.wav2lip.face import portrait_face_input
from gateway.errors import LipsyncError

log = logging.getLogger(__name__)


def face_inputs(portraits: list[Path]) -> np.ndarray:
    """(N, 6, 96, 96) float32: each portrait's face input; ValueError naming the photo when one has no face."""
    faces = []
    for portrait in tqdm(portraits, desc="faces", unit="photo", disable=len(portraits) < 4):
        try:
            faces.append(portrait_face_input(portrait.read_bytes()))
        except LipsyncError as error:  # no face, not an image, …: in the gateway's own words
            raise ValueError(f"{portrait}: {error.message}") from error
    return np.concatenate(faces)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.engines.wav2lip.calibration", description=__doc__)
    parser.add_argument("portraits", type=Path, nargs="+", help="photos of the faces to serve")
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write (array `face`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        faces = face_inputs(args.portraits)
    except (ValueError, OSError) as error:
        log.error("%s", error)
        return 1
    np.savez(args.out, face=faces)
    log.info("wrote %d face input(s) to %s", len(faces), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
