"""`pjx convert hf-to-pjx | pjx-to-hf | merge-lora | pjx-to-peft SRC DST` (pjx.convert)."""

from __future__ import annotations

import shutil
from pathlib import Path

from pjx.cli.common import no_overrides


def add_arguments(parser):
    sub = parser.add_subparsers(dest="direction", required=True)
    for name, help_, src, dst in (
        (
            "hf-to-pjx",
            "Hugging Face folder -> pjx checkpoint",
            "HF model folder, or Hub id [hf:]ORG/NAME[@REVISION]",
            "pjx workdir",
        ),
        (
            "pjx-to-hf",
            "pjx workdir / checkpoint -> Hugging Face folder",
            "pjx workdir, checkpoints dir or step dir",
            "output folder",
        ),
        (
            "merge-lora",
            "LoRA run -> plain pjx workdir (adapters merged into the kernels)",
            "pjx workdir / checkpoint of a LoRA run",
            "pjx workdir",
        ),
        (
            "pjx-to-peft",
            "LoRA run -> Hugging Face PEFT adapter folder",
            "pjx workdir / checkpoint of a LoRA run",
            "adapter folder",
        ),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("src", help=src)
        p.add_argument("dst", help=dst)
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")


def _prepare(dst: Path, overwrite: bool):
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{dst} exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(dst)


def main(args, overrides=()) -> int:
    from pjx import convert

    no_overrides("convert", overrides)
    dst = Path(args.dst)
    _prepare(dst, args.overwrite)
    if args.direction == "hf-to-pjx":
        where = convert.hf_to_pjx(args.src, dst)
        print(f"wrote pjx checkpoint {where} (use it as init_from={dst.absolute()})")
    elif args.direction == "pjx-to-hf":
        where = convert.pjx_to_hf(args.src, dst)
        print(f"wrote Hugging Face model folder {where}")
    elif args.direction == "merge-lora":
        where = convert.merge_lora(args.src, dst)
        print(f"wrote pjx checkpoint {where} with the adapters merged")
    else:
        where = convert.to_peft(args.src, dst)
        print(f"wrote PEFT adapter folder {where} (peft.PeftModel.from_pretrained(base, DIR))")
    return 0
