#!/usr/bin/env bash
# Fits the live-preview map of `newbie serve --preview-map` (docs/SERVER.md, "Live previews"):
# samples IMAGES latents with the model's own DiT (varied prompts, seeds 0..IMAGES-1), decodes each
# with its VAE, and solves by least squares for the 3 x 16 matrix W and bias b with
# rgb = W latent + b, where each latent pixel's target is the mean colour of its 8x8 image block
# in [-1, 1]. Prints the fit's RMSE next to the best constant colour's.
#
#   tools/preview/fit-preview.sh MODEL_DIR [OUT.json] [--device cuda ...]
set -euo pipefail
model=$1; out=${2:-preview-map.json}; shift $(( $# >= 2 ? 2 : 1 ))
exec "${NEWBIE:-newbie}" fit-preview --model "$model" --images "${IMAGES:-24}" --size "${SIZE:-1024}" --steps "${STEPS:-18}" -o "$out" "$@"
