"""TridentServe core: stage-level serving for diffusion pipelines.

Importing this package is light on purpose (no torch, no diffusers): Locust's gevent patching and
the simulator both import it. Heavy imports happen inside ``tridentcore.pipelines`` functions and
the runtime's workers only.
"""

__version__ = "0.1.0"
