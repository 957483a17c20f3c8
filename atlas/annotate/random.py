"""Grounding DINO and SAM checkpoints with random weights and small widths, saved as the real ones are.

Only the weights are random and the widths small: configs, processors, the tokenizer, the files on disk and the
code that loads and runs them are the real ones, so a machine without the released checkpoints (no model hub) can
run the grounded-sam annotator end to end in tests and benchmarks. The detections are meaningless.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".")


def write_random_grounding_dino(path: str | Path, words: list[str], image_size: int = 128, seed: int = 0) -> Path:
    """A tiny Grounding DINO (Swin + BERT) whose tokenizer knows `words` (plus BERT's specials and '.')."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = list(dict.fromkeys([*SPECIAL_WORDS, *words]))
    torch.manual_seed(seed)
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                      image_size=image_size, out_indices=[2, 3, 4])
    bert = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1,
                                 decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                                 decoder_attention_heads=2, num_queries=20, max_text_len=32)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": image_size,
                                                          "longest_edge": image_size * 3 // 2}),
        tokenizer=BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True))
    out = Path(path)
    GroundingDinoForObjectDetection(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def write_random_sam(path: str | Path, image_size: int = 128, seed: int = 0, decoder_heads: int = 2) -> Path:
    """A tiny SAM (ViT image encoder, prompt encoder, mask decoder) with its processor."""
    import torch
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(seed)
    config = SamConfig(
        vision_config=SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=image_size, patch_size=16, window_size=4, global_attn_indexes=[1],
                                      mlp_dim=32, num_pos_feats=8),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=image_size, patch_size=16,
                                                     mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=2,
                                                 num_attention_heads=decoder_heads, iou_head_hidden_dim=16))
    out = Path(path)
    SamModel(config).save_pretrained(out)
    SamProcessor(SamImageProcessor(size={"longest_edge": image_size},
                                   pad_size={"height": image_size, "width": image_size})).save_pretrained(out)
    return out
