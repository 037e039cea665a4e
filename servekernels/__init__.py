"""servekernels: the command-line entry points (``servekernels check | report | generate``)."""
__version__ = "0.1.0"
