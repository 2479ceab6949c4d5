"""Runnable benchmarks: scripts that print their figures, the command line and the machine."""
