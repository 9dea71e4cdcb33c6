"""The demo's time budget: a short measured warm-up, a stage-by-stage estimate, epochs that fit.

:func:`measure_rates` times a few real training steps of the demo's teacher and student on the
demo's data at the demo's image size (and a few encoding batches); :func:`stage_estimates`
extrapolates those rates to every stage for the split sizes of the data; :func:`choose_epochs`
picks the largest epochs, at most the preferred ones (the demo's defaults) and in their ratio,
whose estimate fits the budget. Explicit epochs are kept as given. docs/demo.md describes it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

#: Default time budget of the demo: a 2,000-photo folder at 32 px finishes within 15 minutes on a
#: 2-core CPU (the rest of the 15 is the estimate's margin); the embedded digits fit with the
#: default epochs (30 teacher, 20 student).
BUDGET_MINUTES = 12.0
#: Seconds of the stages that do not scale with the data: the ONNX export, the index build,
#: the two service processes with their checks and the encode-speed table (measured on the
#: embedded digits on a 2-core CPU, rounded up).
OVERHEAD_S = 40.0
#: Views per training image in the students' view bank (``DistillConfig.view_bank`` of the demo).
VIEW_BANK = 6


@dataclass(frozen=True)
class Rates:
    """Measured costs, in seconds: per training image and epoch, per image encoded, per load."""

    teacher_s: float  # one training image, one teacher epoch (two views, forward + backward)
    student_s: float  # one training image, one student epoch
    encode_s: float  # one image through a model in eval mode (validation, view bank, encoding)
    load_s: float  # loading the data and drawing the splits once


@dataclass(frozen=True)
class Workload:
    """The split sizes of the data and which training stages run (the others are reused)."""

    train: int
    val: int
    query: int
    database: int
    teacher: bool = True
    students: int = 2  # student stages to run: no KD and BRCD


def validations(epochs: int) -> int:
    """Validation passes of a run of ``epochs`` with the demo's ``val_every = max(1, epochs // 3)``."""
    every = max(1, epochs // 3)
    return len({e for e in range(1, epochs + 1) if e % every == 0 or e == epochs})


@dataclass(frozen=True)
class StageCosts:
    """Seconds of the demo: fixed per stage, plus per epoch of the teacher and of the students."""

    fixed: dict[str, float]
    teacher_epoch_s: float  # one teacher epoch (0 when the teacher is reused)
    student_epoch_s: float  # one epoch of every student stage that runs together

    def stages(self, teacher_epochs: int, student_epochs: int) -> dict[str, float]:
        """Seconds per stage for these epochs."""
        out = dict(self.fixed)
        out["teacher"] = out.get("teacher", 0.0) + teacher_epochs * self.teacher_epoch_s
        out["students"] = out.get("students", 0.0) + student_epochs * self.student_epoch_s
        return out

    def total(self, teacher_epochs: int, student_epochs: int) -> float:
        return sum(self.stages(teacher_epochs, student_epochs).values())


def stage_estimates(
    rates: Rates, work: Workload, teacher_epochs: int, student_epochs: int
) -> StageCosts:
    """:class:`StageCosts` of the demo for ``work`` at ``rates``.

    Validation is counted for the given epochs (each pass encodes the validation and training
    images); each student stage also codes its training images and their view bank with the
    teacher. The encode stage loads the data three times and encodes the query split with three
    models and the database with three.
    """
    valid = (work.train + work.val) * rates.encode_s
    fixed = {"teacher": 0.0, "students": 0.0}
    if work.teacher:
        fixed["teacher"] = rates.load_s + validations(teacher_epochs) * valid
    per_student = (
        rates.load_s
        + (1 + VIEW_BANK) * work.train * rates.encode_s
        + validations(student_epochs) * valid
    )
    fixed["students"] = work.students * per_student
    fixed["encode"] = 3 * rates.load_s + 3 * (work.query + work.database) * rates.encode_s
    fixed["other"] = OVERHEAD_S
    return StageCosts(
        fixed=fixed,
        teacher_epoch_s=work.train * rates.teacher_s if work.teacher else 0.0,
        student_epoch_s=work.students * work.train * rates.student_s,
    )


@dataclass(frozen=True)
class EpochChoice:
    """The epochs the demo runs, the estimate they give and why they were chosen."""

    teacher_epochs: int
    student_epochs: int
    estimate_s: float
    budget_s: float
    reason: str  # "defaults", "budget" or "explicit"
    warning: str | None = None


def choose_epochs(
    costs: StageCosts,
    budget_s: float,
    preferred: tuple[int, int],
    explicit: tuple[int | None, int | None] = (None, None),
) -> EpochChoice:
    """The largest epochs up to ``preferred`` (teacher, student), in their ratio, within budget.

    An explicit value is kept as given and the other is chosen around it. Each chosen value is
    at least 1; when even that exceeds ``budget_s`` the choice carries a warning. When every
    value is explicit the budget only produces a warning.
    """
    if budget_s <= 0:
        raise ValueError(f"budget of {budget_s} s is not valid: expected a positive budget")
    pt, ps = preferred
    et, es = explicit
    want_t, want_s = (et if et is not None else pt), (es if es is not None else ps)
    if et is not None and es is not None:
        reason = "explicit"
    elif costs.total(want_t, want_s) <= budget_s:
        reason = "defaults"
    else:
        reason = "budget"
        # seconds the free epochs may use, and what the preferred free epochs would cost
        fixed = costs.total(0, 0) + (et or 0) * costs.teacher_epoch_s
        fixed += (es or 0) * costs.student_epoch_s
        free = (0 if et is not None else pt) * costs.teacher_epoch_s
        free += (0 if es is not None else ps) * costs.student_epoch_s
        scale = max(0.0, (budget_s - fixed) / free) if free > 0 else 1.0
        if et is None:
            want_t = max(1, min(pt, math.floor(pt * scale)))
        if es is None:
            want_s = max(1, min(ps, math.floor(ps * scale)))
    estimate = costs.total(want_t, want_s)
    warning = None
    if estimate > budget_s:
        what = "the given epochs" if reason == "explicit" else "even the fewest epochs"
        warning = (
            f"{what} ({want_t} teacher, {want_s} student) need about {format_duration(estimate)}, "
            f"over the budget of {format_duration(budget_s)}: running them anyway "
            "(raise --budget-minutes, or use fewer images with --max-train)"
        )
    return EpochChoice(want_t, want_s, estimate, budget_s, reason, warning)


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``; ``42.4`` -> ``"42 s"``."""
    total = int(round(seconds))
    minutes, secs = divmod(total, 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


# ----------------------------------------------------------------------------- the warm-up


def measure_rates(teacher, student, steps: int = 3) -> tuple[Rates, Workload]:
    """Time ``steps`` training steps of the teacher and of the student (after one untimed step).

    ``teacher`` is the demo's :class:`~hashkd.training.teacher.TeacherConfig` and ``student``
    its :class:`~hashkd.training.distill.DistillConfig`: the models are built as the stages build
    them (fresh weights), on the stages' data and image size, with batches of their batch size.
    Image files are read under the caller's :func:`hashkd.data.use_data_options`. Returns the
    rates and the split sizes (a :class:`Workload` running every stage).
    """
    import torch
    from torch.utils.data import DataLoader

    from hashkd.models import ModelConfig, build_model
    from hashkd.training.cibhash import CIBHashLoss
    from hashkd.training.data_setup import prepare_data
    from hashkd.training.views import TwoViewDataset

    t0 = time.perf_counter()
    data = prepare_data(
        teacher.data, teacher.root, teacher.protocol, teacher.seed, teacher.max_train
    )
    load_s = time.perf_counter() - t0
    tcfg = teacher.model_config()
    scfg = ModelConfig(
        backbone=student.student,
        bits=student.bits or tcfg.bits,
        img_size=student.img_size or tcfg.img_size,
        head=student.head,
        backbone_kwargs=dict(student.student_kwargs),
        mean=tcfg.mean,
        std=tcfg.std,
        role="student",
    )
    rng_state = torch.get_rng_state()
    torch.manual_seed(teacher.seed)
    t_model, s_model = build_model(tcfg), build_model(scfg)
    views = TwoViewDataset(data.train.source, data.train.indices, data.view_transform(tcfg))
    batch = max(2, min(teacher.batch_size, len(views)))
    loader = DataLoader(views, batch_size=batch, shuffle=True, drop_last=False)
    criterion = CIBHashLoss(tau=teacher.tau, beta=teacher.beta)

    def train_steps(model: torch.nn.Module, fetch: bool) -> float:
        """Seconds per image of ``steps`` steps (batches fetched, i.e. augmented, if ``fetch``)."""
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        model.train()
        it = iter(loader)
        first = next(it)
        seconds, images = 0.0, 0
        for i in range(steps + 1):
            start = time.perf_counter()
            x1, x2, _ = (next(it, None) or first) if fetch and i else first
            u1, u2 = model(torch.cat([x1, x2])).chunk(2)
            loss = criterion(u1, u2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i:  # the first step warms the caches up
                seconds += time.perf_counter() - start
                images += len(x1)
        return seconds / max(1, images)

    try:
        teacher_s = train_steps(t_model, fetch=True)
        student_s = train_steps(s_model, fetch=False)  # the view bank holds its views
        eval_tf = data.eval_transform(tcfg)
        source, indices = data.train.source, data.train.indices[:batch]
        t_model.eval()
        with torch.no_grad():
            t_model(torch.stack([eval_tf(source.load_image(int(i))) for i in indices[:2]]))
            start = time.perf_counter()
            x = torch.stack([eval_tf(source.load_image(int(i))) for i in indices])
            t_model(x)
            encode_s = (time.perf_counter() - start) / len(indices)
    finally:
        torch.set_rng_state(rng_state)
    work = Workload(len(data.train), len(data.val), len(data.query), len(data.database))
    return Rates(teacher_s, student_s, encode_s, load_s), work
