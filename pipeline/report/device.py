"""The GPU itself as each benchmark child ended: clock, heat, power, other processes on it."""
from __future__ import annotations

import math

import numpy as np

from pipeline.records import Measurement
from pipeline.report.results import Results, arm_label, children

THROTTLED = 0.9  # a GPU whose SM clock ends a child this far under the run's median was held back (heat, power cap)


def gpu_state_text(r: Results) -> str:
    """The GPU's own state as each child ended (NVML telemetry): clocks, temperature and power, a child whose clock
    had dropped (throttled: its rates say less about its framework), and other processes computing on the same GPU
    (a shared GPU: the rates are the share this run got). Empty on a CPU."""
    ends = [rows[0] for rows in children(r.measured).values() if math.isfinite(rows[0].gpu_sm_clock_mhz_after)]
    if not ends:
        return ""
    clock = np.array([m.gpu_sm_clock_mhz_after for m in ends])
    median = np.median(clock)
    temp = [m.gpu_temperature_c_after for m in ends if math.isfinite(m.gpu_temperature_c_after)]
    power = [m.gpu_power_w_after for m in ends if math.isfinite(m.gpu_power_w_after)]
    text = (f"The GPU as each of {len(ends)} children ended (NVML): SM clock {median:,.0f} MHz median "
            f"[{clock.min():,.0f}–{clock.max():,.0f}]" + (f", up to {max(temp):.0f} °C" if temp else "")
            + (f", {np.median(power):.0f} W median" if power else "") + ". ")
    slow = [m for m in ends if m.gpu_sm_clock_mhz_after < THROTTLED * median]
    if slow:
        text += (f"**{len(slow)} child(ren) ended with the SM clock more than {1 - THROTTLED:.0%} under the median** "
                 f"({_where(slow)}): the GPU was held back (heat or a power cap), so their rates say less about their "
                 "framework. ")
    shared = [m for m in ends if m.gpu_processes_after > 1]  # NaN (not seen) is not shared
    if shared:
        text += (f"**The GPU was shared**: up to {max(m.gpu_processes_after for m in shared) - 1:.0f} other "
                 f"process(es) computed on it as {len(shared)} child(ren) ended ({_where(shared)}); their rates are "
                 "the share this run got. ")
    return text


def _where(ms: list[Measurement]) -> str:
    return ", ".join(f"{arm_label(m.arm)} in round {m.round + 1}" if m.kind == "round"
                     else f"{arm_label(m.arm)}'s {m.kind} child" for m in ms)
