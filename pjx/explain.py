"""Token attributions of a trained BERT classifier by integrated gradients.

    results = pjx.explain.explain("runs/sst2", ["a gripping, funny film"])
    pjx.explain.save(results, "why.html")        # or why.png

Integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep
Networks"): for the target class's logit f and a baseline input x',
attribution_i = (x_i - x'_i) . integral_0^1 df/dx_i(x' + a (x - x')) da, taken on the
input embeddings and summed over D. By completeness the attributions add up to
f(x) - f(x'); the gap left by the Riemann sum is reported. The baseline is the all-[PAD]
input (the pad id's word embedding at every position), with the input's positions, token
types and attention mask kept.
"""

from __future__ import annotations

import functools
import html
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pjx import data as data_lib
from pjx import tasks
from pjx.checkpoint.saved import Saved
from pjx.examples import DataError, Examples
from pjx.models import bert
from pjx.tokenizers.base import SPECIAL_NAMES

log = logging.getLogger(__name__)

# Gradients of at most this many interpolation points are taken at once (bounds memory).
CHUNK = 16
# A PNG shows at most this many texts (a figure has a pixel limit); HTML shows them all.
PNG_TEXTS = 20


def integrated_gradients(
    model, params, input_ids, attention_mask, token_type_ids, *, target, steps=64, pad_id=0
):
    """(attributions [L], f(input) - f(baseline)) for one example ([L] int arrays), f the
    pre-softmax logit of class `target`, by the trapezoid rule over `steps` points."""
    if int(steps) < 2:
        raise ValueError(f"steps={steps}: integrated gradients needs at least 2 points")
    if np.ndim(input_ids) != 1:
        raise ValueError(f"input_ids has shape {np.shape(input_ids)}; pass one example [L]")
    # Completeness holds only up to the gradients' accuracy: full float32 matmuls (not
    # TF32 / bfloat16 passes), whatever the process default.
    with jax.default_matmul_precision("highest"):
        return _integrated_gradients(
            params,
            jnp.asarray(input_ids, jnp.int32),
            jnp.asarray(attention_mask, jnp.int32),
            jnp.asarray(token_type_ids, jnp.int32),
            jnp.asarray(target, jnp.int32),
            jnp.asarray(pad_id, jnp.int32),
            model=model,
            steps=int(steps),
        )


@functools.partial(jax.jit, static_argnames=("model", "steps"))
def _integrated_gradients(params, ids_L, mask_L, types_L, target, pad_id, *, model, steps):
    word_VxD = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    x_LxD = word_VxD[ids_L]
    base_LxD = jnp.broadcast_to(word_VxD[pad_id], x_LxD.shape)

    def f(e_LxD):  # the target logit with input embeddings e
        out = model.apply(
            {"params": params},
            None,
            attention_mask=mask_L[None],
            token_type_ids=types_L[None],
            inputs_embeds=e_LxD[None],
        )
        return out["logits"][0, target]

    def point(alpha):  # f and df/de at baseline + alpha (input - baseline)
        return jax.value_and_grad(f)(base_LxD + alpha * (x_LxD - base_LxD))

    # Trapezoid rule on a = 0, 1/(S-1), ..., 1: the endpoints also give f(x') and f(x).
    alphas_S = jnp.linspace(0.0, 1.0, steps)
    f_S, g_SxLxD = jax.lax.map(point, alphas_S, batch_size=min(steps, CHUNK))
    w_S = jnp.full((steps,), 1.0 / (steps - 1)).at[jnp.array([0, -1])].multiply(0.5)
    avg_grad_LxD = jnp.einsum("S,SLD->LD", w_S, g_SxLxD)
    attributions_L = jnp.sum((x_LxD - base_LxD) * avg_grad_LxD, axis=-1)
    return attributions_L, f_S[-1] - f_S[0]


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(params, ids_BxL, mask_BxL, types_BxL, *, model):
    out = model.apply(
        {"params": params}, ids_BxL, attention_mask=mask_BxL, token_type_ids=types_BxL
    )
    return out["logits"]


def load(source):
    """(model, params, tokenizer, saved run config) of a BERT classifier at `source`,
    computing in float32 (attributions are gradients; bfloat16 would blur them)."""
    saved = Saved(source, model_overrides={"dtype": "float32"})
    model = saved.model
    if not isinstance(model, bert.Model) or model.config.num_labels <= 0:
        raise ValueError(
            f"{source} holds no BERT classifier (model.name bert with model.num_labels > 0); "
            "explain needs a run of task classify"
        )
    if saved.tokenizer is None:
        raise ValueError(f"{source} has no tokenizer folder to encode the text with")
    return model, jax.device_put(saved.params()), saved.tokenizer, saved.raw_config


def source_examples(source, uri: str) -> Examples:
    """The examples of data source `uri`, read with the run's data settings (columns,
    preset, labels); labels are kept when the source has them."""
    saved = Saved(source)
    try:
        ex = saved.examples(uri, need_labels=True)
    except DataError:  # a text column without labels is fine to explain
        ex = saved.examples(uri, need_labels=False)
    if ex.texts is None:
        raise ValueError(f"{uri} has no text column to explain")
    return ex


def explain(source, texts, steps=64, *, texts_b=None, labels=None, label_names=None) -> list[dict]:
    """Per text: tokens and their attributions (padding dropped), the predicted label and
    class probabilities, f(x) - f(x') and the completeness gap sum(attr) - (f(x) - f(x'))."""
    model, params, tokenizer, cfg = load(source)
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("no text to explain: pass --text TEXT or --source URI")
    C = model.config.num_labels
    names = list(cfg.get("data", {}).get("labels") or label_names or [])
    names = names if len(names) == C else [str(i) for i in range(C)]
    data_cfg = data_lib.default_config()
    seq_len = cfg.get("data", {}).get("seq_len") or model.config.max_position_embeddings
    data_cfg.seq_len = int(seq_len)
    ex = Examples(
        origin="text",
        texts=texts,
        texts_b=list(texts_b) if texts_b is not None else None,
        labels=np.zeros(len(texts), np.int32),
    )
    rows = tasks.get("classify").encode(ex, tokenizer, data_cfg, {}, 0)
    pad_id = tokenizer.pad_id or 0
    results = []
    for i, text in enumerate(texts):
        ids_L, mask_L, types_L = (
            rows[k][i] for k in ("input_ids", "attention_mask", "token_type_ids")
        )
        logits_C = np.asarray(
            _logits(params, ids_L[None], mask_L[None], types_L[None], model=model)[0]
        )
        probs_C = np.exp(logits_C - logits_C.max())
        probs_C /= probs_C.sum()
        target = int(np.argmax(logits_C))
        attr_L, delta = integrated_gradients(
            model, params, ids_L, mask_L, types_L, target=target, steps=steps, pad_id=pad_id
        )
        keep = mask_L.astype(bool)  # padding positions are not part of the text
        attr = np.asarray(attr_L, np.float64)[keep]
        result = {
            "text": text,
            "tokens": [token_text(tokenizer, t) for t in ids_L[keep]],
            "attributions": [float(a) for a in attr],
            "label": names[target],
            "label_id": target,
            "probability": float(probs_C[target]),
            "probabilities": {n: float(p) for n, p in zip(names, probs_C)},
            "delta": float(delta),
            "completeness_gap": float(attr.sum() - float(delta)),
        }
        if texts_b is not None:
            result["text_b"] = str(texts_b[i])
        if labels is not None:
            result["true_label"] = names[int(labels[i])] if 0 <= labels[i] < C else int(labels[i])
        results.append(result)
    return results


def token_text(tokenizer, token_id) -> str:
    """How one token reads: "[CLS]" for special tokens, else its decoded text."""
    token_id = int(token_id)
    for name in SPECIAL_NAMES:
        if getattr(tokenizer, f"{name}_id", None) == token_id:
            return f"[{name.upper()}]"
    return tokenizer.decode([token_id])


def top_tokens(result: dict, k: int = 5) -> list[tuple[str, float]]:
    """The k tokens with the largest |attribution|, largest first."""
    pairs = list(zip(result["tokens"], result["attributions"]))
    return sorted(pairs, key=lambda p: -abs(p[1]))[:k]


# --------------------------------------------------------------------------- output
POSITIVE, NEGATIVE = (220, 38, 38), (37, 99, 235)  # red: for the predicted class; blue: against


def to_html(results: list[dict]) -> str:
    """One paragraph per text: tokens on a red (supports the prediction) or blue (opposes)
    background as strong as |attribution| / max |attribution| of that text."""
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8"><title>pjx explain</title><style>',
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}",
        "figure{margin:0 0 2em 0}",
        "span.t{white-space:pre;padding:0.15em 0.1em;margin:0 1px;border-radius:3px;"
        "font-family:monospace}",
        "figcaption{color:#444;margin-top:0.5em}",
        "</style></head><body>",
    ]
    for r in results:
        scale = max((abs(a) for a in r["attributions"]), default=0.0) or 1.0
        spans = []
        for tok, a in zip(r["tokens"], r["attributions"]):
            rgb = POSITIVE if a >= 0 else NEGATIVE
            alpha = abs(a) / scale
            spans.append(
                f'<span class="t" title="{a:+.4f}" style="background:rgba({rgb[0]},{rgb[1]},'
                f'{rgb[2]},{alpha:.3f})">{html.escape(tok)}</span>'
            )
        caption = (
            f"predicted <b>{html.escape(str(r['label']))}</b> (p = {r['probability']:.3f}); "
            f"red supports it, blue opposes it; f(x) - f(baseline) = {r['delta']:.4f}, "
            f"completeness gap {r['completeness_gap']:.2e}"
        )
        if "true_label" in r:
            caption += f"; true label {html.escape(str(r['true_label']))}"
        parts.append(f"<figure><div>{''.join(spans)}</div><figcaption>{caption}</figcaption>")
        parts.append("</figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def to_png(results: list[dict], out) -> Path:
    """One bar chart per text: attribution per token, red / blue by sign (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(results) > PNG_TEXTS:
        log.warning(f"{out}: showing the first {PNG_TEXTS} of {len(results)} texts (HTML: all)")
        results = results[:PNG_TEXTS]
    n_max = max(len(r["tokens"]) for r in results)
    fig = Figure(figsize=(max(6.0, 0.3 * n_max), 2.8 * len(results)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    for ax, r in zip(axes, results):
        a = np.asarray(r["attributions"])
        colors = [tuple(c / 255 for c in (POSITIVE if v >= 0 else NEGATIVE)) for v in a]
        ax.bar(np.arange(len(a)), a, color=colors)
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xticks(np.arange(len(a)))
        ax.set_xticklabels([t if t.strip() else repr(t) for t in r["tokens"]], rotation=90)
        ax.set_xlim(-0.5, n_max - 0.5)
        ax.set_ylabel("attribution")
        ax.set_title(f"predicted {r['label']} (p = {r['probability']:.3f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    return Path(out)


def check_out(out) -> str:
    """The kind of file `out` names ("html" or "png"); anything else is an error."""
    suffix = Path(out).suffix.lower()
    if suffix not in (".html", ".htm", ".png"):
        raise ValueError(f"--out {out}: write a .html or a .png file")
    return "png" if suffix == ".png" else "html"


def save(results: list[dict], out) -> Path:
    """Writes `results` to `out`: .html (coloured tokens) or .png (bar charts)."""
    out = Path(out)
    kind = check_out(out)
    if not results:
        raise ValueError("no results to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png":
        return to_png(results, out)
    out.write_text(to_html(results), encoding="utf-8")
    return out
