"""Wav2Lip's PyTorch modules: the network from ``wav2lip_gan.pth`` (or the file the variant names), or in the
reduced demo architecture, and its ensemble steps."""

from __future__ import annotations

from torch import nn

from export import ensemble_steps
from export.building import Builder, Variant, WeightSource
from export.layers import fold_batch_norms
from export.models import wav2lip
from export.official import WAV2LIP
from export.weights import read_checkpoint


def _wav2lip(variant: Variant, weights: WeightSource | None) -> nn.Module:
    """Wav2Lip with its batch norms folded into the convolutions (the exporter folds only those after a plain
    convolution; this also removes the six after the transposed ones)."""
    if weights is None:
        module: nn.Module = wav2lip.Wav2Lip(wav2lip.REDUCED)
    else:
        if variant.wav2lip is not None:  # a file named explicitly, wherever it is
            state, source = read_checkpoint(variant.wav2lip), variant.wav2lip.name
        else:
            state, source = weights.get(WAV2LIP)
        module = wav2lip.load_wav2lip(state, wav2lip.FULL, source=source)
    return fold_batch_norms(module.eval())


BUILDERS: dict[str, Builder] = {
    "wav2lip": _wav2lip,
    "wav2lip_to_uint8": lambda variant, weights: ensemble_steps.Wav2LipToUint8(),
    "wav2lip_enhancer_input": lambda variant, weights: ensemble_steps.Wav2LipEnhancerInput(),
}
