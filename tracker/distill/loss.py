"""The dense distillation objective of DistillDIFT (Fundel et al., WACV 2025, unsupervised setting).

For an image pair, every source cell ``i`` gives a similarity map over all target cells ``j``:
``S[i, j] = <f_src[i], f_tgt[j]>`` of unit descriptors. Teacher and student maps are turned into distributions
with a softmax at temperature ``tau`` (0.01), and the student's is trained towards the teacher's by
cross-entropy::

    loss = mean_{b, i} ( - sum_j softmax(S_T[b, i] / tau)_j * log softmax(S_S[b, i] / tau)_j )

DistillDIFT's training code passes the two softmax outputs to ``torch.nn.CrossEntropyLoss``, which applies a
second log-softmax to the already-softmaxed student; we compute the cross-entropy the paper states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def flatten_unit(features: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, h*w, C]`` float32 with unit L2 norm along C."""
    return F.normalize(features.float().flatten(2).transpose(1, 2), dim=-1)


def dense_distillation_loss(
    student_src: Tensor,
    student_tgt: Tensor,
    teacher_src: Tensor,
    teacher_tgt: Tensor,
    temperature: float = 0.01,
) -> Tensor:
    """Cross-entropy of the student's softmaxed similarity maps against the teacher's, over all cells.

    Args:
        student_src, student_tgt: ``[B, C_s, h, w]`` student features of the source and target images.
        teacher_src, teacher_tgt: ``[B, C_t, h_t, w_t]`` teacher descriptors; resized (bilinear) to the student's
            grid when ``(h_t, w_t)`` differs.
        temperature: softmax temperature ``tau``.

    Returns:
        Scalar float32 loss (nats), averaged over the batch and the ``h*w`` source cells.
    """
    grid = student_src.shape[-2:]
    if teacher_src.shape[-2:] != grid:
        teacher_src = F.interpolate(teacher_src.float(), size=grid, mode="bilinear", align_corners=False)
        teacher_tgt = F.interpolate(teacher_tgt.float(), size=grid, mode="bilinear", align_corners=False)
    with torch.autocast(student_src.device.type, enabled=False):
        s_src, s_tgt = flatten_unit(student_src), flatten_unit(student_tgt)
        t_src, t_tgt = flatten_unit(teacher_src), flatten_unit(teacher_tgt)
        student_logits = s_src @ s_tgt.transpose(1, 2) / temperature  # [B, N, N]
        with torch.no_grad():
            target = torch.softmax(t_src @ t_tgt.transpose(1, 2) / temperature, dim=-1)
        return -(target * torch.log_softmax(student_logits, dim=-1)).sum(-1).mean()
