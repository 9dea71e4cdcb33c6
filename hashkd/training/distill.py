"""Distil a frozen hashing teacher into a compact student.

``L = [L_cib(student)] + sum_i w_i * L_i(DistillBatch)`` with the losses of
:mod:`hashkd.losses` picked by name (BRCD, SP, RKD, ...). The teacher stays in eval mode
with no gradients. Because it is frozen, its codes for the training set can be computed
once: ``view_bank = E`` augments each training image E times once, runs the teacher over
the bank, and each epoch draws two distinct stored views per image for the student -- the
student sees exactly the views the teacher coded. ``view_bank = 0`` augments online and
runs the teacher every step.

``pool`` (:mod:`hashkd.training.pool`) trains on an unlabeled pool instead of the training
split (e.g. all of CIFAR-10's training images but the validation ones): the teacher codes
the pool (BRCD's clusters, CRD's memory size) and, with a view bank, its ``N x E`` seeded
views once, keeping only their packed codes (:class:`StreamedViewBank`); images stream from
disk through DataLoader workers. ``lr_schedule``/``warmup_epochs`` set a per-step rate
(:mod:`hashkd.training.schedule`) whose state is in the checkpoint. ``student_weights``
starts the student's backbone from ``hashkd pretrain`` weights (every tensor must match).

Checkpoints, resume, validation mAP, JSON-lines log, seed and torchrun work as for the
teacher (:mod:`hashkd.training.teacher`).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from hashkd.encoding import model_digest
from hashkd.losses import DistillBatch, build_loss, get_loss_class, resolve_weights
from hashkd.losses.base import signs
from hashkd.losses.run_report import epoch_log_fields, loss_setup
from hashkd.models import ModelConfig, build_model, load_artifact, model_cost
from hashkd.models.hash_model import HashModel
from hashkd.runtime.backends import file_sha256
from hashkd.settings import CONFIG_NAME, write_config
from hashkd.training.cibhash import CIBHashLoss
from hashkd.training.common import (
    Timer,
    checkpoint_state,
    end_epoch,
    epoch_loader,
    resume_from,
    seed_everything,
    split_logits,
    trainable_parameters,
    validation_map,
)
from hashkd.training.config import (
    DistillConfig,
    pretrain_weights_file,
)
from hashkd.training.data_setup import prepare_data
from hashkd.training.distributed import (
    DistInfo,
    all_reduce_mean,
    cleanup,
    init_distributed,
)
from hashkd.training.pool import select_pool
from hashkd.training.run_dir import RunDir
from hashkd.training.schedule import StepSchedule
from hashkd.training.teacher_outputs import TeacherOutputs, images_digest, outputs_key
from hashkd.training.views import (
    BANK_SEEDING,
    VIEW_SEEDING,
    PairIndexDataset,
    StreamedViewBank,
    TwoViewDataset,
    ViewBank,
)


def _renormalize(x: torch.Tensor, src: ModelConfig, dst: ModelConfig) -> torch.Tensor:
    """Views normalised for ``src`` re-expressed in ``dst``'s normalisation."""
    if tuple(src.mean) == tuple(dst.mean) and tuple(src.std) == tuple(dst.std):
        return x
    sm, ss = torch.tensor(src.mean).view(1, -1, 1, 1), torch.tensor(src.std).view(1, -1, 1, 1)
    dm, ds = torch.tensor(dst.mean).view(1, -1, 1, 1), torch.tensor(dst.std).view(1, -1, 1, 1)
    return ((x * ss + sm) - dm) / ds


def build_losses(
    cfg: DistillConfig, student_bits: int, teacher_bits: int, n_train: int
) -> torch.nn.ModuleList:
    """The configured losses, each told the code widths (for projections) and dataset size."""
    out = []
    for name in cfg.losses:
        options = dict(cfg.loss_options.get(name, {}))
        params = inspect.signature(get_loss_class(name).__init__).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        defaults = {
            "student_dim": student_bits,
            "teacher_dim": teacher_bits,
            "n_data": n_train,
            "seed": cfg.seed,
            "teacher": str(Path(cfg.teacher).resolve()),
        }
        for key, value in defaults.items():
            if (
                key in params or (accepts_any and key in ("student_dim", "teacher_dim"))
            ) and key not in options:
                options[key] = value
        out.append(build_loss(name, **options))
    return torch.nn.ModuleList(out)


def distill(cfg: DistillConfig) -> Path:
    """Run the distillation; returns the output directory (the student artifact)."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _distill(cfg, info)
    finally:
        cleanup(info)


def _distill(cfg: DistillConfig, info: DistInfo) -> Path:
    run = RunDir(cfg.out, is_main=info.is_main)
    gen = seed_everything(cfg.seed + info.rank)
    teacher: HashModel = load_artifact(cfg.teacher).to(info.device)
    teacher.eval().requires_grad_(False)
    tcfg = teacher.config
    data = prepare_data(cfg.data, cfg.root, cfg.protocol, cfg.seed, max_train=cfg.max_train)
    pool = select_pool(cfg.pool, data, cfg.data) if cfg.pool else None
    train_split = pool.split if pool is not None else data.train
    scfg = ModelConfig(
        backbone=cfg.student,
        bits=cfg.bits or tcfg.bits,
        img_size=cfg.img_size or tcfg.img_size,
        head=cfg.head,
        backbone_kwargs=dict(cfg.student_kwargs),
        mean=tcfg.mean,
        std=tcfg.std,
        role="student",
        freeze_backbone=cfg.freeze_backbone,
    )
    torch.manual_seed(cfg.seed)
    student = build_model(
        scfg,
        pretrained=cfg.pretrained,
        weights=pretrain_weights_file(cfg.student_weights or cfg.backbone_weights),
        strict_weights=bool(cfg.student_weights),
    ).to(info.device)
    student.config.meta = {
        "objective": "+".join((["cibhash"] if cfg.student_cib else []) + cfg.losses),
        "teacher": str(Path(cfg.teacher).resolve()),
        "data": cfg.data,
        "seed": cfg.seed,
        "protocol": data.protocol,
        "cost": model_cost(student),
        "teacher_cost": model_cost(teacher),
    }
    if info.is_main:
        print(
            _cost_line(
                cfg.student, student.config.meta["cost"], student.config.meta["teacher_cost"]
            )
        )
    if pool is not None:
        student.config.meta["pool"] = pool.describe()
    # what the inputs were, not only where: the teacher's tensors and the initial weights' bytes
    student.config.meta["teacher_digest"] = model_digest(teacher)
    student.config.meta["kd_inputs"] = cfg.kd_inputs
    if cfg.student_weights:
        weights_file = pretrain_weights_file(cfg.student_weights)
        student.config.meta["student_weights"] = str(Path(weights_file).resolve())
        student.config.meta["student_weights_sha256"] = file_sha256(weights_file)
    weights = resolve_weights(cfg.losses, cfg.weights)  # each loss's default_weight if None
    t_eval_tf = data.eval_transform(tcfg)
    s_eval_tf = data.eval_transform(scfg)

    # The teacher's codes of the training set or pool (deterministic views): the offline stage
    # of BRCD (clusters), the LSH median bias, CRD's memory size. With kd_inputs="logits" the
    # losses see the teacher's logits, so they are fitted on its logits too.
    cache = TeacherOutputs(cfg.teacher_cache)
    images = (
        images_digest(train_split.source, train_split.indices) if cache.folder is not None else ""
    )
    described = {"teacher": cfg.teacher, "data": cfg.data, "pool": cfg.pool, "seed": cfg.seed}
    teacher_train, _ = cache.get_or_compute(
        outputs_key("images", student.config.meta["teacher_digest"], images, t_eval_tf),
        lambda: split_logits(
            teacher, train_split, t_eval_tf, info.device, num_workers=cfg.num_workers
        ),
        {**described, "kind": "images"},
        write=info.is_main,
    )
    if cfg.kd_inputs != "logits":
        teacher_train = signs(teacher_train)
    losses = build_losses(cfg, scfg.bits, tcfg.bits, len(train_split)).to(info.device)
    for loss in losses:
        loss.fit(teacher_train)

    # what the losses run with (weights, their source, BRCD's bit masks): metadata + log
    losses_meta = loss_setup(cfg.losses, cfg.weights, list(losses))
    loss_fields = epoch_log_fields(cfg.losses, list(losses))
    student.config.meta["losses"] = losses_meta
    if info.is_main:
        print(json.dumps({"losses": losses_meta}), flush=True)
    cib = CIBHashLoss(tau=cfg.tau, beta=cfg.beta)
    optimizer = torch.optim.Adam(trainable_parameters([student, losses]), lr=cfg.lr)
    steps_per_epoch = len(epoch_loader(range(len(train_split)), cfg.batch_size, info, gen, 0, 0))
    schedule = StepSchedule(
        cfg.lr_schedule,
        cfg.lr,
        total_steps=max(1, steps_per_epoch * cfg.epochs),
        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
    )

    start_epoch, best = 0, -math.inf
    if cfg.resume:
        start_epoch, best = resume_from(run, {"model": student, "losses": losses}, optimizer, gen)
        _resume_schedule(run, schedule, start_epoch * steps_per_epoch)
        if start_epoch >= cfg.epochs:
            return Path(cfg.out)
    run.write_json(
        "run.json",
        {
            "kind": "student",
            "config": asdict(cfg),
            "splits": data.summary(),
            "teacher_config": tcfg.to_dict(),
            "losses": losses_meta,
            "teacher_digest": student.config.meta["teacher_digest"],
            "student_weights_sha256": student.config.meta.get("student_weights_sha256"),
            "pool": pool.describe() if pool is not None else None,
            "cost": {
                "student": student.config.meta["cost"],
                "teacher": student.config.meta["teacher_cost"],
            },
            "steps_per_epoch": steps_per_epoch,
        },
    )
    if info.is_main:
        write_config(run.path / CONFIG_NAME, cfg, "distill")

    view_tf = data.view_transform(tcfg)
    use_bank = cfg.view_bank >= 2

    def coded_views(kind: str, seeding: str, code: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The teacher's logits of every view: from the cache, else ``code()`` (then stored)."""
        key = outputs_key(
            kind,
            student.config.meta["teacher_digest"],
            images,
            view_tf,
            num_views=cfg.view_bank,
            seed=cfg.seed,
            view_seeding=seeding,
        )
        described_views = {**described, "kind": kind, "views": cfg.view_bank}
        return cache.get_or_compute(key, code, described_views, write=info.is_main)[0]

    streamed = use_bank and pool is not None
    if streamed:
        bank = StreamedViewBank(
            train_split.source, train_split.indices, view_tf, cfg.view_bank, seed=cfg.seed
        )

        def code_views() -> torch.Tensor:
            bank.code(
                lambda x: teacher(x.to(info.device)),
                num_workers=cfg.num_workers,
                progress=cfg.progress and info.is_main,
                desc="teacher codes of the pool's views",
                keep_logits=True,
            )
            return bank.logits

        view_logits = coded_views("views", VIEW_SEEDING, code_views)
        bank.use_logits(view_logits, keep_logits=cfg.kd_inputs == "logits")
    elif use_bank:
        bank = ViewBank.build(
            data.train.source,
            data.train.indices,
            view_tf,
            cfg.view_bank,
            seed=cfg.seed,
            progress=cfg.progress and info.is_main,
        )
        t_logits = coded_views(
            "bank",
            BANK_SEEDING,
            lambda: bank.map_views(
                lambda x: teacher(x.to(info.device)),
                progress=cfg.progress and info.is_main,
                desc="teacher codes of the view bank",
            ),
        )
    ddp_student = DDP(student) if info.enabled else student
    timer = Timer()
    for epoch in range(start_epoch, cfg.epochs):
        student.train()
        losses.train()
        if streamed:
            ds = bank.epoch_dataset(bank.pick_pairs(gen))
        elif use_bank:
            ds = PairIndexDataset(bank.pick_pairs(gen))
        else:
            ds = TwoViewDataset(train_split.source, train_split.indices, view_tf)
        in_memory = use_bank and not streamed
        loader = epoch_loader(
            ds, cfg.batch_size, info, gen, cfg.seed, epoch, 0 if in_memory else cfg.num_workers
        )
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and info.is_main),
            leave=False,
        )
        for batch in bar:
            if streamed:
                x1, x2, idx, a, b = batch
                if cfg.kd_inputs == "logits":
                    tu1, tu2 = bank.outputs(idx, a), bank.outputs(idx, b)
                else:
                    tu1, tu2 = bank.signs(idx, a), bank.signs(idx, b)
                tu1, tu2 = tu1.to(info.device), tu2.to(info.device)
            elif use_bank:
                idx, a, b = batch
                x1 = bank.views[idx, a].float()
                x2 = bank.views[idx, b].float()
                tu1, tu2 = t_logits[idx, a].to(info.device), t_logits[idx, b].to(info.device)
            else:
                x1, x2, idx = batch
                with torch.no_grad():
                    tu = teacher(torch.cat([x1, x2]).to(info.device))
                tu1, tu2 = tu.chunk(2)
            xs = _renormalize(torch.cat([x1, x2]), tcfg, scfg).to(info.device)
            if scfg.img_size != tcfg.img_size:
                xs = torch.nn.functional.interpolate(
                    xs,
                    size=(scfg.img_size, scfg.img_size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
            u = ddp_student(xs)
            u1, u2 = u.chunk(2)
            p1, p2 = torch.sigmoid(u1), torch.sigmoid(u2)
            b1, b2 = cib.binarize(p1), cib.binarize(p2)
            kd_batch = kd_inputs(cfg.kd_inputs, (u1, u2), (b1, b2), (tu1, tu2), idx.to(info.device))
            parts: dict[str, torch.Tensor] = {}
            if cfg.student_cib:
                parts["cibhash"] = cib(u1, u2)
            for name, w, loss in zip(cfg.losses, weights, losses, strict=True):
                parts[name] = w * loss(kd_batch)
            total = torch.stack(list(parts.values())).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            lr = schedule.apply(optimizer)
            optimizer.step()
            schedule.advance()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
            count += 1
            bar.set_postfix(loss=f"{float(total.detach()):.4f}")
        record: dict[str, Any] = {"epoch": epoch + 1, "elapsed_s": round(timer.elapsed(), 2)}
        if count:
            record["lr"] = lr
        record.update({k: all_reduce_mean(v / max(count, 1), info) for k, v in sums.items()})
        record.update(loss_fields)
        best = end_epoch(
            run,
            info,
            student,
            record,
            cfg.epochs,
            cfg.val_every,
            best,
            validate=lambda: validation_map(
                student, data.val, data.val_database, s_eval_tf, info.device
            ),
            checkpoint=lambda b, e=epoch + 1: {
                **checkpoint_state({"model": student, "losses": losses}, optimizer, e, b, gen),
                "lr_schedule": schedule.state_dict(),
            },
        )
    return Path(cfg.out)


def kd_inputs(
    kind: str,
    student_logits: tuple[torch.Tensor, torch.Tensor],
    student_codes: tuple[torch.Tensor, torch.Tensor],
    teacher_logits: tuple[torch.Tensor, torch.Tensor],
    index: torch.Tensor,
) -> DistillBatch:
    """The batch the KD losses read. ``codes``: the student's straight-through ±1 codes against
    the teacher's ±1 codes (the signs of its logits). ``logits``: the student's pre-sign logits
    (with their gradient) against the teacher's, unchanged (detached inside every loss)."""
    if kind == "logits":
        (s1, s2), (t1, t2) = student_logits, teacher_logits
    else:
        s1, s2 = student_codes
        t1, t2 = (signs(t) for t in teacher_logits)
    return DistillBatch(s1=s1, s2=s2, t1=t1, t2=t2, index=index.long())


def _resume_schedule(run: RunDir, schedule: StepSchedule, expected_step: int) -> None:
    """Restore the schedule of the checkpoint (runs before schedules existed: constant only)."""
    saved = run.load_checkpoint().get("lr_schedule")
    if saved is None:
        if schedule.kind != "constant" or schedule.warmup_steps:
            raise ValueError(
                f"--resume: the checkpoint has no learning-rate schedule, so lr-schedule={schedule.kind!r} "
                "with warm-up cannot continue it: expected --lr-schedule constant and no warm-up"
            )
        schedule.step = expected_step
        return
    schedule.load_state_dict(saved)
    if schedule.step != expected_step:
        raise ValueError(
            f"--resume: the checkpoint is at step {schedule.step}, but its epochs of this run's size end at "
            f"step {expected_step}: expected the same training images and batch size"
        )


def _cost_line(name: str, student: dict[str, Any], teacher: dict[str, Any]) -> str:
    """One line comparing the student's and the teacher's size and FLOPs."""
    return (
        f"student {name}: {student['params'] / 1e6:.2f} M parameters, "
        f"{student['flops'] / 1e6:.1f} MFLOPs at {student['img_size']} px; teacher: "
        f"{teacher['params'] / 1e6:.2f} M, {teacher['flops'] / 1e6:.1f} MFLOPs at "
        f"{teacher['img_size']} px ({teacher['flops'] / max(1, student['flops']):.1f}x the student's FLOPs)"
    )
