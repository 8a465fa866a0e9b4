"""The shared stages' PyTorch modules: the mel front-end and GFPGAN v1.4 with its output step."""

from __future__ import annotations

from export.building import Builder, networks
from export.engines.shared import GFPGAN
from export.engines.shared.steps import EnhancerOutput
from export.mel import MelSpectrogram
from export.models import gfpgan

BUILDERS: dict[str, Builder] = {
    "mel": lambda variant, weights: MelSpectrogram(),
    "gfpgan": networks(
        GFPGAN,
        lambda v: gfpgan.GFPGAN(gfpgan.REDUCED),
        lambda state, source, v: gfpgan.load_gfpgan(state, gfpgan.FULL_512, source),
    ),
    "enhancer_output": lambda variant, weights: EnhancerOutput(),
}
