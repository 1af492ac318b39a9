"""DiDeMo data: annotations, decoding, frame cache, length buckets, the DataModule, synth.

Submodules are imported explicitly (``from tvrbench.data.datamodule import DiDeMoDataModule``);
this package imports nothing heavy on its own.
"""
