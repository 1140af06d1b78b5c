"""The named workloads of ../shared/PERFORMANCE.md, as data shared by every benchmark."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Prefill:
    name: str
    batch: int
    seq: int
    q_heads: int
    kv_heads: int
    head_dim: int = 128

    @property
    def flops(self) -> float:
        """Causal prefill: 4 * batch * q_heads * head_dim * seq^2 / 2."""
        return 4 * self.batch * self.q_heads * self.head_dim * self.seq ** 2 / 2


@dataclass(frozen=True)
class Decode:
    name: str
    batch: int
    kv_len: int
    q_heads: int
    kv_heads: int
    head_dim: int = 128
    page_size: int = 16

    def kv_bytes(self, bytes_per_element: int) -> int:
        """K and V read once: 2 * batch * kv_len * kv_heads * head_dim * bytes."""
        return 2 * self.batch * self.kv_len * self.kv_heads * self.head_dim * bytes_per_element


PREFILL = [
    Prefill("llama2-7b bs1 L512", 1, 512, 32, 32),
    Prefill("llama2-7b bs4 L512", 4, 512, 32, 32),
    Prefill("llama3-8b bs1 L4096", 1, 4096, 32, 8),
    Prefill("llama3-8b bs1 L16384", 1, 16384, 32, 8),
]

DECODE = [
    Decode("gqa4 bs1 kv4096", 1, 4096, 32, 8),
    Decode("gqa4 bs64 kv4096", 64, 4096, 32, 8),
    Decode("gqa4 bs256 kv2048", 256, 2048, 32, 8),
    Decode("gqa4 bs16 kv32768", 16, 32768, 32, 8),
    Decode("mha bs64 kv4096", 64, 4096, 32, 32),
]

BY_NAME = {w.name: w for w in PREFILL + DECODE}
