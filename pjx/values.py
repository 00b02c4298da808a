"""Values written as text: the one reading of "true" / "false" in pjx, shared by the
`--config.` overrides (pjx.config) and tokenizer spec parameters (pjx.tokenizers.spec),
which sit in different layers."""

from __future__ import annotations


def parse_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"expected a bool (true/false), got {text!r}")
