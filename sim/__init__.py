"""Discrete-event simulator of a vLLM-style engine with adaptive speculative decoding."""
from sim.core.config import AcceptanceConfig, EngineConfig, SimConfig
from sim.core.run import simulate, simulate_with

__all__ = ["simulate", "simulate_with", "SimConfig", "EngineConfig", "AcceptanceConfig"]
