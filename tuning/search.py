"""Optuna search spaces, suggest functions and objectives for the VQ-VAE and the PixelCNN prior.

Tuning wraps training: every trial builds its configs through the same argument → config code as
``brainvq train-vqvae`` / ``train-prior`` (``brainvq.cli.configs``) and trains with the same ``fit_vqvae`` /
``fit_prior``. Trial parameter names are those commands' argument names, so ``--from_study`` can replay a trial.
MLflow appears here only to open one nested child run per trial.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from optuna.trial import TrialState

from brainvq.errors import ConfigError, TrainingDiverged, one_line
from brainvq.tracking.store import normalise_postgres_uri
from brainvq.values import intlike

log = logging.getLogger(__name__)

# Errors a single trial may raise without stopping the sweep: NaN loss, bad sampled config, out of memory
# (torch.OutOfMemoryError is a RuntimeError). Anything else is a bug and should stop the sweep loudly.
TRIAL_ERRORS: tuple[type[BaseException], ...] = (TrainingDiverged, ConfigError, ValueError, RuntimeError, MemoryError,
                                                 FloatingPointError)

OBJECTIVE_METRIC = {"vqvae": "val/ssim", "prior": "prior/val_nll_bits"}
BITS_METRIC = "code_bits_per_image"
TRIAL_STAGE = "tune_trial"

# Parameter → type. Names are the argument names of train_vqvae / train_prior (see module docstring).
VQVAE_PARAMS = {"latent_dim": int, "num_embeddings": int, "lr": float, "downsample": int, "hidden_channels": int,
                "num_res_layers": int, "beta": float, "ssim_weight": float, "batch_size": int}
PRIOR_PARAMS = {"num_layers": int, "hidden_channels": int, "conditional": bool, "lr": float, "batch_size": int}
PARAMS = {"vqvae": VQVAE_PARAMS, "prior": PRIOR_PARAMS}

DEFAULT_SPACES: dict[str, dict[str, dict]] = {
    "vqvae": {
        "latent_dim": {"choices": [8, 16, 32, 64]},
        "num_embeddings": {"choices": [32, 64, 128, 256, 512]},
        "lr": {"low": 5e-4, "high": 5e-3, "log": True},
        # Off by default (each doubles the search); switch on in a --space file, e.g. `downsample: [2, 4]`.
        "downsample": None,
        "hidden_channels": None,
    },
    "prior": {
        "num_layers": {"choices": [4, 8, 12]},
        "hidden_channels": {"choices": [16, 32, 64]},
        "lr": {"low": 1e-3, "high": 1e-2, "log": True},
        "conditional": None,
    },
}


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: categorical ``choices`` or a numeric ``low``..``high`` range (``log``/``step``)."""

    name: str
    kind: type
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial: optuna.Trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


Space = dict[str, ParamSpec]


def _coerce(value: Any, kind: type, where: str):
    # YAML 1.1 reads `5e-4` (no dot) as a string, so numbers given as strings are accepted.
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            return value.strip().lower() == "true"
    elif isinstance(value, bool):
        pass
    elif kind is int:
        try:
            return intlike(value)
        except argparse.ArgumentTypeError:
            pass
    else:
        try:
            f = float(value)
        except (TypeError, ValueError):
            f = math.nan
        if math.isfinite(f):
            return f
    raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")


def parse_spec(stage: str, name: str, raw: Any, source: str = "space") -> ParamSpec | None:
    """Validate one space entry: a list (choices), ``{choices: [...]}``, ``{low, high[, log, step]}``, a scalar (fixed
    value) or null (not searched)."""
    params = PARAMS[stage]
    if name not in params:
        raise ConfigError(f"{source}: unknown {stage} parameter {name!r}; choose from {', '.join(params)}")
    kind, where = params[name], f"{source}: {name}"
    if raw is None:
        return None
    if isinstance(raw, (list, tuple)):
        raw = {"choices": list(raw)}
    if not isinstance(raw, Mapping):
        raw = {"choices": [raw]}  # a fixed value is a one-choice categorical, so it lands in trial.params
    extra = set(raw) - {"choices", "low", "high", "log", "step"}
    if extra:
        unknown = ", ".join(sorted(map(str, extra)))
        raise ConfigError(f"{where}: unknown key(s) {unknown}; use choices or low/high/log/step")
    if "choices" in raw:
        if set(raw) - {"choices"}:
            raise ConfigError(f"{where}: give either choices or low/high, not both")
        choices = raw["choices"]
        if not isinstance(choices, (list, tuple)):
            raise ConfigError(f"{where}: choices must be a list, got {choices!r}")
        if not choices:
            raise ConfigError(f"{where}: empty choice list")
        values = tuple(_coerce(c, kind, where) for c in choices)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: duplicate choices {list(values)}")
        return ParamSpec(name, kind, choices=values)
    if kind is bool:
        raise ConfigError(f"{where}: a boolean takes choices, e.g. [true, false]")
    if "low" not in raw or "high" not in raw:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high = _coerce(raw["low"], kind, f"{where}.low"), _coerce(raw["high"], kind, f"{where}.high")
    if low >= high:
        raise ConfigError(f"{where}: low must be < high, got low={low} high={high}")
    log_ = raw.get("log", False)
    if not isinstance(log_, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log_!r}")
    if log_ and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None:
        step = _coerce(step, kind, f"{where}.step")
        if step <= 0:
            raise ConfigError(f"{where}.step must be > 0, got {step}")
        if log_:
            raise ConfigError(f"{where}: step cannot be combined with log")
    return ParamSpec(name, kind, low=low, high=high, log=log_, step=step)


def load_space(stage: str, path: str | Path | None = None) -> Space:
    """The stage's default space, with the entries of a YAML/JSON ``path`` replacing (null: removing) defaults."""
    if stage not in PARAMS:
        raise ConfigError(f"stage must be vqvae or prior, got {stage!r}")
    raw: dict[str, Any] = dict(DEFAULT_SPACES[stage])
    source = "space"
    if path:
        source = f"space file {path}"
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read it ({exc.strerror or exc})") from None
        try:
            if str(path).endswith(".json"):
                override = json.loads(text)
            else:
                import yaml

                override = yaml.safe_load(text)
        except Exception as exc:  # yaml/json syntax errors: report the first line only
            raise ConfigError(f"{source}: not valid YAML/JSON ({one_line(exc)})") from None
        if override is None:
            override = {}
        if not isinstance(override, Mapping):
            raise ConfigError(f"{source}: expected a mapping of parameter name to choices or range")
        raw.update({str(k): v for k, v in override.items()})
    space = {name: spec for name, value in raw.items() if (spec := parse_spec(stage, name, value, source)) is not None}
    if not space:
        raise ConfigError(f"{source}: no parameter left to search")
    return space


def suggest_params(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Suggest every parameter of ``space`` (Optuna returns the same value when asked twice in one trial)."""
    return {name: spec.suggest(trial) for name, spec in space.items()}


def _args(command: str, values: Mapping[str, Any], **fixed) -> argparse.Namespace:
    # Start from the training command's own defaults so a trial and `--from_study` build identical configs.
    from brainvq.cli.params import build_parser

    args = build_parser(command, None).parse_args([])
    for k, v in {**fixed, **values}.items():
        setattr(args, k, v)
    return args


def vqvae_configs(
    trial: optuna.Trial,
    space: Space,
    *,
    image_size=(240, 256),
    epochs: int = 30,
    max_minutes: float = 0.0,
    seed: int = 0,
    device: str = "auto",
):
    """``(VQVAEConfig, TrainConfig)`` of a trial; ConfigError when the sampled combination is invalid."""
    from brainvq.cli.configs import vqvae_configs_from_args

    args = _args(
        "train-vqvae",
        suggest_params(trial, space),
        image_size=tuple(image_size),
        epochs=epochs,
        max_minutes=max_minutes,
        seed=seed,
        device=device,
    )
    return vqvae_configs_from_args(args)


def suggest_vqvae(trial: optuna.Trial, space: Space, *, image_size=(240, 256)):
    """The trial's ``VQVAEConfig`` (training-only parameters such as ``lr`` are suggested too, see vqvae_configs)."""
    return vqvae_configs(trial, space, image_size=image_size)[0]


def prior_configs(
    trial: optuna.Trial,
    space: Space,
    vqvae_config,
    *,
    epochs: int = 40,
    max_minutes: float = 0.0,
    seed: int = 0,
    device: str = "auto",
):
    """``(PixelCNNConfig, PriorTrainConfig)`` of a trial for the codes of ``vqvae_config``."""
    from brainvq.cli.configs import prior_configs_from_args

    args = _args(
        "train-prior", suggest_params(trial, space), epochs=epochs, max_minutes=max_minutes, seed=seed, device=device
    )
    return prior_configs_from_args(args, vqvae_config)


def suggest_prior(trial: optuna.Trial, space: Space, vqvae_config):
    """The trial's ``PixelCNNConfig`` (K and code grid taken from ``vqvae_config``)."""
    return prior_configs(trial, space, vqvae_config)[0]


def pruning_callback(trial: optuna.Trial, metric: str, enabled: bool = True) -> Callable[[int, dict], None]:
    """A fit_* callback that reports ``metric`` each epoch and raises TrialPruned when the pruner says so."""

    def report(epoch: int, metrics: dict) -> None:
        value = metrics.get(metric)
        if not enabled or value is None or not math.isfinite(value):
            return
        trial.report(float(value), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric}={value:.4f}")

    return report


@contextlib.contextmanager
def trial_run(trial: optuna.Trial, study_name: str, extra_tags: Mapping[str, str] | None = None):
    """A nested MLflow child run for one trial, tagged with its Optuna number and final state.

    Pruned trials end FINISHED (tag ``optuna.state=PRUNED``); errors end FAILED with the reason as a tag and as the
    trial's ``fail_reason`` user attribute, then propagate so Optuna records FAIL.
    """
    import mlflow

    from brainvq.tracking.runs import STAGE_TAG

    tags = {
        STAGE_TAG: TRIAL_STAGE,
        "optuna.study_name": study_name,
        "optuna.trial_number": str(trial.number),
        "optuna.state": "RUNNING",
        **(extra_tags or {}),
    }
    run = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags=tags)
    trial.set_user_attr("mlflow_run_id", run.info.run_id)
    try:
        yield run
    except optuna.TrialPruned as exc:
        mlflow.set_tags({"optuna.state": "PRUNED", "brainvq.pruned": one_line(exc)})
        mlflow.end_run("FINISHED")
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {one_line(exc)}"
        with contextlib.suppress(Exception):  # the storage itself may be what failed
            trial.set_user_attr("fail_reason", reason)
        with contextlib.suppress(Exception):
            mlflow.set_tags({"optuna.state": "FAIL", "optuna.fail_reason": reason, "brainvq.error": reason})
        mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    else:
        mlflow.set_tag("optuna.state", "COMPLETE")
        mlflow.end_run("FINISHED")


class Objective:
    """Callable objective for ``study.optimize``. Holds the data, loaded once per worker process."""

    def __init__(
        self,
        stage: str,
        objective: str,
        space: Space,
        study_name: str,
        *,
        epochs: int,
        max_minutes: float,
        seed: int,
        data=None,
        vqvae_config=None,
        device: str = "auto",
        image_size=(240, 256),
        prune: bool = True,
        before_trial: Callable[[], None] | None = None,
    ) -> None:
        self.stage, self.objective, self.space, self.study_name = stage, objective, space, study_name
        self.epochs, self.max_minutes, self.seed, self.device = epochs, max_minutes, seed, device
        self.data, self.vqvae_config, self.image_size = data, vqvae_config, tuple(image_size)
        # Optuna cannot prune multi-objective studies (trial.report raises there).
        self.prune = prune and objective != "pareto"
        self.before_trial = before_trial

    @property
    def directions(self) -> list[str]:
        if self.stage == "prior":
            return ["minimize"]
        return ["maximize", "minimize"] if self.objective == "pareto" else ["maximize"]

    def __call__(self, trial: optuna.Trial):
        if self.before_trial is not None:
            self.before_trial()  # e.g. release the cross-worker lock held while this trial was created
        import mlflow

        from brainvq.tracking.tracker import MlflowTracker
        from brainvq.values import param_str

        metric = OBJECTIVE_METRIC[self.stage]
        retried = retry_of(next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))
        tags = {"optuna.retry_of": str(retried)} if retried is not None else {}
        with trial_run(trial, self.study_name, tags) as run:
            t0 = time.monotonic()
            try:
                if self.stage == "vqvae":
                    model_cfg, train_cfg = vqvae_configs(
                        trial,
                        self.space,
                        image_size=self.image_size,
                        epochs=self.epochs,
                        max_minutes=self.max_minutes,
                        seed=self.seed,
                        device=self.device,
                    )
                else:
                    model_cfg, train_cfg = prior_configs(
                        trial,
                        self.space,
                        self.vqvae_config,
                        epochs=self.epochs,
                        max_minutes=self.max_minutes,
                        seed=self.seed,
                        device=self.device,
                    )
            finally:  # log what was sampled even when it is an invalid combination
                mlflow.log_params({k: param_str(v) for k, v in trial.params.items()})
            # No per-batch progress bars: a sweep's log is one line per trial (Optuna's), not N x epochs bars.
            train_cfg = dataclasses.replace(train_cfg, progress=False)
            tracker = MlflowTracker(run.info.run_id)
            callbacks = [pruning_callback(trial, metric, self.prune)]
            # No test split during tuning: model selection must not see the test set.
            if self.stage == "vqvae":
                from brainvq.engine.vqvae import fit_vqvae

                result = fit_vqvae(
                    model_cfg, train_cfg, self.data.train, self.data.val, None, tracker=tracker, callbacks=callbacks
                )
            else:
                from brainvq.engine.prior import fit_prior

                result = fit_prior(
                    model_cfg,
                    train_cfg,
                    self.data["train"],
                    self.data["val"],
                    None,
                    tracker=tracker,
                    callbacks=callbacks,
                )
            if not result.history or metric not in result.history[-1]:
                raise ConfigError(f"trial {trial.number} produced no {metric} (empty validation split?)")
            value = float(result.history[-1][metric])
            if not math.isfinite(value):
                raise TrainingDiverged(f"{metric} is {value}")
            final = {
                "objective/" + metric: value,
                "trial/seconds": time.monotonic() - t0,
                "trial/epochs": len(result.history),
            }
            trial.set_user_attr(metric, value)
            trial.set_user_attr("stopped_by_time_budget", bool(result.stopped_early))
            if self.stage == "vqvae":
                bits = float(model_cfg.bits_per_image)
                final[BITS_METRIC] = bits
                trial.set_user_attr(BITS_METRIC, bits)
            mlflow.log_metrics(final)
            if self.objective == "pareto":
                return value, final[BITS_METRIC]
            return value


def finished_states() -> tuple[TrialState, ...]:
    return TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL


def retry_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """Number of the trial this one retries (RetryHeartbeatStaleTrialCallback's system attr, read without its
    experimental-API warning)."""
    return trial.system_attrs.get("failed_trial")


def budget_used(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: finished or running ones, except FAILs that have been retried (their
    retry takes their place)."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return sum(
        1
        for t in trials
        if t.state in (*finished_states(), TrialState.RUNNING)
        and not (t.state == TrialState.FAIL and t.number in retried)
    )


def make_pruner(name: str, epochs: int, n_trials: int) -> optuna.pruners.BasePruner:
    """``median`` or ``hyperband`` (over epochs), or ``none``."""
    if name == "median":
        # Few startup trials and no warm-up so short sweeps (tests, smoke runs) can prune at all; long sweeps
        # still compare against at least a handful of finished trials.
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, n_trials // 3)), n_warmup_steps=epochs // 4)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, epochs), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner must be median, hyperband or none, got {name!r}")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def safe_url(url: str) -> str:
    """The storage URL without a password, for tags and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


class _StaleTrial:
    """Heartbeat-stale trial (its worker died): close its MLflow child run as FAILED, then retry it."""

    def __init__(self, max_retry: int) -> None:
        # Optuna 4.9 renamed RetryFailedTrialCallback (now a deprecated alias, removed in 6.0) to say what it retries
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            with contextlib.suppress(Exception):  # the run may be gone or on another tracking server
                import mlflow

                client = mlflow.tracking.MlflowClient()
                reason = "worker stopped sending heartbeats (killed or lost); the trial is retried"
                for k, v in {"optuna.state": "FAIL", "optuna.fail_reason": reason, "brainvq.error": reason}.items():
                    client.set_tag(run_id, k, v)
                client.set_terminated(run_id, "FAILED")
        log.warning("trial %d of study %s had no heartbeat: marked FAIL, retrying it", trial.number, study.study_name)
        self.retry(study, trial)


def make_storage(url: str, heartbeat_interval: int = 30, grace_period: int = 0, max_retry: int = 2):
    """RDBStorage with a heartbeat, so a worker killed mid-trial leaves a trial that the next worker marks FAIL and
    retries (RetryHeartbeatStaleTrialCallback). ``heartbeat_interval=0`` turns the heartbeat off."""
    if not url:
        raise ConfigError("storage must not be empty (default sqlite:///optuna.db)")
    if url.split(":", 1)[0].split("+")[0] not in {"sqlite", "postgresql", "mysql", "oracle", "mssql"}:
        raise ConfigError(
            f"storage must be an SQLAlchemy URL such as sqlite:///optuna.db or "
            f"postgresql://user@host/db, got {safe_url(url)!r}"
        )
    url = normalise_postgres_uri(url)
    kwargs: dict[str, Any] = {}
    if heartbeat_interval > 0:
        kwargs = dict(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period or 2 * heartbeat_interval,
            heartbeat_stale_trial_callback=_StaleTrial(max_retry),
        )
    last: Exception | None = None
    for attempt in range(3):  # several workers starting together can race on creating the tables
        try:
            with warnings.catch_warnings():  # heartbeat/retry are "experimental" since Optuna 2.8: not news to users
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:
            last = exc
            time.sleep(0.5 + attempt)
    raise ConfigError(f"cannot open Optuna storage {safe_url(url)}: {one_line(last)}")


class TrialSlot:
    """Cross-worker lock held from "is there budget left?" until the trial exists in the storage, so N workers finish
    exactly ``n_trials`` (PostgreSQL advisory lock; a no-op elsewhere, where one worker is expected)."""

    def __init__(self, storage, study_name: str) -> None:
        self.conn = None
        engine = getattr(storage, "engine", None)
        if engine is not None and engine.dialect.name == "postgresql":
            import zlib

            self.key = zlib.crc32(f"brainvq-tune:{study_name}".encode())
            self.conn = engine.connect()

    def _sql(self, fn: str) -> None:
        if self.conn is not None:
            from sqlalchemy import text

            self.conn.execute(text(f"SELECT {fn}(:k)"), {"k": self.key})
            self.conn.commit()

    def acquire(self) -> None:
        self._sql("pg_advisory_lock")
        self.held = True

    def release(self) -> None:
        if getattr(self, "held", False):
            self.held = False
            self._sql("pg_advisory_unlock")

    def close(self) -> None:
        self.release()
        if self.conn is not None:
            self.conn.close()


def optimize(
    study: optuna.Study, objective: Objective, n_trials: int, timeout_s: float = 0.0, slot: TrialSlot | None = None
) -> int:
    """Run trials until the study holds ``n_trials`` counted trials (all workers together) or ``timeout_s`` passes.

    One ``study.optimize(n_trials=1)`` per trial keeps the heartbeat (which needs optimize, not ask/tell) and lets the
    budget be re-checked across workers before every trial. Returns the number of trials this worker ran.
    """
    from optuna.storages import fail_stale_trials

    deadline = time.monotonic() + timeout_s if timeout_s > 0 else math.inf
    slot = slot or TrialSlot(None, "")
    objective.before_trial = slot.release
    ran = 0
    try:
        while time.monotonic() < deadline:
            slot.acquire()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(
                    study
                )  # a killed worker's stale trial: FAIL + retry, before counting (no-op without heartbeat)
            if budget_used(study) >= n_trials:
                break
            try:
                study.optimize(objective, n_trials=1, catch=TRIAL_ERRORS)
            finally:
                slot.release()
            ran += 1
    finally:
        slot.close()
    return ran


def load_data(args: argparse.Namespace, space: Space):
    """Data for every trial of this worker, loaded once: ``(splits, None)`` for the VQ-VAE, ``(codes, vqvae_config)``
    for the prior of ``args.vqvae_run_id``."""
    import mlflow

    if args.stage == "vqvae":
        from brainvq.data.splits import load_splits

        if not 0 < args.val_fraction < 1:
            raise ConfigError(f"bad parameter: val_fraction must be in (0, 1) for tuning, got {args.val_fraction}")
        splits = load_splits(args.data_dir, args.image_size, args.val_fraction, args.seed, args.max_train_images,
                             classes=args.classes)
        if not len(splits.val):
            raise ConfigError(f"no validation slices (val_fraction={args.val_fraction}): tuning needs val/ssim")
        return splits, None
    from brainvq.tracking.codes import prior_codes
    from brainvq.tracking.runs import load_stage_model

    vqvae, _, vq_run = load_stage_model(args.vqvae_run_id, "train_vqvae")
    vq_id = vq_run.info.run_id
    mlflow.set_tag("brainvq.vqvae_run_id", vq_id)
    codes = prior_codes(vq_id, vqvae.config.num_embeddings)
    if not len(codes["val"]):
        raise ConfigError(f"VQ-VAE run {vq_id} has no validation codes: tuning needs prior/val_nll_bits")
    return codes, vqvae.config


def open_study(storage, args: argparse.Namespace, directions: list[str]) -> optuna.Study:
    """Create or resume ``args.study_name`` (``load_if_exists``) with a TPE sampler and the chosen pruner."""
    import os

    parallel = not is_sqlite(args.storage)
    study = optuna.create_study(
        storage=storage,
        study_name=args.study_name,
        directions=directions,
        load_if_exists=True,
        pruner=make_pruner(args.pruner, args.epochs_per_trial, args.n_trials),
    )
    want = [
        optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
        for d in directions
    ]
    if list(study.directions) != want:
        have = ", ".join(d.name.lower() for d in study.directions)
        raise ConfigError(
            f"study {args.study_name!r} already exists with direction(s) {have}, not "
            f"{', '.join(directions)}: pick another study_name for stage={args.stage} objective={args.objective}"
        )
    trials = study.get_trials(deepcopy=False)
    if not parallel and any(t.state == TrialState.RUNNING for t in trials):
        log.warning(
            "study %s on SQLite has RUNNING trials: if another worker is running, stop it — Optuna's FAQ warns "
            "that SQLite fails with 'database is locked' under parallel workers; use PostgreSQL for many workers",
            args.study_name,
        )
    # A fresh sampler seed per resume (and per worker on a shared database), else every invocation would replay
    # the same random start-up points; one worker on SQLite stays reproducible.
    seed = args.seed + len(trials) + (os.getpid() if parallel else 0)
    # constant_liar: parallel TPE workers avoid sampling next to each other's running trials.
    study.sampler = optuna.samplers.TPESampler(
        seed=seed % 2**31, constant_liar=parallel, n_startup_trials=min(10, max(2, args.n_trials // 3))
    )
    return study
