"""Deliberately wrong implementations (and one right one), as a user would bring them with ``--impl``:
``servekernels check``, ``python -m pytest --impl`` and ``servekernels report`` must all reject each wrong one
and pass the reference wrapper (``correctness/test_user_impls.py``)."""
