"""Cheating implementations, as an optimiser under pressure writes them, each a module a user could pass with
``--impl correctness.cheats.<name>``: every one must be caught, by the integrity rule its ``CAUGHT_BY`` names
(``kernels/testing/integrity.py``). ``python -m correctness.cheats`` runs the corpus and prints, per cheat,
the defence that caught it and the catch rate (exit 1 if one got through; ``correctness/test_cheats.py``).

Each module's ``CAUGHT_BY`` is the defence that catches it in ``servekernels check``; a module with
``TIMING_ONLY = True`` is right on every call ``check`` makes and is caught by the measured path
(``perf.harness.timed_loop``). The cheats are cheap torch built on the float64 reference
(``correctness/cheats/_honest.py``), so the corpus runs in seconds here.
"""
