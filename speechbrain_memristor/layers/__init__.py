"""Hardware-aware layers: a shared `HardwareMatmul` core wrapped by torch-compatible modules."""
