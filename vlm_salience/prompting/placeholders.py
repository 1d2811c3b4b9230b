"""Expanding a model's media placeholders in rendered chat text: each `<image>` / `<video>` (or Qwen's pad token)
becomes the tokens its image or clip fills, in order. Shared by the Qwen2-VL video path (clips.py) and the LLaVA
video path (llava_video.py), so both check the chat template's placeholder count the same way."""

from __future__ import annotations


def expand_placeholders(texts: list[str], token: str, replacements: list[str], per_text: list[int], what: str, *,
                        fix: str, label: str | None = None) -> list[str]:
    """The k-th `token` across the rendered prompts becomes replacements[k]; prompt b must hold per_text[b] of them
    (else a ValueError: how many `label` placeholders the template placed for how many `what`s, and the `fix`)."""
    out, k = [], 0
    for text, n in zip(texts, per_text):
        pieces = text.split(token)
        if len(pieces) - 1 != n:
            raise ValueError(f"the chat template placed {len(pieces) - 1} {label or what} placeholder(s) for {n} "
                             f"{what}(s); {fix}")
        s = pieces[0]
        for piece in pieces[1:]:
            s += replacements[k] + piece
            k += 1
        out.append(s)
    return out
