"""The official weight files: names, where upstream publishes them, and how each is stored.

Torch-free on purpose, so that launchers can check for the files without importing PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_SADTALKER_RELEASE = "https://github.com/OpenTalker/SadTalker/releases/download/v0.0.2-rc"
_GFPGAN_RELEASE = "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0"
# Wav2Lip's authors publish wav2lip.pth and wav2lip_gan.pth only as Google Drive links in the Rudrabha/Wav2Lip
# README (the earlier SharePoint links are dead); a Drive download needs a browser confirmation, so no script can
# fetch it. camenduru/Wav2Lip on Hugging Face holds both files as published (the torch pickles with optimizer,
# ~416 MiB each, uploaded February 2023) and is the copy that most install scripts and notebooks use; other
# mirrors (Nekochu/Wav2Lip, numz/wav2lip_studio) hold the same files.
_WAV2LIP_MIRROR = "https://huggingface.co/camenduru/Wav2Lip/resolve/main/checkpoints"
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


OFFICIAL_FILES: dict[str, OfficialFile] = {
    f.name: f
    for f in (
        OfficialFile(
            "SadTalker_V0.0.2_256.safetensors",
            f"{_SADTALKER_RELEASE}/SadTalker_V0.0.2_256.safetensors",
            None,
            "audio2exp, audio2pose, face_recon, keypoint detector and generator (256² renderer)",
        ),
        OfficialFile(
            "SadTalker_V0.0.2_512.safetensors",
            f"{_SADTALKER_RELEASE}/SadTalker_V0.0.2_512.safetensors",
            None,
            "the same networks for the 512² renderer",
        ),
        OfficialFile(
            "mapping_00229-model.pth.tar",
            f"{_SADTALKER_RELEASE}/mapping_00229-model.pth.tar",
            "mapping",
            "mapping net, 70 coefficients (crop and resize modes)",
        ),
        OfficialFile(
            "mapping_00109-model.pth.tar",
            f"{_SADTALKER_RELEASE}/mapping_00109-model.pth.tar",
            "mapping",
            "mapping net, 73 coefficients (full paste-back mode)",
        ),
        OfficialFile(
            "GFPGANv1.4.pth",
            f"{_GFPGAN_RELEASE}/GFPGANv1.4.pth",
            "params_ema",
            "GFPGAN v1.4 face enhancer (optional)",
        ),
        OfficialFile(
            "wav2lip_gan.pth",
            f"{_WAV2LIP_MIRROR}/wav2lip_gan.pth",
            "state_dict",
            f"Wav2Lip + GAN lip-sync engine (optional; the default Wav2Lip file). {_WAV2LIP_TERMS}",
        ),
        OfficialFile(
            "wav2lip.pth",
            f"{_WAV2LIP_MIRROR}/wav2lip.pth",
            "state_dict",
            f"Wav2Lip without the GAN loss: more accurate lip sync, blurrier (optional). {_WAV2LIP_TERMS}",
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
