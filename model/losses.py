"""MFVAN's losses, as functions of (outputs, targets), apart from the network.

Section 3.3 of the paper joins four terms; their weights are `MFVANConfig.loss_weights`:

    L = w_ri * L_ri + w_global * FL(logits) + w_scale * mean_s FL(scale_logits_s)
        + w_mask * mean_s FL(mask_logits_s)

- L_ri, identity removal: the student's predicted onset against the true onset (MSE),
  against the teacher's prediction (MSE, the teacher a fixed soft target), and the
  teacher's own apex -> onset MSE, so both are trained jointly as the paper says.
- FL is the focal loss (Lin et al. 2017) with per-class weights alpha_t:
  FL = -alpha_t (1 - p_t)^gamma log p_t, averaged with weights alpha_t (sum alpha_t FL /
  sum alpha_t), so that at gamma = 0 it is exactly `F.cross_entropy(weight=alpha)`.
- The mask loss (the paper does not define it; our choice) classifies each scale from its
  kept tokens alone (z_s): through the mask's straight-through gradient it teaches the
  class token to attend to the patches that carry the class.

`reconstruction_loss` is the teacher's self-supervised pre-training loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted focal loss over (B, K) logits and (B,) class indices."""
    log_p = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
    p = log_p.exp()
    loss = -((1.0 - p) ** gamma) * log_p
    if class_weights is None:
        return loss.mean()
    alpha = class_weights.to(logits.dtype)[target]
    return (alpha * loss).sum() / alpha.sum()


def class_weights_from_counts(counts) -> torch.Tensor:
    """Inverse-frequency class weights normalised to mean 1 (absent classes get 0)."""
    counts = torch.as_tensor(counts, dtype=torch.float32)
    weights = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), torch.zeros_like(counts))
    present = (counts > 0).sum().clamp_min(1)
    return weights * present / weights.sum()


def reconstruction_loss(model, frames: torch.Tensor) -> torch.Tensor:
    """Teacher pre-training: reconstruct any frame (self-supervised MSE)."""
    return F.mse_loss(model.teacher(frames), frames)


def identity_removal_loss(model, outputs: dict, onset: torch.Tensor, apex: torch.Tensor):
    """Student -> onset, student -> teacher (soft target), teacher -> onset; all MSE."""
    student = outputs["onset_pred"]
    teacher = model.teacher(apex)
    return (
        F.mse_loss(student, onset)
        + F.mse_loss(student, teacher.detach())
        + F.mse_loss(teacher, onset)
    )


def total_loss(
    model,
    outputs: dict,
    onset: torch.Tensor,
    apex: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the active terms, and each term's value for logging."""
    cfg = model.cfg
    w = cfg.loss_weights
    gamma = cfg.focal_gamma
    terms = {"global": focal_loss(outputs["logits"], target, gamma, class_weights)}
    scales = outputs["scales"].values()
    if scales:
        terms["scale"] = torch.stack(
            [focal_loss(s["scale_logits"], target, gamma, class_weights) for s in scales]
        ).mean()
        terms["mask"] = torch.stack(
            [focal_loss(s["mask_logits"], target, gamma, class_weights) for s in scales]
        ).mean()
    if cfg.identity_removal:
        terms["ri"] = identity_removal_loss(model, outputs, onset, apex)
    total = sum(w[name] * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
