"""The image-text auxiliary losses of Sánchez Villegas et al. (EACL Findings 2024), and how they mix with CE.

loss = (1 - β_itc - β_itm)·CE + β_itc·ITC + β_itm·ITM, where a β counts only when its loss is switched on.
ITC is a symmetric InfoNCE between text and image embeddings of the batch with a learned temperature; ITM is a
2-way matched/mismatched head, whose negatives are the batch's own images given to the wrong text with p = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BETA = 0.1
ITM_MISMATCH_P = 0.5


@dataclass(frozen=True)
class AuxWeights:
    """β per auxiliary loss; 0 switches it off."""

    itc: float = 0.0
    itm: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> AuxWeights:
        """``"none"``, ``"itc"``, ``"itm"`` or ``"itc,itm"`` with the paper's β = 0.1 each."""
        names = {part.strip().lower() for part in spec.split(",") if part.strip()} - {"none"}
        unknown = names - {"itc", "itm"}
        if unknown:
            raise ValueError(f"unknown auxiliary loss {sorted(unknown)}: use none, itc, itm or itc,itm")
        return cls(itc=BETA if "itc" in names else 0.0, itm=BETA if "itm" in names else 0.0)

    @property
    def ce(self) -> float:
        return 1.0 - self.itc - self.itm

    @property
    def any(self) -> bool:
        return self.itc > 0 or self.itm > 0

    def spec(self) -> str:
        return ",".join(name for name, beta in (("itc", self.itc), ("itm", self.itm)) if beta) or "none"


def itc_loss(text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of L2-normalised pairs: row i of ``text`` belongs with row i of ``image``."""
    logits = logit_scale.exp() * text @ image.t()
    targets = torch.arange(text.shape[0], device=text.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def itm_pairs(
    batch_size: int, generator: torch.Generator, p: float = ITM_MISMATCH_P
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index per text, label 1 = matched): each text gets another text's image with probability ``p``."""
    mismatch = torch.rand(batch_size, generator=generator) < p
    if batch_size < 2:
        mismatch[:] = False
    # A uniform other index: shift by 1..n-1, so it is never the text's own image.
    shift = torch.randint(1, max(batch_size, 2), (batch_size,), generator=generator)
    own = torch.arange(batch_size)
    index = torch.where(mismatch, (own + shift) % batch_size, own)
    return index, (~mismatch).long()


def itm_features(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """What the ITM head sees of a (text, image) pair: both embeddings, their product and distance."""
    return torch.cat([text, image, text * image, (text - image).abs()], dim=-1)
