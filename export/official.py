"""The official weight files: names, where upstream publishes them, and how each is stored.

Torch-free on purpose, so that launchers can check for the files without importing PyTorch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SADTALKER_RELEASE = "https://github.com/OpenTalker/SadTalker/releases/download/v0.0.2-rc"
_GFPGAN_RELEASE = "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0"
# Wav2Lip's authors publish wav2lip.pth and wav2lip_gan.pth only as Google Drive links in the Rudrabha/Wav2Lip
# README (the earlier SharePoint links are dead); a Drive download needs a browser confirmation, so no script can
# fetch it. Nekochu/Wav2Lip on Hugging Face holds both files as published (the torch pickles with optimizer,
# ~416 MiB each; commit fb925b05 added them, the README names Rudrabha/Wav2Lip as the origin); numz/wav2lip_studio
# and steinhaug/cache-repository hold the same bytes (same LFS digests). The address is pinned to a commit, so a
# later push to that repository cannot change what is fetched. camenduru/Wav2Lip, the copy many notebooks use,
# is not usable: its checkpoints/wav2lip.pth is a 167 kB file (LFS sha256 b6c6630c…), not the weights.
_WAV2LIP_MIRROR = "https://huggingface.co/Nekochu/Wav2Lip/resolve/3b29710a61ce62afe87ba6fc3f37bd85728f9af4"
_WAV2LIP_TERMS = (
    "NON-COMMERCIAL use only: trained on LRS2 (BBC), research/academic/personal use; "
    "see https://github.com/Rudrabha/Wav2Lip#license-and-citation"
)


@dataclass(frozen=True)
class OfficialFile:
    name: str
    url: str
    # Top-level key of the torch pickle that holds the state dict; None for a flat safetensors file.
    pickle_key: str | None
    purpose: str
    # The published file's SHA-256 and size in bytes, where a public source states them (each entry names its
    # source); a file without a digest is downloaded with a warning that it is unverified.
    sha256: str | None = None
    size: int | None = None


OFFICIAL_FILES: dict[str, OfficialFile] = {
    f.name: f
    for f in (
        OfficialFile(
            "SadTalker_V0.0.2_256.safetensors",
            f"{_SADTALKER_RELEASE}/SadTalker_V0.0.2_256.safetensors",
            None,
            "audio2exp, audio2pose, face_recon, keypoint detector and generator (256² renderer)",
            # LFS pointer in the SadTalker authors' Hugging Face copy of this release:
            # https://huggingface.co/vinthony/SadTalker-V002rc/commit/a4827306558d062e5884afff655fdfeb75d9c8ab
            "c211f5d6de003516bf1bbda9f47049a4c9c99133b1ab565c6961e5af16477bff",
            725_066_984,
        ),
        OfficialFile(
            "SadTalker_V0.0.2_512.safetensors",
            f"{_SADTALKER_RELEASE}/SadTalker_V0.0.2_512.safetensors",
            None,
            "the same networks for the 512² renderer",
            # same source as the 256 file
            "0e063f7ff5258240bdb0f7690783a7b1374e6a4a81ce8fa33456f4cd49694340",
            725_066_984,
        ),
        OfficialFile(
            "mapping_00229-model.pth.tar",
            f"{_SADTALKER_RELEASE}/mapping_00229-model.pth.tar",
            "mapping",
            "mapping net, 70 coefficients (crop and resize modes)",
            # same source as the 256 file
            "62a1e06006cc963220f6477438518ed86e9788226c62ae382ddc42fbcefb83f1",
            155_521_183,
        ),
        OfficialFile(
            "mapping_00109-model.pth.tar",
            f"{_SADTALKER_RELEASE}/mapping_00109-model.pth.tar",
            "mapping",
            "mapping net, 73 coefficients (full paste-back mode)",
            # same source as the 256 file
            "84a8642468a3fcfdd9ab6be955267043116c2bec2284686a5262f1eaf017f64c",
            155_779_231,
        ),
        OfficialFile(
            "GFPGANv1.4.pth",
            f"{_GFPGAN_RELEASE}/GFPGANv1.4.pth",
            "params_ema",
            "GFPGAN v1.4 face enhancer (optional)",
            # LFS pointer https://huggingface.co/power2/TestModal/commit/fd3bdb0799a4531ed3ed6daded5f625fccb27386;
            # public manifests pin the same digest to this release address
            "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
            348_632_874,
        ),
        OfficialFile(
            "wav2lip_gan.pth",
            f"{_WAV2LIP_MIRROR}/wav2lip_gan.pth",
            "state_dict",
            f"Wav2Lip + GAN lip-sync engine (optional; the default Wav2Lip file). {_WAV2LIP_TERMS}",
            # LFS pointer in the commit that added both files to the mirror:
            # https://huggingface.co/Nekochu/Wav2Lip/commit/fb925b05f0d353850ee0c56810e4545e274e2b5a
            "ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8",
            435_801_865,
        ),
        OfficialFile(
            "wav2lip.pth",
            f"{_WAV2LIP_MIRROR}/wav2lip.pth",
            "state_dict",
            f"Wav2Lip without the GAN loss: more accurate lip sync, blurrier (optional). {_WAV2LIP_TERMS}",
            # same source as wav2lip_gan.pth
            "b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37",
            435_807_851,
        ),
    )
}

# What a 256² deployment needs; the 512 file replaces the 256 one for size 512.
REQUIRED_FOR_SIZE: dict[int, tuple[str, ...]] = {
    256: ("SadTalker_V0.0.2_256.safetensors", "mapping_00229-model.pth.tar", "mapping_00109-model.pth.tar"),
    512: ("SadTalker_V0.0.2_512.safetensors", "mapping_00229-model.pth.tar", "mapping_00109-model.pth.tar"),
}
OPTIONAL = ("GFPGANv1.4.pth",)
# The Wav2Lip engine's weights: never part of a default download (their licence forbids commercial use), fetched
# only with `python -m export download --wav2lip --accept-wav2lip-licence`.
WAV2LIP = "wav2lip_gan.pth"
WAV2LIP_FILES = ("wav2lip_gan.pth", "wav2lip.pth")
WAV2LIP_LICENCE = (
    "Wav2Lip's weights (wav2lip_gan.pth, wav2lip.pth) are licensed for NON-COMMERCIAL use only: the models were "
    "trained on the LRS2 dataset, and their authors allow research, academic and personal use; any commercial use "
    "is prohibited (https://github.com/Rudrabha/Wav2Lip#license-and-citation; commercial requests go to the authors)."
)


def missing_files(directory: Path, size: int = 256) -> list[OfficialFile]:
    """The required official files that are not in ``directory``."""
    return [OFFICIAL_FILES[n] for n in REQUIRED_FOR_SIZE[size] if not (directory / n).is_file()]


def how_to_get(missing: list[OfficialFile], directory: Path) -> str:
    """Instructions a user can follow by hand (the files are several hundred MB each)."""
    lines = [f"Official weights are missing from {directory}:"]
    lines += [f"  {f.name:36s} {f.purpose}\n      {f.url}" for f in missing]
    lines += [
        f"Download them into {directory}/ (for example: curl -L -o {directory}/NAME URL),",
        "or run `make demo` to try the system on random weights of the reduced architecture (not a result).",
    ]
    return "\n".join(lines)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in pieces (the weights are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_present(directory: Path, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Check the named official files that are in ``directory`` against their published size and SHA-256.

    Returns (wrong, unverified): one message per file that is not the published one, and the names of the files
    that are there but have no published digest to check against. Absent files are left to ``missing_files``.
    """
    wrong: list[str] = []
    unverified: list[str] = []
    for name in names:
        file, path = OFFICIAL_FILES[name], directory / name
        if not path.is_file():
            continue
        if file.sha256 is None:
            unverified.append(name)
            continue
        # The size first: it needs no reading, and a truncated or foreign file usually differs there already.
        if file.size is not None and (have := path.stat().st_size) != file.size:
            wrong.append(f"{path}: {have} bytes, the published file has {file.size}; delete it and download it again")
        elif (got := file_sha256(path)) != file.sha256:
            wrong.append(
                f"{path}: SHA-256 {got}, the published file's is {file.sha256}; delete it and download it again"
            )
    return wrong, unverified
