"""Image augmentation for episode samplers: a random affine warp per image, drawn from the sampler's
own generator (so a resumed run sees the same augmented episodes).

    sampler = FewShotSampler(images, labels, 5, 1, 15, transform=RandomAffine(shift=2, rotate=15))

Meta-training on few classes overfits them (Omniglot's small background split: 136 characters);
small shifts and rotations of each drawing are the variation between drawers that the classes
already contain, so they enlarge the training distribution without changing what a class is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class RandomAffine:
    """Each image [..., C, H, W] is rotated by a uniform angle in [-rotate, rotate] degrees, scaled by a
    uniform factor in [1 - scale, 1 + scale] and shifted by uniform offsets in [-shift, shift] pixels,
    bilinearly resampled with zero fill (Omniglot's background is 0)."""

    def __init__(self, shift: float = 0.0, rotate: float = 0.0, scale: float = 0.0):
        for name, value, high in (("shift", shift, float("inf")), ("rotate", rotate, 180.0), ("scale", scale, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < high:
                raise ValueError(f"RandomAffine: {name} must be a number in [0, {high}), got {value!r}")
        self.shift, self.rotate, self.scale = float(shift), float(rotate), float(scale)

    def __repr__(self) -> str:
        return f"RandomAffine(shift={self.shift:g}, rotate={self.rotate:g}, scale={self.scale:g})"

    def __bool__(self) -> bool:
        return bool(self.shift or self.rotate or self.scale)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n = math.prod(images.shape[:-3])  # images, one draw each; affine() checks the shape

        def uniform(bound: float) -> Tensor:  # always drawn, so the stream does not depend on which are 0
            return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * bound

        angle, factor = uniform(self.rotate), 1 + uniform(self.scale)
        return affine(images, angle, factor, uniform(self.shift), uniform(self.shift))


def affine(images: Tensor, angle: Tensor, factor: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Warp each image of `images` [..., C, H, W] (flattened to n images; the other arguments are [n]):
    rotate by `angle` degrees (counter-clockwise as displayed, row 0 on top) and scale by `factor`
    about the centre, then shift by `dx` pixels right and `dy` pixels down; bilinear, zero fill."""
    if images.dim() < 3 or not images.is_floating_point():
        raise ValueError(f"images must be floating point [..., C, H, W], got {images.dtype} of shape "
                         f"{list(images.shape)}")
    *lead, c, h, w = images.shape
    x = images.reshape(-1, c, h, w)
    # affine_grid maps each output pixel to the input point it reads, in [-1, 1] coordinates: the
    # inverse warp. With y pointing down, a counter-clockwise rotation on screen is the matrix
    # [[cos, sin], [-sin, cos]]; its inverse, divided by the scale, is below. A shift by s pixels
    # reads from s pixels back: -2s/size in normalised units.
    rad = torch.deg2rad(angle.double())
    cos, sin = torch.cos(rad) / factor, torch.sin(rad) / factor
    theta = torch.stack([torch.stack([cos, -sin, -2 * dx / w], -1),
                         torch.stack([sin, cos, -2 * dy / h], -1)], -2)
    grid = F.affine_grid(theta.to(x), [x.shape[0], c, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(*lead, c, h, w)
