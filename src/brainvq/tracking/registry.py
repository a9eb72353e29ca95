"""Model registry: finished runs become versions of ``brainvq-vqvae``, ``brainvq-prior`` and ``brainvq-sampler``, and
the ``champion`` alias moves only when a new version beats the current champion **on validation figures**. The
test split never chooses: test figures are copied into version tags for the report, and never compared.

=================  ===================================================  ==========================================
registered model   a version is                                         ranked on (the first that decides)
=================  ===================================================  ==========================================
brainvq-vqvae      the ``train_vqvae`` run's logged PyTorch ``model``   ``val/ssim``, higher wins
brainvq-prior      the ``train_prior`` run's logged ``model``           ``prior/val_nll_bits``, lower wins
brainvq-sampler    the ``export_onnx`` run's pyfunc model ``sampler``:  ``val/c2st_accuracy`` (the realism test on
                   the onnxruntime sampler with the run's ``onnx/``      the validation split under the default
                   files (decoder, prior and the fast sampler's graphs,  evaluation protocol), lower wins when the
                   one pair) as its artifacts                            95% intervals do not overlap; else its
                                                                         prior's ``prior/val_nll_bits``, lower wins
=================  ===================================================  ==========================================

The sampler is registered as one pyfunc model that holds the whole set, not one ``mlflow.onnx`` model, because
sampling needs the decoder and the prior *of the same export* (they carry one pair ID).
``mlflow.pyfunc.load_model("models:/brainvq-sampler@champion")`` and ``mlflow models serve`` sample with it (see
``export/pyfunc_sampler.py``), and ``brainvq sample-onnx --model_dir models:/brainvq-sampler@champion`` downloads the
version's source run's ``onnx/`` folder, the same files. An export logged before the pyfunc model existed is
registered as that ``onnx/`` folder. Its realism score is read from the FINISHED
``evaluate_samples`` run of the sampler's prior under the default protocol (:data:`DEFAULT_PROTOCOL`: sample count,
seed, temperature and classifier recipe, recorded as the run's ``brainvq.eval_protocol`` tag); the evaluation is
deterministic, and the first such run is used, so rerunning it until a seed is lucky changes nothing. Two versions
are compared on it only when both were scored under the same protocol.

Every version carries its ranking metrics and source run IDs as tags. A run is registered only when it is FINISHED,
at most once per registered model (registering it again reuses its version), and all runs of a pipeline are checked
before the first version is created.

Registering is all or nothing, in three phases: (1) create (or reuse) every version, (2) decide every promotion
against the champions as they are before any alias moves, (3) move the ``champion`` aliases. When any step fails (a
locked or unreachable store), everything this call wrote is rolled back: moved aliases go back to their previous
version (or are deleted when there was none), refreshed tags get their old values, versions created now are deleted
and so are registered models created now once empty; a reused version is never deleted. The error is one line that
names the failed step; if the roll-back fails too, the line lists what is left to fix by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from brainvq.errors import BrainVQError, RegistryError, RunError, one_line
from brainvq.tracking.runs import PRIOR_STAGE

log = logging.getLogger(__name__)
CHAMPION = "champion"
ONNX_FILES = ("decoder.onnx", "prior.onnx", "prior_row.onnx", "prior_step.onnx")
SAMPLER_MODEL = "sampler"  # the name of the export_onnx run's pyfunc model (runs:/<export run>/sampler)


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: its name, the stage its versions come from and how two versions are ranked."""

    name: str
    stage: str
    criteria: tuple[tuple[str, str], ...]  # (metric tag, "max" or "min"); the first that both versions carry decides
    reported: tuple[str, ...]  # run metrics copied into version tags


SPECS = {
    "vqvae": ModelSpec("brainvq-vqvae", "train_vqvae", (("val/ssim", "max"),),
                       ("val/ssim", "val/ssim_brain", "test/ssim", "test/ssim_brain", "test/psnr", "test/psnr_brain")),
    "prior": ModelSpec("brainvq-prior", PRIOR_STAGE, (("prior/val_nll_bits", "min"),),
                       ("prior/val_nll_bits", "prior/test_nll_bits", "prior/position_unigram_bits",
                        "prior/unigram_bits", "prior/uniform_bits")),
    "sampler": ModelSpec("brainvq-sampler", "export_onnx",
                         (("val/c2st_accuracy", "min"), ("prior/val_nll_bits", "min")),
                         ("val/c2st_accuracy", "val/c2st_accuracy_ci_low", "val/c2st_accuracy_ci_high",
                          "prior/val_nll_bits", "prior/test_nll_bits", "gen/c2st_accuracy",
                          "gen/c2st_accuracy_ci_low", "gen/c2st_accuracy_ci_high", "gen/c2st_recon_ceiling")),
}
PROTOCOL_TAG = "brainvq.eval_protocol"


def default_protocol() -> str:
    """Digest of the default evaluation protocol: the only one whose validation score ranks samplers."""
    from brainvq.quality.evaluate import EvalProtocol

    return EvalProtocol().digest()


@dataclass
class Plan:
    """Everything needed to create one version, gathered (and checked) before anything is written."""

    spec: ModelSpec
    run_id: str
    source: str
    model_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Registration:
    """The outcome for one registered model."""

    name: str
    version: str
    run_id: str
    champion: str
    promoted: bool
    reason: str

    def line(self) -> str:
        return f"{self.name} version {self.version} (run {self.run_id}): {self.reason}"


def _client():
    from brainvq.tracking.runs import _client as checked_client

    return checked_client()


def _metric_tags(metrics: dict[str, float], keys) -> dict[str, str]:
    return {k: repr(float(metrics[k])) for k in keys if k in metrics}


def _ready_model(run, name: str):
    """The run's READY logged model called ``name`` (MLflow 3 logs models as entities linked to it), or None."""
    import mlflow

    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{name}'")
    return next((m for m in models if m.status.name == "READY"), None)


def plan_run(kind: str, run_id: str) -> Plan:
    """Check that ``run_id`` (or ``latest``) is a FINISHED run of the kind's stage with what a version needs."""
    from brainvq.tracking.runs import find_stage_runs, prior_run_id_tag, resolve_run

    spec = SPECS[kind]
    run = resolve_run(run_id, spec.stage)  # RunError unless FINISHED and of the right stage
    rid = run.info.run_id
    tags = {"brainvq.source_run_id": rid, "brainvq.stage": spec.stage}
    if kind == "sampler":
        client = _client()
        names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(rid, "onnx")}
        missing = [f for f in ONNX_FILES if f not in names]
        if missing:
            raise RunError(f"export_onnx run {rid} lacks onnx/{', onnx/'.join(missing)}; export again")
        # tags, not params: under `mlflow run -P prior_run_id=latest` the param says "latest", the tag the run ID
        px_id = prior_run_id_tag(run.data.tags)
        if not px_id:  # resolve_run("") would mean the newest prior, not this export's
            raise RunError(f"export_onnx run {rid} does not record its prior (tag brainvq.prior_run_id)")
        metrics = dict(resolve_run(px_id, PRIOR_STAGE).data.metrics)
        protocol = default_protocol()
        evaluated = [r for r in find_stage_runs("evaluate_samples", tags={"brainvq.prior_run_id": px_id,
                                                                          PROTOCOL_TAG: protocol})
                     if "val/c2st_accuracy" in r.data.metrics]
        if evaluated:  # the first one: the protocol is deterministic, a rerun can only repeat it
            first = evaluated[-1]
            metrics.update({k: v for k, v in first.data.metrics.items() if k.startswith(("val/c2st", "gen/c2st"))})
            tags.update({PROTOCOL_TAG: protocol, "brainvq.eval_run_id": first.info.run_id})
        tags.update({"brainvq.vqvae_run_id": run.data.tags.get("brainvq.vqvae_run_id", ""),
                     "brainvq.prior_run_id": px_id, "brainvq.pair_id": run.data.tags.get("brainvq.pair_id", "")})
        # the pyfunc model (loadable and servable); an export from before it existed: its onnx/ folder
        model = _ready_model(run, SAMPLER_MODEL)
        plan = (Plan(spec, rid, source=model.model_uri, model_id=model.model_id) if model
                else Plan(spec, rid, source=f"runs:/{rid}/onnx"))
    else:
        metrics = dict(run.data.metrics)
        if kind == "prior":
            tags["brainvq.vqvae_run_id"] = run.data.tags.get("brainvq.vqvae_run_id", "")
        model = _ready_model(run, "model")
        if model is None:
            raise RunError(f"{spec.stage} run {rid} has no READY logged model 'model' to register")
        plan = Plan(spec, rid, source=model.model_uri, model_id=model.model_id)
    if not any(metric in metrics for metric, _ in spec.criteria):
        wanted = " or ".join(m for m, _ in spec.criteria)
        raise RunError(f"{spec.stage} run {rid} has no {wanted} metric to rank it by")
    plan.tags = {**tags, **_metric_tags(metrics, spec.reported)}
    return plan


def _cause(exc: BaseException) -> str:
    """One line for a failed store call: a database error without the SQL statement and parameters SQLAlchemy
    appends (``(sqlite3.OperationalError) database is locked``)."""
    return one_line(one_line(exc, limit=None).split(" [SQL: ", 1)[0])


def _run_versions(client, name: str, run_id: str) -> list:
    return list(client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"))


class _Registrar:
    """One all-or-nothing registration: every write is remembered so that :meth:`roll_back` can take it back.

    ``step`` names the write under way (for the error line). Only what this call created or changed is undone: a
    reused version (a rerun) stays, and so does a registered model that existed before.
    """

    def __init__(self, client):
        self.client = client
        self.step = "starting"
        self.models: list[str] = []  # registered models created by this call
        self.versions: list[tuple[str, str]] = []  # (name, version) created by this call
        self.pending: tuple[str, str, set[str]] | None = None  # a creation that raised: (name, run, versions before)
        self.tags: list[tuple[str, str, str, str | None]] = []  # (name, version, key, value before or None)
        self.aliases: list[tuple[str, str | None]] = []  # (name, champion before or None), recorded before the move

    # phase 1 -------------------------------------------------------------------------------------------------------
    def version(self, plan: Plan):
        """Reuse the run's READY version (refreshing its tags: metrics such as C2ST arrive later) or create one."""
        client, name = self.client, plan.spec.name
        self.step = f"looking up {name} versions of run {plan.run_id}"
        before = _run_versions(client, name, plan.run_id)
        ready = [v for v in before if v.status == "READY"]
        if ready:  # a rerun of a cached pipeline: the same version
            mv = min(ready, key=lambda v: int(v.version))
            self.step = f"refreshing the tags of {name} version {mv.version}"
            for key, value in plan.tags.items():
                if mv.tags.get(key) != value:
                    self.tags.append((name, str(mv.version), key, mv.tags.get(key)))
                    client.set_model_version_tag(name, mv.version, key, value)
            return mv
        self.step = f"creating registered model {name}"
        self._create_model(plan)
        self.step = f"creating the {name} version of run {plan.run_id}"
        self.pending = (name, plan.run_id, {str(v.version) for v in before})
        mv = client.create_model_version(name, plan.source, run_id=plan.run_id, tags=plan.tags,
                                         model_id=plan.model_id)
        self.pending = None
        self.versions.append((name, str(mv.version)))  # stores differ: some return versions as int
        if mv.status != "READY":
            raise RegistryError(f"version {mv.version} ended {mv.status} ({mv.status_message or 'no message'})")
        return mv

    def _create_model(self, plan: Plan) -> None:
        from mlflow.exceptions import MlflowException

        # create-or-accept rather than get-then-create: two pipelines may register the first version at once
        try:
            self.client.create_registered_model(
                plan.spec.name, description=f"brainvq {plan.spec.stage} models (see brainvq.tracking.registry)")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return
        self.models.append(plan.spec.name)

    # phase 2 -------------------------------------------------------------------------------------------------------
    def decide(self, plan: Plan, mv) -> tuple[Registration, str | None]:
        """Does the version beat the current champion? Reads only; returns the outcome and the champion before."""
        client, name, version = self.client, plan.spec.name, str(mv.version)
        self.step = f"reading the {CHAMPION} of {name}"
        current = client.get_registered_model(name).aliases.get(CHAMPION)
        current = None if current is None else str(current)
        if current == version:
            return Registration(name, version, plan.run_id, version, False, f"already {CHAMPION}"), current
        if current is None:
            return Registration(name, version, plan.run_id, version, True, f"first version: now {CHAMPION}"), None
        self.step = f"ranking {name} version {version} against {CHAMPION} version {current}"
        champion = client.get_model_version(name, current)
        # plan.tags: what the new version carries; the champion's figures are re-read from its runs by today's rules
        better, why = compare(plan.tags, _champion_figures(plan.spec, champion), plan.spec.criteria)
        if better:
            return Registration(name, version, plan.run_id, version, True, f"now {CHAMPION} ({why})"), current
        reason = f"{CHAMPION} stays version {current} ({why})"
        return Registration(name, version, plan.run_id, current, False, reason), current

    # phase 3 -------------------------------------------------------------------------------------------------------
    def move(self, reg: Registration, previous: str | None) -> None:
        self.step = f"moving {reg.name}@{CHAMPION} to version {reg.version}"
        self.aliases.append((reg.name, previous))  # before the call: a failed move may still have landed
        self.client.set_registered_model_alias(reg.name, CHAMPION, reg.version)

    # roll-back -----------------------------------------------------------------------------------------------------
    def roll_back(self) -> tuple[list[str], str]:
        """Undo every write of this call, newest first, each on its own: aliases back to where they were, refreshed
        tags back, created versions deleted, created registered models deleted when empty. Returns what is left
        (as what to do by hand) and the first roll-back error."""
        left: list[str] = []
        errors: list[str] = []

        def attempt(undo, todo: str) -> bool:
            try:
                undo()
                return True
            except Exception as exc:  # the store itself may be what failed: go on, and say what is left
                log.debug("roll-back step failed: %s", todo, exc_info=True)
                errors.append(_cause(exc))
                left.append(todo)
                return False

        client = self.client
        for name, previous in reversed(self.aliases):
            if previous is None:
                attempt(lambda n=name: client.delete_registered_model_alias(n, CHAMPION), f"delete {name}@{CHAMPION}")
            else:
                attempt(lambda n=name, p=previous: client.set_registered_model_alias(n, CHAMPION, p),
                        f"set {name}@{CHAMPION} back to version {previous}")
        for name, version, key, value in reversed(self.tags):
            if value is None:
                attempt(lambda n=name, v=version, k=key: client.delete_model_version_tag(n, v, k),
                        f"delete tag {key} of {name} version {version}")
            else:
                attempt(lambda n=name, v=version, k=key, x=value: client.set_model_version_tag(n, v, k, x),
                        f"set tag {key} of {name} version {version} back to {value}")
        if self.pending is not None:  # the creation raised: it may still have made a version (a lost reply)
            name, run_id, before = self.pending

            def delete_new(n=name, r=run_id, b=before):
                for v in _run_versions(client, n, r):
                    if str(v.version) not in b:
                        self.versions.append((n, str(v.version)))

            attempt(delete_new, f"delete any {name} version of run {run_id} made now")
        for name, version in reversed(self.versions):
            attempt(lambda n=name, v=version: client.delete_model_version(n, v), f"delete {name} version {version}")
        for name in reversed(self.models):
            mine = {v for n, v in self.versions if n == name}

            def drop_if_ours(n=name, mine=mine):
                remaining = {str(v.version) for v in client.search_model_versions(f"name = '{n}'")}
                if remaining <= mine:  # empty, or only our versions whose deletion failed (deleting the model
                    client.delete_registered_model(n)  # removes them too); another registrant's versions stay
                    left[:] = [t for t in left if not any(t == f"delete {n} version {v}" for v in remaining)]

            attempt(drop_if_ours, f"delete registered model {name}")
        return left, (errors[0] if errors else "")


def _register(plans: list[Plan], subject: str) -> list[Registration]:
    """All or nothing: create (or reuse) every version, then decide every promotion against the champions as they
    were, then move the aliases. Any failure rolls back everything this call wrote and raises one
    :class:`RegistryError` line that says where it failed and what, if anything, is left to fix by hand."""
    client = _client()
    txn = _Registrar(client)
    try:
        versions = [txn.version(plan) for plan in plans]  # phase 1
        decisions = [txn.decide(plan, mv) for plan, mv in zip(plans, versions, strict=True)]  # phase 2
        for reg, previous in decisions:  # phase 3
            if reg.promoted:
                txn.move(reg, previous)
        return [reg for reg, _ in decisions]
    except KeyboardInterrupt:
        left, _ = txn.roll_back()
        if left:
            log.warning("interrupted while registering; fix by hand: %s", ", ".join(left))
        raise
    except Exception as exc:  # MlflowException, a dropped connection, a version that did not end READY
        log.debug("%s failed at %s", subject, txn.step, exc_info=True)
        message = f"{subject} failed at {txn.step} ({_cause(exc)})"
        left, cause = txn.roll_back()
        if left:
            message += f"; the roll-back failed too ({cause}), fix by hand: {', '.join(left)}"
        else:
            message += f"; rolled back: nothing was registered and {CHAMPION} aliases are unchanged"
        raise RegistryError(message) from None


def _interval(tags: dict[str, str], metric: str) -> tuple[float, float] | None:
    low, high = tags.get(f"{metric}_ci_low"), tags.get(f"{metric}_ci_high")
    return None if low is None or high is None else (float(low), float(high))


def compare(new: dict[str, str], champion: dict[str, str], criteria) -> tuple[bool | None, str]:
    """Does ``new`` beat ``champion`` (version tags)? ``(None, why)`` when no ranking metric decides.

    A metric decides only when both versions carry it (and, for realism scores, the same evaluation protocol).
    A metric with a 95% interval on both sides decides only when the intervals do not overlap: an overlap is a
    tie, and the next metric is asked.
    """
    notes = []
    for metric, direction in criteria:
        if metric not in new or metric not in champion:
            continue
        if metric.startswith("val/c2st") and new.get(PROTOCOL_TAG) != champion.get(PROTOCOL_TAG):
            notes.append(f"{metric} was measured under different protocols")
            continue
        a, b = float(new[metric]), float(champion[metric])
        ia, ib = _interval(new, metric), _interval(champion, metric)
        if ia is not None and ib is not None and ia[0] <= ib[1] and ib[0] <= ia[1]:
            notes.append(
                f"{metric} {a:.4g} [{ia[0]:.3g}, {ia[1]:.3g}] ties champion's {b:.4g} "
                f"[{ib[0]:.3g}, {ib[1]:.3g}] (intervals overlap)"
            )
            continue
        better = a > b if direction == "max" else a < b
        return better, "; ".join(notes + [f"{metric} {a:.4g} vs champion's {b:.4g}"])
    if notes:
        return None, "; ".join(notes) + "; nothing else decides"
    return None, f"no ranking metric ({', '.join(m for m, _ in criteria)}) on both versions"


def _champion_figures(spec: ModelSpec, champion) -> dict[str, str]:
    """The champion's ranking figures, re-read from its source runs as a new version's would be. A champion
    registered by an older brainvq (whose tags name test figures, or no validation realism score) is then ranked on
    validation figures too; its own tags are the fallback when its runs are gone."""
    kind = next(k for k, v in SPECS.items() if v is spec)
    try:
        return {**champion.tags, **plan_run(kind, champion.run_id).tags}
    except BrainVQError:
        return dict(champion.tags)


def register_planned(plan: Plan) -> Registration:
    """Create (or reuse) the version of a checked plan and move ``champion`` if it wins; all or nothing."""
    return _register([plan], f"registering run {plan.run_id} as {plan.spec.name}")[0]


def register_run(kind: str, run_id: str) -> Registration:
    """Register one FINISHED run (``kind``: vqvae, prior or sampler) and move ``champion`` if it wins."""
    return register_planned(plan_run(kind, run_id))


def register_pipeline(
    vqvae_run_id: str | None = None, prior_run_id: str | None = None, export_run_id: str | None = None
) -> list[Registration]:
    """Register a pipeline's runs; every run (and that they belong together) is checked before the first version is
    created."""
    plans = {
        kind: plan_run(kind, rid)
        for kind, rid in (("vqvae", vqvae_run_id), ("prior", prior_run_id), ("sampler", export_run_id))
        if rid
    }
    vq, px, ex = (plans.get(k) for k in ("vqvae", "prior", "sampler"))
    links = [
        (px, "brainvq.vqvae_run_id", vq, "prior run {} was trained on VQ-VAE run {}, not {}"),
        (ex, "brainvq.prior_run_id", px, "export run {} exported prior run {}, not {}"),
        (ex, "brainvq.vqvae_run_id", vq, "export run {} exported VQ-VAE run {}, not {}"),
    ]
    for later, tag, earlier, message in links:
        if later and earlier and later.tags.get(tag) != earlier.run_id:
            raise RunError(
                message.format(later.run_id, later.tags.get(tag) or "?", earlier.run_id)
                + "; register the runs of one pipeline together"
            )
    return _register(list(plans.values()), "registering the pipeline")
