"""GGUF import, checked against sources other than our own export.

Tiny random llama / qwen2 models are written to GGUF here the way llama.cpp's converter
writes them (its tensor names, metadata keys and q/k row permutation), and must give the
torch model's logits; transformers' own GGUF loader reading the same file anchors that
convention. The real SmolLM2 GGUF is compared with transformers' GGUF loader.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest

import corea_jax
from corea_jax.models import CheckpointError, ConfigError
from corea_jax.models.gguf_file import TOKENIZER_CLASSES
from tests.fetched_models import SMOLLM2, chat_prompt_batch
from tests.helpers import REPO, save_random_hf_model, torch_logits

# HF layer tensor -> llama.cpp name (convert_hf_to_gguf.py / gguf.TensorNameMap).
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: HF rotate_half q/k rows -> interleaved RoPE pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _byte_level_vocab(size: int) -> tuple[list[str], list[str]]:
    """A GPT-2 style vocabulary of `size` tokens (bytes, two merges, chat specials) and its merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    words = ["Ġ", "ab", "abc"]
    chars = [c for c in bytes_to_unicode().values() if c not in words]
    return chars[:size - len(words) - len(_SPECIALS)] + words + _SPECIALS, ["a b", "ab c"]


def write_llama_cpp_gguf(hf_model, path: Path, arch: str, *, tokenizer: bool = True,
                         skip: tuple[str, ...] = (), drop: tuple[str, ...] = (),
                         extra_tensors: dict | None = None) -> Path:
    """Writes a torch HF model as llama.cpp's converter would (F32 tensors).

    `skip`: metadata keys (writer method suffixes) and `drop`: GGUF tensor names to leave
    out; `extra_tensors`: more tensors to write. The last three make broken files.
    """
    cfg = hf_model.config
    writer = gguf.GGUFWriter(str(path), arch)
    metadata = {
        "block_count": cfg.num_hidden_layers, "context_length": cfg.max_position_embeddings,
        "embedding_length": cfg.hidden_size, "feed_forward_length": cfg.intermediate_size,
        "head_count": cfg.num_attention_heads, "head_count_kv": cfg.num_key_value_heads,
        "layer_norm_rms_eps": cfg.rms_norm_eps, "rope_freq_base": cfg.rope_parameters["rope_theta"],
    }
    for key, value in metadata.items():
        if key not in skip:
            getattr(writer, f"add_{key}")(value)
    if tokenizer:
        tokens, merges = _byte_level_vocab(cfg.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(tokens)
        writer.add_token_types([1] * (len(tokens) - len(_SPECIALS)) + [3] * len(_SPECIALS))
        writer.add_token_merges(merges)
        writer.add_bos_token_id(tokens.index("<|im_start|>"))
        writer.add_eos_token_id(tokens.index("<|im_end|>"))
        writer.add_pad_token_id(tokens.index("<|endoftext|>"))
        writer.add_chat_template(_CHAT_TEMPLATE)
    else:
        writer.add_vocab_size(cfg.vocab_size)
    state = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"]}
    for i in range(cfg.num_hidden_layers):
        for hf_name, gguf_name in _LAYER_NAMES.items():
            tensor = state.get(f"model.layers.{i}.{hf_name}")
            if tensor is None:
                continue
            if arch == "llama" and hf_name == "self_attn.q_proj.weight":
                tensor = _llama_cpp_permute(tensor, cfg.num_attention_heads)
            elif arch == "llama" and hf_name == "self_attn.k_proj.weight":
                tensor = _llama_cpp_permute(tensor, cfg.num_key_value_heads)
            tensors[f"blk.{i}.{gguf_name}"] = tensor
    tensors["output_norm.weight"] = state["model.norm.weight"]
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    tensors.update(extra_tensors or {})
    for name, tensor in tensors.items():
        if name not in drop:
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# llama: untied, no biases, GQA, llama.cpp's q/k permutation. qwen2: tied, qkv biases.
_TINY = {"llama": ("llama3", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
         "qwen2": ("qwen2", {})}


@pytest.fixture(scope="module", params=sorted(_TINY))
def tiny_gguf(request, tmp_path_factory):
    """(arch, torch model, GGUF path): a tiny random model and its llama.cpp-style GGUF."""
    arch = request.param
    kind, overrides = _TINY[arch]
    root = tmp_path_factory.mktemp(f"gguf_{arch}")
    hf_model = save_random_hf_model(kind, root / "hf", **overrides)
    return arch, hf_model, write_llama_cpp_gguf(hf_model, root / f"tiny-{arch}.gguf", arch)


def _random_ids(vocab: int, shape=(2, 40), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


def test_gguf_logits_match_the_torch_model_it_came_from(tiny_gguf):
    arch, hf_model, path = tiny_gguf
    model = corea_jax.load_model(path)
    cfg = model.config
    assert cfg.model_type == arch and cfg.num_layers == 3 and cfg.num_kv_heads == 2
    assert cfg.qkv_bias == (arch == "qwen2")
    assert cfg.tie_word_embeddings == hf_model.config.tie_word_embeddings
    assert cfg.rms_norm_eps == hf_model.config.rms_norm_eps
    ids = _random_ids(cfg.vocab_size)
    error = np.abs(np.asarray(corea_jax.logits(model, ids)) - torch_logits(hf_model, ids)).max()
    assert error <= 1e-4


def test_transformers_gguf_loader_reads_the_test_file_the_same(tiny_gguf):
    """Anchors the test writer: transformers un-permutes llama.cpp's q/k rows independently."""
    import torch
    from transformers import AutoModelForCausalLM

    _, hf_model, path = tiny_gguf
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                  dtype=torch.float32)
    ids = _random_ids(hf_model.config.vocab_size)
    assert np.abs(torch_logits(theirs, ids) - torch_logits(hf_model, ids)).max() <= 1e-5


def test_gguf_tokenizer_matches_transformers(tiny_gguf):
    from transformers import AutoTokenizer

    arch, _, path = tiny_gguf
    ours = corea_jax.load_model(path).tokenizer
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    _assert_same_tokenizer(ours, theirs, "abc ab\n<|im_end|>bca")
    assert type(ours).__name__ == TOKENIZER_CLASSES[arch]


def _assert_same_tokenizer(ours, theirs, text: str):
    assert type(ours) is type(theirs)
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(theirs.backend_tokenizer.to_str())
    assert ours.chat_template == theirs.chat_template and ours.chat_template
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "bos_token_id", "eos_token_id",
                 "pad_token_id"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    messages = [{"role": "user", "content": text}]
    assert (ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def test_gguf_to_hf_export_loads_in_transformers(tiny_gguf, tmp_path):
    """The fetch path on a tiny file: GGUF -> save_hf -> transformers, tokenizer included."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, hf_model, path = tiny_gguf
    model = corea_jax.load_model(path)
    out = corea_jax.save_hf(model, tmp_path / "export")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    exported = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = _random_ids(model.config.vocab_size, seed=3)
    assert np.abs(torch_logits(exported, ids) - torch_logits(hf_model, ids)).max() <= 1e-5
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template == _CHAT_TEMPLATE
    assert tokenizer("abc ab")["input_ids"] == model.tokenizer("abc ab")["input_ids"]


def test_gguf_load_never_uses_the_slow_full_reader(tiny_gguf, monkeypatch):
    """gguf.GGUFReader (and transformers' GGUF config path, built on it) took seconds per read."""
    def refuse(*args, **kwargs):
        raise AssertionError("GGUFReader used")

    monkeypatch.setattr(gguf, "GGUFReader", refuse)
    monkeypatch.setattr(gguf.gguf_reader, "GGUFReader", refuse)
    _, _, path = tiny_gguf
    assert corea_jax.load_model(path).tokenizer is not None


# ------------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    kind, overrides = _TINY["llama"]
    return save_random_hf_model(kind, tmp_path_factory.mktemp("llama_src"), **overrides)


def test_unsupported_gguf_architecture_is_named(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"general\.architecture: expected one of "
                                              r"\('llama', 'qwen2'\), found 'gpt2'"):
        corea_jax.load_model(tmp_path / "gpt2.gguf")


def test_missing_gguf_metadata_field_is_named(tiny_llama, tmp_path):
    path = write_llama_cpp_gguf(tiny_llama, tmp_path / "m.gguf", "llama", tokenizer=False,
                                skip=("feed_forward_length",))
    with pytest.raises(ConfigError, match=r"missing required field llama\.feed_forward_length"):
        corea_jax.load_model(path)


def test_unexpected_gguf_tensor_is_named(tiny_llama, tmp_path):
    path = write_llama_cpp_gguf(tiny_llama, tmp_path / "m.gguf", "llama", tokenizer=False,
                                extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected GGUF tensor 'rope_freqs\.weight' "
                                              r"\(llama3 RoPE scaling"):
        corea_jax.load_model(path)


def test_gguf_missing_tensor_is_named(tiny_llama, tmp_path):
    path = write_llama_cpp_gguf(tiny_llama, tmp_path / "m.gguf", "llama", tokenizer=False,
                                drop=("blk.2.ffn_up.weight",))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['model\.layers\.2\.mlp\.up_proj"
                                              r"\.weight'\] that a llama config with 3 layers"):
        corea_jax.load_model(path)


def test_gguf_without_tokenizer_metadata_loads_with_no_tokenizer(tiny_llama, tmp_path):
    path = write_llama_cpp_gguf(tiny_llama, tmp_path / "m.gguf", "llama", tokenizer=False)
    model = corea_jax.load_model(path)
    assert model.tokenizer is None and model.config.vocab_size == tiny_llama.config.vocab_size


def test_not_a_gguf_and_truncated_gguf_are_refused(tiny_llama, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely not gguf")
    with pytest.raises(CheckpointError, match=r"fake\.gguf: not a GGUF file \(expected magic b'GGUF', "
                                              r"found b'PK"):
        corea_jax.load_model(fake)
    path = write_llama_cpp_gguf(tiny_llama, tmp_path / "m.gguf", "llama", tokenizer=False)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"tensor output\.weight: data runs past the end"):
        corea_jax.load_model(path)
    path.write_bytes(data[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated GGUF header"):
        corea_jax.load_model(path)
    path.write_bytes(b"GGUF" + (7).to_bytes(4, "little") + data[8:])
    with pytest.raises(CheckpointError, match=r"GGUF version: expected one of \(2, 3\), found 7"):
        corea_jax.load_model(path)


# ------------------------------------------------------------------ real SmolLM2 GGUF


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    from corea_jax.models import fetch

    return fetch.fetch_gguf(SMOLLM2)


@pytest.mark.real_model
@pytest.mark.slow
def test_real_gguf_matches_transformers_gguf_loader(smollm2_gguf):
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    model = corea_jax.load_model(smollm2_gguf)
    ids, mask = chat_prompt_batch(model.tokenizer, 64)
    ours = np.asarray(corea_jax.logits(model, ids, mask))
    del model
    theirs = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name,
                                                  dtype=torch.float32)
    ref = torch_logits(theirs, ids, mask)
    del theirs
    gc.collect()
    valid = mask == 1
    assert np.abs(ours[valid] - ref[valid]).max() <= 1e-3


@pytest.mark.real_model
@pytest.mark.slow
def test_real_gguf_tokenizer_and_config_match_transformers(smollm2_gguf):
    from transformers import AutoConfig, AutoTokenizer

    from corea_jax.models import ModelConfig
    from corea_jax.models.config import clean_float
    from corea_jax.models.gguf_file import GGUFSource, gguf_hf_config, gguf_tokenizer

    source = GGUFSource(smollm2_gguf)
    ours = ModelConfig.from_hf(gguf_hf_config(source))
    theirs = AutoConfig.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name).to_dict()
    assert theirs["rms_norm_eps"] != 1e-5  # GGUF stores it as float32: 9.99999975e-06
    theirs["rms_norm_eps"] = clean_float(theirs["rms_norm_eps"])
    assert ours == ModelConfig.from_hf(theirs)
    assert ours.rms_norm_eps == 1e-5
    tokenizer = gguf_tokenizer(source, ours.model_type)
    reference = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    _assert_same_tokenizer(tokenizer, reference, "def fib(n):\n    return n if n < 2 else fib(n - 1)")


# --------------------------------------------------------------------- without torch


_NO_TORCH = textwrap.dedent("""
    import sys
    from importlib.machinery import PathFinder

    class NoTorch:
        # As if torch were not installed: no module spec, for every finder that asks.
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                return None
            return PathFinder.find_spec(name, path, target)

        find_distributions = PathFinder.find_distributions

    sys.meta_path = [NoTorch if f is PathFinder else f for f in sys.meta_path]
    import numpy as np
    import corea_jax

    for path in sys.argv[1:]:
        model = corea_jax.load_model(path)
        out = np.asarray(corea_jax.logits(model, np.arange(1, 9)[None]))
        assert out.shape == (1, 8, model.config.vocab_size) and np.isfinite(out).all()
        if path.endswith(".gguf"):
            text = model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                       tokenize=False)
            assert "hi" in text
    assert "torch" not in sys.modules, "torch was imported"
    try:
        import torch  # noqa: F401
    except ImportError:
        print("NO_TORCH_OK")
""")


@pytest.mark.real_model
@pytest.mark.slow
def test_core_loads_and_runs_without_torch(smollm2_gguf, tmp_path):
    """An HF dir, a tiny GGUF with a tokenizer and the real SmolLM2 GGUF, torch unimportable."""
    hf_model = save_random_hf_model("qwen2", tmp_path / "hf")
    gguf_path = write_llama_cpp_gguf(hf_model, tmp_path / "tiny.gguf", "qwen2")
    hf_dir = tmp_path / "hf"
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, str(hf_dir), str(gguf_path),
                             str(smollm2_gguf)], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NO_TORCH_OK" in result.stdout
