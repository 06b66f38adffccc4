import json
import subprocess
import sys

import pytest

from quantlab.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_plan_13b_qlora_on_4090_breakdown_and_verdict(capsys):
    rc, out, _ = run(capsys, "plan", "--model", "13b", "--method", "qlora", "--gpu", "rtx-4090")
    assert rc == 0
    assert "13b -> llama-2-13b (alias)" in out
    assert "weights" in out and "quant_constants" in out and "activations" in out
    flat = " ".join(out.split())  # rich wraps at 80 columns
    assert "FITS on rtx-4090" in flat
    assert "recipe: PEFT QLoRA (prepare_model_for_kbit_training: checkpointing on, fp32 upcast)" in flat
    assert "r 16 on q_proj,v_proj (PEFT's default for llama)" in flat


def test_qlora_without_checkpointing_is_the_explicit_choice(capsys):
    """--no-grad-checkpointing plans what prepare_model_for_kbit_training(use_gradient_checkpointing=False) does:
    every block's activations kept, more memory than the recipe, and the header says checkpointing off."""
    import re

    def process(*extra):
        rc, out, _ = run(capsys, "plan", "--model", "13b", "--method", "qlora", "--gpu", "rtx-4090", "--format",
                         "json", *extra)
        assert rc == 0
        return json.loads(out)

    on, off = process(), process("--no-grad-checkpointing")
    assert on["config"]["grad_checkpointing"] is True and off["config"]["grad_checkpointing"] is False
    assert off["process_bytes"] > on["process_bytes"]
    assert "checkpointing off" in off["recipe"] and on["fits"] and not off["fits"]
    assert process("--grad-checkpointing") == on  # the explicit flag is the recipe's default
    rc, out, _ = run(capsys, "plan", "--model", "13b", "--method", "qlora", "--no-grad-checkpointing")
    assert re.search(r"checkpointing\s+off", out)


@pytest.mark.parametrize("model, targets", [("gpt2", ["c_attn"]), ("phi-3-mini", ["qkv_proj"]),
                                            ("qwen2.5-7b", ["q_proj", "v_proj"])])
def test_lora_default_targets_follow_the_family(capsys, model, targets):
    """PEFT's per-family target_modules (families F9): q_proj,v_proj match nothing in GPT-2 or Phi-3."""
    rc, out, err = run(capsys, "plan", "--model", model, "--method", "lora", "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["config"]["lora_targets"] == targets and doc["trainable_params"] > 0
    assert (model == "phi-3-mini") == any("no default LoRA target_modules for phi3" in n for n in doc["notes"])
    rc, out, err = run(capsys, "plan", "--model", model, "--method", "lora", "--lora-targets", "all-linear",
                       "--format", "json")
    assert rc == 0 and json.loads(out)["trainable_params"] > doc["trainable_params"]


def test_plan_json_contract(capsys):
    rc, out, _ = run(capsys, "plan", "--model", "8b", "--method", "lora", "--gpu", "a100-80gb", "--format", "json")
    doc = json.loads(out)
    for k in ("model", "params", "trainable_params", "components", "peak_allocated_bytes", "peak_reserved_bytes",
              "process_bytes", "gpu", "fits", "margin_bytes", "max_batch", "max_seq"):
        assert k in doc, k
    assert doc["model"] == "llama-3.1-8b" and doc["gpu"] == "a100-80gb"
    assert all(isinstance(v, int) for v in doc["components"].values())
    assert doc["peak_allocated_bytes"] <= doc["peak_reserved_bytes"] <= doc["process_bytes"]


def test_plan_csv(capsys):
    rc, out, _ = run(capsys, "plan", "--model", "7b", "--format", "csv")
    assert rc == 0 and out.splitlines()[0].startswith("model,") and "weights_bytes" in out


def test_gpu_auto_without_gpu_is_normal(capsys):
    rc, out, _ = run(capsys, "plan", "--model", "7b", "--gpu", "auto")
    assert rc == 0


def test_compare_formats(capsys):
    rc, out, _ = run(capsys, "compare", "--model", "8b", "--method", "lora", "--grad-checkpointing", "--format", "json")
    doc = json.loads(out)
    assert [r["precision"] for r in doc["rows"]] == ["fp32", "fp16", "bf16", "int8", "nf4"]
    by = {r["precision"]: r["process_bytes"] for r in doc["rows"]}
    assert by["nf4"] < by["bf16"] < by["fp32"]
    rc, out, _ = run(capsys, "compare", "--model", "8b", "--format", "markdown")
    assert out.count("|") > 20


@pytest.mark.parametrize("argv,needle", [
    (["--model", "lama-2-7b"], "did you mean"),
    (["--model", "7b", "--gpu", "h1000"], "unknown GPU"),
    (["--model", "7b", "--batch", "0"], "positive"),
    (["--model", "7b", "--seq", "-5"], "positive"),
    (["--model", "7b", "--method", "qlora", "--precision", "fp32"], "QLoRA"),
    (["--model", "7b", "--method", "lora", "--lora-targets", "nope"], "match no linear"),
])
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    rc, out, err = run(capsys, "plan", *argv)
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_malformed_config_json(tmp_path, capsys):
    p = tmp_path / "config.json"
    p.write_text("{oops")
    rc, _, err = run(capsys, "plan", "--model", str(p))
    assert rc == 2 and "not valid JSON" in err


def test_seq_beyond_context_warns_not_fails(capsys):
    rc, out, _ = run(capsys, "plan", "--model", "7b", "--seq", "8192")
    assert rc == 0 and "beyond the model's context" in out


def test_plan_does_not_import_torch():
    code = ("import sys; from quantlab.cli import main; main(['plan','--model','13b','--method','qlora','--gpu',"
            "'rtx-4090','--format','json']); assert 'torch' not in sys.modules and 'pandas' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_lora_dropout_flag_and_t4_flash_note(capsys):
    rc, out, _ = run(capsys, "plan", "--model", "8b", "--method", "lora", "--lora-dropout", "0.05", "--gpu", "t4",
                     "--format", "json")
    doc = json.loads(out)
    assert rc == 0 and any("no FlashAttention" in n for n in doc["notes"])
    assert any("math kernel" in n for n in doc["notes"])
    rc, _, err = run(capsys, "plan", "--model", "8b", "--method", "lora", "--lora-dropout", "1.5")
    assert rc == 2 and "lora-dropout" in err


def test_tensor_parallel_that_cannot_split_heads_is_one_line(capsys):
    rc, _, err = run(capsys, "plan", "--model", "8b", "--num-gpus", "3", "--tp", "3")
    assert rc == 2 and "tensor-parallel degree 3" in err and len(err.strip().splitlines()) == 1


def test_compare_rows_follow_each_methods_recipe(capsys):
    """A QLoRA compare plans its LoRA rows without checkpointing and its k-bit rows with it (each row's own
    recipe); an explicit flag holds for every row."""
    rc, out, _ = run(capsys, "compare", "--model", "13b", "--method", "qlora", "--format", "json")
    rows = {r["precision"]: r for r in json.loads(out)["rows"]}
    assert (rows["bf16"]["method"], rows["bf16"]["grad_checkpointing"]) == ("lora", False)
    assert (rows["nf4"]["method"], rows["nf4"]["grad_checkpointing"]) == ("qlora", True)
    assert rows["int8"]["grad_checkpointing"] is True  # LoRA on 8-bit weights goes through the k-bit recipe too
    rc, out, _ = run(capsys, "compare", "--model", "13b", "--method", "qlora", "--no-grad-checkpointing",
                     "--format", "json")
    assert not any(r["grad_checkpointing"] for r in json.loads(out)["rows"])
