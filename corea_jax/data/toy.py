"""The toy task: "a+b" questions, answered by two tokens (a boxed sum, then a confidence).

The point is an RL run that learns on a CPU in seconds with the real machinery: the
vocabulary holds whole answer pieces, so a completion [`\\boxed{3}`, `\nConfidence: 0.7`]
decodes to text the ordinary grader (`corea_jax.grading`, task "gsm8k") and rewards read.

Vocabulary: <pad> <bos> <eos>, the question characters 0-9 + =, one `\\boxed{n}` token per
possible sum, and one `\nConfidence: c` token per confidence bucket (0.0, 0.1, ..., 1.0).
"""

from __future__ import annotations

from corea_jax.models import ModelConfig, small_decoder

PAD, BOS, EOS = 0, 1, 2
_QUESTION_CHARS = "0123456789+="


class ToyTokenizer:
    """A fixed vocabulary for the toy task, duck-typing the parts of a tokenizer we use."""

    def __init__(self, num_answers: int = 19, confidence_buckets: int = 11):
        """Answer tokens `\\boxed{0}` .. `\\boxed{num_answers - 1}`."""
        if num_answers < 1:
            raise ValueError(f"num_answers: expected an integer >= 1, found {num_answers}")
        if confidence_buckets < 2:
            raise ValueError(f"confidence_buckets: expected an integer >= 2, found {confidence_buckets}")
        answers = [f"\\boxed{{{n}}}" for n in range(num_answers)]
        confidences = [f"\nConfidence: {i / (confidence_buckets - 1):.2g}"
                       for i in range(confidence_buckets)]
        self.vocab = ["<pad>", "<bos>", "<eos>", *_QUESTION_CHARS, *answers, *confidences]
        self._ids = {piece: i for i, piece in enumerate(self.vocab)}
        self.answer_ids = [self._ids[a] for a in answers]
        self.confidence_ids = [self._ids[c] for c in confidences]
        self.pad_token_id, self.bos_token_id, self.eos_token_id = PAD, BOS, EOS

    def __len__(self) -> int:
        return len(self.vocab)

    def encode_question(self, question: str) -> list[int]:
        """[<bos>, the characters of "a+b"]."""
        unknown = sorted(set(question) - set(_QUESTION_CHARS))
        if unknown:
            raise ValueError(f"toy question {question!r}: characters {unknown} are not in the toy vocabulary")
        return [BOS] + [self._ids[c] for c in question]

    def encode_completion(self, answer: str, confidence: float) -> list[int]:
        """The well-formed completion [boxed answer, confidence bucket, <eos>] (for SFT)."""
        buckets = len(self.confidence_ids) - 1
        return [self._ids[f"\\boxed{{{answer}}}"], self.confidence_ids[round(confidence * buckets)], EOS]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        special = {PAD, BOS, EOS} if skip_special_tokens else set()
        return "".join(self.vocab[i] for i in ids if i not in special and 0 <= i < len(self.vocab))


def num_answers(max_operand: int, addend: int = -1) -> int:
    """Answer tokens the arithmetic set needs: every sum 0 .. max_operand + max b."""
    return max_operand + (max_operand if addend < 0 else addend) + 1


def toy_model_config(tokenizer: ToyTokenizer, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, max_length: int = 32) -> ModelConfig:
    """A tiny random-init decoder over the toy vocabulary (rounded up to a multiple of 8)."""
    arch = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_layers=num_layers,
                num_heads=num_heads, num_kv_heads=max(1, num_heads // 2), max_position_embeddings=max_length)
    return small_decoder(arch, vocab_size=-(-len(tokenizer) // 8) * 8, eos_token_ids=(EOS,), pad_token_id=PAD,
                         tie_word_embeddings=False, bos_token_id=BOS)
