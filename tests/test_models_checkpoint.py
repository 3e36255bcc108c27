"""HF checkpoint import and export: save_hf round trips, sharded exports, and bad inputs."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import corea_jax
from corea_jax.models import CheckpointError, ConfigError, checkpoint
from corea_jax.models.decoder import relayout
from tests.fetched_models import SMOLLM2, fetched_dir
from tests.helpers import save_random_hf_model, torch_logits

KINDS = ["qwen2", "qwen2_untied", "llama3"]


def _assert_params_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(np.asarray(x), np.asarray(y))


def _shard_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.safetensors"))


# -------------------------------------------------------------------------- round trip


@pytest.fixture(scope="module", params=KINDS)
def exported(request, tmp_path_factory):
    """(kind, source dir, corea_jax Model, export dir): a transformers-saved tiny model re-exported."""
    root = tmp_path_factory.mktemp(f"export_{request.param}")
    save_random_hf_model(request.param, root / "source")
    model = corea_jax.load_model(root / "source")
    out = corea_jax.save_hf(model, root / "export")
    return request.param, root / "source", model, out


def test_reload_of_export_is_bit_identical(exported):
    _, _, model, out = exported
    reloaded = corea_jax.load_model(out)
    assert reloaded.config == model.config
    _assert_params_identical(reloaded.params, model.params)


def test_export_holds_the_source_tensors_bit_for_bit(exported):
    kind, source, _, out = exported
    ours, theirs = load_file(out / "model.safetensors"), load_file(source / "model.safetensors")
    if kind == "qwen2":  # tied: the head is the embedding, and we do not store it twice
        theirs.pop("lm_head.weight", None)
    assert sorted(ours) == sorted(theirs)
    for name, array in theirs.items():
        assert ours[name].dtype == array.dtype and np.array_equal(ours[name], array), name
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == ("llama" if kind == "llama3" else "qwen2")


def test_transformers_loads_export_with_same_logits(exported):
    import torch
    from transformers import AutoModelForCausalLM

    kind, _, model, out = exported
    theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert type(theirs).__name__ == ("LlamaForCausalLM" if kind == "llama3" else "Qwen2ForCausalLM")
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(2, 33))
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    ours = np.asarray(corea_jax.logits(model, ids, mask))
    ref = torch_logits(theirs, ids, mask)
    assert np.abs(ours[mask == 1] - ref[mask == 1]).max() <= 1e-4


def test_sharded_export_round_trips_and_replaces_old_shards(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    save_random_hf_model("qwen2_untied", tmp_path / "source")
    model = corea_jax.load_model(tmp_path / "source")
    out = tmp_path / "export"
    total = sum(np.asarray(p).nbytes for p in jax.tree.leaves(model.params))

    corea_jax.save_hf(model, out, max_shard_bytes=total // 4)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = _shard_files(out)
    assert len(shards) >= 4 and "model.safetensors" not in shards
    assert sorted(set(index["weight_map"].values())) == shards
    assert set(index["weight_map"]) == set(checkpoint.expected_hf_shapes(model.config))
    assert index["metadata"]["total_size"] == total
    _assert_params_identical(corea_jax.load_model(out).params, model.params)
    theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, size=(1, 17))
    assert np.abs(np.asarray(corea_jax.logits(model, ids)) - torch_logits(theirs, ids)).max() <= 1e-4

    # Fewer, larger shards into the same directory: only the new set (and its index) remains.
    corea_jax.save_hf(model, out, max_shard_bytes=total // 2)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    fewer = _shard_files(out)
    assert 2 <= len(fewer) < len(shards) and sorted(set(index["weight_map"].values())) == fewer
    _assert_params_identical(corea_jax.load_model(out).params, model.params)

    # Unsharded again: one model.safetensors, no index, no shards.
    corea_jax.save_hf(model, out)
    assert _shard_files(out) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()
    _assert_params_identical(corea_jax.load_model(out).params, model.params)
    assert not list(tmp_path.glob(".export.partial-*"))  # no staging directory left behind


def test_load_onto_a_mesh_places_params_by_the_sharding_rules(tmp_path):
    from jax.sharding import PartitionSpec

    from corea_jax.parallel.sharding import make_mesh

    save_random_hf_model("qwen2_untied", tmp_path / "source")
    plain = corea_jax.load_model(tmp_path / "source")
    mesh = make_mesh({"fsdp": jax.device_count()})
    stacked = corea_jax.load_model(tmp_path / "source", mesh=mesh)
    assert stacked.config.scan_layers  # the default on an fsdp mesh: a scan gathers one layer at a time
    q_kernel = stacked.params["layers"]["self_attn"]["q_proj"]["kernel"]  # [L, D, H, Dh]
    assert q_kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
    sharded = corea_jax.load_model(tmp_path / "source", mesh=mesh, scan_layers=False)
    assert sharded.mesh is mesh
    q_kernel = sharded.params["layers_1"]["self_attn"]["q_proj"]["kernel"]  # [D, H, Dh]
    assert q_kernel.sharding.spec == PartitionSpec("fsdp", "tensor", None)
    assert len(q_kernel.sharding.device_set) == jax.device_count()
    _assert_params_identical(jax.device_get(relayout(stacked.config, stacked.params, False)[1]),
                             jax.device_get(plain.params))
    _assert_params_identical(jax.device_get(sharded.params), jax.device_get(plain.params))
    ids = np.random.default_rng(2).integers(0, plain.config.vocab_size, size=(jax.device_count(), 9))
    assert np.abs(np.asarray(corea_jax.logits(sharded, ids))
                  - np.asarray(corea_jax.logits(plain, ids))).max() <= 1e-5


class _RecordingSource(checkpoint.SafetensorsSource):
    """Safetensors that log every read: (name, elements read, elements in the tensor)."""

    def __init__(self, directory):
        super().__init__(directory)
        self.reads = []

    def get(self, name):
        array = super().get(name)
        self.reads.append((name, array.size, array.size))
        return array

    def get_slice(self, name, index):
        block = super().get_slice(name, index)
        self.reads.append((name, block.size, int(np.prod(self.shape(name)))))
        return block


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_load_reads_only_each_devices_blocks(tmp_path, scan_layers):
    from corea_jax.models.model import param_shardings
    from corea_jax.parallel.sharding import make_mesh

    save_random_hf_model("qwen2_untied", tmp_path, vocab_size=212)  # vocab divisible by tensor = 2
    plain = corea_jax.load_model(tmp_path, scan_layers=scan_layers)
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    source = _RecordingSource(tmp_path)
    params = checkpoint.params_from_source(plain.config, source, shardings=param_shardings(plain.config, mesh))
    _assert_params_identical(jax.device_get(params), jax.device_get(plain.params))

    reads = {}
    for name, size, total in source.reads:
        reads.setdefault(name, []).append((size, total))
    assert set(reads) == set(checkpoint.expected_hf_shapes(plain.config))
    # A tensor split fsdp x tensor (8 ways) is read in 8 blocks of 1/8 each: no full copy on the host.
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.2.mlp.down_proj.weight",
                 "model.layers.1.self_attn.o_proj.weight", "lm_head.weight", "model.embed_tokens.weight"):
        assert [size * 8 for size, _ in reads[name]] == [total for _, total in reads[name]], name
    # Split one way only (biases over tensor): two halves, each read once for its 4 replicas.
    assert [2 * size for size, _ in reads["model.layers.0.self_attn.q_proj.bias"]] == [64, 64]
    # Norm scales ("embed" over fsdp = 4): four quarters, each shared by its 2 tensor replicas.
    assert [4 * size for size, _ in reads["model.norm.weight"]] == [64] * 4
    down = params["layers"]["mlp"]["down_proj"] if scan_layers else params["layers_2"]["mlp"]["down_proj"]
    assert down["kernel"].addressable_shards[0].data.shape == ((3, 56, 16) if scan_layers else (56, 16))


@pytest.mark.real_model
def test_real_tokenizer_and_chat_template_survive_export(tmp_path):
    from transformers import AutoTokenizer

    source = fetched_dir(SMOLLM2)
    out = corea_jax.save_hf(corea_jax.load_model(source), tmp_path / "export")
    original = AutoTokenizer.from_pretrained(str(source))
    exported = AutoTokenizer.from_pretrained(str(out))
    assert exported.chat_template and exported.chat_template == original.chat_template
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    texts = [t.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
             for t in (original, exported)]
    assert texts[0] == texts[1] and "<|im_start|>assistant" in texts[0]
    assert exported(texts[0])["input_ids"] == original(texts[0])["input_ids"]
    for attr in ("bos_token", "eos_token", "pad_token", "eos_token_id"):
        assert getattr(exported, attr) == getattr(original, attr), attr
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == exported.eos_token_id


# -------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A transformers-saved tiny qwen2 (untied) directory; tests edit copies of it."""
    out = tmp_path_factory.mktemp("tiny") / "qwen2"
    save_random_hf_model("qwen2_untied", out)
    return out


@pytest.fixture
def copy_of(tiny_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


def _edit_tensors(directory: Path, edit) -> None:
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_missing_tensor_is_named(copy_of):
    _edit_tensors(copy_of, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['model\.layers\.1\.mlp\.up_proj"
                                              r"\.weight'\] that a qwen2 config with 3 layers expects"):
        corea_jax.load_model(copy_of)


def test_unexpected_tensor_is_named(copy_of):
    _edit_tensors(copy_of, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight":
                                               np.ones(16, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) \['model\.layers\.0\.self_attn"
                                              r"\.q_norm\.weight'\] for a qwen2 model"):
        corea_jax.load_model(copy_of)


def test_shape_mismatch_names_tensor_expected_and_found(copy_of):
    name = "model.layers.2.self_attn.k_proj.weight"
    _edit_tensors(copy_of, lambda t: t.update({name: np.zeros((48, 64), np.float32)}))
    with pytest.raises(CheckpointError, match=rf"tensor {name}: expected shape \(32, 64\), "
                                              r"found \(48, 64\)"):
        corea_jax.load_model(copy_of)


def test_vocab_size_disagreeing_with_embedding_is_a_shape_error(copy_of):
    _edit_config(copy_of, vocab_size=300)
    with pytest.raises(CheckpointError, match=r"tensor model\.embed_tokens\.weight: expected shape "
                                              r"\(300, 64\), found \(211, 64\)"):
        corea_jax.load_model(copy_of)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
     r"model_type: expected one of \['llama', 'qwen2'\], found 'gpt2' "
     r"\(architectures \['GPT2LMHeadModel'\]\)"),
    ({"hidden_act": "gelu"}, r"hidden_act: expected 'silu', found 'gelu'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}},
     r"rope_type: expected one of \('default', 'llama3'\), found 'yarn'"),
    ({"use_sliding_window": True}, r"use_sliding_window: expected false, found true"),
    ({"num_key_value_heads": 3},
     r"num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\)"),
])
def test_unsupported_config_names_field_expected_and_found(copy_of, changes, message):
    _edit_config(copy_of, **changes)
    with pytest.raises(ConfigError, match=message):
        corea_jax.load_model(copy_of)


def test_missing_config_field_is_named(copy_of):
    config = json.loads((copy_of / "config.json").read_text())
    del config["num_hidden_layers"]
    (copy_of / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config\.json: missing required field 'num_hidden_layers'"):
        corea_jax.load_model(copy_of)


def test_pickle_only_directory_is_refused(copy_of):
    (copy_of / "model.safetensors").unlink()
    (copy_of / "pytorch_model.bin").write_bytes(b"not read: pickles are refused unopened")
    with pytest.raises(CheckpointError, match=r"found only pickle weights \['pytorch_model\.bin'\]; "
                                              r"corea_jax refuses pickle"):
        corea_jax.load_model(copy_of)


def test_pickle_file_path_is_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: corea_jax refuses pickle"):
        corea_jax.load_model(path)


def test_directory_without_weights_is_refused(copy_of):
    (copy_of / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weights found"):
        corea_jax.load_model(copy_of)


def test_index_naming_a_missing_shard_is_refused(copy_of):
    (copy_of / "model.safetensors").rename(copy_of / "model-00001-of-00002.safetensors")
    weight_map = {name: "model-00001-of-00002.safetensors"
                  for name in load_file(copy_of / "model-00001-of-00002.safetensors")}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (copy_of / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"shard model-00002-of-00002\.safetensors named in the "
                                              r"index is missing"):
        corea_jax.load_model(copy_of)


def test_directory_without_config_is_refused(copy_of):
    (copy_of / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json \(expected an HF model directory\)"):
        corea_jax.load_model(copy_of)


def test_other_file_types_are_refused(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a file but not a \.gguf file"):
        corea_jax.load_model(path)


def test_hub_id_while_offline_says_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"'Qwen/Qwen2\.5-Coder-7B-Instruct' is not a local path "
                                                r"and the model hub is unreachable\. This machine is "
                                                r"offline"):
        corea_jax.load_model("Qwen/Qwen2.5-Coder-7B-Instruct")


def test_missing_local_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist \(expected an HF model directory"):
        corea_jax.load_model(tmp_path / "no" / "such" / "model")


def test_bad_dtype_names_choices(tiny_dir):
    with pytest.raises(ValueError, match=r"dtype: expected one of \('float32', 'bfloat16', 'float16', "
                                         r"'auto'\), found 'float64'"):
        corea_jax.load_model(tiny_dir, dtype="float64")


def test_auto_dtype_loads_the_hosts_fastest(tiny_dir):
    from corea_jax.parallel import machine

    model = corea_jax.load_model(tiny_dir, dtype="auto")
    assert model.config.dtype == machine.fastest_dtype().dtype
    assert model.params["embed_tokens"]["embedding"].dtype == model.config.jnp_param_dtype


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return corea_jax.load_model(tiny_dir)


@pytest.mark.parametrize("ids, mask, message", [
    (np.zeros((1, 2, 3), int), None,
     r"input_ids: expected shape \[batch, length\] with length >= 1, found \(1, 2, 3\)"),
    (np.zeros((2, 0), int), None, r"input_ids: expected shape .* found \(2, 0\)"),
    (np.array([[1, 2, 211]]), None, r"input_ids: expected ids in \[0, 211\), found range \[1, 211\]"),
    (np.array([[-1, 2, 3]]), None, r"input_ids: expected ids in \[0, 211\), found range \[-1, 3\]"),
    (np.array([[1.0, 2.0]]), None, r"input_ids: expected integer token ids, found dtype float64"),
    (np.ones((2, 5), int), np.ones((2, 4), int),
     r"attention_mask: expected shape \(2, 5\) \(that of input_ids\), found \(2, 4\)"),
])
def test_logits_rejects_bad_batches(tiny_model, ids, mask, message):
    with pytest.raises(ValueError, match=message):
        corea_jax.logits(tiny_model, ids, mask)


def test_logits_accepts_one_unbatched_row(tiny_model):
    row = np.arange(1, 9)
    assert np.array_equal(np.asarray(corea_jax.logits(tiny_model, row)),
                          np.asarray(corea_jax.logits(tiny_model, row[None])))
