"""Sweep summary for the parent MLflow run: best trial, Pareto front and Optuna's plotly plots as HTML artifacts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
from optuna.trial import TrialState

from brainvq.errors import one_line

log = logging.getLogger(__name__)


def _trial_record(t: optuna.trial.FrozenTrial) -> dict:
    return {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"), "fail_reason": t.user_attrs.get("fail_reason")}


def best_trial(study: optuna.Study, objective: str) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial; for ``pareto`` the front's trial with the highest val/ssim (the first value)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if objective == "pareto":
        return max(study.best_trials, key=lambda t: t.values[0])
    return study.best_trial


def write_self_contained_html(fig, path: Path) -> Path:
    """Write a plotly figure as one HTML file that carries plotly.js inline (about 4.8 MB).

    Why inline: the MLflow UI shows an HTML artifact by fetching its text and loading it into a sandboxed iframe
    from a ``blob:`` URL (``ShowArtifactHtmlView``). A ``blob:`` URL cannot serve as a base for relative URLs, so a
    ``<script src="plotly.min.js">`` beside the file (plotly's ``include_plotlyjs="directory"``) never loads there:
    ``Plotly`` stays undefined and the artifact pane stays blank. A CDN script (``"cdn"``, what ``mlflow.log_figure``
    writes) needs the internet, which a cluster's MLflow server often lacks. Inline plotly.js draws everywhere,
    offline too, and each file still opens on its own after a download.
    """
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def save_plots(study: optuna.Study, out_dir: Path, objective: str, metric: str) -> tuple[list[Path], list[str]]:
    """Write the plots Optuna can make; returns (files, notes on the ones it could not)."""
    import optuna.visualization as vis

    target = (lambda t: t.values[0]) if objective == "pareto" else None
    kw = {"target": target, "target_name": metric} if target else {"target_name": metric}
    params = {n for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) for n in t.params}
    plots = {
        "optimization_history": lambda: vis.plot_optimization_history(study, **kw),
        # fANOVA for pareto: Optuna 5's default (PED-ANOVA) ranks params for *low* targets, wrong for max val/ssim.
        "param_importances": lambda: vis.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0) if target else None, **kw),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
    }
    if {"latent_dim", "num_embeddings"} <= params:
        plots["contour_latent_dim_num_embeddings"] = lambda: vis.plot_contour(
            study, params=["latent_dim", "num_embeddings"], **kw)
    if objective == "pareto":
        plots["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=[metric, "code_bits_per_image"])
    files, notes = [], []
    n_complete = sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE)
    for name, make in plots.items():
        if name == "param_importances" and n_complete < 2:
            notes.append(f"{name}: skipped, needs >= 2 complete trials (have {n_complete})")
            continue
        if name == "intermediate_values" and objective == "pareto":
            continue  # multi-objective trials report no intermediate values
        try:
            fig = make()
        except Exception as exc:  # Optuna refuses some plots for small/degenerate studies
            notes.append(f"{name}: skipped ({one_line(exc)})")
            continue
        path = out_dir / f"{name}.html"
        write_self_contained_html(fig, path)
        files.append(path)
    return files, notes


def log_summary(study: optuna.Study, objective: str, metric: str, out_dir: str | Path) -> dict[str, str]:
    """Log the sweep's best trial (params, metrics, ``best_trial_run_id`` tag, ``best_params.json``), the Pareto front
    and the plots to the active (parent) MLflow run. Returns the tags it set."""
    import mlflow

    from brainvq.values import param_str

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
    mlflow.log_metrics({f"study/{k.lower()}_trials": v for k, v in counts.items()})
    (out / "trials.json").write_text(json.dumps([_trial_record(t) for t in trials], indent=2, default=str))
    tags: dict[str, str] = {}
    best = best_trial(study, objective)
    if best is None:
        tags["brainvq.best_note"] = "no trial completed; see trials.json for the fail reasons"
    else:
        mlflow.log_params({f"best.{k}": param_str(v) for k, v in best.params.items()})
        metrics = {f"best/{metric}": best.values[0]}
        if objective == "pareto":
            metrics["best/code_bits_per_image"] = best.values[1]
        mlflow.log_metrics(metrics)
        tags.update(
            {"best_trial_number": str(best.number), "best_trial_run_id": str(best.user_attrs.get("mlflow_run_id", ""))}
        )
        (out / "best_params.json").write_text(
            json.dumps(
                {
                    "study_name": study.study_name,
                    "trial": best.number,
                    "values": best.values,
                    "params": best.params,
                    "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
                },
                indent=2,
            )
        )
    if objective == "pareto" and best is not None:
        front = sorted(study.best_trials, key=lambda t: t.values[1])
        (out / "pareto_front.json").write_text(
            json.dumps(
                [
                    {
                        "number": t.number,
                        metric: t.values[0],
                        "code_bits_per_image": t.values[1],
                        "params": t.params,
                        "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                    }
                    for t in front
                ],
                indent=2,
            )
        )
    files, notes = save_plots(study, out, objective, metric)
    if notes:
        (out / "plot_notes.txt").write_text("\n".join(notes) + "\n")
        for n in notes:
            log.info("plot %s", n)
    mlflow.log_artifacts(str(out))
    mlflow.set_tags(tags)
    return tags


def pruning_note(study: optuna.Study, objective: str, pruner: str) -> str | None:
    """Why no trial was pruned, when none was (None when some were)."""
    if objective == "pareto":
        return "objective=pareto: Optuna cannot prune multi-objective studies, so every trial ran all its epochs"
    if pruner == "none":
        return "pruner=none: pruning was switched off"
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.PRUNED for t in trials):
        return None
    done = sum(1 for t in trials if t.state == TrialState.COMPLETE)
    return (
        f"no trial pruned: pruner={pruner} found no trial behind the median of earlier ones at the same epoch "
        f"({done} complete trials; the median pruner waits for its startup trials)"
    )
