"""Discrete-event simulator of a vLLM-style engine with adaptive speculative decoding."""
from sim.config import AcceptanceConfig, EngineConfig, SimConfig
from sim.run import simulate, simulate_with

__all__ = ["simulate", "simulate_with", "SimConfig", "EngineConfig", "AcceptanceConfig"]
