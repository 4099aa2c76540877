"""Default forward inputs of a transformers model from its config, so that FLOPs need no --input-shape.

By the model's ``main_input_name``: ``input_ids`` are int64 token ids of shape (1, L), L = ``DEFAULT_SEQUENCE_LENGTH``
or the config's maximum positions if fewer (encoder-decoder models get ``decoder_input_ids`` of the same length);
``pixel_values`` are (1, channels, S, S) with S the config's ``image_size`` (else ``DEFAULT_IMAGE_SIZE``);
``input_features`` (Whisper) are (1, mel bins, 2 · max_source_positions), the length its encoder requires;
``input_values`` (wav2vec2) one second at 16 kHz. Anything else: ``None`` (give --input-shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ckptboard.core.flops import InputSpec

__all__ = ["DEFAULT_SEQUENCE_LENGTH", "DEFAULT_IMAGE_SIZE", "DefaultInputs", "default_inputs"]

DEFAULT_SEQUENCE_LENGTH = 128
DEFAULT_IMAGE_SIZE = 224
_MAX_POSITIONS = ("max_position_embeddings", "n_positions", "max_target_positions", "n_ctx", "max_seq_len")


@dataclass(frozen=True)
class DefaultInputs:
    """The inputs chosen and one sentence saying how."""

    specs: list[InputSpec]
    description: str


def default_inputs(model: nn.Module, sequence_length: int | None = None) -> DefaultInputs | None:
    """Inputs for one forward of a transformers ``model`` (batch 1), or ``None`` when its config does not say."""
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    if config is None or not isinstance(main, str):
        return None
    if main == "input_ids":
        length = _sequence_length(config, sequence_length)
        specs = [InputSpec((1, length), "int64", "input_ids")]
        if getattr(config, "is_encoder_decoder", False):
            specs.append(InputSpec((1, length), "int64", "decoder_input_ids"))
        return DefaultInputs(specs, f"token ids (batch 1, {length} tokens{_limit_note(config, sequence_length)})")
    if main == "pixel_values":
        size = _image_size(config)
        channels = int(getattr(config, "num_channels", 3) or 3)
        stated = "config image_size" if getattr(config, "image_size", None) else f"default {DEFAULT_IMAGE_SIZE}"
        return DefaultInputs(
            [InputSpec((1, channels, size, size), "float32", "pixel_values")],
            f"one {channels}x{size}x{size} image ({stated})",
        )
    if main == "input_features" and hasattr(config, "num_mel_bins") and hasattr(config, "max_source_positions"):
        frames = 2 * int(config.max_source_positions)  # Whisper's two stride-2 convs need exactly this many frames
        specs = [InputSpec((1, int(config.num_mel_bins), frames), "float32", "input_features")]
        length = _sequence_length(config, sequence_length)
        if getattr(config, "is_encoder_decoder", False):
            specs.append(InputSpec((1, length), "int64", "decoder_input_ids"))
        return DefaultInputs(specs, f"{frames} frames of {config.num_mel_bins} mel bins, {length} decoder tokens")
    if main == "input_values":
        return DefaultInputs([InputSpec((1, 16000), "float32", "input_values")], "one second of 16 kHz audio")
    return None


def _sequence_length(config: Any, requested: int | None) -> int:
    length = int(requested or DEFAULT_SEQUENCE_LENGTH)
    limits = [int(v) for k in _MAX_POSITIONS if isinstance(v := getattr(config, k, None), int) and v > 0]
    return min([length, *limits])


def _limit_note(config: Any, requested: int | None) -> str:
    wanted = int(requested or DEFAULT_SEQUENCE_LENGTH)
    got = _sequence_length(config, requested)
    return f", the config's maximum positions" if got < wanted else ""


def _image_size(config: Any) -> int:
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)) and size:
        size = size[0]
    return int(size) if isinstance(size, int) and size > 0 else DEFAULT_IMAGE_SIZE
