"""Reading checkpoints: list every tensor without reading its data; materialise one tensor at a time.

TO BE IMPLEMENTED (reader helper). Public API, fixed:

    open_checkpoint(path, device="cpu", trust=False) -> Checkpoint     # also a context manager
    Checkpoint.path, .format (CheckpointFormat), .groups (list[TensorGroup]), .tensors (all groups, flat),
    Checkpoint.optimizers (list[OptimizerState]), .metadata (JSON-safe dict), .skipped_globals (list[str]),
    Checkpoint.step (int | None), .step_source (StepSource), .notes (list[str]),
    Checkpoint.module (nn.Module | None; only for a trusted pickled module / TorchScript),
    Checkpoint.load(info: TensorInfo) -> torch.Tensor   # on Checkpoint.device, one tensor
    Checkpoint.close()
"""
