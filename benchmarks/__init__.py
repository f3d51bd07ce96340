"""Speed and memory benchmarks: each module that runs as a script (``if __name__ ==
"__main__"``) is one benchmark, run from the repository root as
``python -m benchmarks.<name>`` and printing its figures as ``RESULT`` lines.

Benchmarks never import one another; what several share lives in helper modules (no
``__main__``): ``timing`` (the clocks), ``lightning_timing`` (per-step times of
``trainer.fit``), ``controlnet_step`` (the ControlNet training step whose memory
``step_memory`` and ``memory_plan`` measure), ``portraitbooth_random`` (a random
PortraitBooth and its batch) and ``recipe_params`` (exact parameter counts). Random
backbones come from the library, ``ldm_ext.random_backbone``, as the tests' tiny ones do.
"""
