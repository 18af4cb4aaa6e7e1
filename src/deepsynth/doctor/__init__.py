"""``deepsynth doctor``: what this machine can run (versions, tools) and, with ``--gpu``, every CUDA-only path
exercised for real, each check in its own process with a timeout (``runner.py``, ``gpu_checks.py``)."""
