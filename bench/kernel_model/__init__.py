"""The cost model of the Triton kernels and the tooling it needs, kept out of the runtime package `kernels`.

    python -m bench.kernel_model [--json OUT.json] [--jobs 2]     predicted H100 times (model.py)
    python -m bench.kernel_model.aot [--json OUT.json]             compile every launch for sm_90: spills, loops

launches.py: every launch the ops make at a size (block sizes from kernels.blocks); step.py: which of them one
training step makes; aot.py: the sm_90 compile and the SASS reading; memory.py: peak memory by accounting.
Run from the repository root (it imports `kernels` from the source tree).
"""
