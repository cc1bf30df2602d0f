"""Benchmark helpers: the userspace link emulator and faithful copies of the seed tools."""
