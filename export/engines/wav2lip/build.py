"""Wav2Lip's PyTorch modules: the network from ``wav2lip_gan.pth`` (or the file the variant names), or in the
reduced demo architecture, and its ensemble steps."""

from __future__ import annotations

from torch import nn

from export.building import Builder, Variant, WeightSource
from export.engines.wav2lip import WAV2LIP
from export.engines.wav2lip.steps import Wav2LipEnhancerInput, Wav2LipToUint8
from export.layers import fold_batch_norms
from export.models import wav2lip


def _wav2lip(variant: Variant, weights: WeightSource | None) -> nn.Module:
    """Wav2Lip with its batch norms folded into the convolutions (the exporter folds only those after a plain
    convolution; this also removes the six after the transposed ones)."""
    if weights is None:
        module: nn.Module = wav2lip.Wav2Lip(wav2lip.REDUCED)
    else:
        state, source = weights.get(WAV2LIP.weights_file)  # or the file the variant names in its place
        module = wav2lip.load_wav2lip(state, wav2lip.FULL, source=source)
    return fold_batch_norms(module.eval())


BUILDERS: dict[str, Builder] = {
    "wav2lip": _wav2lip,
    "wav2lip_to_uint8": lambda variant, weights: Wav2LipToUint8(),
    "wav2lip_enhancer_input": lambda variant, weights: Wav2LipEnhancerInput(),
}
