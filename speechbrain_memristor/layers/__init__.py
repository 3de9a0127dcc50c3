"""Hardware-aware layers: execution modes, quantizers, the `HardwareMatmul` core, the shared
`HardwareLayer` base and the torch-compatible Linear, Conv and attention layers."""
