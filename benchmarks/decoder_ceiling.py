"""What the realism test sees in the VQ-VAE's reconstructions: missing noise, blur, or both; and whether a
patch-adversarial loss on the decoder (VQGAN, Esser et al. 2021, https://arxiv.org/abs/2012.09841) moves it.

No prior can pass the realism test while real slices and the decoder's own reconstructions are easy to tell apart
(`gen/c2st_recon_ceiling`). This benchmark runs the production protocol (real validation slices against
reconstructions of *other* validation slices, as the evaluation does) on variants of the reconstructions:

* ``recon``: the decoder's output, as today;
* ``recon + rician σ``: the same with Rician noise of σ added inside the brain, as the demo set's own noise model
  (``brainvq.data.demo``) adds it to the template: is the missing noise the tell?
* ``loc + estimated noise``: the decoder's location (its mean, with the background offset that keeps the zero
  background at 0) plus homogeneous Gaussian noise at the level estimated from the *training* slices alone
  (:func:`mad_noise_sigma`: Donoho's robust estimator, the median absolute finest diagonal wavelet coefficient inside
  the brain / 0.6745; Donoho & Johnstone 1994, https://doi.org/10.1093/biomet/81.3.425): what a decoder gives
  whose noise model knows the data's noise level but not where it lost structure;
* ``loc equalised + estimated noise``: the location passed through a small linear filter whose radial gain makes its
  power spectrum, on 32x32 patches wholly inside the brain of *training* slices, match the real slices' less the
  estimated noise's (:func:`interior_equaliser`): is the softness a global loss of band energy that a fixed
  sharpening gives back?
* ``truth blur 0.7 + rician 0.01``: an oracle, the real slices blurred by σ 0.7 px then given back their noise:
  is a blur the test sees even under restored noise?

With ``--finetune_steps N`` it then fine-tunes the decoder alone (encoder and codebook frozen, so the codes and
any prior over them stay valid) for N optimiser steps of 8 slices, twice from the same weights: once with the
reconstruction loss only (the control), once with a PatchGAN hinge loss added under VQGAN's adaptive weight, and
measures both the same way, with `val/ssim_brain` beside each.

Every row also prints the energy gap: the mean, over the critic's seven log band-energy channels and the cells
inside the brain, of the variant's front-end maps less the real slices' (0 when the high-frequency energy the critic
reads is matched on average; > 0 when the variant has too much). Both sides run in this one process, one after the
other, with the same steps and seed.

With ``--by_channel`` each row's test also runs on one part of what the critic reads at a time, the rest made
constant: the mean intensity, the second differences, the first differences or the difference-of-Gaussian bands
alone, or every channel but only in the cells wholly inside the brain (``interior``) or only in the cells of its
outline (``outline``): where the tell is.

    python benchmarks/decoder_ceiling.py --vqvae_run_id <id>
    python benchmarks/decoder_ceiling.py --vqvae_run_id <id> --finetune_steps 400

With ``--prior_run_id`` and ``--samples_out DIR`` it also writes the prior's evaluation draw (the protocol's 256
codes) decoded both ways, ``DIR/learned`` (the default pixel draw) and ``DIR/estimated`` (location + the estimated
noise), for ``brainvq evaluate-samples --samples_dir DIR/<way> --split val``.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np


def _patch_discriminator():
    """PatchGAN (pix2pix, https://arxiv.org/abs/1611.07004) sized for a CPU: 70x70-ish receptive field, 3 layers."""
    from torch import nn

    def block(i, o, s):
        return [nn.Conv2d(i, o, 4, s, 1), nn.LeakyReLU(0.2, True)]

    return nn.Sequential(*block(1, 32, 2), *block(32, 64, 2), *block(64, 64, 1), nn.Conv2d(64, 1, 4, 1, 1))


# The critic's front-end channels (brainvq.models.critic.Critic.front), grouped by what they read.
# "interior" and "outline": every channel, but only in the cells wholly inside the brain (the cell and its eight
# neighbours have mean intensity above 0.05), or only in the other cells that hold some brain (the outline).
CHANNEL_GROUPS = {"mean": [0], "second_differences": [1, 2], "first_differences": [3, 4], "dog_bands": [5, 6, 7],
                  "interior": "interior", "outline": "outline"}


def brain_cells(maps):
    """``(N,1,h,w)`` bool: the cells of front-end maps ``(N,8,h,w)`` that hold brain (mean intensity above 0.05)."""
    return maps[:, :1] > 0.05


def only_channels(maps, keep):
    """``maps (N,8,h,w)`` with every channel outside ``keep`` (a list of channels, or "interior" / "outline" cells)
    set to 0: a constant the critic's head cannot read."""
    import torch.nn.functional as F

    if isinstance(keep, str):
        brain = brain_cells(maps)  # (N,1,h,w)
        interior = -F.max_pool2d(-brain.float(), 3, stride=1, padding=1) > 0.5  # eroded by one cell
        cells = interior if keep == "interior" else brain & ~interior
        return maps * cells
    out = maps.new_zeros(maps.shape)
    out[:, keep] = maps[:, keep]
    return out


def mad_noise_sigma(images: np.ndarray) -> float:
    """The noise level of uint8 slices ``(N,H,W)``, robustly: the median absolute value of the finest diagonal Haar
    wavelet coefficient ``(a - b - c + d) / 2`` over 2x2 blocks lying wholly inside the brain (no zero pixel),
    divided by 0.6745 (the median of |N(0, 1)|). White noise of std s gives coefficients of std s; edges are sparse
    among them, so the median ignores them where a root-mean-square residual would not."""
    x = images.astype(np.float32) / 255
    a, b, c, d = x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    inside = (a > 0) & (b > 0) & (c > 0) & (d > 0)
    return float(np.median(np.abs((a - b - c + d)[inside] / 2)) / 0.6745)


def interior_equaliser(real: np.ndarray, loc: np.ndarray, sigma: float, size: int = 5, patch: int = 32) -> np.ndarray:
    """A ``(size, size)`` filter (sum 1) whose radial gain sqrt((P_real - P_noise) / P_loc) matches the power spectrum
    of the decoder's locations ``loc (N,H,W)`` to that of the real slices ``real (N,H,W)`` (floats in [0,1], the
    same slices) less white noise of ``sigma``. The spectra are averaged over Hann-windowed ``patch``-square patches
    (stride patch / 2) lying wholly inside the brain, so the brain's outline, which dominates a whole-slice spectrum,
    does not set the gain; the gain is binned by radial frequency, capped at 4, and cut to ``size`` by a Hann window."""
    win = np.outer(np.hanning(patch), np.hanning(patch))
    p_real, p_loc, n = np.zeros((patch, patch)), np.zeros((patch, patch)), 0
    step = patch // 2
    for x, m in zip(real, loc):
        for i in range(0, x.shape[0] - patch + 1, step):
            for j in range(0, x.shape[1] - patch + 1, step):
                a, b = x[i : i + patch, j : j + patch], m[i : i + patch, j : j + patch]
                if (a > 0).all():
                    p_real += np.abs(np.fft.fft2((a - a.mean()) * win)) ** 2
                    p_loc += np.abs(np.fft.fft2((b - b.mean()) * win)) ** 2
                    n += 1
    if n == 0:
        raise ValueError(f"no {patch}x{patch} patch lies wholly inside the brain")
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(patch), np.fft.fftfreq(patch), indexing="ij"))
    which = np.digitize(radius, np.linspace(0, radius.max() + 1e-9, 12)) - 1
    count = np.maximum(np.bincount(which.ravel(), minlength=12), 1)
    radial = [np.bincount(which.ravel(), (p / n).ravel(), 12) / count for p in (p_real, p_loc)]
    noise = sigma**2 * (win**2).sum()  # white noise's power under the window, at every frequency
    gain = np.sqrt(np.maximum(radial[0] - noise, 0) / np.maximum(radial[1], 1e-12))
    full = np.clip(gain, 0, 4)[which]
    full[0, 0] = 1.0  # the mean level stays
    k = np.fft.fftshift(np.real(np.fft.ifft2(full)))
    c, r = patch // 2, size // 2
    taper = np.hanning(size + 2)[1:-1]
    k = k[c - r : c + r + 1, c - r : c + r + 1] * np.outer(taper, taper)
    return (k / k.sum()).astype(np.float32)


def finetune_decoder(vq, train, steps: int, adversarial: float, seed: int = 0, on_draws: float = 0.0,
                     encoder: bool = False):
    """A copy of ``vq`` whose decoder trained ``steps`` more batches of ``train``: reconstruction loss (the trainer's
    MSE + SSIM mix), plus ``adversarial`` x VQGAN's adaptive weight x the hinge generator loss when > 0. With
    ``on_draws`` > 0 (a VQ-VAE with a noise model) the discriminator sees slices drawn from p(x | codes) at that
    pixel temperature (reparameterised, mean + t x scale x noise, so its gradient reaches mean and scale) instead of
    the mean: what the realism test sees. ``encoder``: the encoder trains too (through the straight-through
    estimator, held to the codebook by the commitment loss; the codebook stays frozen), so the codes may change
    and a prior over the old ones would not fit. Returns ``(model, seconds)``."""
    import torch
    import torch.nn.functional as F

    from brainvq.engine.vqvae import TrainConfig, _loss

    torch.manual_seed(seed)
    vq = copy.deepcopy(vq)
    encoder_params = list(vq.encoder.parameters())
    trained_encoder, frozen_encoder = (encoder_params, []) if encoder else ([], encoder_params)
    for p in frozen_encoder + list(vq.quantizer.parameters()):
        p.requires_grad_(False)
    disc = _patch_discriminator()
    # the noise head (pixel_noise) reads the decoder's features, so it keeps training beside it
    head = list(vq.noise_head.parameters()) if vq.noise_head is not None else []
    opt_g = torch.optim.Adam(list(vq.decoder.parameters()) + head + trained_encoder, 1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), 1e-4, betas=(0.5, 0.9))
    last = vq.decoder[-1].weight  # VQGAN weighs the two losses by their gradients at the decoder's last layer
    rng = np.random.default_rng(seed)
    vq.eval()  # no EMA codebook updates; the decoder has no batch norm
    t0 = time.monotonic()
    for _ in range(steps):
        x, _ = train.batch(rng.choice(len(train), 8, replace=False))
        # the trainer's own reconstruction loss at its default SSIM weight; the codebook is frozen, and so is the
        # encoder unless asked
        _, loss, out, bits = _loss(vq, x, TrainConfig().ssim_weight)
        rec = out.recon
        if on_draws > 0:
            rec = (rec + on_draws * out.scale * torch.randn_like(rec)).clamp(0, 1)
        if adversarial > 0:
            g_loss = -disc(rec * 2 - 1).mean()
            g_rec = torch.autograd.grad(loss, last, retain_graph=True)[0].norm()
            g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
            loss = loss + adversarial * (g_rec / (g_adv + 1e-4)).clamp(0, 1e4).detach() * g_loss
        opt_g.zero_grad()
        (loss + bits).backward()
        opt_g.step()
        if adversarial > 0:
            d_loss = 0.5 * (F.relu(1 - disc(x * 2 - 1)).mean() + F.relu(1 + disc(rec.detach() * 2 - 1)).mean())
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
    return vq.eval(), time.monotonic() - t0


def fit_noise_head(vq, train, steps: int, seed: int = 0):
    """A copy of ``vq`` with a noise head (``VQVAEConfig.pixel_noise``) fitted for ``steps`` batches of 8 on its
    frozen decoder's features: what training with ``pixel_noise`` gives the head, since the head never moves the
    rest of the model. Returns ``(model, seconds)``."""
    import dataclasses

    import torch

    from brainvq.engine.vqvae import _pixel_bits
    from brainvq.models.vqvae import VQVAE

    torch.manual_seed(seed)
    model = VQVAE(dataclasses.replace(vq.config, pixel_noise=True))
    missing = model.load_state_dict(vq.state_dict(), strict=False).missing_keys
    assert all(k.startswith("noise_head.") for k in missing), missing
    opt = torch.optim.Adam(model.noise_head.parameters(), 3e-3)
    rng = np.random.default_rng(seed)
    model.eval()  # no EMA codebook updates
    t0 = time.monotonic()
    for _ in range(steps):
        x, _ = train.batch(rng.choice(len(train), 8, replace=False))
        loss = _pixel_bits(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), time.monotonic() - t0


def code_locations(vq, codes) -> np.ndarray:
    """The decoder's location for code grids ``(N,h,w)`` int64 -> ``(N,H,W)`` float32, its zero-bin background set to
    exactly 0 (as :func:`brainvq.sampling.draw.pixel_draw` treats it), in batches of 32."""
    import torch

    from brainvq.sampling.draw import ZERO_BIN

    with torch.no_grad():
        loc = np.concatenate([vq.decode_indices_distribution(codes[s : s + 32]).loc.numpy()
                              for s in range(0, len(codes), 32)])[:, 0]
    return np.where(loc < ZERO_BIN, 0.0, loc).astype(np.float32)


def write_samples(prior_run_id: str, vq, sigma: float, out: str) -> None:
    """The evaluation protocol's draw from a prior, decoded with the default pixel draw (``out/learned``) and as the
    decoder's location plus homogeneous noise of ``sigma`` (``out/estimated``): the same codes, PNGs by class."""
    from pathlib import Path

    import torch
    from PIL import Image

    from brainvq.data.images import to_uint8
    from brainvq.quality.evaluate import EvalProtocol
    from brainvq.sampling.draw import pixel_draw
    from brainvq.sampling.generate import generate
    from brainvq.tracking.runs import load_stage_model

    prior, _, _ = load_stage_model(prior_run_id, "train_prior")
    p = EvalProtocol()
    g = generate(prior, vq, p.n_samples, "all", p.temperature, p.top_k, p.seed, batch_size=128, progress=False,
                 pixel_temperature=p.pixel_temperature)
    loc = code_locations(vq, torch.as_tensor(g.codes))[:, None]  # (N,1,H,W)
    ways = {"learned": g.images, "estimated": pixel_draw(loc, np.full_like(loc, sigma), p.seed, 0, 1.0)}
    names = list(prior.config.classes) + ["none"]
    for way, images in ways.items():
        for i, (image, label) in enumerate(zip(to_uint8(images), g.labels)):
            folder = Path(out) / way / (names[label] if prior.config.conditional else "")  # flat: no classes
            path = folder / f"generated{i:04d}_0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.reshape(image.shape[-2:])).save(path)
        print(f"wrote {Path(out) / way}: brainvq evaluate-samples --samples_dir {Path(out) / way} --split val")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vqvae_run_id", default="latest", help="a FINISHED train_vqvae run, or latest")
    p.add_argument("--finetune_steps", type=int, default=0, help="0 = measure the run's decoder only")
    p.add_argument("--noise_steps", type=int, default=0,
                   help="fit a noise head (pixel_noise) on the run's frozen VQ-VAE for this many steps and measure it")
    p.add_argument("--pixel_temperatures", type=float, nargs="+", default=[0.25, 0.3, 0.4, 0.5, 0.7, 1.0],
                   help="pixel temperatures to draw reconstructions at (models with a noise head)")
    p.add_argument("--noise_factors", type=float, nargs="+", default=[0.8, 1.0, 1.2],
                   help="multiples of the estimated noise level to add to the location")
    p.add_argument("--finetune_variants", nargs="+",
                   choices=("recon", "patchgan", "patchgan_draws", "patchgan_encoder"),
                   default=["recon", "patchgan", "patchgan_draws"],
                   help="which fine-tunes to run: the reconstruction-loss control, + PatchGAN, + PatchGAN on draws, "
                        "+ PatchGAN with the encoder trained too")
    p.add_argument("--adversarial", type=float, default=0.8, help="VQGAN's discriminator weight (0.8 in its configs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior_run_id", default="", help="with --samples_out: a train_prior run over this VQ-VAE's codes")
    p.add_argument("--samples_out", default="", help="folder for the prior's draw decoded both ways")
    p.add_argument("--by_channel", nargs="*", choices=list(CHANNEL_GROUPS), default=None,
                   help="also run each row's test on one group of the critic's front-end channels (or cells) at a "
                        "time: the groups named, or every group when none is")
    args = p.parse_args(argv)

    from brainvq.engine.common import configure_threads
    from brainvq.engine.vqvae import evaluate_vqvae
    from brainvq.quality.c2st import C2STProtocol, as_tensor, halves, two_sample_test
    from brainvq.quality.classify import front_maps
    from brainvq.quality.evaluate import EvalProtocol, select_real
    from brainvq.stages.evaluate import slices_of, vqvae_reconstructor
    from brainvq.stages.vqvae import vqvae_run_splits
    from brainvq.tracking.runs import load_stage_model

    configure_threads(0)
    vq, _, run = load_stage_model(args.vqvae_run_id, "train_vqvae")
    splits = vqvae_run_splits(run.data.params)
    real = select_real(slices_of(splits.val), EvalProtocol())
    protocol = C2STProtocol()
    a, b = halves(len(real.images), protocol.seed)
    maps_a = front_maps(as_tensor(real.images[a]))
    truth = real.images[b].astype(np.float32) / 255
    rng = np.random.default_rng(args.seed)
    print(f"VQ-VAE run {run.info.run_id}; {len(a)} real validation slices against {len(b)} others' variants")
    train = slices_of(splits.train)
    sigma_hat = mad_noise_sigma(train.images)
    print(f"noise level estimated from the training slices: {sigma_hat:.4f}\n")

    if args.by_channel is None:
        groups = {}
    else:
        groups = {k: v for k, v in CHANNEL_GROUPS.items() if k in args.by_channel or not args.by_channel}
    print("| decoder | variant | C2ST vs real [95%] | energy gap | `val/ssim_brain` |"
          + "".join(f" {name} only |" for name in groups))
    print("|---|---|---|---|---|" + "---|" * len(groups))

    def row(decoder: str, variant: str, images: np.ndarray, ssim_brain: float | None) -> None:
        u8 = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
        maps_b = front_maps(as_tensor(u8))
        r = two_sample_test(maps_a, maps_b, protocol, salt=9)
        sb = "" if ssim_brain is None else f"{ssim_brain:.4f}"
        parts = []
        for keep in groups.values():  # the other channels made constant: the head can read nothing from them
            g = two_sample_test(only_channels(maps_a, keep), only_channels(maps_b, keep), protocol, salt=9)
            parts.append(f" {g.accuracy:.3f} [{g.ci_low:.3f}, {g.ci_high:.3f}] |")
        print(f"| {decoder} | {variant} | {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] | "
              f"{energy(maps_b) - energy_a:+.3f} | {sb} |" + "".join(parts), flush=True)

    def energy(maps) -> float:  # mean log band energy over the cells that hold brain
        inside = brain_cells(maps).expand(-1, maps.shape[1] - 1, -1, -1)
        return float(maps[:, 1:][inside].mean())

    energy_a = energy(maps_a)

    def rician(img: np.ndarray, sigma: float) -> np.ndarray:  # inside the brain only, as brainvq.data.demo adds it
        n1, n2 = rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape)
        return np.where(img > 0.02, np.sqrt((img + n1) ** 2 + n2 ** 2), img)

    def locations(model, images: np.ndarray) -> np.ndarray:
        """The decoder's location ``(N,H,W)`` of the reconstructions of uint8 ``images (N,H,W)``."""
        import torch

        with torch.no_grad():
            x = torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1)
            codes = torch.cat([model.encode_indices(x[s : s + 32]) for s in range(0, len(x), 32)])
        return code_locations(model, codes)

    def measure(name: str, model) -> None:
        rec = vqvae_reconstructor(model)(real.images[b]).astype(np.float32) / 255
        scores = evaluate_vqvae(model, splits.val)
        row(name, "recon (the mean)", rec, scores["ssim_brain"])
        for sigma in (0.01, 0.02):
            row(name, f"recon + rician {sigma}", rician(rec, sigma), None)
        if model.config.pixel_noise:
            from scipy import ndimage

            from brainvq.sampling.draw import pixel_draw

            loc = locations(model, real.images[b])
            for f in args.noise_factors:  # pixel_draw keeps the zero-bin background at 0
                drawn = pixel_draw(loc[:, None], np.full_like(loc[:, None], f * sigma_hat), args.seed, 0, 1.0)[:, 0]
                row(name, f"loc + estimated noise x {f} ({f * sigma_hat:.4f})", drawn, None)
            fit = np.random.default_rng(args.seed).choice(len(train.images), min(300, len(train.images)), False)
            kernel = interior_equaliser(train.images[fit].astype(np.float32) / 255, locations(model, train.images[fit]),
                                        sigma_hat)
            sharp = np.stack([ndimage.convolve(m, kernel, mode="nearest") for m in loc])
            sharp = np.where(loc > 0, sharp, 0.0)
            drawn = pixel_draw(sharp[:, None], np.full_like(sharp[:, None], sigma_hat), args.seed, 0, 1.0)[:, 0]
            centre = kernel[len(kernel) // 2, len(kernel) // 2]
            row(name, f"loc equalised ({len(kernel)}x{len(kernel)} filter, centre {centre:.2f}) + estimated noise",
                drawn, None)
            for t in args.pixel_temperatures:
                drawn = vqvae_reconstructor(model, seed=args.seed, pixel_temperature=t)(real.images[b])
                row(name, f"recon drawn from p(x | codes), pixel_temperature {t} ({scores['pixel_bits']:.3f} "
                    "bits/pixel)", drawn.astype(np.float32) / 255, None)

    if args.prior_run_id and args.samples_out:
        write_samples(args.prior_run_id, vq, sigma_hat, args.samples_out)
    measure("the run's", vq)
    if args.noise_steps > 0:
        model, seconds = fit_noise_head(vq, splits.train, args.noise_steps, args.seed)
        measure(f"the run's + a noise head fitted {args.noise_steps} steps ({seconds / 60:.1f} min)", model)
    from scipy import ndimage

    row("(oracle)", "truth blur 0.7 + rician 0.01", rician(ndimage.gaussian_filter(truth, (0, 0.7, 0.7)), 0.01), None)
    if args.finetune_steps > 0:
        from brainvq.sampling.draw import PIXEL_TEMPERATURE as t

        variants = {"recon": ("fine-tuned, reconstruction loss only", 0.0, 0.0, False),
                    "patchgan": (f"fine-tuned, + PatchGAN x {args.adversarial}", args.adversarial, 0.0, False),
                    "patchgan_draws": (f"fine-tuned, + PatchGAN x {args.adversarial} on draws at {t}",
                                       args.adversarial, t, False),
                    "patchgan_encoder": (f"encoder and decoder fine-tuned, + PatchGAN x {args.adversarial}",
                                         args.adversarial, 0.0, True)}
        if not vq.config.pixel_noise:  # no likelihood to draw from
            variants.pop("patchgan_draws")
        for name, weight, on_draws, encoder in (variants[v] for v in args.finetune_variants if v in variants):
            model, seconds = finetune_decoder(vq, splits.train, args.finetune_steps, weight, args.seed, on_draws,
                                              encoder)
            measure(f"{name} ({args.finetune_steps} steps, {seconds / 60:.1f} min)", model)


if __name__ == "__main__":
    main()
