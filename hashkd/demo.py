"""``hashkd demo``: the whole system end to end on the embedded digits (or a user's folder).

Stages, each leaving its artifact in the work directory and printing the command that
reproduces it by hand:

1. train a ViT teacher with CIBHash                       -> teacher/
2. distil a compact student without KD (CIBHash only)      -> student_nokd/
3. distil the student with BRCD                           -> student_brcd/
4. export the BRCD student to ONNX                        -> student_brcd_onnx/
5. encode the database with the teacher (asymmetric)      -> codes/db_teacher/ (+ the others for the table)
6. build a FAISS index of the teacher codes               -> index.faiss
7. start the REST service (student queries, teacher database), add the codes, POST query images
8. a symmetric service with the student: images added by upload are found at distance 0
9. print the hits and the results table; stop the servers.

The training side runs in this process through :func:`hashkd.cli.main` with exactly the
printed arguments; the service runs as ``hashkd serve`` in a child process.
``hashkd`` never imports ``indexes`` or ``service`` (DESIGN.md): they are reached only
through their commands.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashkd.codes import CodeSet


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
    teacher_epochs: int = 30
    student_epochs: int = 20
    max_train: int | None = None
    queries_to_show: int = 5
    progress: bool = False
    fresh: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.quick:
            self.teacher_epochs = min(self.teacher_epochs, 2)
            self.student_epochs = min(self.student_epochs, 2)
            self.max_train = self.max_train or 200


def _say(text: str) -> None:
    print(text, flush=True)


def _stage(n: int, title: str) -> None:
    _say(f"\n=== [{n}/9] {title}")


def _run_cli(args: list[str]) -> None:
    from hashkd.cli import main

    _say("$ hashkd " + shlex.join(args))
    code = main(args)
    if code:
        raise RuntimeError(f"stage 'hashkd {args[0]}' failed with exit code {code}")


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
                raise RuntimeError(
                    f"the service exited with code {self.proc.returncode}; see {self.log.name}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(
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


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _evaluate(q: CodeSet, d: CodeSet, topk: int) -> dict[str, float]:
    from hashkd.metrics import evaluate_codes

    r = evaluate_codes(
        q.codes, d.codes, q.labels, d.labels, topk=min(topk, len(d)), radius=2, curves=False
    )
    return {"map": float(r["map"]), "p_r2": float(r["precision_at_radius"])}


def _encode_speed(model_dir: Path, images: list, backend: str = "auto") -> tuple[float, str]:
    from hashkd.runtime import Encoder

    enc = Encoder.from_artifact(model_dir, backend=backend)
    enc.encode(images[:8])  # warm-up
    t0 = time.perf_counter()
    enc.encode(images, batch_size=64)
    return len(images) / (time.perf_counter() - t0), enc.backend


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    import httpx

    from hashkd.encoding import encode_dataset, select_split

    w = Path(cfg.workdir).resolve()
    w.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data_args = (
        ["--data", cfg.data]
        + (["--root", cfg.root] if cfg.root else [])
        + ["--seed", str(cfg.seed)]
    )
    common = [*data_args, "--bits", str(cfg.bits)] + (
        ["--max-train", str(cfg.max_train)] if cfg.max_train else []
    )
    if not cfg.progress:
        common.append("--no-progress")

    def timed(name: str, fn, artifact: Path | None = None) -> Any:
        if artifact is not None and (artifact / "config.json").is_file() and not cfg.fresh:
            _say(f"reusing {artifact} (delete it, or pass --fresh, to run this stage again)")
            return None
        t0 = time.perf_counter()
        out = fn()
        cfg.timings[name] = round(time.perf_counter() - t0, 1)
        return out

    _stage(
        1, "train the ViT teacher (conv-stem ViT, hashkd.models.backbones) with CIBHash (no labels)"
    )
    teacher = w / "teacher"
    timed(
        "teacher",
        lambda: _run_cli(
            [
                "train-teacher",
                *common,
                "--backbone",
                "vitc_micro",
                "--backbone-kwargs",
                "global_pool=avg,class_token=false",
                "--epochs",
                str(cfg.teacher_epochs),
                "--lr",
                "1e-3",
                "--val-every",
                str(max(1, cfg.teacher_epochs // 3)),
                "--out",
                str(teacher),
            ]
        ),
        teacher,
    )

    student_common = [
        *common,
        "--teacher",
        str(teacher),
        "--student",
        "mobilenetv3_small_050",
        "--epochs",
        str(cfg.student_epochs),
        "--val-every",
        str(max(1, cfg.student_epochs // 3)),
        "--view-bank",
        "6",
    ]
    _stage(2, "distil a MobileNetV3 student without KD (its own CIBHash term only)")
    nokd = w / "student_nokd"
    timed(
        "student_nokd",
        lambda: _run_cli(["distill", *student_common, "--loss", "none", "--out", str(nokd)]),
        nokd,
    )

    _stage(3, "distil the MobileNetV3 student with BRCD")
    brcd = w / "student_brcd"
    timed(
        "student_brcd",
        lambda: _run_cli(
            [
                "distill",
                *student_common,
                "--loss",
                "brcd",
                "--loss-opt",
                "brcd.k=10",
                "--out",
                str(brcd),
            ]
        ),
        brcd,
    )

    _stage(4, "export the BRCD student to ONNX")
    onnx_dir = w / "student_brcd_onnx"
    timed(
        "export",
        lambda: _run_cli(["export", str(brcd), "--format", "onnx", "--out", str(onnx_dir)]),
        onnx_dir,
    )

    _stage(5, "encode queries and database (the database with the teacher: asymmetric)")
    codes = w / "codes"
    _run_cli(
        [
            "encode",
            str(teacher),
            *data_args,
            "--split",
            "database",
            "--out",
            str(codes / "db_teacher"),
            "--no-progress",
        ]
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
    topk = 1000
    table = {
        "teacher (symmetric)": _evaluate(sets["q_teacher"], sets["db_teacher"], topk),
        "student, no KD (symmetric)": _evaluate(sets["q_nokd"], sets["db_nokd"], topk),
        "student, BRCD (symmetric)": _evaluate(sets["q_brcd"], sets["db_brcd"], topk),
        "student, BRCD (asymmetric: teacher database)": _evaluate(
            sets["q_brcd"], sets["db_teacher"], topk
        ),
    }

    _stage(6, "build the FAISS index of the teacher-coded database")
    _run_cli(
        [
            "index",
            "build",
            str(codes / "db_teacher"),
            "--spec",
            "flat",
            "--out",
            str(w / "index.faiss"),
        ]
    )

    _stage(7, "serve: student queries against the teacher-coded database over REST")
    port = cfg.port or _free_port()
    store = w / "store"
    server = Server(
        ["--model", str(onnx_dir), "--database-model", str(teacher), "--store", str(store)],
        port,
        w / "service.log",
    )
    hits_out: list[dict[str, Any]] = []
    try:
        server.wait_ready()
        info = httpx.get(server.url + "/v1/info", timeout=10).json()
        if info.get("size", info.get("index_size", 0)) == 0:
            db = codes / "db_teacher"
            files = {
                "codes": ("codes.npy", (db / "codes.npy").read_bytes()),
                "ids": ("ids.npy", (db / "ids.npy").read_bytes()),
            }
            if (db / "labels.npy").is_file():
                files["labels"] = ("labels.npy", (db / "labels.npy").read_bytes())
            _say(
                f"$ curl -F codes=@{db}/codes.npy -F ids=@{db}/ids.npy -F labels=@{db}/labels.npy "
                f"{server.url}/v1/items/codes"
            )
            r = httpx.post(server.url + "/v1/items/codes", files=files, timeout=120)
            r.raise_for_status()
            _say(f"added {len(r.json()['ids'])} teacher codes")
        names = getattr(query_ds, "class_names", None)
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
                {"query": i, "label": label, "results": res["results"], "took_ms": res["took_ms"]}
            )
            shown = []
            for h in res["results"]:
                labs = (h.get("metadata") or {}).get("labels")
                hit_label = labs[0] if isinstance(labs, list) and labs else "?"
                mark = "+" if hit_label == label else "-"
                hit_name = names[hit_label] if names and isinstance(hit_label, int) else hit_label
                shown.append(f"{h['id']}(d={h['distance']},{hit_name}{mark})")
            qname = names[label] if names else label
            _say(f"query {i} [{qname}] -> " + "  ".join(shown) + f"   ({res['took_ms']:.1f} ms)")
        if cfg.keep_serving:
            _say(f"\nserving on {server.url} (web page: {server.url}/) -- Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                server.proc.wait()
    finally:
        server.stop()

    _stage(8, "symmetric check: images added by upload are found at distance 0")
    server = Server(
        ["--model", str(onnx_dir), "--store", str(w / "store_symmetric")],
        _free_port(),
        w / "service_symmetric.log",
    )
    n_check = min(20, len(db_ds))
    try:
        server.wait_ready()
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

    _stage(9, "results")
    images = [db_ds.load_image(i) for i in range(min(256, len(db_ds)))]
    t_speed, t_backend = _encode_speed(teacher, images)
    s_speed, s_backend = _encode_speed(onnx_dir, images)
    lines = [f"| model | mAP@{topk} | P@r<=2 |", "|---|---|---|"]
    lines += [f"| {k} | {v['map']:.4f} | {v['p_r2']:.4f} |" for k, v in table.items()]
    lines += [
        "",
        "| encoder | images/s (batch 64) | backend |",
        "|---|---|---|",
        f"| teacher ViT | {t_speed:.0f} | {t_backend} |",
        f"| student MobileNetV3 | {s_speed:.0f} | {s_backend} |",
    ]
    _say("\n".join(lines))
    total = round(time.perf_counter() - t_start, 1)
    _say(f"\nall stages done in {total} s; artifacts in {w}")
    result = {
        "table": table,
        "encode_images_per_s": {"teacher": t_speed, "student": s_speed},
        "self_check": {"found": found, "checked": n_check},
        "hits": hits_out,
        "timings": cfg.timings,
        "total_s": total,
        "workdir": str(w),
    }
    (w / "demo_results.json").write_text(json.dumps(result, indent=2))
    return result
