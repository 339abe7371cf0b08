"""Request traces: loaders, generators, transforms, SLO assignment."""
from traces.schema import Trace

__all__ = ["Trace"]
