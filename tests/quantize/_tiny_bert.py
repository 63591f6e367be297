"""A tiny Hugging Face BertModel and padded batches for it, shared by the static int8 tests."""
import torch


def tiny_bert():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=128, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def padded_batch(seed, b=4, t=16):
    """input_ids and an attention_mask whose rows after the first end in 5 padding positions."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1:, t - 5:] = 0
    return {"input_ids": torch.randint(0, 128, (b, t), generator=g), "attention_mask": mask}
