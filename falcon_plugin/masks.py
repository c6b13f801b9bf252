"""Which token positions FALCON looks at: the one home of the host's label convention.

The host (open-unlearning) marks prompt and padding tokens with ``labels == IGNORE_INDEX`` (-100,
the Hugging Face convention); Step 1 pools over the positions :func:`token_mask` selects
(:mod:`falcon_plugin.capture`) and Step 2's losses average over them (:mod:`falcon_plugin.losses`).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""Label of a token no loss sees (prompt, padding)."""


def token_mask(labels: torch.Tensor | None, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Positions a loss sees: those whose next-token prediction is a labelled (answer) token.

    A causal LM's hidden state at position t predicts token t+1, and the host's ``labels`` mark the
    answer tokens (``-100`` elsewhere), so the positions that carry the answer are the labelled ones
    shifted one to the left: the last prompt token (which predicts the first answer token) through
    the last-but-one answer token. Without labels, every attended position counts. Works on (T,) or
    (B, T) tensors, for left or right padding.
    """
    attended = None if attention_mask is None else attention_mask.bool()
    if labels is None:
        if attended is None:
            raise ValueError("token_mask needs labels or an attention_mask")
        return attended
    answer = labels != IGNORE_INDEX
    mask = torch.zeros_like(answer)
    mask[..., :-1] = answer[..., 1:]
    return mask if attended is None else mask & attended


__all__ = ["IGNORE_INDEX", "token_mask"]
