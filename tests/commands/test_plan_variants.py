"""``quantlab plan --method bitfit|dora|ptuning|distill`` and ``quantlab compare --methods ...`` with them (issue #13):
the CLI (quantlab.commands.variant_flags) plans exactly what quantlab.planner.peft_methods plans for the same
configuration, its fit verdict and searches hold at their boundaries, the JSON document round-trips, and bad input
is one line with exit 2."""

import csv
import dataclasses
import io
import json

import pytest

from quantlab.cli import main
from quantlab.commands import variant_flags as VF
from quantlab.planner import peft_methods as PM
from quantlab.planner import plan
from quantlab.planner.fit import budget, on_gpu
from quantlab.profiles import load_gpu, load_model
from quantlab.specs import Method, PlanConfig, Precision


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def doc_of(capsys, *argv):
    rc, out, err = run(capsys, "plan", *argv, "--format", "json")
    assert rc == 0, err
    return json.loads(out)


def spec(name):
    return load_model(name).spec


def same_plan(doc, p):
    assert doc["components"] == dict(p.components)
    assert (doc["peak_allocated_bytes"], doc["peak_reserved_bytes"], doc["process_bytes"]) == \
        (p.peak_allocated_bytes, p.peak_reserved_bytes, p.process_bytes)
    assert doc["trainable_params"] == p.trainable_params


# (CLI arguments, the configuration and the direct peft_methods call they must equal)
CASES = {
    "bitfit-gpt2": (["--model", "gpt2", "--method", "bitfit", "--batch", "2", "--seq", "512"],
                    lambda: PM.bitfit_plan(PlanConfig(model=spec("gpt2"), method=Method.FULL, batch=2, seq=512))),
    "bitfit-qwen-fp32": (["--model", "qwen2.5-0.5b", "--method", "bitfit", "--precision", "fp32"],
                         lambda: PM.bitfit_plan(PlanConfig(model=spec("qwen2.5-0.5b"), method=Method.FULL,
                                                           precision=Precision.FP32))),
    "dora": (["--model", "llama-3.2-1b", "--method", "dora", "--lora-r", "8", "--seq", "1024"],
             lambda: PM.dora_plan(PlanConfig(model=spec("llama-3.2-1b"), method=Method.LORA, lora_r=8, seq=1024))),
    "qdora": (["--model", "llama-3.2-1b", "--method", "dora", "--precision", "nf4", "--no-grad-checkpointing"],
              lambda: PM.dora_plan(PlanConfig(model=spec("llama-3.2-1b"), method=Method.QLORA,
                                              precision=Precision.NF4, grad_checkpointing=False))),
    "ptuning-mlp": (["--model", "llama-3.2-1b", "--method", "ptuning", "--encoder-hidden-size", "128"],
                    lambda: PM.ptuning_plan(PlanConfig(model=spec("llama-3.2-1b"), method=Method.PROMPT),
                                            PM.PTuningConfig(128))),
    "ptuning-lstm": (["--model", "gpt2", "--method", "ptuning", "--encoder-hidden-size", "64", "--encoder-type", "lstm",
                      "--encoder-num-layers", "3", "--num-virtual-tokens", "10"],
                     lambda: PM.ptuning_plan(PlanConfig(model=spec("gpt2"), method=Method.PROMPT, num_virtual_tokens=10),
                                             PM.PTuningConfig(64, PM.EncoderType.LSTM, 3))),
    "distill": (["--model", "llama-3.2-1b", "--method", "distill", "--teacher", "llama-3.2-3b", "--student-method",
                 "lora", "--teacher-precision", "nf4", "--distill-beta", "0", "--seq", "1024"],
                lambda: PM.distill_plan(PlanConfig(model=spec("llama-3.2-1b"), method=Method.LORA, seq=1024),
                                        PM.DistillConfig(spec("llama-3.2-3b"), 0.0, Precision.NF4))),
}
BASE = {"bitfit-gpt2": "full", "bitfit-qwen-fp32": "full", "dora": "lora", "qdora": "qlora", "ptuning-mlp": "prompt",
        "ptuning-lstm": "prompt", "distill": "lora"}


@pytest.mark.parametrize("case", CASES)
def test_each_variant_plans_as_peft_methods_does(capsys, case):
    argv, direct = CASES[case]
    doc = doc_of(capsys, *argv)
    same_plan(doc, direct())
    assert doc["config"]["method"] == BASE[case]  # the method the variant is planned over
    assert doc["variant"]["name"] == argv[argv.index("--method") + 1]


def test_document_names_the_variant_settings_and_its_components(capsys):
    pt = doc_of(capsys, *CASES["ptuning-lstm"][0])["variant"]
    assert pt == {"name": "ptuning", "encoder_hidden_size": 64, "encoder_type": "lstm", "encoder_num_layers": 3}
    d = doc_of(capsys, *CASES["distill"][0])
    assert d["variant"]["teacher"]["name"] == "llama-3.2-3b" and d["variant"]["teacher_precision"] == "nf4"
    assert d["variant"]["beta"] == 0.0
    for k in ("teacher_weights", "teacher_kv_cache", "teacher_forward", "distill_logits", "distill_loss"):
        assert d["components"][k] > 0
    assert "logits_loss" not in d["components"]  # GKD's loss replaces the HF loss (D8)
    assert doc_of(capsys, *CASES["dora"][0])["components"]["dora_forward_transient"] > 0


def test_table_and_csv_show_the_variant(capsys):
    rc, out, err = run(capsys, "plan", *CASES["dora"][0], "--gpu", "a100-80gb")
    assert rc == 0, err
    assert "dora (PEFT 0.21 use_dora=True) over lora" in " ".join(out.split())
    assert "dora_forward_transient" in out and ("FITS on" in out or "DOES NOT FIT on" in out)
    rc, out, err = run(capsys, "plan", *CASES["distill"][0], "--format", "csv")
    assert rc == 0, err
    (vals,) = list(csv.DictReader(io.StringIO(out)))
    assert vals["variant_name"] == "distill" and vals["variant_teacher"] == "llama-3.2-3b"
    assert int(vals["teacher_weights_bytes"]) > 0


@pytest.mark.parametrize("case,gpu", [("dora", "rtx-4090"), ("ptuning-mlp", "a10g"), ("distill", "rtx-4090"),
                                      ("bitfit-gpt2", "t4")])
def test_fit_verdict_and_searches_hold_at_their_boundaries(capsys, case, gpu):
    """The verdict is the process total (with the GPU's CUDA context) against the GPU's memory; the largest batch
    fits and the next does not (fit.py assumption 2), as the variant's own plan says."""
    doc = doc_of(capsys, *CASES[case][0], "--gpu", gpu)
    g = load_gpu(gpu)
    cfg = PlanConfig.from_dict(doc["config"])
    v = VF.Variant.from_dict(doc["variant"])
    on = on_gpu(VF.variant_plan(cfg, v), g).process_bytes  # the GPU's own CUDA context (fit.py assumption 7)
    assert doc["fits"] == (on <= g.memory_bytes)
    assert doc["margin_bytes"] == g.memory_bytes - on
    b = doc["max_batch"]

    def fits(c):
        return VF.variant_plan(c, v).process_bytes <= budget(c, g)

    if b:
        assert fits(dataclasses.replace(cfg, batch=b))
    assert not fits(dataclasses.replace(cfg, batch=b + 1))
    s = doc["max_seq"]
    cap = max(cfg.model.max_position_embeddings, cfg.seq)  # the search stops at the model's context (gpt2: 1024)
    assert s and fits(dataclasses.replace(cfg, seq=s))
    assert s == cap or not fits(dataclasses.replace(cfg, seq=s + 1))
    assert doc["min_gpus"] == (1 if doc["fits"] else None)


@pytest.mark.parametrize("case", ["bitfit-gpt2", "qdora", "ptuning-lstm", "distill"])
def test_from_json_round_trip(capsys, tmp_path, case):
    doc = doc_of(capsys, *CASES[case][0], "--gpu", "h100")
    f = tmp_path / "p.json"
    f.write_text(json.dumps(doc, indent=2) + "\n")
    rc, out, err = run(capsys, "plan", "--from-json", str(f), "--format", "json")
    assert rc == 0, err
    assert out == f.read_text()
    rc, out, err = run(capsys, "plan", "--from-json", str(f))  # the table reads the document back too
    assert rc == 0 and doc["variant"]["name"] in out


BAD = [
    (["--model", "llama-3.2-1b", "--method", "ptuning"], "needs --encoder-hidden-size"),
    (["--model", "llama-3.2-1b", "--method", "distill"], "needs --teacher"),
    (["--model", "llama-3.2-1b", "--method", "bitfit"], "has no bias parameters"),
    (["--model", "gpt2", "--method", "lora", "--teacher", "gpt2"], "--teacher applies to --method distill, not lora"),
    (["--model", "gpt2", "--method", "dpo", "--encoder-type", "lstm"], "--encoder-type applies to --method ptuning"),
    (["--model", "gpt2", "--method", "dora", "--encoder-hidden-size", "8"], "not dora"),
    (["--model", "gpt2", "--method", "bitfit", "--policy", "full"], "applies to the preference methods, not bitfit"),
    (["--model", "gpt2", "--method", "bitfit", "--lora-r", "8"], "not bitfit (planned over full"),
    (["--model", "gpt2", "--method", "bitfit", "--precision", "nf4"], None),
    (["--model", "gpt2", "--method", "ptuning", "--encoder-hidden-size", "8", "--encoder-num-layers", "3"],
     "applies to --encoder-type lstm"),
    (["--model", "gpt2", "--method", "ptuning", "--encoder-hidden-size", "0"], "positive integer"),
    (["--model", "llama-3.2-1b", "--method", "dora", "--precision", "nf4"], "give --no-grad-checkpointing"),
    (["--model", "llama-3.2-1b", "--method", "dora", "--lora-dropout", "0.1"], "lora-dropout"),
    (["--model", "llama-3.2-1b", "--method", "dora", "--grad-checkpointing"], "gradient checkpointing"),
    (["--model", "llama-3.2-1b", "--method", "dora", "--num-gpus", "2", "--zero", "3"], "one GPU"),
    (["--model", "llama-3.2-1b", "--method", "distill", "--teacher", "gpt2"], "vocabulary"),
    (["--model", "llama-3.2-1b", "--method", "distill", "--teacher", "llama-3.2-3b", "--distill-beta", "2"],
     "beta must be in [0, 1]"),
    (["--model", "gpt2", "--method", "bitfit", "--emit", "deepspeed"], "--emit"),
    (["--model", "gpt2", "--method", "bitfit", "--kv-dtype", "fp8"], None),
]


@pytest.mark.parametrize("argv,text", BAD)
def test_bad_input_is_one_line_exit_2(capsys, argv, text):
    rc, out, err = run(capsys, "plan", *argv)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], err
    if text:
        assert text in lines[0]


def test_from_json_refuses_a_variant_flag(capsys, tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(doc_of(capsys, *CASES["bitfit-gpt2"][0])))
    for extra in (["--teacher", "gpt2"], ["--emit", "deepspeed"]):
        rc, out, err = run(capsys, "plan", "--from-json", str(f), *extra)
        assert rc == 2 and len(err.strip().splitlines()) == 1
    doc = json.loads(f.read_text())
    doc["variant"] = {"name": "ptuning", "encoder_hidden_size": -1, "encoder_type": "mlp", "encoder_num_layers": 2}
    f.write_text(json.dumps(doc))
    rc, out, err = run(capsys, "plan", "--from-json", str(f))
    assert rc == 2 and "positive integer" in err and len(err.strip().splitlines()) == 1


def test_help_shows_the_flags_and_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--encoder-hidden-size", "--encoder-type", "--encoder-num-layers", "--teacher", "--teacher-precision",
                 "--distill-beta", "--student-method"):
        assert flag in text
    assert "(default: mlp)" in text and "(default: 2)" in text and "(default: 0.5)" in text
    assert "(default: full)" in text and "bitfit" in text


def test_mirrored_defaults_are_the_dataclasses():
    """variant_flags keeps peft_methods out of the CLI start (its dataclasses load inspect); its copies of the
    defaults must be the dataclasses' own."""
    pt = {f.name: f.default for f in dataclasses.fields(PM.PTuningConfig)}
    dc = {f.name: f.default for f in dataclasses.fields(PM.DistillConfig)}
    assert VF._PT == {"encoder_type": pt["encoder_type"].value, "encoder_num_layers": pt["encoder_num_layers"]}
    assert VF._DC == {"beta": dc["beta"]}
    assert VF.ENCODER_TYPES == tuple(e.value for e in PM.EncoderType)


# ---- compare ------------------------------------------------------------------------------------------------

def compare_doc(capsys, *argv):
    rc, out, err = run(capsys, "compare", *argv, "--format", "json")
    assert rc == 0, err
    return json.loads(out)


def test_compare_methods_side_by_side(capsys):
    doc = compare_doc(capsys, "--methods", "lora,dora,bitfit,ptuning,dpo", "--model", "qwen2.5-0.5b",
                      "--encoder-hidden-size", "128", "--seq", "1024", "--gpu", "rtx-4090")
    rows = {r["method"]: r for r in doc["rows"]}
    assert doc["methods"] == ["lora", "dora", "bitfit", "ptuning", "dpo"]
    q = spec("qwen2.5-0.5b")
    direct = {"lora": plan(PlanConfig(model=q, method=Method.LORA, seq=1024)),
              "dora": PM.dora_plan(PlanConfig(model=q, method=Method.LORA, seq=1024)),
              "bitfit": PM.bitfit_plan(PlanConfig(model=q, method=Method.FULL, seq=1024)),
              "ptuning": PM.ptuning_plan(PlanConfig(model=q, method=Method.PROMPT, seq=1024), PM.PTuningConfig(128))}
    for name, p in direct.items():
        r = rows[name]
        assert "note" not in r, r
        assert r["peak_allocated_bytes"] == p.peak_allocated_bytes and r["trainable_params"] == p.trainable_params
        assert r["gpu"] == "rtx-4090" and isinstance(r["fits"], bool)
    assert rows["dora"]["dora_forward_transient_bytes"] > 0
    assert (rows["dora"]["planned_over"], rows["bitfit"]["planned_over"], rows["ptuning"]["planned_over"]) == \
        ("lora", "full", "prompt")
    assert rows["dpo"]["policy"] == "lora" and "planned_over" not in rows["dpo"]


def test_compare_rows_without_their_flags_or_model_support_say_why(capsys):
    doc = compare_doc(capsys, "--methods", "lora,ptuning,distill,bitfit", "--model", "llama-3.2-1b")
    rows = {r["method"]: r for r in doc["rows"]}
    assert "peak_allocated_bytes" in rows["lora"]
    assert "--encoder-hidden-size" in rows["ptuning"]["note"]
    assert "--teacher" in rows["distill"]["note"]
    assert "no bias parameters" in rows["bitfit"]["note"]
    rc, out, err = run(capsys, "compare", "--methods", "lora,ptuning,distill,bitfit", "--model", "llama-3.2-1b")
    assert rc == 0 and "n/a" in out and "--encoder-hidden-size" in " ".join(out.split())


def test_compare_distill_row_and_table(capsys):
    argv = ["--methods", "lora,distill", "--model", "llama-3.2-1b", "--teacher", "llama-3.2-3b", "--seq", "512"]
    rows = {r["method"]: r for r in compare_doc(capsys, *argv)["rows"]}
    p = PM.distill_plan(PlanConfig(model=spec("llama-3.2-1b"), method=Method.FULL, seq=512),
                        PM.DistillConfig(spec("llama-3.2-3b")))
    assert rows["distill"]["process_bytes"] == p.process_bytes and rows["distill"]["planned_over"] == "full"
    rc, out, err = run(capsys, "compare", *argv)
    assert rc == 0 and "teacher" in out


def test_compare_by_precision_for_a_variant(capsys):
    doc = compare_doc(capsys, "--method", "dora", "--model", "qwen2.5-0.5b", "--precisions", "bf16,nf4",
                      "--no-grad-checkpointing")
    rows = {r["precision"]: r for r in doc["rows"]}
    assert rows["bf16"]["method"] == rows["nf4"]["method"] == "dora"
    assert (rows["bf16"]["planned_over"], rows["nf4"]["planned_over"]) == ("lora", "qlora")
    q = spec("qwen2.5-0.5b")
    p = PM.dora_plan(PlanConfig(model=q, method=Method.QLORA, precision=Precision.NF4, grad_checkpointing=False))
    assert rows["nf4"]["peak_allocated_bytes"] == p.peak_allocated_bytes


@pytest.mark.parametrize("argv,text", [
    (["--methods", "lora,dpo", "--teacher", "gpt2"], "--teacher applies to --methods distill"),
    (["--methods", "lora,nosuch"], "unknown method"),
    (["--method", "lora", "--encoder-hidden-size", "8"], "--encoder-hidden-size applies to --method ptuning"),
])
def test_compare_bad_input_is_one_line(capsys, argv, text):
    rc, out, err = run(capsys, "compare", "--model", "gpt2", *argv)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and text in err
