#!/bin/sh
# The compose `export` job: weights → ONNX graphs → the gpu model repository Triton serves.
# Environment: LIPSYNC_DEMO=1 exports the reduced architecture with random weights (no download; NOT results);
# LIPSYNC_GFPGAN=1 (default) includes GFPGAN; LIPSYNC_WEIGHTS_MIRROR serves the official files by name.
set -eu
checkpoints=/checkpoints
graphs=/artifacts/onnx
models=/models

if [ "${LIPSYNC_DEMO:-0}" = "1" ]; then
    python -m export onnx --reduced --with-gfpgan --grid-sample 4d --check --out "$graphs"
else
    gfpgan_download=""
    gfpgan_export=""
    if [ "${LIPSYNC_GFPGAN:-1}" = "1" ]; then
        gfpgan_download="--gfpgan"
        gfpgan_export="--with-gfpgan"
    fi
    if ! python -m export check --checkpoints "$checkpoints"; then
        python -m export download --checkpoints "$checkpoints" $gfpgan_download \
            ${LIPSYNC_WEIGHTS_MIRROR:+--base-url "$LIPSYNC_WEIGHTS_MIRROR"}
    fi
    # 4-D GridSample: TensorRT has no 5-D GridSample (DESIGN.md §3).
    python -m export onnx --checkpoints "$checkpoints" --grid-sample 4d --check $gfpgan_export --out "$graphs"
fi
python -m export repository --target gpu --onnx "$graphs" --out "$models" --trt-cache /trt_cache
