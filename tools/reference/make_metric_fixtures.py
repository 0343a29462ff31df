#!/usr/bin/env python3
"""Reference fixtures for the image metrics (Sources/NewBieMetrics): PSNR, SSIM, VIFp.

Writes Tests/Fixtures/metrics/metrics.json, read by Tests/NewBieMetricsTests.
The file holds a few small 8-bit RGB images (48x44, base64 of the raw interleaved bytes, rows top
to bottom) and, for each pair (reference, distorted), the metric values of the published
implementations:

    psnr        skimage.metrics.peak_signal_noise_ratio(ref, dist, data_range=255) on the RGB bytes
    ssim_luma   skimage.metrics.structural_similarity(Y_ref, Y_dist, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False, data_range=255) on Y = 0.299 R + 0.587 G + 0.114 B
                (float64, not rounded)
    ssim_rgb    the same on the RGB bytes with channel_axis=-1 (the mean of the three channels)
    vif         piq.vif_p(dist, ref, data_range=255) on float64 NCHW tensors (piq converts RGB to
                the same Y itself; the distorted image comes first, the reference second)

Pairs: identical, Gaussian noise (two strengths), Gaussian blur, JPEG-like quantisation (8x8
block DCT with a quantisation table, rounded back to bytes), a brightness shift, constant images
(constant vs constant, image vs constant, constant vs image). Seeds are fixed.

Pinned versions (asserted at start):
    scikit-image 0.26.0, piq 0.8.0, torch 2.15.0, numpy 2.4.6, scipy 1.17.1

Regenerate:
    python3 -m venv /tmp/newbie-ref
    /tmp/newbie-ref/bin/pip install scikit-image==0.26.0 piq==0.8.0 torch==2.15.0 numpy==2.4.6 scipy==1.17.1
    /tmp/newbie-ref/bin/python tools/reference/make_metric_fixtures.py
"""
import base64
import json
import math
import os

import numpy as np
import piq
import scipy
import scipy.fft
import scipy.ndimage
import skimage
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PINNED = {"skimage": (skimage, "0.26.0"), "piq": (piq, "0.8.0"), "torch": (torch, "2.15.0"),
          "numpy": (np, "2.4.6"), "scipy": (scipy, "1.17.1")}
for name, (mod, version) in PINNED.items():
    got = mod.__version__.split("+")[0]
    assert got == version, f"{name} {got} installed, the fixtures are pinned to {version}"

W, H = 48, 44   # piq's VIFp needs at least 41x41; not square, so a transposition shows
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "Fixtures", "metrics", "metrics.json")


def to_u8(a):
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def reference_image(seed):
    """A smooth image with edges: gradients, a disc, stripes and a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W, 3))
    for c in range(3):
        a, b = rng.uniform(-3, 3, 2)
        img[..., c] = 128 + a * (xx - W / 2) + b * (yy - H / 2)
    cx, cy, r = rng.uniform(12, 36), rng.uniform(12, 32), rng.uniform(6, 12)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    img[disc] = rng.uniform(0, 255, 3)
    img[..., 1] += 30 * np.sin(xx / rng.uniform(2, 5))
    img += scipy.ndimage.gaussian_filter(rng.normal(0, 12, (H, W, 3)), sigma=(1, 1, 0))
    return to_u8(img)


def noisy(img, sd, seed):
    rng = np.random.default_rng(seed)
    return to_u8(img.astype(np.float64) + rng.normal(0, sd, img.shape))


def blurred(img, sigma):
    return to_u8(scipy.ndimage.gaussian_filter(img.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect"))


def jpeg_like(img, quality_scale):
    """8x8 block DCT of each channel, divided by the JPEG luminance table times a scale,
    rounded, multiplied back and inverted: the blocking and ringing of JPEG without its
    colour subsampling or entropy coding."""
    table = np.array([
        [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float64) * quality_scale
    out = img.astype(np.float64) - 128
    for c in range(3):
        for by in range(0, H - H % 8, 8):
            for bx in range(0, W - W % 8, 8):
                block = out[by:by + 8, bx:bx + 8, c]
                coef = scipy.fft.dctn(block, norm="ortho")
                out[by:by + 8, bx:bx + 8, c] = scipy.fft.idctn(np.rint(coef / table) * table, norm="ortho")
    return to_u8(out + 128)


def luma(img):
    f = img.astype(np.float64)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def metrics(ref, dist):
    psnr = peak_signal_noise_ratio(ref, dist, data_range=255)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    ssim_luma = structural_similarity(luma(ref), luma(dist), **kw)
    ssim_rgb = structural_similarity(ref, dist, channel_axis=-1, **kw)
    t = lambda a: torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)[None]
    vif = piq.vif_p(t(dist), t(ref), data_range=255).item()
    return {"psnr": "inf" if math.isinf(psnr) else float(psnr), "ssim_luma": float(ssim_luma),
            "ssim_rgb": float(ssim_rgb), "vif": float(vif)}


def main():
    a, b = reference_image(1), reference_image(2)
    gray = np.full((H, W, 3), 77, np.uint8)
    white = np.full((H, W, 3), 200, np.uint8)
    images = {
        "a": a, "b": b, "gray": gray, "white": white,
        "a_noise5": noisy(a, 5, 11), "a_noise25": noisy(a, 25, 12),
        "a_blur": blurred(a, 1.2), "b_jpeg": jpeg_like(b, 1.0), "b_jpeg_coarse": jpeg_like(b, 4.0),
        "b_brighter": to_u8(b.astype(np.float64) + 20),
    }
    pairs = [("a", "a"), ("a", "a_noise5"), ("a", "a_noise25"), ("a", "a_blur"), ("b", "b_jpeg"),
             ("b", "b_jpeg_coarse"), ("b", "b_brighter"), ("a", "b"), ("gray", "gray"), ("gray", "white"),
             ("a", "gray"), ("gray", "a")]
    out = {
        "generator": "tools/reference/make_metric_fixtures.py",
        "versions": {k: m.__version__ for k, (m, _) in PINNED.items()},
        "width": W, "height": H,
        "images": {k: base64.b64encode(v.tobytes()).decode() for k, v in images.items()},
        "pairs": [dict(reference=r, distorted=d, **metrics(images[r], images[d])) for r, d in pairs],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    for p in out["pairs"]:
        print(p)


if __name__ == "__main__":
    main()
