"""Orbax checkpoints: async save, exact resume, incomplete-save recovery; `Checkpointer`,
what a run saves and restores through.

A checkpoint is one Orbax step directory `<dir>/<step>/` with four items (five under DP-SGD:
privacy/, the ledger up to that step):

  state/      the whole train state pytree (params, opt_state, step, rng), sharded
  data/       the data iterator state, one JSON file per process
  config/     the resolved run config (JSON)
  tokenizer/  a copy of the tokenizer folder (self-contained for eval/generation)

Their Orbax handlers are in pjx.checkpoint.items. All items are written inside Orbax's
`<step>.orbax-checkpoint-tmp` directory and appear together on the atomic rename that
commits the step, so `keep` rotation and a `kill -9` never leave a step with only some of
them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm

from pjx.checkpoint import items as item_io

# Orbax 0.12 writes this file into a step dir as the last act of a commit (on
# local disks as well as GCS); a step without it is not trusted.
COMMIT_MARKER = "commit_success.txt"
log = logging.getLogger(__name__)


# ----------------------------------------------------------------- manager
def create_manager(
    directory,
    *,
    checkpoint_every: int = 1000,
    keep: int = 3,
    best_metric: str | None = None,
    best_mode: str = "min",
    async_save: bool = True,
) -> ocp.CheckpointManager:
    """An Orbax manager saving every `checkpoint_every` steps, keeping the last
    `keep` and (with `best_metric`) also the best one by that eval metric.

    Reports (and has Orbax delete) half-written `*.orbax-checkpoint-tmp` dirs.
    """
    if best_mode not in ("min", "max"):
        raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    directory = Path(directory).absolute()
    report_incomplete(directory)
    policies: list = [ocm.LatestN(n=keep)]
    if best_metric is not None:
        policies.append(
            ocm.BestN(
                get_metric_fn=lambda m: m[best_metric],
                reverse=best_mode == "min",  # BestN keeps the *last* n after sorting
                n=1,
                keep_checkpoints_without_metrics=False,
            )
        )
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=ocm.AnySavePolicy(
            [ocm.FixedIntervalPolicy(checkpoint_every), ocm.PreemptionCheckpointingPolicy()]
        ),
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        # Never silently skip a due save because the previous one is still writing.
        enable_should_save_is_saving_in_progress_check=False,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(
        directory, options=options, item_names=("state", "data", "config", "tokenizer", "privacy")
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    *,
    data_state: Any | Callable[[], Any] = None,
    config=None,
    tokenizer_dir=None,
    metrics: Mapping[str, Any] | None = None,
    privacy: dict | None = None,
    force: bool = False,
) -> bool:
    """Starts an (async) save if `step` is due (or `force`); returns whether it did.

    `data_state` may be a callable (`iterator.get_state`), called only when saving.
    `metrics` (eval metrics, for `best_metric`) are stored as floats. `privacy`: a DP
    run's ledger up to `step` (pjx.privacy.Plan.record), read back by `read_step_item`.
    """
    if not force and not manager.should_save(step):
        return False
    if force and manager.latest_step() == step:
        return False  # already saved (e.g. a preemption on a checkpoint_every step)
    if callable(data_state):
        data_state = data_state()
    items = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
        items["data"] = item_io.DataSave(json.dumps(item_io.encode(data_state)))
    if config is not None:
        items["config"] = ocp.args.JsonSave(item_io.config_dict(config))
    if tokenizer_dir is not None:
        items["tokenizer"] = item_io.FolderSave(str(tokenizer_dir))
    if privacy is not None:
        items["privacy"] = ocp.args.JsonSave(privacy)
    if metrics is not None:
        metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
    return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def step_dir(manager: ocp.CheckpointManager, step: int) -> Path:
    return Path(manager.directory) / str(step)


def is_complete(path) -> bool:
    path = Path(path)
    return (
        path.is_dir()
        and not path.name.endswith(ocp.step.TMP_DIR_SUFFIX)
        and ocp.step.TMP_DIR_SUFFIX not in path.name
        and (path / COMMIT_MARKER).exists()
        and (path / "state").is_dir()
    )


def _step_dirs(directory: Path) -> dict[int, Path]:
    if not directory.is_dir():
        return {}
    return {int(p.name): p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()}


def complete_step_dirs(directory) -> dict[int, Path]:
    """step -> step dir of every complete checkpoint directly under `directory`."""
    return {s: p for s, p in _step_dirs(Path(directory)).items() if is_complete(p)}


def incomplete_checkpoints(directory) -> list[Path]:
    """Step dirs that a crash left behind: Orbax tmp dirs and dirs without a commit marker."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    tmp = [p for p in directory.iterdir() if ocp.step.TMP_DIR_SUFFIX in p.name]
    uncommitted = [p for p in _step_dirs(directory).values() if not is_complete(p)]
    return sorted(tmp + uncommitted)


def report_incomplete(directory) -> list[Path]:
    bad = incomplete_checkpoints(directory)
    if bad:
        names = ", ".join(p.name for p in bad)
        log.warning(
            f"checkpoint: skipping incomplete (interrupted) checkpoints in {directory}: {names}"
        )
    return bad


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest COMPLETE step (Orbax alone would also list uncommitted step dirs)."""
    steps = complete_steps(manager)
    return max(steps) if steps else None


# ----------------------------------------------------------------- restore
class Restored(NamedTuple):
    state: Any
    data_state: Any
    config: dict | None
    step: int


def path_str(keypath) -> str:
    """'a/b/c' for a pytree key path (the names init_from and error messages use)."""
    return jax.tree_util.keystr(tuple(keypath), simple=True, separator="/")


def _shape(x) -> tuple:
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        x = jax.eval_shape(jax.random.key_data, x)  # Orbax stores typed keys as key data
    return tuple(x.shape)


def flat_shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_str(p): _shape(x) for p, x in leaves}


class CheckpointMismatch(ValueError):
    """A checkpoint's tree does not fit the model / optimizer (the config changed)."""


class NoIntactCheckpoint(RuntimeError):
    """Every checkpoint of a run failed to restore."""


def _check_shapes(saved: dict[str, tuple], wanted: dict[str, tuple], where: str):
    bad = [
        f"  {p}: checkpoint {saved[p]} vs model {s}"
        for p, s in wanted.items()
        if p in saved and saved[p] != s
    ]
    missing = [f"  {p}: not in checkpoint" for p in wanted if p not in saved]
    extra = [f"  {p}: only in checkpoint" for p in saved if p not in wanted]
    if bad or missing or extra:
        lines = (bad + missing + extra)[:20]
        raise CheckpointMismatch(
            f"checkpoint {where} does not match the current model/optimizer "
            f"(did the config change between runs?):\n" + "\n".join(lines) + "\n"
            "Use a new --workdir, or start from it with config.init_from (loads "
            "matching parameters only). Existing checkpoints were left untouched."
        )


def state_metadata(path) -> dict:
    """The saved train-state tree of a step dir, as Orbax array metadata (no data read)."""
    meta = ocp.PyTreeCheckpointHandler().metadata(Path(path) / "state")
    return getattr(meta, "tree", meta)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None) -> Restored:
    """Restores `step` (default: latest complete) directly onto the shardings of
    `abstract_state` (a pytree of `jax.ShapeDtypeStruct(..., sharding=...)`)."""
    if step is None:
        step = latest_step(manager)
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {manager.directory}")
    path = step_dir(manager, step)
    if not is_complete(path):
        raise FileNotFoundError(f"checkpoint {path} is incomplete or missing")
    if abstract_state is not None:
        _check_shapes(flat_shapes(state_metadata(path)), flat_shapes(abstract_state), str(path))
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if (path / "data").is_dir():
        items["data"] = item_io.DataRestore()
    if (path / "config").is_dir():
        items["config"] = ocp.args.JsonRestore()
    out = manager.restore(step, args=ocp.args.Composite(**items))
    return Restored(out["state"], out.get("data"), out.get("config"), step)


def maybe_restore(manager: ocp.CheckpointManager, abstract_state):
    """(state, data_state, step) from the newest complete checkpoint that restores, or
    (None, None, 0) when there is none.

    A checkpoint whose files are damaged after its commit (a disk that filled up, a copy
    cut short) is skipped with a warning naming it, and moved aside to `STEP.damaged` (kept:
    nothing is deleted) so the run can save that step again; the one before it is tried. A
    tree that does not fit the model (`CheckpointMismatch`: the config changed) is an error,
    not damage. Every process takes the same decision."""
    damaged = []
    for step in sorted(complete_steps(manager), reverse=True):
        why = "another process could not read its part"
        try:
            with item_io.quiet_failed_reads():
                r = restore(manager, abstract_state, step)
            ok = True
        except CheckpointMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure of the step's files
            ok, why = False, item_io.failure_reason(e)
        if jax.process_count() > 1:  # one process's damaged shard stops all of them
            ok = bool(np.min(multihost_utils.process_allgather(np.int32(ok))))
        if ok:
            if damaged:
                log.warning(f"checkpoint: resumed from step {step}, the newest intact one")
            log.info(f"checkpoint: resumed from {step_dir(manager, step)} (step {step})")
            return r.state, r.data_state, step
        damaged.append(step)
        log.warning(
            f"checkpoint: step {step} ({step_dir(manager, step)}) is damaged and cannot be "
            f"restored ({why}); "
            f"moved aside to {step}.damaged, trying the previous checkpoint"
        )
        _set_aside(manager, step)
    if damaged:
        raise NoIntactCheckpoint(
            f"no intact checkpoint in {manager.directory}: steps {damaged} are damaged (moved "
            "aside as STEP.damaged, nothing deleted). Start over with a new --workdir, or "
            "restore the files of one of them."
        )
    return None, None, 0


# What `restore_newest` finds in a folder without checkpoints: a fresh start.
NOTHING_RESTORED = Restored(None, None, None, 0)


def restore_newest(directory, target: Callable[[], Any]) -> Restored:
    """`maybe_restore` from `directory` before a run is assembled (its saving policy is not
    known yet) onto `target()`, the abstract state (called only when there is a folder to
    restore from): the newest intact checkpoint's state and data position (config: None),
    or `NOTHING_RESTORED` when the folder holds none. A missing folder is not created."""
    directory = Path(directory).absolute()
    exists = directory.is_dir()
    if jax.process_count() > 1:  # one decision for all: a manager's creation syncs them
        exists = bool(np.max(multihost_utils.process_allgather(np.int32(exists))))
    if not exists:
        return NOTHING_RESTORED
    manager = create_manager(directory, async_save=False)
    try:
        state, data_state, step = maybe_restore(manager, target())
    finally:
        manager.close()
    return Restored(state, data_state, None, step)


def complete_steps(manager: ocp.CheckpointManager) -> list[int]:
    manager.wait_until_finished()
    return [s for s in manager.all_steps() if is_complete(step_dir(manager, s))]


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    """Renames a damaged step dir to STEP.damaged (process 0; the others wait for it)."""
    path = step_dir(manager, step)
    if jax.process_index() == 0 and path.exists():
        target = path.with_name(f"{step}.damaged")
        n = 1
        while target.exists():
            target, n = path.with_name(f"{step}.damaged{n}"), n + 1
        path.rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"pjx checkpoint set aside {step}")
    manager.reload()


class Checkpointer:
    """What a run saves through (it restores with `restore_newest`): the train state, the
    data iterator's position, the resolved `config` (which `init_from` rebuilds the exact
    architecture from), the tokenizer folder and, under DP-SGD, `privacy_record(step)` (the
    ledger a checkpoint at `step` keeps). Saves every `every` steps; keeps the last `keep`
    and the best by eval metric `best_metric` (None: none)."""

    def __init__(
        self,
        directory: str,
        *,
        config,
        every: int,
        keep: int,
        best_metric: str | None = None,
        best_mode: str = "max",
        tokenizer_dir=None,
        privacy_record: Callable[[int], dict] | None = None,
    ):
        self.directory, self.config, self.tokenizer_dir = directory, config, tokenizer_dir
        self.best_metric, self.privacy_record = best_metric, privacy_record
        self.manager = create_manager(
            directory, checkpoint_every=every, keep=keep, best_metric=best_metric,
            best_mode=best_mode,
        )  # fmt: skip

    def due(self, step) -> bool:
        return self.manager.should_save(step)

    def save(self, step, state, data_iter, *, force=False, metrics=None):
        best = self.best_metric
        if best and metrics is not None and best not in metrics:
            raise ValueError(f"best_metric={best!r} is not an eval metric: {sorted(metrics)}")
        save(
            self.manager,
            step,
            state,
            data_state=getattr(data_iter, "get_state", None),
            config=self.config,
            tokenizer_dir=self.tokenizer_dir,
            metrics={best: metrics[best]} if best and metrics is not None else None,
            privacy=self.privacy_record(step) if self.privacy_record else None,
            force=force,
        )

    def close(self):
        """Waits for the last (async) save."""
        self.manager.wait_until_finished()
        self.manager.close()


# ----------------------------------------------------------------- sources
def resolve(source) -> Path:
    """A complete step dir (absolute: Orbax needs it) from a workdir, a checkpoints dir,
    or a step dir."""
    path = Path(source).absolute()
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / "state").is_dir():
        if not is_complete(path):
            raise FileNotFoundError(f"checkpoint {path} is incomplete (no {COMMIT_MARKER})")
        return path
    report_incomplete(path)
    steps = complete_step_dirs(path)
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint found under {source}")
    return steps[max(steps)]


def read_checkpoint_config(source) -> dict:
    """The run config saved with a checkpoint (a HF folder: its config.json)."""
    if str(source).startswith("hf:"):
        return json.loads((Path(str(source)[3:]) / "config.json").read_text())
    path = resolve(source) / "config"
    if not path.is_dir():
        return {}
    return dict(ocp.handlers.JsonCheckpointHandler().restore(path))


def read_step_item(step_dir, name: str) -> dict | None:
    """JSON item `name` of one checkpoint step dir (None when it has none)."""
    path = Path(step_dir) / name
    if not path.is_dir():
        return None
    return dict(ocp.handlers.JsonCheckpointHandler().restore(path))


def tokenizer_dir(source) -> Path | None:
    """The tokenizer folder saved with a checkpoint (a HF folder: the folder)."""
    if str(source).startswith("hf:"):
        return Path(str(source)[3:])
    path = resolve(source) / "tokenizer"
    return path if path.is_dir() else None
