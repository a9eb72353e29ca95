import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from brainvq.losses import ssim_loss
from brainvq.metrics import psnr, ssim


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
        structural_similarity(a[i, 0], b[i, 0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
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
