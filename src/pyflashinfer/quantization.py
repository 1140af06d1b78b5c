"""`flashinfer.quantization` names: the bit packing of custom attention masks (see packbits/)."""
from .packbits import packbits, segment_packbits

__all__ = ["packbits", "segment_packbits"]
