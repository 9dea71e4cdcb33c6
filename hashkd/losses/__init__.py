"""Distillation losses: one small ``nn.Module`` per method, registered by name.

    from hashkd.losses import DistillBatch, build_loss, list_losses
    loss = build_loss("brcd", alpha=0.5, k=10, teacher="runs/teacher")
    loss.fit(teacher_codes_train)              # stateful losses: clusters, banks, LSH bias
    optimizer = torch.optim.Adam([*student.parameters(), *loss.parameters()])
    value = loss(DistillBatch(s1=b1, s2=b2, t1=t1, t2=t2, index=idx))

Every module here registers itself with ``@register_loss(name)``; importing it is enough.
"""

from hashkd.losses import align, brcd, compress, crd, lsh, metric_teacher, rkd, sp  # noqa: F401
from hashkd.losses.base import DistillBatch, DistillLoss, as_sign_tensor
from hashkd.losses.registry import (
    build_loss,
    describe_losses,
    get_loss_class,
    list_losses,
    register_loss,
    resolve_weights,
    weight_table,
)

__all__ = [
    "DistillBatch",
    "DistillLoss",
    "as_sign_tensor",
    "build_loss",
    "describe_losses",
    "get_loss_class",
    "list_losses",
    "register_loss",
    "resolve_weights",
    "weight_table",
]
