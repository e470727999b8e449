"""Performance simulator and configuration search (Pangu Ultra MoE / Pro MoE system simulation).

No torch here: `duomind.sim` composes per-operator roofline times on a hardware profile into training-step
and serving times, memory per device and MFU; only `calibrate.calibrate()` imports torch, to measure this
machine. See docs/simulator.md.
"""

from duomind.sim.arch import Arch, load_arch
from duomind.sim.hardware import Hardware, get_hardware, known_hardware
from duomind.sim.plan import Plan, PlanError, load_plan
from duomind.sim.search import search
from duomind.sim.simulate import Result, simulate, simulate_infer, simulate_train

__all__ = ["Arch", "Hardware", "Plan", "PlanError", "Result", "get_hardware", "known_hardware", "load_arch",
           "load_plan", "search", "simulate", "simulate_infer", "simulate_train"]
