"""`config.init_from`: start a run from another run's parameters.

Loads every parameter whose full path and shape match the new model, keeps the
new model's fresh initialisation for the rest, and reports loaded / new /
dropped. Only the `params` subtree of the source train state is read (`ema`, the moving
average, where the run kept one), so the optimizer (or its absence) in the source does not
matter.

Vocabulary resize policy (`allow_vocab_resize=True`): a an embedding table
(a path containing "embed", "wte", "shared" or "vocab") whose shape differs in
one axis fixes the (old, new) vocabulary size; it and every other parameter
that differs in exactly one axis by that same pair (output projection, output
bias) get the overlapping entries copied and keep their fresh init for the rest.
Any other shape difference is still an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import jax
import numpy as np
import orbax.checkpoint as ocp

from pjx import checkpoint as ckpt
from pjx import hf, models

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    source: str
    loaded: list = field(default_factory=list)  # (path, shape)
    resized: list = field(default_factory=list)  # (path, source shape, model shape)
    new: list = field(default_factory=list)  # (path, shape)
    dropped: list = field(default_factory=list)  # (path, shape) only in the source

    def table(self) -> str:
        rows = [("loaded", p, str(s)) for p, s in self.loaded]
        rows += [("resized", p, f"{a} -> {b}") for p, a, b in self.resized]
        rows += [("new", p, str(s)) for p, s in self.new]
        rows += [("dropped", p, str(s)) for p, s in self.dropped]
        w = max([len(r[1]) for r in rows] + [9])
        lines = [
            f"init_from {self.source}: {len(self.loaded)} loaded, {len(self.resized)} "
            f"resized, {len(self.new)} newly initialised, {len(self.dropped)} dropped",
            f"  {'status':<8} {'parameter':<{w}} shape",
        ]
        lines += [f"  {a:<8} {p:<{w}} {s}" for a, p, s in rows]
        return "\n".join(lines)

    __str__ = table


def _source_params(source, target_shapes=None) -> tuple[dict, callable, str]:
    """(path -> saved shape, loader(paths, targets) -> {path: array}, description)."""
    source = str(source)
    if source.startswith(("hf:", "peft:")):
        if source.startswith("peft:"):  # base model + adapter + heads, at the target's paths
            flat = {p: np.asarray(x) for p, x in hf.load_peft(source[5:], target_shapes).items()}
        else:
            flat = {
                ckpt.path_str(p): np.asarray(x)
                for p, x in jax.tree_util.tree_flatten_with_path(hf.load_params(source[3:]))[0]
            }
        return (
            {p: x.shape for p, x in flat.items()},
            # Onto the target's sharding, like the Orbax branch (None: stays on host).
            lambda wanted: {
                p: flat[p] if sh is None else jax.device_put(flat[p], sh)
                for p, sh in wanted.items()
            },
            source,
        )

    step = ckpt.resolve(source)
    meta = ckpt.state_metadata(step)
    if "params" not in meta:
        raise ValueError(f"checkpoint {step} has no 'params' in its state (found {sorted(meta)})")
    # A run that keeps a moving average of its parameters releases that (pjx.train.weights).
    released = "ema" if meta.get("ema") else "params"
    leaves = jax.tree_util.tree_flatten_with_path(meta[released])[0]
    keypaths = {ckpt.path_str(p): p for p, _ in leaves}
    # Paths as an unscanned model names them: a scanned run's stacked leaf [n, ...] is
    # n parameters `stack_i/...` here, read whole and sliced.
    origin, saved = {}, {}
    for path, m in ((ckpt.path_str(p), m) for p, m in leaves):
        stack = models.stack_of(path)
        if stack is None:
            origin[path], saved[path] = (path, None), tuple(m.shape)
            continue
        for i in range(m.shape[0]):
            unstacked = f"{stack}_{i}/{path[len(stack) + 1 :]}"
            origin[unstacked], saved[unstacked] = (path, i), tuple(m.shape[1:])

    def load(wanted: dict):  # unstacked path -> sharding (or None: host numpy)
        # Partial restore of just these leaves of params/ (ema/): the optimizer state
        # and the other params are never read.
        raw = {}
        for p, sharding in wanted.items():
            path, i = origin[p]
            raw[path] = sharding if i is None else None
        item, rargs = {}, {}
        for path, sharding in raw.items():
            node_i, node_r = item.setdefault(released, {}), rargs.setdefault(released, {})
            *parents, last = [ckpt.path_str([k]) for k in keypaths[path]]
            for k in parents:
                node_i, node_r = node_i.setdefault(k, {}), node_r.setdefault(k, {})
            node_i[last] = 0
            node_r[last] = (
                ocp.ArrayRestoreArgs(sharding=sharding)
                if sharding is not None
                else ocp.RestoreArgs(restore_type=np.ndarray)
            )
        out = ocp.PyTreeCheckpointer().restore(
            step / "state",
            args=ocp.args.PyTreeRestore(item=item, restore_args=rargs, partial_restore=True),
        )
        flat = {
            ckpt.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(out[released])[0]
        }
        return {
            p: flat[origin[p][0]] if origin[p][1] is None else flat[origin[p][0]][origin[p][1]]
            for p in wanted
        }

    return saved, load, str(step)


_EMBEDDING_NAMES = ("embed", "wte", "shared", "vocab")


def _is_embedding(path: str) -> bool:
    return any(n in path.lower() for n in _EMBEDDING_NAMES)


def _sharding(x):
    s = getattr(x, "sharding", None)
    return s if isinstance(s, jax.sharding.Sharding) else None


def _check_resizable(mismatched, allow_vocab_resize: bool, where: str) -> None:
    """Refuses shape mismatches unless they are one vocabulary change that
    `allow_vocab_resize` allows: an embedding table's (old, new) size, and every other
    mismatched parameter (output projection, bias) differing by the same pair in one axis."""
    diffs = [
        [(a, b) for a, b in zip(s, t) if a != b] if len(s) == len(t) else None
        for _, s, t in mismatched
    ]
    vocab = {
        d[0] for (p, _, _), d in zip(mismatched, diffs) if d and len(d) == 1 and _is_embedding(p)
    }
    resizable = (
        allow_vocab_resize
        and len(vocab) == 1
        and all(d is not None and len(d) == 1 and d[0] in vocab for d in diffs)
    )
    if resizable:
        return
    lines = "\n".join(f"  {p}: checkpoint {s} vs model {t}" for p, s, t in mismatched)
    hint = (
        "set allow_vocab_resize to copy the overlapping vocabulary rows"
        if not allow_vocab_resize
        else "allow_vocab_resize only covers a vocabulary change: an embedding table and "
        "parameters that differ from it in one axis by the same (old, new) size"
    )
    raise ValueError(
        f"init_from {where}: parameter shapes differ between the checkpoint and the model:\n"
        f"{lines}\nFix the model config to match, or {hint}."
    )


def _overlap_copied(src: np.ndarray, fresh):
    """`fresh` (a new init of another size in one axis) with the rows both share from `src`."""
    axis = next(i for i, (a, b) in enumerate(zip(src.shape, fresh.shape)) if a != b)
    n = min(src.shape[axis], fresh.shape[axis])
    host = np.array(fresh)  # fresh init for the new rows
    idx = tuple(slice(0, n) if i == axis else slice(None) for i in range(src.ndim))
    host[idx] = src[idx]
    return host


def init_from(source, target_params, *, allow_vocab_resize: bool = False, verbose: bool = True):
    """(params, InitReport): `target_params` (freshly initialised, concrete) with every
    parameter whose path and shape match `source` replaced by the source's values.

    `source`: a workdir (its latest checkpoint), a checkpoints dir, a step dir,
    or `hf:PATH` (via `pjx.hf.load_params`).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(target_params)
    raw = {ckpt.path_str(p): x for p, x in leaves}
    # Matching is by the unscanned layout, so scanned and unscanned runs initialise each
    # other (a scanned target is unstacked here and stacked again below).
    scanned = any(models.stack_of(p) for p in raw)
    target = models.unstack_layers(raw) if scanned else raw
    saved, load, where = _source_params(source, {p: tuple(x.shape) for p, x in target.items()})
    report = InitReport(source=where)
    exact, resize, mismatched = {}, {}, []
    for p, x in target.items():
        if p not in saved:
            report.new.append((p, tuple(x.shape)))
        elif saved[p] == tuple(x.shape):
            exact[p] = None if scanned else _sharding(x)
            report.loaded.append((p, tuple(x.shape)))
        else:
            mismatched.append((p, saved[p], tuple(x.shape)))
    report.dropped = [(p, s) for p, s in saved.items() if p not in target]

    if mismatched:
        _check_resizable(mismatched, allow_vocab_resize, where)
        resize = {p: None for p, _, _ in mismatched}
        report.resized = mismatched

    values = load({**exact, **resize}) if (exact or resize) else {}
    new = {}
    for p, x in target.items():
        if p in exact:
            new[p] = values[p]
        elif p in resize:
            new[p] = _overlap_copied(np.asarray(values[p]), x)
        else:
            new[p] = x
    if scanned:
        new = models.stack_layers(new, join=lambda xs: np.stack([np.asarray(v) for v in xs]))
    out = []
    for p, x in raw.items():
        v = new[p].astype(x.dtype) if new[p].dtype != x.dtype else new[p]
        sharding = _sharding(x)
        if sharding is not None and getattr(v, "sharding", None) != sharding:
            v = jax.device_put(v, sharding)
        out.append(v)
    params = jax.tree_util.tree_unflatten(treedef, out)
    if verbose:
        log.info(report.table())
    return params, report


# Fields that belong to the task, not the pretrained body: the fine-tuning run decides them.
# `generator_size`: ELECTRA's generator (pjx.models.electra) is dropped, its discriminator
# is the BERT encoder a later run starts from; `distill_width`: a distilled student's
# projection to its teacher's width, which only the distillation loss reads.
HEAD_FIELDS = (
    "mlm_head",
    "nsp_head",
    "num_labels",
    "projection_dim",
    "generator_size",
    "distill_width",
)
RUNTIME_FIELDS = (
    "dtype",
    "attention_impl",
    "remat",
    "scan_layers",
    "sow_internals",
)  # how to compute, never what was trained


def source_model(source) -> tuple[str, dict]:
    """(family, Config fields) of the model saved at `source` (pjx checkpoint or hf:PATH)."""
    source = str(source)
    if source.startswith("hf:"):
        return hf.model_config(source[3:])
    if source.startswith("peft:"):
        return hf.model_config(hf.peft_base(source[5:]))
    saved = ckpt.read_checkpoint_config(source).get("model") or {}
    if "name" not in saved:
        raise ValueError(
            f"init_from {source}: the checkpoint holds no model config; set config.model.* to "
            "the architecture it was trained with."
        )
    fields = {k: v for k, v in saved.items() if k not in ("name", "size")}
    if saved.get("size"):
        fields = {**models.MODELS[saved["name"]].PRESETS.get(saved["size"], {}), **fields}
    return saved["name"], fields


# Pretraining tasks that never train BERT's pooler (dense + tanh over [CLS], trained by
# next-sentence prediction, Devlin et al. 2019): masked LM without NSP (RoBERTa's recipe, Liu
# et al. 2019, drops NSP and with it the pooler's only signal), ELECTRA's replaced-token
# detection (per token, Clark et al. 2020) and distillation (per-token losses).
POOLER_UNTRAINED = {"electra": "ELECTRA (per-token replaced-token detection)",
                    "distill": "distillation (per-token losses)"}  # fmt: skip


def default_pooling(source, fields: dict) -> tuple[str, str]:
    """(pooling, why) for a classifier fine-tuned from `source` whose config sets no
    `model.pooling`: ('mean', a line saying why) when the source is a pjx run whose pooler
    never trained (its saved config: task mlm with task_args.nsp false, electra or distill)
    and `fields` (the resolved model fields) are a BERT-variant classifier; ('', '')
    otherwise (a Hugging Face folder keeps its pooler: BERT's was trained by NSP)."""
    source = str(source)
    if source.startswith(("hf:", "peft:")) or not int(fields.get("num_labels") or 0):
        return "", ""
    if fields.get("variant", "bert") != "bert" or fields.get("pooling") == "mean":
        return "", ""
    saved = ckpt.read_checkpoint_config(source)
    task, args = saved.get("task"), saved.get("task_args") or {}
    if task == "mlm" and not args.get("nsp"):
        what = "masked LM without next-sentence prediction (task_args.nsp false)"
    elif task in POOLER_UNTRAINED:
        what = POOLER_UNTRAINED[task]
    else:
        return "", ""
    return "mean", (
        f"model.pooling='mean': init_from {source} trained {what}, so its pooler over [CLS] "
        "never trained; the classifier reads the mean token state (--config.model.pooling=cls "
        "reads the pooler)"
    )


__all__ = ["HEAD_FIELDS", "RUNTIME_FIELDS", "InitReport", "init_from", "source_model"]
__all__ += ["default_pooling"]
