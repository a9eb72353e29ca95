"""Registration is all or nothing (issue 13), on a real SQLite store made to fail at each step.

Faults are SQLite triggers on MLflow's own registry tables (``model_versions``, ``registered_model_aliases``,
``registered_models``, ``model_version_tags``): one write of one registered model raises ``injected fault`` until
the trigger is dropped, everything else goes through. After each fault, ``brainvq register`` must exit 2 with one
error line, and the registry must hold exactly the versions, tags and ``champion`` aliases it held before; once the
trigger is dropped, the same command registers everything.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from brainvq.errors import RegistryError
from brainvq.tracking.registry import CHAMPION, SPECS, register_run
from conftest import write_tiny_adni
from tiny_chain import Lineage, tiny_store, train_lineage

pytestmark = pytest.mark.slow

NAMES = [SPECS[k].name for k in ("vqvae", "prior", "sampler")]
ROLLED_BACK = f"; rolled back: nothing was registered and {CHAMPION} aliases are unchanged"
FAULT = "SELECT RAISE(ABORT, 'injected fault')"


@dataclass
class Store:
    root: Path
    a: Lineage  # registered in the "champions" snapshot
    b: Lineage  # the lineage a test registers; in the "champions" snapshot it is better on every ranking metric
    snapshots: dict[str, Path]


def _args(lin: Lineage) -> list[str]:
    return ["register", "--vqvae_run_id", lin.vqvae, "--prior_run_id", lin.prior, "--export_run_id", lin.export]


def _log(client: MlflowClient, run_id: str, key: str, value: float) -> None:
    client.log_metric(run_id, key, value, step=10**6)  # a later step: the run's latest value from now on


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Two tiny lineages trained once; snapshots of the store: "fresh" (nothing registered) and "champions"
    (lineage A registered, lineage B then made better so that each of its versions would take the alias)."""
    from brainvq.cli import main as cli

    root = tmp_path_factory.mktemp("atomic")
    data = write_tiny_adni(root / "adni")
    with tiny_store(root) as uri:
        a, b = (train_lineage(data, seed=s) for s in (0, 1))
        db = Path(uri.removeprefix("sqlite:///"))
        assert not list(root.glob("mlflow.db-*")), "the store keeps a journal; copying the file would lose it"
        snapshots = {"fresh": root / "fresh.db", "champions": root / "champions.db"}
        for path in snapshots.values():
            shutil.copyfile(db, path)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{snapshots['champions']}")
            assert cli(_args(a)) == 0
            c = MlflowClient()
            ssim = [c.get_run(lin.vqvae).data.metrics["val/ssim"] for lin in (a, b)]
            nll = [c.get_run(lin.prior).data.metrics["prior/val_nll_bits"] for lin in (a, b)]
            _log(c, b.vqvae, "val/ssim", max(ssim) + 0.01)  # higher wins
            _log(c, b.prior, "prior/val_nll_bits", min(nll) - 0.01)  # lower wins, for the prior and the sampler
    return Store(root, a, b, snapshots)


@pytest.fixture(autouse=True)
def mlflow_logs_as_in_the_cli():
    """MLflow's loggers at WARNING, as in a `brainvq` process (brainvq.logs sets MLFLOW_LOGGING_LEVEL before MLflow
    is imported; here MLflow was imported first): its INFO note on each retry of a version creation is not printed."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def case_store(store, tmp_path):
    """This test's own copy of a snapshot, at the store that `isolated_env` points MLflow to. Artifacts stay where
    training wrote them: the runs' artifact locations are absolute paths under the module's root."""

    def use(snapshot: str) -> Path:
        db = tmp_path / "mlflow.db"
        shutil.copyfile(store.snapshots[snapshot], db)
        return db

    return use


def _sql(db: Path, script: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.executescript(script)


def _trigger(name: str, when: str, table: str, condition: str) -> str:
    return f"CREATE TRIGGER {name} BEFORE {when} ON {table} WHEN {condition} BEGIN {FAULT}; END;"


def _drop_faults(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as con:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    _sql(db, "".join(f"DROP TRIGGER {n};" for n in names if n.startswith("fault_")))


def _state(client: MlflowClient) -> dict:
    """Every registered model's versions (with their tags) and aliases."""
    return {
        m.name: (
            sorted((int(v.version), v.run_id, v.status, tuple(sorted(v.tags.items())))
                   for v in client.search_model_versions(f"name = '{m.name}'")),
            {alias: str(version) for alias, version in m.aliases.items()},
        )
        for m in client.search_registered_models()
    }


def _top(state: dict, name: str) -> int:
    """The highest version of ``name`` before the test: an alias moving above it is a move this test made."""
    versions = state.get(name, ([], {}))[0]
    return max((v[0] for v in versions), default=0)


def _fail_register(capfd, lin: Lineage) -> str:
    from brainvq.cli import main as cli

    capfd.readouterr()
    rc = cli(_args(lin))
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert rc == 2 and out == "" and len(lines) == 1, (rc, out, err)
    assert lines[0].startswith("brainvq register: error: registering the pipeline failed at "), lines[0]
    assert "[SQL:" not in lines[0], lines[0]  # the database's cause, not the statement
    return lines[0]


def _retry_registers_everything(capfd, db: Path, client: MlflowClient, lin: Lineage, before: dict) -> None:
    from brainvq.cli import main as cli

    _drop_faults(db)
    capfd.readouterr()
    assert cli(_args(lin)) == 0
    out, _ = capfd.readouterr()
    assert len(out.splitlines()) == 3, out
    after = _state(client)
    for name, run_id in zip(NAMES, (lin.vqvae, lin.prior, lin.export), strict=True):
        assert len(after[name][0]) == len(before.get(name, ([], {}))[0]) + 1, name  # one new version each
        assert client.get_model_version_by_alias(name, CHAMPION).run_id == run_id, name


STEPS = [(kind, k) for kind in ("version", "alias") for k in range(3)]


@pytest.mark.parametrize("scenario", ["fresh", "champions"])
@pytest.mark.parametrize(("kind", "k"), STEPS, ids=[f"{kind}{k + 1}" for kind, k in STEPS])
def test_a_fault_at_any_step_leaves_the_registry_as_it_was(store, case_store, capfd, scenario, kind, k):
    db = case_store(scenario)
    client = MlflowClient()
    before = _state(client)
    assert set(before) == (set() if scenario == "fresh" else set(NAMES))
    name, lin = NAMES[k], store.b
    if kind == "version":
        _sql(db, _trigger("fault_v", "INSERT", "model_versions", f"NEW.name = '{name}'"))
        step = f"creating the {name} version of run {(lin.vqvae, lin.prior, lin.export)[k]} ("
    else:  # a move to a version made now fails; moving back to an older one does not
        moved = f"NEW.name = '{name}' AND NEW.version > {_top(before, name)}"
        _sql(db, _trigger("fault_ai", "INSERT", "registered_model_aliases", moved)
             + _trigger("fault_au", "UPDATE", "registered_model_aliases", moved))
        step = f"moving {name}@{CHAMPION} to version {_top(before, name) + 1} ("
    line = _fail_register(capfd, lin)
    # MLflow retries a version creation three times and then says so, without the cause; an alias move says it
    assert f"failed at {step}" in line and line.endswith(ROLLED_BACK), line
    assert ("injected fault" in line) is (kind == "alias"), line
    assert _state(client) == before
    _retry_registers_everything(capfd, db, client, lin, before)


@pytest.mark.parametrize(("table", "step"), [
    ("registered_models", "creating registered model brainvq-prior ("),
    ("model_version_tags", "creating the brainvq-sampler version of run "),  # the version's tags: one write
], ids=["registered_models", "model_version_tags"])
def test_a_fault_creating_a_registered_model_or_tags_rolls_back_too(store, case_store, capfd, table, step):
    db = case_store("fresh")
    client = MlflowClient()
    name = "brainvq-prior" if table == "registered_models" else "brainvq-sampler"
    _sql(db, _trigger("fault_t", "INSERT", table, f"NEW.name = '{name}'"))
    line = _fail_register(capfd, store.b)
    assert f"failed at {step}" in line and line.endswith(ROLLED_BACK), line
    assert _state(client) == {}  # the registered models created on the way are gone too
    _retry_registers_everything(capfd, db, client, store.b, {})


def test_a_rerun_keeps_its_reused_versions_and_their_tags(store, case_store, capfd):
    """Registering lineage A again reuses its versions and refreshes their tags (later metrics): a failure while
    refreshing puts the tags back and deletes no reused version."""
    db = case_store("champions")
    client = MlflowClient()
    a = store.a
    _log(client, a.vqvae, "val/ssim_brain", 0.123)  # copied into the vqvae version's tags
    _log(client, a.prior, "prior/test_nll_bits", 9.87)  # into the prior's and the sampler's
    before = _state(client)
    changed = "NEW.name = 'brainvq-sampler'"
    _sql(db, _trigger("fault_ti", "INSERT", "model_version_tags", changed)
         + _trigger("fault_tu", "UPDATE", "model_version_tags", changed))
    line = _fail_register(capfd, a)
    assert "failed at refreshing the tags of brainvq-sampler version 1 (" in line and line.endswith(ROLLED_BACK)
    assert _state(client) == before  # vqvae and prior tags back to their old values, every version kept
    _drop_faults(db)
    from brainvq.cli import main as cli

    assert cli(_args(a)) == 0
    assert client.get_model_version("brainvq-vqvae", "1").tags["val/ssim_brain"] == repr(0.123)
    assert client.get_model_version("brainvq-sampler", "1").tags["prior/test_nll_bits"] == repr(9.87)
    assert [len(v) for v, _ in _state(client).values()] == [1, 1, 1]


def test_a_roll_back_that_fails_too_names_what_is_left(store, case_store, capfd):
    db = case_store("champions")
    client = MlflowClient()
    before = _state(client)
    # the prior's version cannot be created, and the VQ-VAE version made before it cannot be deleted (an UPDATE)
    _sql(db, _trigger("fault_v", "INSERT", "model_versions", "NEW.name = 'brainvq-prior'")
         + _trigger("fault_d", "UPDATE", "model_versions", "NEW.name = 'brainvq-vqvae' AND NEW.version = 2"))
    line = _fail_register(capfd, store.b)
    assert line.endswith("; the roll-back failed too ((sqlite3.IntegrityError) injected fault), fix by hand: "
                         "delete brainvq-vqvae version 2"), line
    after = _state(client)
    assert {n: s[1] for n, s in after.items()} == {n: s[1] for n, s in before.items()}  # no alias moved
    assert [v[:2] for v in after["brainvq-vqvae"][0]] == [(1, store.a.vqvae), (2, store.b.vqvae)]
    _drop_faults(db)
    # the retry reuses the left-over version instead of making a third
    from brainvq.cli import main as cli

    assert cli(_args(store.b)) == 0
    assert str(client.get_model_version_by_alias("brainvq-vqvae", CHAMPION).version) == "2"
    assert len(_state(client)["brainvq-vqvae"][0]) == 2


def test_an_alias_that_cannot_be_moved_back_is_named(store, case_store, capfd):
    db = case_store("champions")
    client = MlflowClient()
    # the sampler's alias cannot move, and the prior's cannot move back to version 1
    aliases = "registered_model_aliases"
    _sql(db, _trigger("fault_s", "UPDATE", aliases, "NEW.name = 'brainvq-sampler' AND NEW.version > 1")
         + _trigger("fault_p", "UPDATE", aliases, "NEW.name = 'brainvq-prior' AND NEW.version = 1"))
    line = _fail_register(capfd, store.b)
    assert "failed at moving brainvq-sampler@champion to version 2 (" in line, line
    assert line.endswith(f"fix by hand: set brainvq-prior@{CHAMPION} back to version 1"), line
    aliases = {n: s[1] for n, s in _state(client).items()}
    # its version 2 was deleted, and the alias with it: the line says where it belongs
    assert aliases == {"brainvq-vqvae": {CHAMPION: "1"}, "brainvq-prior": {}, "brainvq-sampler": {CHAMPION: "1"}}


def test_registering_one_run_is_all_or_nothing_too(store, case_store):
    db = case_store("champions")
    client = MlflowClient()
    before = _state(client)
    _sql(db, _trigger("fault_a", "UPDATE", "registered_model_aliases",
                      "NEW.name = 'brainvq-prior' AND NEW.version > 1"))
    with pytest.raises(RegistryError) as err:
        register_run("prior", store.b.prior)
    line = str(err.value)
    assert line.startswith(f"registering run {store.b.prior} as brainvq-prior failed at moving "
                           f"brainvq-prior@{CHAMPION} to version 2 (") and line.endswith(ROLLED_BACK), line
    assert "injected fault" in line and "\n" not in line
    assert _state(client) == before
    _drop_faults(db)
    reg = register_run("prior", store.b.prior)
    assert reg.promoted and client.get_model_version_by_alias("brainvq-prior", CHAMPION).run_id == store.b.prior
