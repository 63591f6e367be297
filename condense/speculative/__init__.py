"""Speculative decoding: a small draft proposes tokens, the target verifies them in one forward pass.

See `condense.speculative.decode` (the algorithm) and `condense.speculative.adapters` (how a model family's KV cache
is started, extended and cut back; condense's GPT and Hugging Face causal LMs register theirs).
"""
from condense.speculative.adapters import DecoderAdapter, adapter_for, register_decoder
from condense.speculative.decode import SpeculativeStats, decoder_for, speculative_generate

__all__ = ["DecoderAdapter", "adapter_for", "register_decoder", "SpeculativeStats", "decoder_for", "speculative_generate"]
