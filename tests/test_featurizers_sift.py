"""The sift featurizer's own dense RootSIFT gives kornia's ``DenseSIFTDescriptor`` output (the seed's featurizer,
so every accuracy figure measured with it stays valid), for grey inputs and through the whole ``frames -> grid``
path, at several sizes, on random, textured, flat and saturated frames."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tracker.featurizers import SiftFeaturizer
from tracker.synthetic import texture

kornia_feature = pytest.importorskip("kornia.feature")

SIZES = [(240, 428), (64, 96), (36, 52)]


def kornia_sift() -> torch.nn.Module:
    """The seed's configuration of kornia's descriptor."""
    return kornia_feature.DenseSIFTDescriptor(
        num_ang_bins=8, num_spatial_bins=4, spatial_bin_size=4, rootsift=True, stride=4, padding=4
    )


def reference(frames: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """The seed's ``SiftFeaturizer.forward``: torch luma, antialiased resize, kornia, L2 normalisation."""
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1) / 255
    gray = (frames.permute(0, 3, 1, 2).float() * luma).sum(1, keepdim=True)
    if tuple(gray.shape[-2:]) != input_hw:
        gray = F.interpolate(gray, size=input_hw, mode="bilinear", align_corners=False, antialias=True)
    return F.normalize(kornia_sift()(gray), dim=1)


def textured(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([texture(h, w, rng) for _ in range(b)]))


@pytest.mark.parametrize("hw", SIZES)
def test_describe_equals_kornia(hw):
    torch.manual_seed(0)
    sift = SiftFeaturizer(hw)
    gray = torch.rand(2, 1, *hw)
    gray[0, :, : hw[0] // 3, : hw[1] // 3] = 0.5  # flat patch: kornia's zero descriptor (uniform after RootSIFT)
    gray[1, :, -10:, :] = 1.0  # a saturated band at the border (replicated gradients)
    tex = textured(1, *hw, seed=1).permute(0, 3, 1, 2).float().mean(1, keepdim=True) / 255
    for x in (gray, tex):
        ours = sift.describe(x)
        theirs = F.normalize(kornia_sift()(x), dim=1)
        assert ours.shape == theirs.shape == (x.shape[0], 128, hw[0] // 4, hw[1] // 4)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.norm(dim=1), torch.ones(x.shape[0], hw[0] // 4, hw[1] // 4))
    flat = sift.describe(torch.full((1, 1, *hw), 0.3))
    torch.testing.assert_close(flat, torch.full_like(flat, 128**-0.5))  # no gradient anywhere


@pytest.mark.parametrize(
    ("frame_hw", "input_hw"), [((120, 200), (64, 96)), ((36, 52), (36, 52)), ((90, 160), (240, 428))]
)
def test_featurizer_equals_the_kornia_path(frame_hw, input_hw):
    """uint8 frames through the whole featurizer (OpenCV luma table, resize, descriptors) = the seed's path."""
    frames = textured(3, *frame_hw, seed=2)
    frames[1] = torch.randint(0, 256, frames[1].shape, dtype=torch.uint8)
    frames[2, :, : frame_hw[1] // 2] = 255  # saturated half
    sift = SiftFeaturizer(input_hw)
    ours = sift(frames)
    torch.testing.assert_close(ours, reference(frames, input_hw), atol=1e-5, rtol=0)
    assert ours.is_contiguous() and ours.dtype == torch.float32
    # the luma table gives the torch expression's floats bit for bit, also for a non-contiguous batch and a strip
    # of rows that does not divide the frame's
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1) / 255
    strided = frames[:, ::2, ::2]
    expected = (strided.permute(0, 3, 1, 2).float() * luma).sum(1, keepdim=True)
    pixels = strided.contiguous().numpy()
    gray = np.empty(pixels.shape[1:3], np.float32)
    strip = np.empty((5, pixels.shape[2], 3), np.float32)
    for i, frame in enumerate(pixels):
        sift._gray_into(frame, gray, strip)
        assert torch.equal(torch.from_numpy(gray), expected[i, 0])
    torch.testing.assert_close(sift(strided), reference(strided, input_hw), atol=1e-5, rtol=0)
