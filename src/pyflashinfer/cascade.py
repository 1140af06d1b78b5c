"""FlashInfer's `flashinfer.cascade` names: attention-state merging and cascade attention."""
from .attention.cascade import *  # noqa: F401,F403
from .attention.cascade import __all__  # noqa: F401
