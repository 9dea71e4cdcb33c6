"""``hashkd demo``: the whole system end to end on the embedded digits (or a user's folder).

Stages, each leaving its artifact in the work directory and printing the command that
reproduces it by hand:

0. time plan: a few measured training steps on the data, an estimate of every stage, and
   epochs chosen to fit ``budget_minutes`` (hashkd/demo_budget.py, docs/demo.md)
1. train a ViT teacher with CIBHash                       -> teacher/
2. distil a compact student without KD (CIBHash only)      -> student_nokd/
3. distil the student with BRCD                           -> student_brcd/
4. export the BRCD student to ONNX                        -> student_brcd_onnx/
5. encode the database with the teacher (asymmetric)      -> codes/db_teacher/ (+ the others for the table)
6. build a FAISS index of the teacher codes and search it offline -> index.faiss
7. start the REST service (student queries) on store/, loading the teacher-coded database
   (codes, labels, file paths, thumbnails) from codes/db_teacher/; POST query images
8. a symmetric service with the student: images added by upload are found at distance 0
9. print the hits and the results table; stop the servers.

The demo is an orchestrator above the command line: the training side runs in this process
through :mod:`hashkd.pipeline` (typed stage configs, the printed command rendered from the same
config), the evaluation through :mod:`hashkd.evaluation`; ``hashkd index build`` and
``hashkd serve`` run as child processes, since ``hashkd`` never imports ``indexes`` or
``service`` (docs/ARCHITECTURE.md). A second run in the same work directory reuses the trained
artifacts and the store when it already holds exactly the teacher-coded database (the service
loads the code set idempotently), and rebuilds the store otherwise. A failing stage raises :class:`DemoError` (one sentence naming the stage).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hashkd.codes import CodeSet
from hashkd.demo_budget import (
    BUDGET_MINUTES,
    EpochChoice,
    StageCosts,
    choose_epochs,
    format_duration,
    measure_rates,
    stage_estimates,
)
from hashkd.evaluation import collapse_warnings, evaluate_code_sets, markdown_table
from hashkd.pipeline import (
    EncodeConfig,
    ExportConfig,
    StageConfig,
    run_stage,
    shell_command,
)
from hashkd.training.distill import DistillConfig
from hashkd.training.teacher import TeacherConfig

STAGES = 9
TOPK = 1000
RADIUS = 2
#: The epochs the demo prefers (today's defaults), and those of ``--quick``.
TEACHER_EPOCHS, STUDENT_EPOCHS = 30, 20
QUICK_EPOCHS = 2


class DemoError(ValueError):
    """A demo stage failed; the message names the stage and the cause in one sentence."""


@dataclass
class DemoConfig:
    workdir: str
    data: str = "digits"
    root: str | None = None
    bits: int = 64
    quick: bool = False
    keep_serving: bool = False
    port: int | None = None
    seed: int = 0
    teacher_epochs: int | None = None  # None: chosen to fit budget_minutes (at most 30)
    student_epochs: int | None = None  # None: chosen to fit budget_minutes (at most 20)
    budget_minutes: float = BUDGET_MINUTES
    max_train: int | None = None
    queries_to_show: int = 5
    progress: bool = False
    fresh: bool = False
    cache: str = "auto"
    cache_dir: str = ".hashkd-cache"
    strict: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.budget_minutes > 0:
            raise ValueError(
                f"--budget-minutes {self.budget_minutes} is not valid: expected a positive number"
            )
        if self.quick:
            if self.teacher_epochs is not None:
                self.teacher_epochs = min(self.teacher_epochs, QUICK_EPOCHS)
            if self.student_epochs is not None:
                self.student_epochs = min(self.student_epochs, QUICK_EPOCHS)
            self.max_train = self.max_train or 200

    @property
    def preferred_epochs(self) -> tuple[int, int]:
        """The (teacher, student) epochs run when the budget allows: 30 / 20, or 2 / 2 quick."""
        if self.quick:
            return QUICK_EPOCHS, QUICK_EPOCHS
        return TEACHER_EPOCHS, STUDENT_EPOCHS

    def epochs(self) -> tuple[int, int]:
        """The (teacher, student) epochs: the explicit ones, else the preferred ones."""
        pt, ps = self.preferred_epochs
        return self.teacher_epochs or pt, self.student_epochs or ps


# ----------------------------------------------------------------------------- stage configs


def teacher_config(cfg: DemoConfig, out: Path) -> TeacherConfig:
    """Stage 1: a conv-stem ViT (hashkd.models.backbones) trained with CIBHash."""
    epochs = cfg.epochs()[0]
    return TeacherConfig(
        out=str(out),
        data=cfg.data,
        root=cfg.root,
        seed=cfg.seed,
        backbone="vitc_micro",
        backbone_kwargs={"global_pool": "avg", "class_token": False, "patch_size": 4},
        bits=cfg.bits,
        epochs=epochs,
        lr=1e-3,
        val_every=max(1, epochs // 3),
        max_train=cfg.max_train,
        progress=cfg.progress,
    )


def student_config(cfg: DemoConfig, teacher: Path, out: Path, losses: list[str]) -> DistillConfig:
    """Stages 2 and 3: a MobileNetV3 student, distilled with ``losses`` (none: CIBHash only)."""
    epochs = cfg.epochs()[1]
    return DistillConfig(
        out=str(out),
        teacher=str(teacher),
        student="mobilenetv3_small_050",
        losses=losses,
        loss_options={"brcd": {"k": 10}} if "brcd" in losses else {},
        data=cfg.data,
        root=cfg.root,
        seed=cfg.seed,
        bits=cfg.bits,
        epochs=epochs,
        val_every=max(1, epochs // 3),
        view_bank=6,
        max_train=cfg.max_train,
        progress=cfg.progress,
    )


# ----------------------------------------------------------------------------- helpers


def _say(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        r = exc.response
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        return f"{r.request.method} {r.request.url} answered {r.status_code}: {detail}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _stage(n: int, title: str, seconds: dict[int, float] | None = None) -> Iterator[None]:
    """Print the stage's header; turn any failure inside it into one :class:`DemoError`.

    Stage 0 is the time plan before the stages. ``seconds[n]`` gets the stage's wall time.
    """
    label = "time plan" if n == 0 else f"stage {n}/{STAGES}"
    _say(f"\n=== [{n}/{STAGES}] {title}")
    t0 = time.perf_counter()
    try:
        yield
    except (DemoError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise DemoError(f"{label} ({title}) failed: {_first_line(exc)}") from exc
    if seconds is not None:
        seconds[n] = time.perf_counter() - t0


def _run(stage: StageConfig) -> Path:
    _say("$ " + shell_command(stage))
    return run_stage(stage)


def _run_child(args: list[str]) -> None:
    """``hashkd ARGS`` in a child process (for the commands of ``indexes`` and ``service``)."""
    _say("$ hashkd " + shlex.join(args))
    done = subprocess.run(
        [sys.executable, "-m", "hashkd", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    if done.stdout:
        _say(done.stdout.rstrip())
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        why = lines[-1] if lines else "no message"
        raise DemoError(
            f"'hashkd {' '.join(args[:2])}' failed with exit code {done.returncode}: {why}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``hashkd serve`` in a child process on 127.0.0.1, stopped with SIGINT (graceful)."""

    def __init__(self, args: list[str], port: int, log: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.args = ["serve", *args, "--host", "127.0.0.1", "--port", str(port)]
        _say("$ hashkd " + shlex.join(self.args))
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop(), outlives this call
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hashkd", *self.args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(
                    f"the service exited with code {self.proc.returncode}; see {self.log.name}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise DemoError(
            f"the service did not become ready within {timeout:.0f} s; see {self.log.name}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _start(args: list[str], port: int, log: Path) -> Server:
    server = Server(args, port, log)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _encode_speed(model_dir: Path, images: list, backend: str = "auto") -> tuple[float, str]:
    from hashkd.runtime import Encoder

    enc = Encoder.from_artifact(model_dir, backend=backend)
    enc.encode(images[:8])  # warm-up
    t0 = time.perf_counter()
    enc.encode(images, batch_size=64)
    return len(images) / (time.perf_counter() - t0), enc.backend


# ----------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class StorePlan:
    """What to do with the service's store before the queries, and why (printed)."""

    action: Literal["add", "reuse", "rebuild"]
    reason: str


def plan_store(expected: int, stored_items: int, loaded: Mapping[str, Any] | None) -> StorePlan:
    """Decide, after the service started with ``--codes``, whether its store is the database.

    ``expected`` is the number of database codes, ``stored_items`` the store's item count
    (``/v1/info`` ``items``) and ``loaded`` what the service's start-up load of the code set
    did (``/v1/info`` ``codes``: ``added``, ``already_stored``). The service itself refuses a
    store holding a database id for another image; a store holding more items than the
    database (or fewer: items deleted since) is rebuilt.
    """
    if stored_items != expected:
        return StorePlan(
            "rebuild",
            f"the store holds {stored_items} items, not the {expected} of the database: rebuilding it",
        )
    added = int((loaded or {}).get("added", 0))
    if added == 0:
        return StorePlan(
            "reuse", f"reusing the store: it holds exactly the {expected} database items"
        )
    if added == expected:
        return StorePlan(
            "add",
            f"the service loaded the {expected} teacher-coded database items (codes, labels, "
            "file paths, thumbnails) from the code set at start-up",
        )
    return StorePlan("add", f"the service added the {added} database items the store was missing")


def database_server_args(
    query_model: Path, database_model: Path, store: Path, codes: Path
) -> list[str]:
    """The ``hashkd serve`` arguments of the demo's service: student queries, a teacher-coded
    database loaded from the code set ``codes`` at start-up (with paths and thumbnails)."""
    return [
        "--model",
        str(query_model),
        "--database-model",
        str(database_model),
        "--store",
        str(store),
        "--codes",
        str(codes),
    ]


def serve_database(
    args: list[str], port: int, log: Path, store: Path, db_dir: Path
) -> tuple[Server, StorePlan]:
    """Start ``hashkd serve ARGS`` (which load the code set ``db_dir``) on ``store`` and make
    sure it holds exactly that code set: a store the service cannot open or load the codes
    into, or one with other items, is rebuilt."""
    import httpx

    expected = len(CodeSet.load(db_dir))
    existed = store.exists()
    try:
        server = _start(args, port, log)
    except DemoError as exc:
        if not existed:
            raise
        _say(f"the service could not use the existing store ({exc}): rebuilding it")
        shutil.rmtree(store)
        return serve_database(args, port, log, store, db_dir)
    try:
        info = httpx.get(server.url + "/v1/info", timeout=10).json()
        plan = plan_store(expected, int(info["items"]), info.get("codes"))
        _say(plan.reason)
        if plan.action == "rebuild":
            server.stop()
            shutil.rmtree(store)
            server = _start(args, port, log)
            info = httpx.get(server.url + "/v1/info", timeout=10).json()
        _say(f"store: {info['items']} items; index: {info['index']['size']} codes")
        if info["items"] != expected or info["index"]["size"] != expected:
            raise DemoError(
                f"the service holds {info['items']} items and indexes {info['index']['size']} "
                f"codes: expected the {expected} database codes"
            )
    except BaseException:
        server.stop()
        raise
    return server, plan


# ----------------------------------------------------------------------------- the demo


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every stage (reusing the artifacts of an earlier run); the results (also as JSON).

    Before the stages, a short warm-up measures the training speed on the data and the epochs
    are chosen to fit ``cfg.budget_minutes`` (:func:`plan_time`); at the end the estimate is
    printed beside the time taken. Image files are read with ``cfg``'s cache / strict options at
    the working size of the models' image size.
    """
    from hashkd.data import use_data_options

    w = Path(cfg.workdir).resolve()
    w.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    stage_s: dict[int, float] = {}
    options = use_data_options(
        cache=cfg.cache,
        cache_dir=cfg.cache_dir,
        strict=cfg.strict,
        img_size=demo_img_size(cfg),
        progress=cfg.progress,
    )
    with options as report:
        with _stage(0, "measure a few training steps on the data to plan the time", stage_s):
            cfg, plan = plan_time(cfg, w)
        result = _run_stages(cfg, w, stage_s)
    skipped = report.summary()
    if skipped:
        _warn(skipped)
    total = round(time.perf_counter() - t_start, 1)
    _say(f"\nall stages done in {total} s; artifacts in {w}")
    result["time"] = _time_report(plan, stage_s)
    if plan is not None:
        _say(result["time"]["line"])
    result["skipped_files"] = dict(report.skipped)
    result["timings"] = cfg.timings
    result["total_s"] = total
    (w / "demo_results.json").write_text(json.dumps(result, indent=2))
    return result


def demo_img_size(cfg: DemoConfig) -> int:
    """The larger of the teacher's and the student's image sizes (files are decoded for it)."""
    teacher = teacher_config(cfg, Path("teacher"))
    student = student_config(cfg, Path("teacher"), Path("student"), ["brcd"])
    return max(teacher.img_size, student.img_size or teacher.img_size)


@dataclass(frozen=True)
class TimePlan:
    """The epochs chosen before the stages and the estimate per stage group (seconds)."""

    choice: EpochChoice
    stages: dict[str, float]  # teacher, students, encode, other
    warm_up_s: float


def _workload(cfg: DemoConfig, w: Path) -> tuple[bool, int]:
    """Whether the teacher stage runs, and how many student stages do (the rest are reused)."""

    def runs(name: str) -> bool:
        return cfg.fresh or not (w / name / "config.json").is_file()

    return runs("teacher"), int(runs("student_nokd")) + int(runs("student_brcd"))


def plan_time(cfg: DemoConfig, w: Path) -> tuple[DemoConfig, TimePlan | None]:
    """Measure a few training steps, estimate every stage, choose the epochs; print the plan.

    Returns ``cfg`` with the chosen epochs and the plan (``None`` when nothing is trained).
    """
    teacher_runs, students = _workload(cfg, w)
    if not teacher_runs and not students:
        _say("every trained artifact is reused: no epochs to choose")
        return cfg, None
    t0 = time.perf_counter()
    rates, work = measure_rates(
        teacher_config(cfg, w / "teacher"),
        student_config(cfg, w / "teacher", w / "student_brcd", ["brcd"]),
    )
    warm_up = time.perf_counter() - t0
    work = replace(work, teacher=teacher_runs, students=students)
    first: StageCosts = stage_estimates(rates, work, *cfg.epochs())
    budget = 60.0 * cfg.budget_minutes
    explicit = (cfg.teacher_epochs, cfg.student_epochs)
    choice = choose_epochs(first, budget, cfg.preferred_epochs, explicit)
    te, se = choice.teacher_epochs, choice.student_epochs
    stages = stage_estimates(rates, work, te, se).stages(te, se)
    _say(
        f"data: {work.train} training, {work.val} validation, {work.query} query and "
        f"{work.database} database images; warm-up {format_duration(warm_up)}: "
        f"{1000 * rates.teacher_s:.2f} ms per image and epoch for the teacher, "
        f"{1000 * rates.student_s:.2f} ms for a student, {1000 * rates.encode_s:.2f} ms to encode"
    )
    why = {
        "defaults": "the defaults fit",
        "budget": f"fewer than the defaults {'/'.join(map(str, cfg.preferred_epochs))} to fit",
        "explicit": "as given; not fitted to",
    }[choice.reason]
    parts = ", ".join(f"{k} {format_duration(v)}" for k, v in stages.items() if v)
    _say(
        f"epochs: teacher {te}, students {se} ({why} the budget of "
        f"{format_duration(budget)}, --budget-minutes): estimate {format_duration(sum(stages.values()))} "
        f"({parts})"
    )
    if choice.warning:
        _warn(f"hashkd: warning: {choice.warning}")
    return replace(cfg, teacher_epochs=te, student_epochs=se), TimePlan(choice, stages, warm_up)


def _time_report(plan: TimePlan | None, stage_s: dict[int, float]) -> dict[str, Any]:
    """Estimated and actual seconds per stage group, and the line that compares them."""
    actual = {
        "teacher": stage_s.get(1, 0.0),
        "students": stage_s.get(2, 0.0) + stage_s.get(3, 0.0),
        "encode": stage_s.get(5, 0.0),
        "other": sum(v for k, v in stage_s.items() if k in (4, 6, 7, 8, 9)),
    }
    actual = {k: round(v, 1) for k, v in actual.items()}
    if plan is None:
        return {"actual_s": actual}
    estimate = {k: round(v, 1) for k, v in plan.stages.items()}
    parts = ", ".join(
        f"{k} {format_duration(estimate.get(k, 0.0))} / {format_duration(v)}"
        for k, v in actual.items()
    )
    line = (
        f"time: estimated {format_duration(sum(estimate.values()))}, took "
        f"{format_duration(sum(actual.values()))} after a {format_duration(plan.warm_up_s)} "
        f"warm-up (estimate / actual: {parts})"
    )
    return {
        "estimate_s": estimate,
        "actual_s": actual,
        "warm_up_s": round(plan.warm_up_s, 1),
        "teacher_epochs": plan.choice.teacher_epochs,
        "student_epochs": plan.choice.student_epochs,
        "epochs_chosen_by": plan.choice.reason,
        "budget_s": plan.choice.budget_s,
        "line": line,
    }


def _run_stages(cfg: DemoConfig, w: Path, stage_s: dict[int, float]) -> dict[str, Any]:
    """Stages 1 to 9; the results (without the time report)."""
    import httpx

    from hashkd.encoding import encode_dataset, select_split

    def timed(name: str, stage: StageConfig, artifact: Path) -> None:
        if (artifact / "config.json").is_file() and not cfg.fresh:
            _say(f"reusing {artifact} (delete it, or pass --fresh, to run this stage again)")
            return
        t0 = time.perf_counter()
        _run(stage)
        cfg.timings[name] = round(time.perf_counter() - t0, 1)

    teacher = w / "teacher"
    with _stage(1, "train the ViT teacher (conv-stem ViT) with CIBHash (no labels)", stage_s):
        timed("teacher", teacher_config(cfg, teacher), teacher)

    nokd = w / "student_nokd"
    with _stage(2, "distil a MobileNetV3 student without KD (its own CIBHash term only)", stage_s):
        timed("student_nokd", student_config(cfg, teacher, nokd, []), nokd)

    brcd = w / "student_brcd"
    with _stage(3, "distil the MobileNetV3 student with BRCD", stage_s):
        timed("student_brcd", student_config(cfg, teacher, brcd, ["brcd"]), brcd)

    onnx_dir = w / "student_brcd_onnx"
    with _stage(4, "export the BRCD student to ONNX", stage_s):
        timed("export", ExportConfig(model_dir=str(brcd), out=str(onnx_dir)), onnx_dir)

    codes = w / "codes"
    names = {
        "teacher": "teacher",
        "nokd": "student, no KD",
        "brcd": "student, BRCD",
        "asym": "student, BRCD (teacher database)",
    }
    with _stage(
        5, "encode queries and database (the database with the teacher: asymmetric)", stage_s
    ):
        _run(
            EncodeConfig(
                model=str(teacher),
                data=cfg.data,
                root=cfg.root,
                split="database",
                seed=cfg.seed,
                progress=False,
                out=str(codes / "db_teacher"),
            )
        )
        query_ds, qinfo = select_split(cfg.data, root=cfg.root, split="query", seed=cfg.seed)
        db_ds, dinfo = select_split(cfg.data, root=cfg.root, split="database", seed=cfg.seed)
        sets: dict[str, CodeSet] = {"db_teacher": CodeSet.load(codes / "db_teacher")}
        for name, model in (("teacher", teacher), ("nokd", nokd), ("brcd", brcd)):
            sets[f"q_{name}"] = encode_dataset(model, query_ds, progress=False, meta=qinfo)
            if name != "teacher":
                sets[f"db_{name}"] = encode_dataset(model, db_ds, progress=False, meta=dinfo)
        for name, cs in sets.items():
            cs.save(codes / name)
        pairs = {
            "teacher": ("q_teacher", "db_teacher"),
            "nokd": ("q_nokd", "db_nokd"),
            "brcd": ("q_brcd", "db_brcd"),
            "asym": ("q_brcd", "db_teacher"),
        }
        results = {
            key: evaluate_code_sets(sets[q], sets[d], topk=TOPK, radius=RADIUS, curves=False)
            for key, (q, d) in pairs.items()
        }
        for key, result in results.items():
            for line in collapse_warnings(result, names[key]):
                _warn(line)

    with _stage(
        6, "build a FAISS index of the teacher-coded database and search it offline", stage_s
    ):
        _run_child(
            [
                "index",
                "build",
                str(codes / "db_teacher"),
                "--index-spec",
                "flat",
                "--out",
                str(w / "index.faiss"),
            ]
        )
        _run_child(
            [
                "index",
                "search",
                str(w / "index.faiss"),
                "--query",
                str(codes / "q_brcd"),
                "--k",
                "5",
                "--json-out",
                str(w / "index_hits.json"),
            ]
        )

    hits_out: list[dict[str, Any]] = []
    with _stage(7, "serve: student queries against the teacher-coded database over REST", stage_s):
        server, store_plan = serve_database(
            database_server_args(onnx_dir, teacher, w / "store", codes / "db_teacher"),
            cfg.port or _free_port(),
            w / "service.log",
            w / "store",
            codes / "db_teacher",
        )
        try:
            class_names = getattr(query_ds, "class_names", None)
            query_paths = sets["q_teacher"].paths
            for i in range(min(cfg.queries_to_show, len(query_ds))):
                img = query_ds.load_image(i)
                label = int(np.argmax(query_ds.labels[i]))
                r = httpx.post(
                    server.url + "/v1/search",
                    params={"k": 5},
                    files={"image": (f"query{i}.png", _png(img), "image/png")},
                    timeout=60,
                )
                r.raise_for_status()
                res = r.json()
                hits_out.append(
                    {
                        "query": i,
                        "label": label,
                        "results": res["results"],
                        "took_ms": res["took_ms"],
                    }
                )
                shown = []
                for h in res["results"]:
                    labs = (h.get("metadata") or {}).get("labels")
                    hit_label = labs[0] if isinstance(labs, list) and labs else "?"
                    mark = "+" if hit_label == label else "-"
                    hit_name = (
                        class_names[hit_label]
                        if class_names and isinstance(hit_label, int)
                        else hit_label
                    )
                    path = (h.get("metadata") or {}).get("path")
                    name = path if isinstance(path, str) else h["id"]
                    shown.append(f"{name}(d={h['distance']},{hit_name}{mark})")
                qname = class_names[label] if class_names else label
                if query_paths is not None:
                    qname = f"{query_paths[i]}, {qname}"
                _say(
                    f"query {i} [{qname}] -> " + "  ".join(shown) + f"   ({res['took_ms']:.1f} ms)"
                )
            if cfg.keep_serving:
                _say(f"\nserving on {server.url} (web page: {server.url}/) -- Ctrl-C to stop")
                with contextlib.suppress(KeyboardInterrupt):
                    server.proc.wait()
        finally:
            server.stop()

    n_check = min(20, len(db_ds))
    with _stage(8, "symmetric check: images added by upload are found at distance 0", stage_s):
        check_store = w / "store_symmetric"
        if check_store.exists():
            shutil.rmtree(check_store)
        _say(f"a new store for this check: {check_store}")
        server = _start(
            ["--model", str(onnx_dir), "--store", str(check_store)],
            _free_port(),
            w / "service_symmetric.log",
        )
        try:
            ids = [int(x) for x in sets["db_brcd"].ids[:n_check]]
            files = [
                ("images", (f"db{i}.png", _png(db_ds.load_image(i)), "image/png"))
                for i in range(n_check)
            ]
            r = httpx.post(
                server.url + "/v1/items",
                files=files,
                data={"ids": ",".join(map(str, ids))},
                timeout=120,
            )
            r.raise_for_status()
            # radius 0: every stored item with exactly the query's code (several, if codes collide)
            r = httpx.post(
                server.url + "/v1/search/batch", params={"radius": 0}, files=files, timeout=120
            )
            r.raise_for_status()
            found = sum(
                1
                for i, res in zip(ids, r.json()["results"], strict=True)
                if any(h["id"] == i and h["distance"] == 0 for h in res)
            )
        finally:
            server.stop()
        _say(f"{found}/{n_check} uploaded images came back as their own id at distance 0")

    with _stage(9, "results", stage_s):
        images = [db_ds.load_image(i) for i in range(min(256, len(db_ds)))]
        t_speed, t_backend = _encode_speed(teacher, images)
        s_speed, s_backend = _encode_speed(onnx_dir, images)
        table = markdown_table(
            list(results.values()), [names[k] for k in results], name_header="model"
        )
        lines = [
            table,
            "| encoder | images/s (batch 64) | backend |",
            "|---|---|---|",
            f"| teacher ViT | {t_speed:.0f} | {t_backend} |",
            f"| student MobileNetV3 | {s_speed:.0f} | {s_backend} |",
        ]
        _say("\n".join(lines))
    return {
        "table": {names[k]: v for k, v in results.items()},
        "encode_images_per_s": {"teacher": t_speed, "student": s_speed},
        "self_check": {"found": found, "checked": n_check},
        "store": {"action": store_plan.action, "reason": store_plan.reason},
        "hits": hits_out,
        "workdir": str(w),
    }
