import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from brainvq.quality.losses import ssim_loss
from brainvq.quality.metrics import BRAIN_DILATION, BRAIN_THRESHOLD, brain_mask, psnr, psnr_brain, ssim, ssim_brain


def _pairs(shape, seed):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    a[:, :, : shape[2] // 4] = 0  # a black band, like the background around a brain
    b = np.clip(a + rng.normal(0, 0.08, shape), 0, 1)
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (2, 1, 240, 256), (2, 1, 37, 61)])
def test_ssim_matches_scikit_image(shape):
    a, b = _pairs(shape, 0)
    ours = ssim(torch.from_numpy(b), torch.from_numpy(a)).numpy()
    ref = [
        structural_similarity(
            a[i, 0], b[i, 0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        for i in range(shape[0])
    ]
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_ssim_of_identical_images_is_one_and_psnr_is_finite_for_noise():
    a, b = _pairs((2, 1, 32, 32), 1)
    assert torch.allclose(ssim(torch.from_numpy(a), torch.from_numpy(a)), torch.ones(2), atol=1e-5)
    p = psnr(torch.from_numpy(b), torch.from_numpy(a))
    assert torch.all((p > 15) & (p < 40))


def test_ssim_loss_agrees_with_metric_and_has_gradients():
    a, b = _pairs((2, 1, 48, 40), 2)
    x = torch.from_numpy(b).requires_grad_()
    loss = ssim_loss(x, torch.from_numpy(a))
    assert abs((1 - loss.item()) - ssim(torch.from_numpy(b), torch.from_numpy(a)).mean().item()) < 1e-4
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _brain_pairs(seed):
    """A bright disc ("brain") on exact-zero background, and a copy with noise inside the brain only (a decoder
    reproduces the black background easily)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :72]
    a = np.where((yy - 32) ** 2 + (xx - 36) ** 2 < 20**2, 0.3 + 0.5 * rng.random((64, 72)), 0.0)[None, None]
    b = np.clip(a + rng.normal(0, 0.05, a.shape) * (a > 0), 0, 1)
    return a.astype(np.float32), b.astype(np.float32)


def test_brain_region_ssim_is_scikit_image_map_averaged_over_the_documented_mask():
    from scipy import ndimage

    a, b = _brain_pairs(3)
    _, full = structural_similarity(
        a[0, 0], b[0, 0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True
    )
    # the rule: target > 0.02, dilated by 3 px (a 7x7 square), map and mask cropped by 5 px like the whole-slice mean
    mask = ndimage.binary_dilation(a[0, 0] > BRAIN_THRESHOLD, np.ones((2 * BRAIN_DILATION + 1,) * 2, bool))
    assert np.array_equal(brain_mask(torch.from_numpy(a))[0, 0].numpy(), mask)
    ref = full[5:-5, 5:-5][mask[5:-5, 5:-5]].mean()
    ours = ssim_brain(torch.from_numpy(b), torch.from_numpy(a)).item()
    assert abs(ours - ref) < 1e-3
    # the background, identical in both images, flatters the whole-slice figure
    assert ssim(torch.from_numpy(b), torch.from_numpy(a)).item() > ours + 0.01


def test_brain_region_psnr_counts_brain_pixels_only():
    a, b = _brain_pairs(4)
    m = brain_mask(torch.from_numpy(a)).numpy()
    mse = ((a - b) ** 2)[m].mean()
    assert psnr_brain(torch.from_numpy(b), torch.from_numpy(a)).item() == pytest.approx(
        10 * np.log10(1 / mse), abs=1e-3
    )
    empty = np.zeros_like(a)
    assert torch.isnan(ssim_brain(torch.from_numpy(empty), torch.from_numpy(empty))).all()
