"""`pjx generate WORKDIR --prompt TEXT`: sample from a trained decoder (GPT-2, Llama family)."""

from __future__ import annotations

from pjx.cli.common import no_overrides, start_compute


def add_arguments(parser):
    parser.add_argument("source", help="a pjx workdir or checkpoint of a decoder")
    parser.add_argument("--prompt", default="", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)


def main(args, overrides=()) -> int:
    from pjx import inference

    no_overrides("generate", overrides)
    start_compute()
    text = inference.generate(
        args.source,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    print(text)
    return 0
