"""VQ-VAE for single-channel brain slices: strided-conv encoder, vector quantiser, mirrored decoder."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from brainvq.models.quantizer import QuantizerConfig, VectorQuantizer


class VQVAEOutput(NamedTuple):
    recon: torch.Tensor  # (B,1,H,W) in [0,1]
    vq_loss: torch.Tensor  # scalar
    indices: torch.Tensor  # (B,h,w) int64
    perplexity: torch.Tensor  # scalar
    usage: torch.Tensor  # scalar, fraction of codes used in the batch
    # p(x | codes) = N(loc, scale²) discretised to 8-bit grey levels; both None without pixel_noise
    loc: torch.Tensor | None = None  # (B,1,H,W)
    scale: torch.Tensor | None = None  # (B,1,H,W)


class PixelDistribution(NamedTuple):
    mean: torch.Tensor  # (B,1,H,W) in [0,1]: the reconstruction
    loc: torch.Tensor | None  # (B,1,H,W) location of p(x | codes); None without pixel_noise
    scale: torch.Tensor | None  # (B,1,H,W) its scale, >= SCALE_FLOOR


# Smallest noise scale, far below one 8-bit step (1/255): keeps the likelihood finite where the data is exactly
# predictable (the zero background).
SCALE_FLOOR = 1e-4


class ResidualLayer(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResidualStack(nn.Sequential):
    def __init__(self, channels: int, hidden: int, num_layers: int) -> None:
        super().__init__(*[ResidualLayer(channels, hidden) for _ in range(num_layers)], nn.ReLU())


UPSAMPLE_KINDS = ("transpose", "resize")


class ResizeConv(nn.Conv2d):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution: every output pixel is made by the same weights.

    A stride-2 transposed convolution makes the four pixels of each 2x2 block with four different sub-kernels, and
    any mismatch between them is a period-2 checkerboard at the highest frequencies, exactly where a full-resolution
    texture test looks (Odena, Dumoulin & Olah 2016, https://distill.pub/2016/deconv-checkerboard/). A Conv2d itself,
    so its weight, bias and in_channels are where a transposed convolution's are.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))  # (B,C_out,2H,2W)


def up_layer(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """One 2x upsampling layer of the decoder (``VQVAEConfig.upsample``)."""
    if kind == "resize":
        return ResizeConv(in_channels, out_channels)
    return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)


@dataclass(frozen=True)
class VQVAEConfig:
    latent_dim: int = 32
    num_embeddings: int = 64
    downsample: int = 4
    hidden_channels: int = 48
    num_res_layers: int = 2
    res_channels: int = 24
    beta: float = 0.25
    ema: bool = True
    decay: float = 0.99
    image_size: tuple[int, int] = (240, 256)  # (H, W)
    in_channels: int = 1
    # A per-pixel noise scale beside the mean, so the decoder is a likelihood p(x | codes) (a discretised Gaussian
    # over the 8-bit grey levels) that generation draws from, rather than the mean alone: the mean of many plausible
    # slices is smoother than any of them, and a full-resolution realism test sees exactly that (README, "The
    # decoder's ceiling"). Checkpoints written before this field rebuild with it off (models.checkpoint).
    pixel_noise: bool = True
    # How the decoder upsamples: "transpose" (stride-2 transposed convolutions) or "resize" (nearest 2x, then a 3x3
    # convolution: no checkerboard, see ResizeConv). Checkpoints written before this field rebuild as "transpose".
    upsample: str = "transpose"
    # The class map of the data it was trained on (names in label order, () for the flat layout), recorded so that
    # its codes are read back with the same labels (brainvq.stages.vqvae.vqvae_run_splits); None: not recorded
    # (checkpoints from before class maps). The model itself never uses it.
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.downsample not in (2, 4, 8):
            raise ValueError(f"downsample must be 2, 4 or 8, got {self.downsample}")
        for name in ("latent_dim", "num_embeddings", "hidden_channels", "res_channels", "in_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.upsample not in UPSAMPLE_KINDS:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_KINDS)}, got {self.upsample!r}")
        if not isinstance(self.pixel_noise, bool):
            raise ValueError(f"pixel_noise must be true or false, got {self.pixel_noise!r}")
        if self.num_res_layers < 0:
            raise ValueError(f"num_res_layers must be >= 0, got {self.num_res_layers}")
        size = tuple(int(s) for s in self.image_size)
        object.__setattr__(self, "image_size", size)  # JSON round-trips tuples as lists
        if len(size) != 2 or any(s % self.downsample for s in size) or min(size) <= 0:
            raise ValueError(f"image_size {size} must be two positive sizes divisible by downsample={self.downsample}")
        # Shared validation of the quantiser fields.
        self.quantizer_config()
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))  # JSON gives lists

    def quantizer_config(self) -> QuantizerConfig:
        return QuantizerConfig(
            num_embeddings=self.num_embeddings,
            embedding_dim=self.latent_dim,
            beta=self.beta,
            ema=self.ema,
            decay=self.decay,
        )

    @property
    def code_shape(self) -> tuple[int, int]:
        """Code grid ``(h, w)``."""
        return self.image_size[0] // self.downsample, self.image_size[1] // self.downsample

    @property
    def bits_per_image(self) -> float:
        h, w = self.code_shape
        return h * w * math.log2(self.num_embeddings)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["classes"] = None if self.classes is None else list(self.classes)
        return d


class VQVAE(nn.Module):
    """Encoder → vector quantiser → decoder. ``forward`` returns :class:`VQVAEOutput`."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        c, hc = config.in_channels, config.hidden_channels
        n_down = int(math.log2(config.downsample))

        enc: list[nn.Module] = []
        ch_in = c
        for i in range(n_down):
            ch_out = hc if i == n_down - 1 else max(hc // 2, 8)
            enc += [nn.Conv2d(ch_in, ch_out, 4, stride=2, padding=1), nn.ReLU()]
            ch_in = ch_out
        enc += [
            nn.Conv2d(hc, hc, 3, padding=1),
            ResidualStack(hc, config.res_channels, config.num_res_layers),
            nn.Conv2d(hc, config.latent_dim, 1),
        ]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = VectorQuantizer(config.quantizer_config())

        dec: list[nn.Module] = [
            nn.Conv2d(config.latent_dim, hc, 3, padding=1),
            ResidualStack(hc, config.res_channels, config.num_res_layers),
        ]
        ch_in = hc
        for i in range(n_down):
            last = i == n_down - 1
            ch_out = c if last else max(hc // 2, 8)
            dec.append(up_layer(config.upsample, ch_in, ch_out))
            if not last:
                dec.append(nn.ReLU())
            ch_in = ch_out
        self.decoder = nn.Sequential(*dec)
        # The likelihood's head: a location offset from the mean and a log-scale per pixel, read from the features the
        # mean's last layer reads. Detached: it is fitted to the mean's residuals and never moves the mean, so
        # reconstructions and codes are what they would be without it. The offset is there for the background: the
        # slices' background is exactly 0 while the sigmoid mean sits a little above it, and a Gaussian centred
        # above the zero bin can give it at most half its mass (the scale would then grow without bound).
        last_in = self.decoder[-1].in_channels
        self.noise_head = None
        if config.pixel_noise:
            # built on a fork of the RNG: the rest of the model, and every draw training makes after it, are what they
            # are without the head, so adding it changes nothing else (same seed, same codes, same reconstructions)
            with torch.random.fork_rng(devices=[]):
                self.noise_head = up_layer(config.upsample, last_in, 2 * c)
            # start at the mean, with a flat scale of ~0.02 (exp(-4)): the demo's noise level
            nn.init.zeros_(self.noise_head.weight)
            nn.init.constant_(self.noise_head.bias, 0.0)
            nn.init.constant_(self.noise_head.bias[c:], -4.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous latents: ``(B,1,H,W) -> (B,D,h,w)``."""
        return self.encoder(x)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Image from code vectors: ``(B,D,h,w) -> (B,1,H,W)`` in [0,1] (the mean of p(x | codes))."""
        return torch.sigmoid(self.decoder(quantized))

    def decode_distribution(self, quantized: torch.Tensor) -> PixelDistribution:
        """The mean image and p(x | codes) (:class:`PixelDistribution`) from code vectors ``(B,D,h,w)``."""
        h = self.decoder[:-1](quantized)  # (B,C,H/2,W/2): what the last layer reads
        mean = torch.sigmoid(self.decoder[-1](h))
        if self.noise_head is None:
            return PixelDistribution(mean, None, None)
        offset, log_scale = self.noise_head(h.detach()).chunk(2, dim=1)  # each (B,1,H,W)
        # A log-scale: an optimiser step moves the scale by a factor, not by an amount, so the huge residuals of an
        # untrained mean cannot park it far up (a softplus scale reached ~70 there and took thousands of steps to
        # come back). Clamped far above any useful scale for numerical safety only.
        return PixelDistribution(mean, mean.detach() + offset, torch.exp(log_scale.clamp(max=2.0)) + SCALE_FLOOR)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """Code grid of an image batch: ``(B,1,H,W) -> (B,h,w)`` int64."""
        return self.quantizer.quantize_indices(self.encode(x))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Image from a code grid: ``(B,h,w)`` int64 ``-> (B,1,H,W)`` in [0,1]; the codebook lookup is a Gather."""
        return self.decode(self.quantizer.lookup(indices))

    def decode_indices_distribution(self, indices: torch.Tensor) -> PixelDistribution:
        """:meth:`decode_distribution` of a code grid ``(B,h,w)`` int64."""
        return self.decode_distribution(self.quantizer.lookup(indices))

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        q = self.quantizer(self.encode(x))
        d = self.decode_distribution(q.quantized)
        return VQVAEOutput(d.mean, q.loss, q.indices, q.perplexity, q.usage, d.loc, d.scale)
