"""What a private run may read: the refusals that look at its rows (pjx.privacy holds
the mechanism's plan and ledger). The privacy unit is one row of the training table; a
run is refused where a row would not be one document, where its vocabulary was trained
on its own rows, or where it would evaluate on them (pjx.data.overlap resolves sources to
row ranges of their real files). Kept apart from pjx.privacy so that what `pjx bench`
imports (train -> privacy) needs none of the data pipeline's packages.
"""

from __future__ import annotations

from pjx.data import overlap, prepared
from pjx.uri import parse_uri


def check_run(config, task) -> None:
    """Refuses a private run whose privacy unit or outputs would not be what the epsilon
    covers: rows built from several documents, a vocabulary trained on the private text,
    evaluation on the training source."""
    data = config.data
    if task.packs == "always":
        raise ValueError(
            f"task {task.name!r} cuts rows from the concatenation of all documents: removing "
            "one document shifts every row after it, so DP-SGD's row-level epsilon would "
            "not protect it. Train this task without dp."
        )
    if task.packs and data.get("pack") != "none":
        raise ValueError(
            f"task {task.name!r} packs documents into rows (data.pack={data.get('pack')!r}): "
            "removing one document shifts every row after it, so one row is not one "
            "person's data and epsilon would not hold. Train privately with "
            "--config.data.pack=none (one row per document, truncated to data.seq_len)."
        )
    recorded = prepared_pack(str(data.source))
    if task.packs and recorded not in (None, "none"):
        raise ValueError(
            f"{data.source} was prepared with data.pack={recorded!r} (its index.json): its "
            "rows join several documents, so one row is not one person's data and epsilon "
            "would not hold. Prepare it again with --config.data.pack=none for DP-SGD."
        )
    if config.task_args.get("nsp"):
        raise ValueError(
            "task_args.nsp pairs sentences across documents: one document reaches many "
            "rows, so DP-SGD's row-level epsilon would not hold. Train privately without nsp."
        )
    spec = str(data.get("tokenizer") or "")
    if spec.startswith("train:") and not config.get("init_from"):
        check_vocabulary(config, {"source": str(data.source)})  # init_from's may come instead
    src, ev = str(data.source), str(config.eval_data.get("source") or "")
    shared = overlap.shared_rows(ev, src, data) if ev else 0
    if shared:
        many = "all" if shared >= 2**61 else shared  # a source read to its end, uncounted
        raise ValueError(
            f"eval_data.source={ev!r} reads {many} of the private training rows "
            f"({src!r}): metrics on them are not covered by epsilon. Evaluate on held-out "
            "rows (e.g. slices [:90%] / [90%:] of one file)."
        )


def check_vocabulary(config, trained_on: dict | None) -> None:
    """Refuses a private run whose vocabulary was trained on its own training rows
    (`trained_on`: where the tokenizer says it was trained, pjx.tokenizers), unless
    dp.private_tokenizer accepts the leak. A tokenizer file pjx did not train carries no
    record: it is taken as public."""
    if not trained_on or config.dp.get("private_tokenizer"):
        return
    source, data = str(trained_on.get("source") or ""), config.data
    shared = overlap.shared_rows(source, str(data.source), data) if source else 0
    if shared:
        raise ValueError(
            f"the tokenizer's vocabulary was trained on {source}, which holds {shared} of the "
            f"private training rows ({data.source}): DP-SGD does not cover the private "
            "training text's vocabulary (it shows which words occur). Use a public tokenizer: "
            "--config.init_from=RUN_OR_hf:MODEL (its tokenizer), or "
            "--config.data.tokenizer=FILE_OR_DIR trained on other data; or accept the leak "
            "with --config.dp.private_tokenizer=true."
        )


def prepared_pack(source: str) -> str | None:
    """How a `prepared:DIR` source packed its rows (its index.json); None for other kinds."""
    u = parse_uri(source)
    if u.kind != "prepared":
        return None
    return str(prepared.load_index(u.path).get("settings", {}).get("pack"))
