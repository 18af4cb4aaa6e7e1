"""Scale-out on Ray: ``deepsynth ocr|eval|data prepare --ray`` as Ray Data pipelines with engine actor pools.

Nothing below ``cli/`` imports this package; it imports the library layers and calls their functions, so a
Ray worker runs the same code as the in-process command. ``ray`` is the optional ``.[scale]`` extra.
"""
