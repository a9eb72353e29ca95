"""Turn parsed CLI/MLproject arguments into config dataclasses, with bad values reported by parameter name."""

from __future__ import annotations

import argparse
import json

from brainvq.errors import ConfigError
from brainvq.values import class_names, int_tuple


def _build(cls, **kwargs):
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"bad parameter: {exc}") from None


def vqvae_configs_from_args(args: argparse.Namespace):
    """``(VQVAEConfig, TrainConfig)`` from ``train_vqvae`` arguments."""
    from brainvq.engine.vqvae import TrainConfig
    from brainvq.models.vqvae import VQVAEConfig

    if not 0 <= args.val_fraction < 1:
        raise ConfigError(f"bad parameter: val_fraction must be in [0, 1), got {args.val_fraction}")
    if args.max_train_images < 0:
        raise ConfigError(f"bad parameter: max_train_images must be >= 0, got {args.max_train_images}")
    class_names(getattr(args, "classes", ""))  # a bad spelling is one line before any run starts
    model = _build(
        VQVAEConfig, latent_dim=args.latent_dim, num_embeddings=args.num_embeddings, downsample=args.downsample,
        hidden_channels=args.hidden_channels, num_res_layers=args.num_res_layers, beta=args.beta, ema=args.ema,
        pixel_noise=args.pixel_noise, upsample=args.upsample,
        image_size=tuple(args.image_size), res_channels=max(1, args.hidden_channels // 2),
    )
    train = _build(
        TrainConfig, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        max_minutes=args.max_minutes, ssim_weight=args.ssim_weight, device=args.device,
    )
    return model, train


def apply_study_best(args: argparse.Namespace, study_name: str, storage: str) -> dict:
    """Overwrite ``args`` with the best trial's params of an Optuna study (``--from_study``)."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        best = study.best_trial
    except KeyError:
        raise ConfigError(f"from_study: no study named {study_name!r} in {storage}") from None
    except ValueError as exc:
        raise ConfigError(f"from_study: study {study_name!r} has no finished trial ({exc})") from None
    except RuntimeError:
        raise ConfigError(f"from_study: study {study_name!r} is multi-objective; pick a trial from its "
                          "pareto_front.json and pass its parameters explicitly") from None
    params = {k: v for k, v in best.params.items() if hasattr(args, k)}
    for k, v in params.items():
        setattr(args, k, v)
    print(f"from_study {study_name}: trial {best.number} params {json.dumps(params)}")
    return params


def prior_train_config_from_args(args: argparse.Namespace):
    """``PriorTrainConfig`` from ``train_prior`` arguments: needs no VQ-VAE, so a bad value is reported before the
    VQ-VAE run is even looked up."""
    from brainvq.engine.prior import PriorTrainConfig

    int_tuple("dilation_cycle", args.dilation_cycle)
    return _build(PriorTrainConfig, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  max_minutes=args.max_minutes, device=args.device, level_dropout=args.level_dropout,
                  slice_dropout=args.slice_dropout, precision=args.precision)


def prior_configs_from_args(args: argparse.Namespace, vqvae_config):
    """``(PixelCNNConfig, PriorTrainConfig)`` from ``train_prior`` arguments and the VQ-VAE it models."""
    from brainvq.models.pixelcnn import PixelCNNConfig

    train = prior_train_config_from_args(args)
    model = _build(
        PixelCNNConfig, num_embeddings=vqvae_config.num_embeddings, num_layers=args.num_layers,
        hidden_channels=args.hidden_channels, conditional=args.conditional, code_shape=tuple(vqvae_config.code_shape),
        dilation_cycle=int_tuple("dilation_cycle", args.dilation_cycle), level_bins=args.level_bins,
        slice_context=args.slice_context, position_rank=args.position_rank,
    )
    return model, train
