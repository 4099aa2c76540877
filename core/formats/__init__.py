"""File formats: the per-format readers behind :mod:`ckptboard.core.reader` and the restricted unpickler.

``sniff`` recognises a file by its first bytes; ``torchzip``, ``legacy``, ``safetensors_file`` and ``hf_folder``
list one format's tensors without reading their data; ``materialise`` turns one storage's bytes into a tensor;
``safe_unpickle`` reads pickles without running code. Callers outside ``core`` use :mod:`ckptboard.core.reader`.
"""
