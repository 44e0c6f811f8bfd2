"""The attention math of the fused ops as torch custom ops: one eager reference implementation each."""
