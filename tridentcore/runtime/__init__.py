"""Live driver: the async engine (``engine``), workers (``workers``: emulated GPUs and CPU worker
processes), the served-model catalogue (``models``) and building a run from its description
(``build``). Importing this package is light; torch loads only in CPU workers and when the engine
receives their tensors."""
