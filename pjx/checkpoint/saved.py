"""A saved model, read on demand: a pjx run, a Hugging Face folder or Hub id, a PEFT adapter.

    saved = Saved("runs/sst2")             # a workdir, its checkpoints/ dir or a step dir
    saved = Saved("hf:bert-base-uncased")  # hf:DIR | hf:ORG/NAME[@REVISION] | peft:DIR
    saved.config                           # the run config, resolved (HF: built from it)
    saved.tokenizer                        # None when it keeps none
    model, params = saved.model, saved.params()                # LoRA adapters merged
    adapted, unmerged = saved.adapted, saved.params(merged=False)  # adapters kept

Each property is read on first use and kept. This is the one place that knows where a
saved run keeps its config, tokenizer and parameters, how a Hugging Face folder or a PEFT
adapter stands in for a run, and how LoRA adapters merge. `params(like=...)` reads into
the layout of any parameter tree (scanned or unscanned layers: pjx.init_from matches them
by their unscanned paths). pjx.evaluation, pjx.explain, pjx.inference and pjx.convert
read saved models through it.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from pjx import checkpoint, hf, init_from, lora, models, resolution, tokenizers
from pjx import config as config_lib
from pjx import data as data_lib
from pjx.data import sources

# Hugging Face architectures -> the pjx task their head serves.
HF_TASKS = {
    "ForSequenceClassification": "classify",
    "ForImageClassification": "classify",
    "LMHeadModel": "clm",
    "ForCausalLM": "clm",
    "ForConditionalGeneration": "seq2seq",
}
KINDS = ("hf", "peft")  # source prefixes; anything else is a pjx run
WHAT = (
    "pass a pjx workdir (or its checkpoints/ or checkpoints/STEP/ dir), hf:DIR or "
    "hf:ORG/NAME[@REVISION] for a Hugging Face model, or peft:DIR for a PEFT adapter"
)


class Saved:
    """One saved model. `overrides` (`key=value`, as `--config.key=value`) change its
    `config`; `model_overrides` (Config fields, e.g. `dtype="float32"`) how `model`
    computes, not its parameters."""

    def __init__(self, source, overrides=(), *, model_overrides=None):
        self.source = str(source)
        prefix = self.source.partition(":")[0]
        self.kind = prefix if prefix in KINDS and ":" in self.source else "pjx"
        self.overrides = tuple(overrides)
        self.model_overrides = dict(model_overrides or {})

    def __repr__(self) -> str:
        return f"Saved({self.source!r})"

    # ------------------------------------------------------------------- where
    @cached_property
    def path(self) -> Path:
        """What is read: a pjx run's checkpoint step dir (its newest complete one); the
        local folder of a Hugging Face model or adapter (a Hub id: its snapshot)."""
        if self.kind == "pjx":
            return _step_dir(self.source)
        return hf.folder.model_folder(self.source[len(self.kind) + 1 :])

    @cached_property
    def local(self) -> str:
        """The source as the readers below take it: the step dir, or `hf:` / `peft:` and
        the local folder."""
        return str(self.path) if self.kind == "pjx" else f"{self.kind}:{self.path}"

    # ------------------------------------------------------------------ config
    @cached_property
    def raw_config(self) -> dict:
        """The run config saved with the checkpoint, as saved ({} when it has none; a
        Hugging Face folder or adapter keeps none)."""
        return checkpoint.read_checkpoint_config(self.path) if self.kind == "pjx" else {}

    @cached_property
    def lora(self) -> dict:
        """The LoRA settings it was trained with, {} without LoRA: a pjx run's `lora`
        block, a PEFT adapter's own."""
        if self.kind == "peft":
            cfg = hf.peft.lora_config(self.path)
        else:
            cfg = dict(self.raw_config.get("lora") or {})
        return cfg if lora.enabled(cfg) else {}

    @cached_property
    def settings(self) -> ml_collections.ConfigDict:
        """The run config before resolution: the saved one (a Hugging Face model: one built
        from its config.json), with the overrides; no DP noise (reading adds none)."""
        if self.kind == "pjx":
            c = ml_collections.ConfigDict(self.raw_config)
        else:
            base = hf.peft_base(self.path) if self.kind == "peft" else self.path
            c = _hf_config(base, self.source)
        c = config_lib.apply_overrides(c, self.overrides)
        if "dp" in c:
            c.dp.noise_multiplier, c.dp.target_epsilon = 0.0, 0.0
        # A run's parameters come from the run itself; a Hugging Face config's from the folder.
        c.init_from = "" if self.kind == "pjx" else self.local
        return c

    @cached_property
    def config(self) -> ml_collections.ConfigDict:
        """The resolved config to rebuild the run's task and model with (pjx.resolution.resolve):
        the saved one, or for a Hugging Face model one built from it (its head's task)."""
        if self.kind == "pjx" and not self.raw_config:
            raise FileNotFoundError(f"{self.source}: its checkpoint holds no run config")
        if self.kind == "pjx" and "task" not in self.raw_config:
            raise ValueError(
                f"{self.source}: its checkpoint's config names no task (it holds a model "
                "written by pjx convert, not a pjx train run): read the Hugging Face folder it "
                "came from as hf:DIR, or fine-tune it with pjx train first"
            )
        return resolution.resolve(self.settings, self.tokenizer)

    # --------------------------------------------------------------- tokenizer
    @cached_property
    def tokenizer_dir(self) -> Path | None:
        """The tokenizer folder it keeps (a Hugging Face folder: itself; an adapter: its
        base model's), None when it has none."""
        if self.kind == "peft":
            return Path(hf.peft_base(self.path))
        return checkpoint.tokenizer_dir(self.local)

    @cached_property
    def tokenizer(self):
        folder = self.tokenizer_dir
        return tokenizers.load(str(folder)) if folder is not None else None

    # ------------------------------------------------------------------- model
    @cached_property
    def family(self) -> str:
        return self._model_spec[0]

    @cached_property
    def fields(self) -> dict:
        """The saved model's `Config` fields (heads included)."""
        return self._model_spec[1]

    @cached_property
    def _model_spec(self) -> tuple[str, dict]:
        return init_from.source_model(self.local)

    @cached_property
    def model(self):
        """The plain model: `model.apply({"params": saved.params()}, ...)`."""
        return models.create(self.family, "tiny", **{**self.fields, **self.model_overrides})

    @cached_property
    def adapted(self):
        """The model `params(merged=False)` runs in: `model` with the LoRA adapters of the
        run (`model` itself without LoRA)."""
        return lora.adapted(self.model, self.lora, self.family)

    def params(self, merged: bool = True, like=None):
        """The parameters as host (NumPy) arrays. `merged`: LoRA adapters folded into their
        kernels, for `model`; False keeps them, for `adapted`. `like`: a tree of arrays or
        ShapeDtypeStructs whose paths, dtypes and layer layout (scanned or not) to read into,
        e.g. a train Setup's `abstract_state.params`; by default `adapted`'s."""
        like = self._abstract if like is None else nn.meta.unbox(like)
        # Zero-stride zeros: a target that can be sliced like arrays (a scanned stack is
        # matched layer by layer) without allocating anything.
        target = jax.tree.map(lambda a: np.broadcast_to(np.zeros((), a.dtype), np.shape(a)), like)
        params, report = init_from.init_from(self.local, target, verbose=False)
        if report.new:
            missing = ", ".join(p for p, _ in report.new[:4])
            more = ", ..." if len(report.new) > 4 else ""
            raise ValueError(
                f"{self.source} lacks {len(report.new)} parameter(s) the model needs "
                f"({missing}{more}): does it hold the task's head? (A Hugging Face folder "
                f"needs one of *{', *'.join(HF_TASKS)} to be scored.)"
            )
        return self.merge(params) if merged else params

    def merge(self, params):
        """`adapted`'s params as `model`'s: each adapted kernel W + (alpha / r) A B and no
        adapters (a scanned stack's adapters carry its layer axis). Without LoRA, `params`."""
        if not self.lora:
            return params
        return jax.device_get(lora.merge(params, self.lora))

    @cached_property
    def _abstract(self):
        inputs = models.example_inputs(self.family, self.model.config, 1)
        init = lambda: self.adapted.init(jax.random.key(0), **inputs)["params"]  # noqa: E731
        return nn.meta.unbox(jax.eval_shape(init))

    # -------------------------------------------------------------------- data
    def examples(self, uri: str, *, need_labels: bool = False):
        """The examples of data source `uri`, read with the run's data settings (columns,
        preset, labels)."""
        c = self.settings
        given = c.data.to_dict() if "data" in c else {}
        num_labels = int((c.model.get("num_labels") if "model" in c else 0) or 0)
        data_cfg = data_lib.with_defaults({**given, "source": uri})
        return sources.read(uri, data_cfg, need_labels=need_labels, num_labels=num_labels)

    def label_names(self, uri: str | None = None) -> list[str]:
        """The class names: the run's `data.labels`, else those data source `uri` names (a
        TFDS ClassLabel, the built-in corpus), else "0", "1", ..."""
        C = int(self.config.model.get("num_labels") or 0)
        names = list(self.config.data.get("labels") or [])
        if len(names) != C and uri:
            names = list(self.examples(uri, need_labels=True).label_names or [])
        return names if len(names) == C else [str(i) for i in range(C)]


def _step_dir(source: str) -> Path:
    """The newest complete checkpoint of a pjx run, or an error that says what `source` is
    instead and what to pass."""
    path = Path(source).expanduser()
    if not path.exists():
        hub = f"; for a Hugging Face Hub model pass hf:{source}" if hf.hub.parse(source) else ""
        raise FileNotFoundError(
            f"{source} does not exist: no complete checkpoint to read ({WHAT}{hub})"
        )
    if path.is_file():
        raise ValueError(f"{source} is a file, not a saved run: {WHAT}")
    try:
        return checkpoint.resolve(path)
    except FileNotFoundError as e:
        if (path / "adapter_config.json").is_file():
            hint = f"it is a PEFT adapter folder: pass peft:{source}"
        elif (path / "config.json").is_file() and any(path.glob("*.safetensors*")):
            hint = f"it is a Hugging Face model folder: pass hf:{source}"
        else:
            hint = (
                "a run saves a checkpoint when it ends and every checkpoint_every steps; "
                f"one cut short is skipped. {WHAT[0].upper()}{WHAT[1:]}"
            )
        raise FileNotFoundError(f"{e}: {hint}") from None


def _hf_config(folder, source: str) -> ml_collections.ConfigDict:
    """A run config for the Hugging Face model in `folder`: its family, the task of its head
    (a sequence classifier, an LM head), its class names."""
    raw = hf.folder.read_config(folder)
    arch = " ".join(raw.get("architectures") or [])
    task = next((t for suffix, t in HF_TASKS.items() if suffix in arch), None)
    if task is None:
        raise ValueError(
            f"{source}: architectures {raw.get('architectures')} have no head pjx can score "
            f"(one of *{', *'.join(HF_TASKS)}); fine-tune it with pjx train first"
        )
    family, fields = hf.model_config(folder)
    c = config_lib.base_config()
    c.model.name, c.task = family, task
    if task == "classify":
        c.model.num_labels = int(fields.get("num_labels") or len(raw.get("id2label") or {}))
        labels = [raw["id2label"][k] for k in sorted(raw.get("id2label", {}), key=int)]
        if labels and not all(n.startswith("LABEL_") for n in labels):
            c.data.labels = labels
    return c
