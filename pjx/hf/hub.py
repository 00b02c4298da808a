"""Hugging Face Hub repository ids where a model folder is expected.

    pjx.hf.load("bert-base-uncased")                       # same as a local folder
    init_from = "hf:google/vit-base-patch16-224@main"      # ORG/NAME[@REVISION]

`pjx.hf.folder.model_folder` is the one place a reference becomes a folder: a local folder
of that name wins; otherwise a name that reads as a Hub id (`NAME` or `ORG/NAME`, with an
optional `@REVISION`: branch, tag or commit) is fetched with
`huggingface_hub.snapshot_download` into Hugging Face's own cache, so a model that
transformers downloaded is reused. `HF_HOME` / `HF_HUB_CACHE` place the cache, `HF_TOKEN`
opens private and gated repositories, `HF_HUB_OFFLINE=1` reads the cache only. Only config,
safetensors and tokenizer files are fetched: never a pickle (see pjx.hf.folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# A Hub repository id: NAME or ORG/NAME (letters, digits, "-", "_", "."; no "--" or "..").
_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_PART}(?:/{_PART})?")

# What the download command of the not-cached message fetches: pjx's files, fewer patterns.
_SHORT_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model")

_resolved: dict[tuple, Path] = {}  # (id, revision, patterns, cache, offline) -> snapshot


def parse(ref) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when `ref` reads as `NAME` / `ORG/NAME[@REVISION]`."""
    name, _, revision = str(ref).partition("@")
    if not _REPO_ID.fullmatch(name) or "--" in name or ".." in name:
        return None
    if "@" in str(ref) and not revision:
        return None
    return name, revision or None


def download(ref, allow_patterns) -> Path:
    """The local snapshot folder of the Hub repository `ref` (`ORG/NAME[@REVISION]`), holding
    the files that match `allow_patterns`, downloaded into Hugging Face's cache if needed."""
    parsed = parse(ref)
    if parsed is None:
        raise FileNotFoundError(
            f"{ref}: not a local folder, and not a Hugging Face Hub id (NAME or "
            "ORG/NAME[@REVISION])"
        )
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub import utils as hub_errors  # the errors, in 0.x and later
    except ImportError:  # a declared dependency; only a broken environment lacks it
        raise ImportError(
            f"{ref}: reading a Hugging Face Hub id needs huggingface_hub "
            "(pip install huggingface_hub), or pass a local model folder"
        ) from None
    repo_id, revision = parsed
    offline = bool(constants.HF_HUB_OFFLINE)
    key = (repo_id, revision, tuple(allow_patterns), constants.HF_HUB_CACHE, offline)
    if key in _resolved and _resolved[key].is_dir():
        return _resolved[key]
    at = f" at revision {revision!r}" if revision else ""
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=list(allow_patterns))
    except hub_errors.RevisionNotFoundError:
        raise FileNotFoundError(
            f"{ref}: the Hugging Face Hub repository {repo_id!r} has no revision "
            f"{revision!r} (a branch, tag or commit)"
        ) from None
    except hub_errors.RepositoryNotFoundError as e:  # also gated / private without access
        raise FileNotFoundError(
            f"{ref}: no local folder {ref!r}, and the Hugging Face Hub repository "
            f"{repo_id!r} was not found or needs access ({type(e).__name__}). Check the id; "
            "for a private or gated model, accept its terms on huggingface.co and set "
            "HF_TOKEN (or run `hf auth login`)."
        ) from None
    except hub_errors.LocalEntryNotFoundError as e:
        cache = Path(constants.HF_HUB_CACHE)
        where = cache / ("models--" + repo_id.replace("/", "--"))
        cause = e.__cause__ or e
        why = (
            "HF_HUB_OFFLINE=1 forbids downloading it"
            if offline
            else f"the Hub could not be reached ({type(cause).__name__}: {cause})"
        )
        rev = f" --revision {revision}" if revision else ""
        # An interrupted download leaves a snapshot that lacks some files.
        held = "is only partly" if type(e).__name__ == "IncompleteSnapshotError" else "is not"
        include = " ".join(f'--include "{p}"' for p in _SHORT_PATTERNS)
        raise FileNotFoundError(
            f"{ref}: no local folder {os.path.abspath(ref)!r}, and the Hugging Face Hub "
            f"model {repo_id!r}{at} {held} in the Hub cache {cache} (looked in {where}); "
            f"{why}.\nDownload it once where the Hub is reachable, into the same cache "
            f"(HF_HOME / HF_HUB_CACHE):\n  hf download {repo_id}{rev} {include}\n"
            "or pass the path of a local model folder (config.json + model.safetensors)."
        ) from None
    _resolved[key] = Path(path)
    return Path(path)
