"""Synthetic images in [0, 1] that carry a small label (a group id) through Gaussian noise.

Tests of the statistics need a base classifier that knows which group of images a noisy
copy came from (to give each group its own p_A). The id is written in binary, each bit
repeated over a row of REPEAT pixels: the row mean under noise sd sigma has sd
sigma / sqrt(REPEAT) (0.0625 at sigma 0.25), so reading a bit by thresholding at 1/2 fails
with probability below 1e-15. Pixel (0, 0, 0) is 1/2 and carries the noise itself
(``noise_on_probe``). Images stay small (few groups, few bits): noise is drawn for every
pixel of every sample.
"""

import torch

REPEAT = 16


def id_images(ids) -> torch.Tensor:
    ids = torch.as_tensor(ids, dtype=torch.int64)
    bits = int(ids.max()).bit_length() if ids.numel() else 0
    x = torch.zeros(len(ids), 1, bits + 1, REPEAT if bits else 1)  # one group: the probe pixel only
    x[:, 0, 0, :] = 0.5
    for b in range(bits):
        x[:, 0, b + 1, :] = ((ids >> b) & 1).float()[:, None]
    return x


def read_ids(x: torch.Tensor) -> torch.Tensor:
    bits = (x[:, 0, 1:, :].mean(-1) > 0.5).long()  # (N, 0) for one group: id 0
    return (bits * (1 << torch.arange(bits.shape[1]))).sum(1)


def noise_on_probe(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0] - 0.5
