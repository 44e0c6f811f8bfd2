"""Reference models, one nn.Module file per family, and the family-free helpers that read HF checkpoint directories.

Which family a checkpoint or a manifest names, its presets and its I/O are its registry entry: trtformer.families.
"""
