"""Every profile loads, every number is bounded and sourced, names resolve as documented."""

import json

import pytest
import yaml

from quantlab.cli import main
from quantlab.errors import QuantlabError
from quantlab.profiles import (gpu_doc, list_gpus, list_models, load_gpu, load_model, match_gpu_by_device_name,
                               model_doc, profiles_dir)
from quantlab.units import GiB

REQUIRED_MODELS = """gpt2 smollm2-135m qwen2.5-0.5b qwen2.5-1.5b qwen2.5-7b qwen2.5-14b qwen2.5-32b qwen2.5-72b
llama-7b llama-13b llama-33b llama-65b llama-2-7b llama-2-13b llama-2-70b llama-3.1-8b llama-3.1-70b llama-3.1-405b
llama-3.2-1b llama-3.2-3b mistral-7b-v0.1 mistral-7b-v0.3 mixtral-8x7b gemma-2-2b gemma-2-9b gemma-2-27b phi-3-mini
deepseek-coder-1.3b""".split()
REQUIRED_GPUS = """t4 v100-16gb v100-32gb a10g l4 l40s rtx-3090 rtx-4090 rtx-5090 rtx-a6000 a100-40gb a100-80gb
h100-pcie h100-sxm h200 b200 mi300x""".split()


def test_required_profiles_exist():
    assert set(REQUIRED_MODELS) <= set(list_models())
    assert set(REQUIRED_GPUS) <= set(list_gpus())


@pytest.mark.parametrize("name", sorted(list_models()))
def test_model_profile_is_sourced_and_sane(name):
    doc = model_doc(name)
    assert doc["name"] == name
    assert doc["source"].startswith("https://huggingface.co/") and doc["source"].endswith("config.json")
    spec = load_model(name).spec
    assert 64 <= spec.hidden_size <= 32768
    assert 1 <= spec.num_hidden_layers <= 200
    assert spec.num_attention_heads % spec.kv_heads == 0
    assert 1000 <= spec.vocab_size <= 300_000
    assert spec.intermediate_size >= spec.hidden_size


@pytest.mark.parametrize("name", sorted(list_gpus()))
def test_gpu_profile_numbers_are_bounded_and_sourced(name):
    g, doc = load_gpu(name), gpu_doc(name)
    assert 8 * GiB <= g.memory_bytes <= 300 * GiB
    assert 100e9 <= g.memory_bandwidth_bytes_per_s <= 10e12  # catches a dropped or extra zero
    assert 1e12 <= g.flops["fp32"] <= 300e12
    for k in ("tf32", "bf16", "fp16", "int8", "fp8"):
        v = g.flops[k]
        if v is not None:
            assert g.flops["fp32"] <= v <= 20e15, k
    assert (g.flops["bf16"] is not None) == g.bf16_supported
    assert (g.flops["fp8"] is not None) == g.fp8_supported
    if g.flops["bf16"] and g.flops["fp16"]:
        assert g.flops["bf16"] == pytest.approx(g.flops["fp16"])
    assert 10e9 <= g.interconnect_bandwidth_bytes_per_s <= 2e12
    assert 0.05 <= g.price_usd_per_hour <= 20
    numbers = [doc["memory_bytes"], doc["memory_bandwidth_bytes_per_s"], doc["price_usd_per_hour"],
               doc["interconnect"]["bandwidth_bytes_per_s"], *doc["flops"].values()]
    for n in numbers:
        assert n["basis"] in ("datasheet", "measured", "assumed") and n["source"]
    assert doc["price_usd_per_hour"]["basis"] == "assumed"


def test_aliases_are_unique():
    seen = {}
    for kind, names in (("models", list_models()), ("gpus", list_gpus())):
        for n in names:
            doc = model_doc(n) if kind == "models" else gpu_doc(n)
            for a in [n, *(doc.get("aliases") or [])]:
                assert a.lower() not in seen, f"{a} used by {seen.get(a.lower())} and {n}"
                seen[a.lower()] = n


@pytest.mark.parametrize("alias,name", [("7b", "llama-2-7b"), ("13b", "llama-2-13b"), ("70b", "llama-2-70b"),
                                        ("8b", "llama-3.1-8b"), ("Qwen/Qwen2.5-7B", "qwen2.5-7b"),
                                        ("META-LLAMA/LLAMA-2-7B-HF", "llama-2-7b")])
def test_aliases_resolve_and_say_so(alias, name):
    r = load_model(alias)
    assert r.name == name and name in r.resolved_from


def test_gpu_lookup_by_alias_and_device_name():
    assert load_gpu("H100").name == "h100-sxm"
    assert match_gpu_by_device_name("NVIDIA L40S").name == "l40s"
    assert match_gpu_by_device_name("NVIDIA L4").name == "l4"
    assert match_gpu_by_device_name("NVIDIA A100-SXM4-40GB").name == "a100-40gb"
    assert match_gpu_by_device_name("Some Unknown Accelerator") is None


def test_local_config_file_and_folder(tmp_path):
    cfg = dict(model_doc("llama-2-7b")["config"])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    by_dir = load_model(str(tmp_path / "m"))
    by_file = load_model(str(tmp_path / "m" / "config.json"))
    assert by_dir.spec.hidden_size == by_file.spec.hidden_size == 4096
    assert "local config" in by_dir.resolved_from


@pytest.mark.parametrize("content,needle", [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"),
                                            ('{"model_type": "llama"}', "missing"),
                                            ('{"model_type": "llama", "hidden_size": -1, "num_hidden_layers": 2, '
                                             '"num_attention_heads": 2, "intermediate_size": 8, "vocab_size": 10}',
                                             "positive")])
def test_malformed_config_is_one_clear_error(tmp_path, content, needle):
    p = tmp_path / "config.json"
    p.write_text(content)
    with pytest.raises(QuantlabError, match=needle):
        load_model(str(p))


def test_unknown_names_suggest_close_ones():
    with pytest.raises(QuantlabError, match="did you mean llama-2-7b"):
        load_model("lama-2-7b")
    with pytest.raises(QuantlabError, match="known: .*h100-sxm"):
        load_gpu("h1000")


def test_profiles_command(capsys):
    assert main(["profiles", "--kind", "gpus", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= set(REQUIRED_GPUS)
    assert main(["profiles"]) == 0
    assert "llama-2-13b" in capsys.readouterr().out


def test_profiles_command_bad_kind_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profiles", "--kind", "bogus"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_profile_yaml_is_plain_data():
    for p in (profiles_dir() / "models").glob("*.yaml"):
        assert set(yaml.safe_load(p.read_text())) <= {"name", "aliases", "hf_id", "source", "notes", "config"}
