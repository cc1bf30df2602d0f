"""Split computing, measured over real sockets and an emulated link, against full local and
full offload, on MNIST-M 64×64 (real digits over real photographs).

Machines, each pinned to its own core of this 2-core box:

- the *device* (core 0): an ``edgewire agent`` whose model calls are stretched to
  K× their duration (``emulate_slowdown``: it sleeps (K-1)·t after a call of t, holding
  the model thread as a K× slower processor would), plus the client that asks it and
  the link emulator (a userspace TCP proxy, ``edgewire.bench.linkemu``);
- the *server* (core 1): an ``edgewire agent`` at full speed.

Both agents run models on one thread and batch with no extra wait
(``max_queue_delay_ms=0``). Requests go one at a time; latency is what the client
sees, from the request to the answer. Bytes are whole frames, both directions
(header, meta and payload; a file's own headers included).

Options, per link (10 ms RTT, 1/5/50 Mbit/s):

- ``local``: the whole model on the device (nothing crosses);
- ``offload raw|png|jpeg|webp``: the device sends the input itself to the server's
  full model; JPEG and WebP at the lowest quality whose accuracy stays within 1 point
  of the teacher (chosen on the test set first); the device's encode time is
  stretched by K too;
- ``split raw|zstd|rans``: the device runs the distilled head, codes the uint8
  bottleneck, and the server the tail.

Then ``split suggest`` is checked against measurement: for several cuts (untrained
bottlenecks, raw codes: they time and weigh what trained ones do) plus local and
offload, the profile's predicted latency vs the measured one at five bandwidths.

Usage: python benchmarks/split.py [--quick] [--no-write]
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edgewire.bench.linkemu import LinkEmulatorThread, LinkSpec
from edgewire.bench.procs import sigterm_as_exit
from edgewire.bench.report import json_line, markdown_table, print_table, write_section
from edgewire.bench.spawn import SpawnedAgent
from edgewire.cli.deploy import upload_model
from edgewire.client.native import Client
from edgewire.split import codec
from edgewire.split.route import Route, stamp_route
from edgewire.wire.frames import MsgType

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
console = Console(width=120)

K = 5.0
RTT_MS = 10.0
MAIN_LINKS = (1.0, 5.0, 50.0)
SUGGEST_LINKS = (1.0, 3.0, 5.0, 20.0, 50.0)
SUGGEST_POINTS = ("stem", "stage2", "stage4", "stage6")
#: The teacher (ResNet-18: 0.56 GMAC a 64×64 image; a smaller one computes faster on
#: the slow device than any link's round trip), where it is cut, how wide the cut is.
TEACHER, CUT, CHANNELS = "resnet18", "stem", 8
QUALITIES = (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
DEVICE_CORE, SERVER_CORE = 0, 1


@dataclass(frozen=True, kw_only=True)
class Setup:
    limit: int
    teacher_epochs: int
    head_epochs: int
    kd_epochs: int
    latency_samples: int
    suggest_samples: int


QUICK = Setup(limit=1000, teacher_epochs=2, head_epochs=1, kd_epochs=1, latency_samples=40,
              suggest_samples=12)  # fmt: skip
FULL = Setup(limit=5000, teacher_epochs=8, head_epochs=2, kd_epochs=4, latency_samples=200,
             suggest_samples=30)  # fmt: skip


def say(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}", highlight=False)


# -- training ----------------------------------------------------------------------------


def train_teacher(setup: Setup, folder: Path) -> Path:
    from edgewire.data.datasets import load_dataset
    from edgewire.train.checkpoint import save_checkpoint
    from edgewire.train.local import train_local
    from edgewire.train.trainer import Trainer, TrainSpec

    data = load_dataset("mnistm64", limit=setup.limit)
    train, _ = data.split(val_fraction=0.1, seed=0)  # the held-out part is the test set
    spec = TrainSpec(model=TEACHER, in_channels=3, height=64, width=64,
                     num_classes=data.num_classes, lr=1e-3, seed=0, device="cpu")  # fmt: skip
    trainer = Trainer(spec)

    def on_event(kind: str, event: dict[str, Any]) -> None:
        if kind == "epoch":
            say(f"teacher epoch {event['epoch'] + 1}/{setup.teacher_epochs}: "
                f"train accuracy {event['train']['accuracy']:.3f}")  # fmt: skip

    train_local(trainer, train, None, epochs=setup.teacher_epochs, batch_size=64, on_event=on_event)
    path = folder / "teacher.safetensors"
    save_checkpoint(trainer, path, meta={"data": "mnistm64", "limit": setup.limit})
    return path


def build_split(setup: Setup, checkpoint: Path, out: Path) -> Any:
    from edgewire.split.build import BuildOptions, plan_build, run_build
    from edgewire.split.distill import DistillPlan

    plan = DistillPlan(head_epochs=setup.head_epochs, kd_epochs=setup.kd_epochs)
    options = BuildOptions(at=CUT, channels=CHANNELS, data="mnistm64", limit=setup.limit,
                           val_fraction=0.1, seed=0, plan=plan)  # fmt: skip
    job = plan_build(checkpoint, out, options)
    result = run_build(job)
    say(f"split at {CUT}: teacher {result.summary['teacher_acc']:.3f}, "
        f"student {result.summary['student_acc']:.3f} (held-out)")  # fmt: skip
    return job, result


def head_equality(job: Any, result: Any) -> dict[str, float]:
    """The ONNX head's uint8 codes against PyTorch's, on the test set."""
    import onnxruntime as ort
    import torch

    x = job.val.x
    session = ort.InferenceSession(str(result.head), providers=["CPUExecutionProvider"])
    onnx_codes = session.run(None, {"input_0": x.astype(np.float32) / 255.0})[0]
    with torch.no_grad():
        torch_codes = result.student.encode(torch.from_numpy(x).float() / 255.0).numpy()
    diff = np.abs(onnx_codes.astype(np.int16) - torch_codes.astype(np.int16))
    return {"max_step": float(diff.max()), "share_off": float((diff > 0).mean())}


# -- image quality sweep ---------------------------------------------------------------


def sweep_qualities(full: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Teacher accuracy on clean inputs and after each JPEG/WebP quality, in-process."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(full), providers=["CPUExecutionProvider"])

    def acc(batch: np.ndarray) -> float:
        preds = [session.run(None, {"input_0": batch[i : i + 100].astype(np.float32) / 255})[0]
                 for i in range(0, len(batch), 100)]  # fmt: skip
        return float((np.concatenate(preds).argmax(1) == y).mean())

    clean = acc(x)
    found: dict[str, Any] = {"teacher_acc": clean}
    for coder in ("jpeg", "webp"):
        rows = []
        for q in QUALITIES:
            decoded = np.concatenate([
                codec.decode(codec.encode(x[i : i + 1], coder, quality=q), (1, *x.shape[1:]), coder)
                for i in range(len(x))
            ])  # fmt: skip
            size = np.mean(
                [len(codec.encode(x[i : i + 1], coder, quality=q)) for i in range(len(x))]
            )
            rows.append((q, acc(decoded), float(size)))
        ok = [r for r in rows if r[1] >= clean - 0.01]
        found[coder] = {"quality": ok[0][0] if ok else QUALITIES[-1], "sweep": rows}
    return found


# -- measuring over the link -------------------------------------------------------------


def frame_bytes(meta: dict[str, Any], tensors: list[np.ndarray]) -> int:
    from edgewire.agent.split import frame_bytes as size

    return size(meta, tensors)


@dataclass
class Measured:
    latencies_ms: list[float]
    correct: int
    count: int
    bytes_per_sample: float

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)


Ask = Callable[[np.ndarray], Awaitable[tuple[np.ndarray, int]]]


async def measure(ask: Ask, x: np.ndarray, y: np.ndarray, *, warmup: int = 3) -> Measured:
    for i in range(warmup):
        await ask(x[i : i + 1])
    latencies, correct, total_bytes = [], 0, 0
    for i in range(len(x)):
        start = time.perf_counter()
        scores, crossed = await ask(x[i : i + 1])
        latencies.append((time.perf_counter() - start) * 1000.0)
        correct += int(int(scores.reshape(-1).argmax()) == int(y[i]))
        total_bytes += crossed
    return Measured(latencies, correct, len(x), total_bytes / max(len(x), 1))


def stretch(started: float) -> None:
    """Make the device's own work since ``started`` take K× as long."""
    time.sleep((K - 1.0) * (time.perf_counter() - started))


def offload_ask(client: Client, model: str, coder: str, quality: int = 75) -> Ask:
    async def ask(x: np.ndarray) -> tuple[np.ndarray, int]:
        started = time.perf_counter()
        data = codec.encode(x, coder, quality=quality)
        stretch(started)
        meta = {"model": model, "coder": coder, "shape": list(x.shape)}
        payload = [np.frombuffer(data, dtype=np.uint8)]
        kind, answer, out = await client.request(MsgType.SPLIT_TAIL_REQUEST, meta, payload)
        assert kind is MsgType.SPLIT_TAIL_RESPONSE
        return out[0], frame_bytes(meta, payload) + frame_bytes(answer, out)

    return ask


#: The device's timing breakdown of every split answer, by head model name.
BREAKDOWNS: dict[str, list[dict[str, Any]]] = {}


def device_ask(client: Client, model: str, coder: str | None = None) -> Ask:
    async def ask(x: np.ndarray) -> tuple[np.ndarray, int]:
        answer = await client.infer(model, {"input_0": x.astype(np.float32) / 255.0}, coder=coder)
        split = answer.split or {}
        if split:
            BREAKDOWNS.setdefault(f"{model} {coder}", []).append(split)
        crossed = int(split.get("bytes_up", 0)) + int(split.get("bytes_down", 0))
        return next(iter(answer.outputs.values())), crossed

    return ask


class Rig:
    """The two agents, the link emulators between them, and what is deployed."""

    def __init__(self, tmp: Path) -> None:
        common = {"EDGEWIRE_INTRA_OP_THREADS": "1", "EDGEWIRE_MAX_QUEUE_DELAY_MS": "0"}
        self.tmp = tmp
        self._stack = contextlib.ExitStack()
        try:  # whatever fails part-way, nothing started is left running
            self.server = self._stack.enter_context(
                SpawnedAgent(tmp / "server", env=common, cpus={SERVER_CORE})
            )
            self.device = self._stack.enter_context(
                SpawnedAgent(
                    tmp / "device",
                    env={**common, "EDGEWIRE_EMULATE_SLOWDOWN": str(K)},
                    cpus={DEVICE_CORE},
                )
            )
            upstream = ("127.0.0.1", self.server.ports["native"])
            self.links = {
                mbit: self._stack.enter_context(
                    LinkEmulatorThread(upstream=upstream, spec=LinkSpec.from_mbit_rtt(mbit, RTT_MS))
                )
                for mbit in sorted({*MAIN_LINKS, *SUGGEST_LINKS})
            }
        except BaseException:
            self._stack.close()
            raise

    def deploy(self, agent: SpawnedAgent, path: Path, name: str) -> None:
        upload_model(path, host="127.0.0.1", port=agent.ports["http"], name=name,
                     alias="production", token=None, timeout=120)  # fmt: skip

    def deploy_heads(self, head: Path, tail_name: str, prefix: str, *, coder: str) -> None:
        """One head per link, each routed through its link to ``tail_name`` on the server."""
        for mbit, link in self.links.items():
            route = Route(host="127.0.0.1", port=link.port, tail=tail_name, coder=coder)
            stamped = stamp_route(head, self.tmp / f"{prefix}-{mbit:g}.onnx", route)
            self.deploy(self.device, stamped, f"{prefix}-{mbit:g}")

    def close(self) -> None:
        self._stack.close()


async def connect(port: int) -> Client:
    return await Client.connect("127.0.0.1", port, timeout=60)


async def main_options(rig: Rig, x_all: np.ndarray, y_all: np.ndarray, qualities: dict[str, int],
                       n: int) -> dict[float, dict[str, Measured]]:  # fmt: skip
    """Every option at every link: the fastest link over the whole test set (its accuracy
    is the one reported), the slower ones over its first ``n`` images."""
    results: dict[float, dict[str, Measured]] = {}
    device = await connect(rig.device.ports["native"])
    try:
        say("measuring: full local")
        local = await measure(device_ask(device, "digits-full"), x_all, y_all)
        for mbit in MAIN_LINKS:
            x, y = (x_all, y_all) if mbit == MAIN_LINKS[-1] else (x_all[:n], y_all[:n])
            row: dict[str, Measured] = {"local": local}
            server = await connect(rig.links[mbit].port)
            try:
                for coder in ("raw", "png", "jpeg", "webp"):
                    say(f"{mbit:g} Mbit/s: offload {coder}")
                    ask = offload_ask(server, "teacher", coder, qualities.get(coder, 75))
                    row[f"offload {coder}"] = await measure(ask, x, y)
            finally:
                await server.close()
            for coder in ("raw", "zstd", "rans"):
                say(f"{mbit:g} Mbit/s: split {coder}")
                row[f"split {coder}"] = await measure(
                    device_ask(device, f"digits-{mbit:g}", coder), x, y
                )
            results[mbit] = row
    finally:
        await device.close()
    return results


async def suggest_runs(rig: Rig, teacher: Any, full: Path, x: np.ndarray, y: np.ndarray
                       ) -> dict[str, dict[float, float]]:  # fmt: skip
    """Measured p50 (ms) per candidate and link, for the candidates a profile predicts."""
    import torch

    from edgewire.split.export import export_split
    from edgewire.split.model import SplitModel, SplitSpec
    from edgewire.split.profile import FULL_NAME, TAIL_NAME

    measured: dict[str, dict[float, float]] = {}
    rig.deploy(rig.device, full, FULL_NAME)
    rig.deploy(rig.server, full, FULL_NAME)
    device = await connect(rig.device.ports["native"])
    try:
        local = await measure(device_ask(device, FULL_NAME), x, y)
        measured["local"] = dict.fromkeys(SUGGEST_LINKS, local.p50)
        measured["offload"] = {}
        for mbit in SUGGEST_LINKS:
            server = await connect(rig.links[mbit].port)
            try:
                run = await measure(offload_ask(server, FULL_NAME, "raw"), x, y)
            finally:
                await server.close()
            measured["offload"][mbit] = run.p50
        for at in SUGGEST_POINTS:
            torch.manual_seed(0)
            model = SplitModel(
                teacher, SplitSpec(at=at, channels=CHANNELS), input_shape=(3, 64, 64)
            )
            head, tail = export_split(model.eval(), rig.tmp / f"cut-{at}")
            rig.deploy(rig.server, tail, TAIL_NAME)
            rig.deploy_heads(head, TAIL_NAME, f"cut{SUGGEST_POINTS.index(at)}", coder="raw")
            measured[at] = {}
            for mbit in SUGGEST_LINKS:
                run = await measure(device_ask(device, f"cut{SUGGEST_POINTS.index(at)}-{mbit:g}"),
                                    x, y)  # fmt: skip
                measured[at][mbit] = run.p50
            say(
                f"cut {at}: "
                + ", ".join(f"{m:g} Mbit/s {v:.1f} ms" for m, v in measured[at].items())
            )
    finally:
        await device.close()
    return measured


def tiny_model(path: Path) -> Path:
    """A one-operator ONNX model: what a model call costs an agent beyond the model."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input_0", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input_0"], ["output_0"])], "tiny", [x], [y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


async def calibrate(rig: Rig, repeats: int = 200) -> dict[str, float]:
    """The overheads `split suggest` adds to model times, measured: an agent hop (a PING
    to the server agent on loopback), a model call beyond the model (a one-operator
    model's answer less the PING) and a round trip over the link beyond rtt and
    serialisation (a PING through the fastest link less rtt, its bytes and the hop)."""
    rig.deploy(rig.server, tiny_model(rig.tmp / "tiny.onnx"), "tiny")

    async def p50(port: int, call: Callable[[Client], Awaitable[Any]]) -> float:
        async with await connect(port) as client:
            for _ in range(10):
                await call(client)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                await call(client)
                times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)

    x = np.zeros((1, 4), np.float32)
    ping = await p50(rig.server.ports["native"], lambda c: c.ping())
    tiny = await p50(rig.server.ports["native"], lambda c: c.infer("tiny", [x]))
    fastest = max(rig.links)
    linked = await p50(rig.links[fastest].port, lambda c: c.ping())
    ping_bytes = 2 * frame_bytes({}, [])
    link = linked - RTT_MS - ping_bytes * 8 / (fastest * 1e3) - ping
    return {"hop_ms": ping, "call_ms": max(tiny - ping, 0.0), "link_ms": max(link, 0.0)}


def score_suggest(
    profile: Any, measured: dict[str, dict[float, float]], overheads: dict[str, float]
) -> dict[str, Any]:
    from edgewire.split.suggest import Overheads, predict_ms

    o = Overheads(**overheads)

    errors, hits, regrets, rows = [], 0, [], []
    for mbit in SUGGEST_LINKS:
        predicted = {c.name: predict_ms(c, mbit=mbit, rtt_ms=RTT_MS, slowdown=K, overheads=o)
                     for c in profile.candidates if c.name in measured}  # fmt: skip
        actual = {name: measured[name][mbit] for name in predicted}
        for name in predicted:
            errors.append(abs(predicted[name] - actual[name]) / actual[name])
            rows.append([f"{mbit:g}", name, f"{predicted[name]:.1f}", f"{actual[name]:.1f}",
                         f"{100 * (predicted[name] - actual[name]) / actual[name]:+.0f}%"])  # fmt: skip
        pick = min(predicted, key=predicted.__getitem__)
        best = min(actual, key=actual.__getitem__)
        hits += pick == best
        regrets.append((actual[pick] - actual[best]) / actual[best])
        rows.append([f"{mbit:g}", f"pick: {pick}", "", f"best: {best}",
                     f"regret {100 * regrets[-1]:.1f}%"])  # fmt: skip
    return {
        "mape": float(np.mean(errors)),
        "hit_rate": hits / len(SUGGEST_LINKS),
        "median_regret": float(statistics.median(regrets)),
        "rows": rows,
    }


# -- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer samples")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    setup = QUICK if args.quick else FULL
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {DEVICE_CORE})  # the device's client, with its link emulator
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgewire-split-bench-") as tmpdir:
        tmp = Path(tmpdir)
        # Training runs on both cores (it is set-up, not what is measured).
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {DEVICE_CORE, SERVER_CORE})
        torch.set_num_threads(2)
        checkpoint = train_teacher(setup, tmp)
        job, built = build_split(setup, checkpoint, tmp / "split")
        torch.set_num_threads(1)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {DEVICE_CORE})
        equality = head_equality(job, built)
        x_all, y_all = job.val.x, job.val.y
        sweep = sweep_qualities(built.full, x_all, y_all)
        qualities = {c: sweep[c]["quality"] for c in ("jpeg", "webp")}
        say(f"lowest quality within 1 point: jpeg {qualities['jpeg']}, webp {qualities['webp']}")
        q = built.student.encode(torch.from_numpy(x_all).float() / 255.0).numpy()
        coded = {c: float(np.mean([len(codec.encode(q[i : i + 1], c, built.prior))
                                   for i in range(len(q))])) for c in ("raw", "zstd", "rans")}  # fmt: skip
        from edgewire.split.profile import profile as run_profile

        teacher = job.trainer.model.eval()
        prof = run_profile(teacher, (3, 64, 64), channels=CHANNELS, points=SUGGEST_POINTS,
                           repeats=30, model=TEACHER)  # fmt: skip
        rig = Rig(tmp)
        try:
            rig.deploy(rig.server, built.tail, "digits-tail")
            rig.deploy(rig.server, built.full, "teacher")
            rig.deploy(rig.device, built.full, "digits-full")
            rig.deploy_heads(built.head, "digits-tail", "digits", coder="rans")
            overheads = asyncio.run(calibrate(rig))
            say("overheads: " + ", ".join(f"{k} {v:.2f}" for k, v in overheads.items()))
            n = min(setup.latency_samples, len(x_all))
            results = asyncio.run(main_options(rig, x_all, y_all, qualities, n))
            suggest_x = x_all[: setup.suggest_samples]
            measured = asyncio.run(
                suggest_runs(rig, teacher, built.full, suggest_x, y_all[: setup.suggest_samples])
            )
        finally:
            rig.close()
    report(args, setup, built, sweep, equality, coded, results, prof, measured, overheads,
           seconds=time.perf_counter() - started)  # fmt: skip


def report(args: argparse.Namespace, setup: Setup, built: Any, sweep: dict[str, Any],
           equality: dict[str, float], coded: dict[str, float],
           results: dict[float, dict[str, Measured]], prof: Any,
           measured: dict[str, dict[float, float]], overheads: dict[str, float], *,
           seconds: float) -> None:  # fmt: skip
    fast = results[MAIN_LINKS[-1]]
    teacher_acc = fast["local"].accuracy
    split_acc = fast["split rans"].accuracy
    png = fast["offload png"].bytes_per_sample
    split_bytes = fast["split rans"].bytes_per_sample
    smallest_lossy = min(
        fast["offload jpeg"].bytes_per_sample, fast["offload webp"].bytes_per_sample
    )
    header = [
        "option",
        "bytes/sample",
        "accuracy",
        *[f"{m:g} Mbit/s p50 / p99 ms" for m in MAIN_LINKS],
    ]
    rows = []
    for option in fast:
        label = option
        if option in ("offload jpeg", "offload webp"):
            label += f" q{sweep[option.split()[1]]['quality']}"
        rows.append([label, f"{fast[option].bytes_per_sample:,.0f}", f"{100 * fast[option].accuracy:.1f}%",
                     *[f"{results[m][option].p50:.1f} / {results[m][option].p99:.1f}" for m in MAIN_LINKS]])  # fmt: skip
    latency = {
        f"{option}@{m:g}": round(results[m][option].p50, 2)
        for m in MAIN_LINKS
        for option in results[m]
    }
    offloads = [o for o in fast if o.startswith("offload")]

    def beats_both(m: float) -> bool:
        split = results[m]["split rans"].p50
        return split < results[m]["local"].p50 and split < min(results[m][o].p50 for o in offloads)

    best50 = min(r.p50 for r in results[50.0].values())
    score = score_suggest(prof, measured, overheads)
    figures: dict[str, Any] = {
        "png_bytes": png,
        "split_bytes": split_bytes,
        "bytes_vs_png": split_bytes / png,
        "split_below_lossy": split_bytes < smallest_lossy,
        "jpeg_quality": sweep["jpeg"]["quality"],
        "webp_quality": sweep["webp"]["quality"],
        "teacher_acc": teacher_acc,
        "split_acc": split_acc,
        "acc_drop_pts": 100 * (teacher_acc - split_acc),
        "latency_ms": latency,
        "split_beats_both_at_1mbit": beats_both(1.0),
        "split_beats_both_at_5mbit": beats_both(5.0),
        "split_vs_best_at_50mbit": results[50.0]["split rans"].p50 / best50,
        "coded_bytes": coded,
        "entropy_vs_zstd": 1.0 - coded["rans"] / coded["zstd"],
        "head_max_step": equality["max_step"],
        "head_share_off": equality["share_off"],
        "suggest_mape": score["mape"],
        "suggest_hit_rate": score["hit_rate"],
        "suggest_median_regret": score["median_regret"],
        "overheads_ms": overheads,
        "seconds": seconds,
    }
    title = f"split computing, MNIST-M 64×64, device K={K:g}, RTT {RTT_MS:g} ms"
    print_table(console, title, header, rows)
    targets = [
        ["bytes per sample vs PNG", f"{figures['bytes_vs_png']:.3f}", "≤ 0.10"],
        ["below the smallest JPEG/WebP within 1 pt", str(figures["split_below_lossy"]), "True"],
        ["accuracy drop vs teacher (points)", f"{figures['acc_drop_pts']:.2f}", "≤ 1.0"],
        ["beats local and best offload at 1 Mbit/s", str(figures["split_beats_both_at_1mbit"]), "True"],
        ["beats local and best offload at 5 Mbit/s", str(figures["split_beats_both_at_5mbit"]), "True"],
        ["p50 vs best option at 50 Mbit/s", f"{figures['split_vs_best_at_50mbit']:.3f}", "≤ 1.10"],
        ["rANS vs zstd on the same codes (smaller by)", f"{100 * figures['entropy_vs_zstd']:.1f}%", "≥ 15%"],
        ["ONNX head vs PyTorch: max step / share off", f"{equality['max_step']:.0f} / {100 * equality['share_off']:.3f}%", "≤ 1 / ≤ 0.1%"],
        ["suggest: MAPE", f"{100 * score['mape']:.1f}%", "≤ 15%"],
        ["suggest: picks the measured best", f"{100 * score['hit_rate']:.0f}%", "≥ 80%"],
        ["suggest: median regret", f"{100 * score['median_regret']:.1f}%", "≤ 5%"],
    ]  # fmt: skip
    print_table(console, "targets", ["figure", "measured", "target"], targets)
    parts = (
        "head_ms",
        "encode_ms",
        "transfer_ms",
        "tail_queue_ms",
        "tail_ms",
        "decode_ms",
        "total_ms",
    )
    breakdown_rows = []
    for mbit in MAIN_LINKS:
        for coder in ("raw", "zstd", "rans"):
            seen = BREAKDOWNS.get(f"digits-{mbit:g} {coder}", [])
            if seen:
                breakdown_rows.append([f"{mbit:g}", coder, *[f"{statistics.median(float(b[p]) for b in seen):.2f}" for p in parts]])  # fmt: skip
    breakdown_header = ["Mbit/s", "coder", *(p.removesuffix("_ms") for p in parts)]
    print_table(
        console, "split: the device's breakdown (median ms)", breakdown_header, breakdown_rows
    )
    suggest_header = ["Mbit/s", "candidate", "predicted ms", "measured p50 ms", "error"]
    print_table(console, "split suggest vs measurement", suggest_header, score["rows"])
    if not args.no_write:
        sweep_rows = [[str(q), f"{100 * a:.1f}%", f"{b:.0f}", f"{100 * a2:.1f}%", f"{b2:.0f}"]
                      for (q, a, b), (_, a2, b2) in zip(sweep["jpeg"]["sweep"], sweep["webp"]["sweep"], strict=True)]  # fmt: skip
        body = (
            "## Split computing (`benchmarks/split.py`)\n\n"
            "Command: `python benchmarks/split.py" + (" --quick" if args.quick else "") + "` "
            f"({seconds / 60:.1f} min, training included). MNIST-M 64×64 (MNIST-5k digits over "
            f"real photographs), {len(built.summary['classes'])} classes, teacher {TEACHER} "
            f"trained {setup.teacher_epochs} epochs on {built.summary['train_samples']:,} images; "
            f"held-out test set of {fast['local'].count} images. Device: an agent on core 0 whose "
            f"model calls are stretched to {K:g}× (it sleeps (K-1)·t after a call of t); server: an "
            "agent on core 1; the client and the userspace link emulator on core 0; RTT "
            f"{RTT_MS:g} ms; one request at a time. Split: cut after `{CUT}`, "
            f"{'×'.join(map(str, built.summary['bottleneck_shape']))} codes of "
            f"{built.summary['quant']['levels']} levels, rANS with the conditional prior. Bytes: "
            "whole frames, both directions. Accuracy over the whole test set at "
            f"{MAIN_LINKS[-1]:g} Mbit/s; latency at the slower links over its first "
            f"{setup.latency_samples}.\n\n"
            + markdown_table(header, rows)
            + "\n\nTargets:\n\n"
            + markdown_table(["figure", "measured", "target"], targets)
            + "\n\nWhere a split answer's time goes, as the device reports it (median ms; the head's "
            "time includes the K× stretch):\n\n"
            + markdown_table(breakdown_header, breakdown_rows)
            + "\n\nTeacher accuracy on the test set after JPEG/WebP at each quality (in-process):\n\n"
            + markdown_table(
                ["quality", "JPEG acc", "JPEG bytes", "WebP acc", "WebP bytes"], sweep_rows
            )
            + "\n\n`split suggest` (profile measured in-process, one thread; overheads measured "
            "first: " + ", ".join(f"`{k}` {v:.2f}" for k, v in overheads.items()) + ") against "
            f"the measured p50 of the same cuts (untrained bottlenecks, raw codes), "
            f"{', '.join(f'{m:g}' for m in SUGGEST_LINKS)} Mbit/s:\n\n"
            + markdown_table(suggest_header, score["rows"])
        )
        write_section(DOC, "split", body)
    print(json_line(figures))


if __name__ == "__main__":
    with sigterm_as_exit():  # SIGTERM runs the clean-ups, as Ctrl-C does
        main()
