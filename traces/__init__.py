"""Request traces: loaders, generators, transforms, SLO assignment, the embedded default."""
from traces.catalog import known_names, load_named, shared_root
from traces.embedded import DEFAULT_SLO_CLASSES, embedded_trace
from traces.loaders import load_azure, load_burstgpt, load_file, load_mooncake
from traces.schema import Trace
from traces.slo import SloClass, assign_slos, assign_slos_by_dataset
from traces.validation import TraceFormatError

__all__ = ["DEFAULT_SLO_CLASSES", "SloClass", "Trace", "TraceFormatError", "assign_slos",
           "assign_slos_by_dataset", "embedded_trace", "known_names", "load_azure",
           "load_burstgpt", "load_file", "load_mooncake", "load_named", "shared_root"]
