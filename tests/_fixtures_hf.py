"""Tiny transformers models built from their configs and saved by ``save_pretrained``, with their truth.

Truth is the model's own ``named_parameters()`` (trainable = ``requires_grad``) and ``named_buffers()``, mapped to the
names ``save_pretrained`` wrote (tied weights are saved once). Sizes are the smallest each config accepts, so that a
model builds in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["HF_ZOO", "build_hf", "save_hf", "hf_truth"]

_TEXT = dict(vocab_size=64)
_BERTISH = dict(**_TEXT, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                max_position_embeddings=32)
_LLAMAISH = dict(**_TEXT, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                 intermediate_size=32, max_position_embeddings=32)
_BARTISH = dict(**_TEXT, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32,
                pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
_VIT = dict(image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, num_labels=3)


def _resnet() -> dict[str, Any]:
    return dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3)


def _detr() -> dict[str, Any]:
    from transformers import ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                            out_features=["stage1", "stage2"])
    return dict(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=16,
                encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=5, num_labels=3)


# name -> (transformers class, model_type, config keywords or a function returning them)
HF_ZOO: dict[str, tuple[str, str, Any]] = {
    "gpt2": ("GPT2LMHeadModel", "gpt2", dict(**_TEXT, n_layer=1, n_embd=16, n_head=2, n_positions=32)),
    "llama": ("LlamaForCausalLM", "llama", _LLAMAISH),
    "mistral": ("MistralForCausalLM", "mistral", _LLAMAISH),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", _LLAMAISH),
    "t5": ("T5ForConditionalGeneration", "t5", dict(**_TEXT, d_model=16, d_kv=8, d_ff=16, num_layers=1,
                                                     num_decoder_layers=1, num_heads=2)),
    "bart": ("BartForConditionalGeneration", "bart", _BARTISH),
    "marian": ("MarianMTModel", "marian", _BARTISH),
    "mbart": ("MBartForConditionalGeneration", "mbart", _BARTISH),
    "pegasus": ("PegasusForConditionalGeneration", "pegasus", _BARTISH),
    "whisper": ("WhisperForConditionalGeneration", "whisper", dict(
        **_TEXT, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=16, decoder_ffn_dim=16, num_mel_bins=8, max_source_positions=16, max_target_positions=16,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)),
    "bert": ("BertForMaskedLM", "bert", _BERTISH),
    "roberta": ("RobertaForMaskedLM", "roberta", dict(_BERTISH, pad_token_id=1)),
    "distilbert": ("DistilBertForMaskedLM", "distilbert", dict(**_TEXT, dim=16, n_layers=1, n_heads=2,
                                                                hidden_dim=16, max_position_embeddings=32)),
    "electra": ("ElectraForMaskedLM", "electra", dict(_BERTISH, embedding_size=16)),
    "opt": ("OPTForCausalLM", "opt", dict(**_TEXT, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          ffn_dim=16, max_position_embeddings=32, word_embed_proj_dim=16)),
    "gpt_neo": ("GPTNeoForCausalLM", "gpt_neo", dict(**_TEXT, hidden_size=16, num_layers=1, num_heads=2,
                                                     attention_types=[[["global"], 1]], max_position_embeddings=32)),
    "vit": ("ViTForImageClassification", "vit", _VIT),
    "deit": ("DeiTForImageClassification", "deit", _VIT),
    "resnet": ("ResNetForImageClassification", "resnet", _resnet),
    "convnext": ("ConvNextForImageClassification", "convnext", dict(
        num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)),
    "swin": ("SwinForImageClassification", "swin", dict(
        image_size=16, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2, num_labels=3)),
    "mobilenet_v2": ("MobileNetV2ForImageClassification", "mobilenet_v2", dict(
        image_size=16, depth_multiplier=0.25, num_labels=3)),
    "gptj": ("GPTJForCausalLM", "gptj", dict(**_TEXT, n_embd=16, n_layer=1, n_head=2, rotary_dim=4, n_positions=32)),
    "detr": ("DetrForObjectDetection", "detr", _detr),
}


def build_hf(name: str, seed: int = 0) -> torch.nn.Module:
    """The zoo member ``name`` as a real (CPU) transformers model with seeded weights."""
    import transformers

    cls_name, model_type, kwargs = HF_ZOO[name]
    kwargs = kwargs() if callable(kwargs) else dict(kwargs)
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    config.architectures = [cls_name]
    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(config).eval()


def save_hf(name: str, folder: Path, seed: int = 0) -> torch.nn.Module:
    """Build ``name`` and ``save_pretrained`` it into ``folder`` (config.json + model.safetensors); return it."""
    model = build_hf(name, seed)
    model.save_pretrained(folder)
    return model


def hf_truth(model: torch.nn.Module) -> dict[str, tuple[str, str]]:
    """Saved name -> (kind, trainable) from the model itself; tied names included (whichever one was saved).

    transformers 5 saves some architectures under their older names (``revert_weight_conversion``, called by
    ``save_pretrained``): the same function maps the model's names here, one marker tensor per name.
    """
    truth = {n: ("parameter", "true" if p.requires_grad else "false")
             for n, p in model.named_parameters(remove_duplicate=False)}
    truth.update({n: ("buffer", "false") for n, _ in model.named_buffers(remove_duplicate=False)})
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: saved as named
        return truth
    markers = {n: torch.full((1,), float(i)) for i, n in enumerate(truth)}
    names = list(truth)
    saved = revert_weight_conversion(model, dict(markers))
    return {k: truth[names[int(v.reshape(-1)[0])]] for k, v in saved.items()}
