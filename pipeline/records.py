"""Typed results with units in their names: what a child measured, what a cell trained.

The results' vocabulary, defined once: what a benchmark child measured and what a train cell trained, as typed
records with the units in their field names, and how each is written to and read from its file.

Files stay flat (JSON objects, TSV columns) so that DVC's `metrics show` / `plots` and pandas read them as they
are; the names in them are these fields' names, so a key is spelled here and nowhere else.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from pipeline.errors import DataError

FORMAT = 2      # bench/records.json format; 2 added measurement times, which comparing experiments needs
CONTROL = "*"   # suffix of the A/A control arm: "torch*" is torch measured again as if it were another framework
PHASES = ("train", "infer")


class Cell(NamedTuple):
    """One framework x model: the unit of the train stage, of the bench's per-cell figures and of the report."""
    framework: str
    model: str

    def __str__(self) -> str:
        return f"{self.framework}-{self.model}"


SETTING = "@"   # "torch@train.batch_size=256": torch measured with one step setting changed, in the same rounds


def control_arm(framework: str) -> str:
    return framework + CONTROL


def setting_arm(framework: str, key: str, value: int) -> str:
    return f"{framework}{SETTING}{key}={value}"


def framework_of(arm: str) -> str:
    return arm.split(SETTING)[0].rstrip(CONTROL)


def is_control(arm: str) -> bool:
    return arm.endswith(CONTROL)


def setting_of(arm: str) -> tuple[str, int] | None:
    """(key, value) of a setting arm; None for a framework's own arm or its control."""
    if SETTING not in arm:
        return None
    key, value = arm.split(SETTING, 1)[1].split("=")
    return key, int(value)


def unnull(f: Field, value: Any) -> Any:
    """A field's value as JSON gave it back: a NaN went to JSON as null (files.write_json), so a float field's null
    is NaN again; a "float | None" field keeps its None."""
    return math.nan if value is None and f.type in (float, "float") else value


def read(cls: type, d: dict, path: Path | str, stage: str, prefix: str = "") -> Any:
    """A record of `cls` from a flat mapping (keys `prefix` + field); a missing required field is a one-line error
    naming the file and the stage to rerun; a float field's null is NaN (unnull)."""
    required = [prefix + f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise DataError(f"{path}: malformed (missing {', '.join(missing)}); rerun `dvc repro {stage}`")
    return cls(**{f.name: unnull(f, d[prefix + f.name]) for f in fields(cls) if prefix + f.name in d})


@dataclass(frozen=True)
class Rates:
    """One measurement's repeats: samples/s median with quartiles, IQR and CV, and the median step time."""
    samples_per_s: float
    samples_per_s_q1: float
    samples_per_s_q3: float
    samples_per_s_iqr: float
    cv_pct: float
    repeats: int
    step_time_ms_median: float

    def flat(self, prefix: str = "") -> dict:
        return {prefix + k: v for k, v in asdict(self).items()}


@dataclass
class Measurement:
    """One model x variant measured by one benchmark child (a fresh process), with the calibration around it."""
    model: str
    variant: str
    status: str = "ok"                     # ok | unsupported (a known "not on this machine" failure) | wrong
                                           # (a variant whose first steps' losses differ from the default's) |
                                           # absent (bench.variants asked for what this framework or model lacks)
    reason: str = ""                       # why not ok
    first_step_s: float = math.nan         # the first step, tracing and compilation included
    train_mem_peak_mb: float = math.nan    # device memory allocated at peak while training (CUDA; NaN on a CPU)
    train: Rates | None = None
    infer: dict[int, Rates] = field(default_factory=dict)  # by inference batch size
    latency_ms_p50: float = math.nan       # batch-1 inference
    latency_ms_p95: float = math.nan
    latency_ms_p99: float = math.nan
    calib_before_gflops: float = math.nan  # the speedometer before and after the child's measurements
    calib_after_gflops: float = math.nan
    drift: float = math.nan
    calm_level_gflops: float = math.nan    # the machine's calm speed in this child: the upper decile of its readings
    samples: dict = field(default_factory=dict)  # per unit (train, infer512): each repeat's seconds per call and
                                                 # the speedometer readings before and after it (GFLOP/s)
    speedometer: str = ""                  # what the speedometer measured (the CPU GEMM, or a matmul on the GPU)
    gpu_sm_clock_mhz_before: float = math.nan  # NVML telemetry around the child on a CUDA device (NaN elsewhere)
    gpu_sm_clock_mhz_after: float = math.nan
    gpu_temperature_c_after: float = math.nan
    gpu_power_w_after: float = math.nan
    gpu_memory_used_mb_after: float = math.nan
    gpu_processes_after: float = math.nan  # compute processes on that GPU, the child's own included: > 1 = shared
    host_calib_before_gflops: float = math.nan  # on a GPU, the host's CPU GEMM too: a launch-bound step runs at
    host_calib_after_gflops: float = math.nan   # the host's pace, which the device's matmul does not see
    # the process that measured it
    framework: str = ""
    framework_version: str = ""
    device: str = ""
    description: str = ""
    threads: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    precision: str = ""       # what the backend really ran with (fp32 | tf32 | bf16 | fp16), read back and checked
    peak_rss_mb: float = math.nan
    child_wall_s: float = math.nan     # the process from launch to exit, as its parent timed it
    child_setup_s: float = math.nan    # of which before its first measurement: interpreter, imports, data, device
    child_forked: bool = False         # forked from its framework's zygote (imports paid once per bench), or exec'd
    child_calib_s: float = math.nan    # of which the two speedometer readings
    measure_s: float = math.nan        # of which this model x variant: build, check, training, inference, latency
    # its place in the bench
    kind: str = "round"                    # round | variants | threads
    round: int | None = None
    arm: str = ""
    flag: str = ""                         # why the drift monitor left its figures out ("" = usable)

    def rate(self, phase: str) -> float:
        """The headline samples/s of a phase: training, or inference at the largest batch size."""
        return self.phase(phase).samples_per_s

    def phase(self, phase: str) -> Rates:
        """The Rates of a phase: training, or inference at the largest batch size."""
        return self.train if phase == "train" else self.infer[max(self.infer)]

    def own_calib_gflops(self) -> float:
        """The speedometer's reading around this measurement: the mean of before and after."""
        return (self.calib_before_gflops + self.calib_after_gflops) / 2

    def flat(self) -> dict:
        """The row in bench/records.json (and the bench's DataFrame)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("train", "infer")}
        if self.status == "ok":
            del out["reason"]
            out |= self.train.flat("train_") if self.train else {}
            for bs, r in sorted(self.infer.items()):
                out |= r.flat(f"infer{bs}_")
        else:
            for k in ("first_step_s", "train_mem_peak_mb", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99"):
                del out[k]
        return out

    @classmethod
    def from_flat(cls, d: dict, path: Path | str = "reports/bench/records.json") -> "Measurement":
        """A row of records.json (or of a child's output) back into its record."""
        plain = {f.name: unnull(f, d[f.name]) for f in fields(cls)
                 if f.name in d and f.name not in ("train", "infer")}
        m = cls(**plain)
        if "train_samples_per_s" in d:
            m.train = read(Rates, d, path, "bench", prefix="train_")
        m.infer = {bs: read(Rates, d, path, "bench", prefix=f"infer{bs}_") for bs in infer_sizes(d)}
        return m


def gpus(rows: Iterable[Measurement]) -> list[str]:
    """The GPUs these children ran on ([] on a CPU): their speedometer was a matmul there, not the host's GEMM."""
    return sorted({r.device for r in rows if r.device not in ("cpu", "")})


def infer_sizes(columns: Iterable[str]) -> list[int]:
    """The inference batch sizes a flat row (or a DataFrame's columns) holds rates for, ascending: the `bs` of
    each `infer{bs}_samples_per_s`."""
    return sorted({int(k[5:].split("_")[0]) for k in columns if k.startswith("infer") and k.endswith("_samples_per_s")})


@dataclass(frozen=True)
class PhaseSummary:
    """One cell's rate in one phase over the bench's usable rounds, with its between-process spread."""
    samples_per_s: float
    samples_per_s_q1: float
    samples_per_s_q3: float
    cv_pct: float
    pct_of_peak: float        # % of the run's median calibration GEMM (work: training 3x forward FLOPs)
    pct_of_own_calib: float   # median over rounds of % of each child's own calibration


@dataclass(frozen=True)
class BenchCell:
    framework: str
    model: str
    rounds: int
    train: PhaseSummary
    infer: PhaseSummary
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    first_step_s: float

    def flat(self) -> dict:
        plain = {k: v for k, v in asdict(self).items() if k not in PHASES}
        out = {k: plain.pop(k) for k in ("framework", "model", "rounds")}
        for phase in PHASES:
            out |= {f"{phase}_{k}": v for k, v in asdict(getattr(self, phase)).items()}
        return out | plain

    @classmethod
    def from_flat(cls, d: dict, path: Path | str) -> "BenchCell":
        phases = {p: read(PhaseSummary, d, path, "bench", prefix=f"{p}_") for p in PHASES}
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name not in PHASES}, **phases)


@dataclass
class SeedRun:
    """One seed of a train cell: a row of seeds.tsv."""
    seed: int
    test_acc: float
    test_loss: float
    val_acc: float
    reached: bool             # validation accuracy reached the target
    time_to_target_s: float | None   # training seconds (evaluation excluded) until then
    steps_to_target: int | None
    epochs_to_target: float | None
    best_val_acc: float
    train_time_s: float
    wall_time_s: float
    train_samples_per_s: float
    epochs_trained: float             # passes over the training set before it stopped (target, cap or divergence)
    diverged: bool = False            # the loss stopped being finite; training stopped there
    diverged_at_step: int | None = None


@dataclass
class CellMetrics:
    """A train cell over its seeds: reports/runs/<cell>/metrics.json."""
    target_val_acc: float
    reached_seeds: int
    time_to_target_s: float | None        # median over the seeds that reached the target; None: none did
    time_to_target_s_min: float | None
    time_to_target_s_max: float | None
    epochs_to_target: float | None
    best_val_acc: float
    test_acc: float                       # mean over seeds
    test_acc_std: float
    test_loss: float
    val_acc: float
    train_time_s: float
    train_samples_per_s: float
    seeds: int
    test_samples: int
    macro_f1: float
    params: int
    flops_per_sample: int
    epochs: int                           # the epoch cap
    epochs_trained: float                 # mean over seeds of the passes trained (target, cap or divergence)
    diverged_seeds: int = 0               # seeds whose loss stopped being finite (not "target not reached")
