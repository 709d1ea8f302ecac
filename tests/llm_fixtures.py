"""A tiny llama model written at test time, for tests against a real llama.cpp server.

No model is downloaded or kept in the repository: `write_tiny_llama` writes a ~0.5 MB GGUF
with random weights from a seeded RNG. What it says is nonsense, but llama.cpp loads it as an
ordinary llama model (byte-level SentencePiece vocabulary, every tensor of a llama block), so
its server parses requests, formats chats, tokenizes, samples and grammar-constrains the way it
does for a real model. That is what a client test needs: the server's behaviour, not the
model's judgement.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path

import numpy as np

__all__ = ["TINY_LLAMA_SEED", "write_tiny_llama"]

# The weights' RNG seed. With greedy sampling the model's answers follow from it (and the
# prompt) alone. Most seeds ramble: the proposal's rationale string runs past max_tokens, or
# takes in raw control characters or a number that overflows to inf, which the parser rightly
# refuses. This one's proposal for the tests' prompt is finished, finite, strict JSON.
TINY_LLAMA_SEED = 93
N_EMBD = 64
N_FF = 128
N_LAYER = 2
N_HEAD = 4
N_CTX_TRAIN = 2048
RMS_EPS = 1e-5
# Spread of the random weights: wide enough that the greedy choice between tokens is never a
# near-tie that another CPU's float rounding could flip.
WEIGHT_STD = 0.5
# SentencePiece's word-boundary marker: a space inside a piece.
SPACE = "\u2581"
# One piece per printable ASCII character besides the space, which is SPACE: with the 256 byte
# pieces behind them, any text tokenizes and any JSON can be sampled.
PIECES = [SPACE, *(chr(c) for c in range(0x21, 0x7F))]


class TokenType(IntEnum):
    """SentencePiece's token types, as llama.cpp reads them from `tokenizer.ggml.token_type`."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    BYTE = 6


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, `PIECES`."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *PIECES]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    types += [TokenType.BYTE] * 256 + [TokenType.NORMAL] * len(PIECES)
    # Scores rank merges; the pieces are single characters, so only their order matters.
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(PIECES))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(path: str | Path, *, seed: int = TINY_LLAMA_SEED) -> Path:
    """Write the tiny random-weight llama GGUF to `path` and return the path."""
    import gguf  # only the tests that need a model need the package

    path = Path(path)
    tokens, scores, types = _vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    _hyperparameters(writer, len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for name, array in _tensors(len(tokens), np.random.default_rng(seed)):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _hyperparameters(writer, n_vocab: int) -> None:
    import gguf

    writer.add_name("osiris-tiny-random-llama")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _tensors(n_vocab: int, rng: np.random.Generator):
    """(name, array) for every llama tensor; numpy shapes are (out, in), as GGUFWriter wants."""

    def weight(*shape: int) -> np.ndarray:
        return rng.normal(0.0, WEIGHT_STD, shape).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    yield "token_embd.weight", weight(n_vocab, N_EMBD)
    for i in range(N_LAYER):
        yield f"blk.{i}.attn_norm.weight", ones(N_EMBD)
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            yield f"blk.{i}.{part}.weight", weight(N_EMBD, N_EMBD)
        yield f"blk.{i}.ffn_norm.weight", ones(N_EMBD)
        yield f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD)
        yield f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD)
        yield f"blk.{i}.ffn_down.weight", weight(N_EMBD, N_FF)
    yield "output_norm.weight", ones(N_EMBD)
    yield "output.weight", weight(n_vocab, N_EMBD)
