"""RandomAffine and affine: the warp's geometry against exact pixel moves, seeding through the
sampler's generator (a resumed sampler draws the same augmented episodes), and argument errors."""

import pytest
import torch

from fastmaml.tasks import FewShotSampler
from fastmaml.tasks.augment import RandomAffine, affine


def dot(row, col, size=7):
    x = torch.zeros(1, 1, size, size)
    x[0, 0, row, col] = 1.0
    return x


def params(angle=0.0, factor=1.0, dx=0.0, dy=0.0):
    return [torch.tensor([float(v)]) for v in (angle, factor, dx, dy)]


@pytest.mark.parametrize("dx, dy", [(1, 0), (0, 1), (-2, 1), (3, -3)])
def test_integer_shift_moves_pixels_exactly(dx, dy):
    x = torch.rand(1, 1, 9, 9)
    out = affine(x, *params(dx=dx, dy=dy))[0, 0]
    expected = torch.zeros(9, 9)
    src = x[0, 0, max(0, -dy):9 - max(0, dy), max(0, -dx):9 - max(0, dx)]
    expected[max(0, dy):9 - max(0, -dy), max(0, dx):9 - max(0, -dx)] = src  # zero fill where nothing moved in
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_quarter_turn_is_rot90_and_identity_is_exact():
    x = torch.rand(2, 3, 1, 8, 8)  # any leading dims
    torch.testing.assert_close(affine(x, *[p.expand(6) for p in params(angle=90)]), torch.rot90(x, 1, (-2, -1)),
                               atol=1e-6, rtol=0)
    assert torch.equal(affine(x, *[p.expand(6) for p in params()]), x)


def test_scale_about_the_centre():
    # (2, 3) is 1 row above the centre (3, 3); doubled, it lands 2 rows above, spread bilinearly
    out = affine(dot(2, 3), *params(factor=2.0))[0, 0]
    expected = torch.zeros(7, 7)
    spread = torch.tensor([0.5, 1.0, 0.5])
    expected[0:3, 2:5] = spread[:, None] * spread  # both axes scale
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_random_affine_seeded_and_bounded():
    x = torch.rand(4, 5, 1, 28, 28)
    aug = RandomAffine(shift=2, rotate=10, scale=0.1)
    a = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and not torch.equal(a, x)
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not bool(RandomAffine()) and bool(aug)
    torch.testing.assert_close(RandomAffine()(x, torch.Generator()), x, atol=1e-5, rtol=0)


def test_sampler_transform_is_resumable_and_applied_to_every_image():
    labels = torch.arange(6).repeat_interleave(4)
    images = torch.rand(24, 1, 8, 8)
    calls = []

    def spy(x, g):
        calls.append(x.shape)
        return RandomAffine(shift=1, rotate=5)(x, g)

    s = FewShotSampler(images, labels, 3, 1, 2, seed=0, transform=spy)
    state = s.state_dict()
    first = s.sample(2).tensors()
    s.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(first, s.sample(2).tensors()))
    assert calls[0] == (2, 3, 3, 1, 8, 8)  # [tasks, N, K+Q, C, H, W]: support and query alike
    assert "RandomAffine" not in repr(FewShotSampler(images, labels, 3, 1, 2))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"shift must be a number in \[0, inf\), got -1"):
        RandomAffine(shift=-1)
    with pytest.raises(ValueError, match="rotate must be"):
        RandomAffine(rotate=200)
    with pytest.raises(ValueError, match="scale must be"):
        RandomAffine(scale=True)
    with pytest.raises(ValueError, match=r"images must be floating point \[\.\.\., C, H, W\]"):
        RandomAffine(shift=1)(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.Generator())
    with pytest.raises(TypeError, match="transform must be a callable"):
        FewShotSampler(torch.rand(4, 2), torch.arange(4), 2, 1, 0, transform="flip")
