"""Issue #13's methods in the validation matrix (quantlab/validate.py assumptions 13-14): ``method: dpo | bitfit |
dora | ptuning | distill | grpo | adapter`` rows parsed with ``quantlab plan``'s variant, preference and plan flags,
measured on this CPU by their own lab code (quantlab/lab/peft_measured.py, quantlab/lab/preference.py,
quantlab/lab/grpo.py through quantlab/validate_grpo.py) and compared with their planner compositions (bottleneck
adapters: memory.plan's Method.ADAPTER); the known misses
(profiles/validation/known-misses.yaml) are reported as misses with their error."""

import dataclasses
import json
from pathlib import Path

import pytest

from quantlab.cli import main

REPO = Path(__file__).resolve().parents[2]
MATRIX = REPO / "profiles" / "validation" / "matrix.yaml"
KNOWN_MISSES = REPO / "profiles" / "validation" / "known-misses.yaml"
# one fast row per family, from the shipped matrix
ONE_PER_FAMILY = ("qwen-bitfit-fp32", "llama-dora-qv-fp32", "llama-ptuning-mlp-fp32", "llama-distill-gkd-fp32",
                  "llama-adapter-fp32", "llama-dpo-lora-fp32", "llama-orpo-lora-fp32", "llama-simpo-lora-fp32",
                  "llama-kto-lora-fp32", "llama-reward-lora-fp32", "llama-grpo-lora-ckpt-fp32")
LLAMA = "{num_hidden_layers: 2, hidden_size: 256, num_attention_heads: 4, num_key_value_heads: 1, head_dim: 64, " \
        "intermediate_size: 1024, vocab_size: 4096}"


# ---- parsing (no model runs) --------------------------------------------------------------------------------

def test_the_new_keys_parse_into_the_variant_and_its_base_method():
    from quantlab.commands.validate import load_matrix
    from quantlab.planner.peft_methods import EncoderType
    from quantlab.planner.preference import Objective, PreferenceConfig
    from quantlab.specs import Method

    ids = ("qwen-bitfit-fp32", "gpt2-dora-cattn-fp32", "llama-ptuning-mlp-fp32", "llama-distill-fkl-fp32",
           "llama-dpo-lora-fp32", "llama-dpo-lora-ckpt-fp32", "llama-dpo-full-refcopy-fp32")
    c = {x.id: x for x in load_matrix(MATRIX, ids)}
    assert c["qwen-bitfit-fp32"].variant.name == "bitfit" and c["qwen-bitfit-fp32"].config.method is Method.FULL
    d = c["gpt2-dora-cattn-fp32"]
    assert d.variant.name == "dora" and d.config.method is Method.LORA and d.config.lora_targets == ("c_attn",)
    pt = c["llama-ptuning-mlp-fp32"]
    assert pt.config.method is Method.PROMPT and pt.config.num_virtual_tokens == 20
    assert pt.variant.ptuning.encoder_hidden_size == 128 and pt.variant.ptuning.encoder_type is EncoderType.MLP
    ds = c["llama-distill-fkl-fp32"]
    assert ds.variant.distill.beta == 0.0 and ds.variant.distill.teacher.num_hidden_layers == 4  # teacher-scale applied
    assert ds.config.model.num_hidden_layers == 2 and ds.teacher[0] == "llama-3.2-1b"
    assert dict(ds.teacher[1])["hidden_size"] == 512
    dpo = c["llama-dpo-lora-fp32"]
    assert isinstance(dpo.variant, PreferenceConfig) and dpo.variant.objective is Objective.DPO
    assert dpo.config.method is Method.LORA and not dpo.config.grad_checkpointing
    assert c["llama-dpo-lora-ckpt-fp32"].config.grad_checkpointing  # TRL's trainer default when not given
    assert c["llama-dpo-full-refcopy-fp32"].config.method is Method.FULL  # policy: full
    g = {x.id: x for x in load_matrix(MATRIX, ("llama-grpo-lora-ckpt-fp32", "llama-grpo-full-ref-fp32",
                                                "llama-grpo-lora-iter2-fp32"))}
    lo, full, it2 = g["llama-grpo-lora-ckpt-fp32"], g["llama-grpo-full-ref-fp32"], g["llama-grpo-lora-iter2-fp32"]
    assert lo.variant.objective is Objective.GRPO and lo.variant.num_generations == 2
    assert lo.variant.max_completion_length == 16 and lo.config.grad_checkpointing  # TRL's default
    assert full.config.method is Method.FULL and full.variant.beta == 0.04 and not full.config.grad_checkpointing
    assert it2.variant.num_iterations == 2 and lo.variant.num_iterations == 1


def test_adapter_rows_parse_as_the_planned_method():
    """``method: adapter`` is memory.plan's Method.ADAPTER itself (no variant); ``adapter-size`` is ``quantlab plan
    --adapter-size`` (PlanConfig.adapter_size, default 64)."""
    from quantlab.commands.validate import load_matrix
    from quantlab.specs import Method

    ids = ("llama-adapter-fp32", "qwen-adapter-bf16", "gpt2-adapter-fp32", "llama-adapter-s16-bf16")
    c = {x.id: x for x in load_matrix(MATRIX, ids)}
    assert all(x.config.method is Method.ADAPTER and x.variant is None and x.config.keep_grads for x in c.values())
    assert c["llama-adapter-fp32"].config.adapter_size == 64 and c["llama-adapter-s16-bf16"].config.adapter_size == 16
    assert c["qwen-adapter-bf16"].config.precision.value == "bf16"


def test_adapter_sublayers_follow_the_family_roles():
    """The lab wraps the o and down roles' linears (families F6): two adapters per block, as the plan has them."""
    pytest.importorskip("torch")
    from quantlab.groundtruth import model_spec
    from quantlab.lab import peft_measured as L
    from quantlab.validate import adapter_sublayers

    gpt2 = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 256, "n_positions": 64}
    llama = {"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "intermediate_size": 128, "vocab_size": 256}
    for prof, sc, want in (("gpt2", gpt2, ("attn.c_proj", "mlp.c_proj")), ("llama-3.2-1b", llama,
                                                                           ("o_proj", "down_proj"))):
        spec = model_spec(prof, sc)
        assert adapter_sublayers(spec) == want
        m = L.bottleneck_adapters(L.tiny_from_profile(prof, sc), 8, sublayers=want)
        assert L.count_bottlenecks(m) == 2 * spec.num_hidden_layers
        trained = [n for n, p in m.named_parameters() if p.requires_grad]
        assert len(trained) == 4 * 2 * spec.num_hidden_layers  # down and up, weights and biases
        assert ".0." in trained[0] and trained[0].endswith(f"{want[0]}.down.weight")
        assert trained[-1].endswith(f"{want[1]}.up.bias")


def test_known_misses_carry_their_expected_error():
    from quantlab.commands.validate import load_matrix

    cases = load_matrix(KNOWN_MISSES)
    assert {c.id: dict(c.expect) for c in cases} == {"llama-ptuning-lstm-fp32": {"activations": -0.110},
                                                    "qwen-dora-all-bf16": {"allocated": 0.044}}


@pytest.mark.parametrize("entry,says", [
    ("method: dora, lora-r: 8, encoder-hidden-size: 64", "--encoder-hidden-size applies to --method ptuning, not dora"),
    ("method: ptuning, num-virtual-tokens: 20", "needs --encoder-hidden-size"),
    ("method: ptuning, num-virtual-tokens: 20, encoder-hidden-size: 64, encoder-type: gru",
     "encoder-type must be one of mlp, lstm"),
    ("method: ptuning, num-virtual-tokens: 20, encoder-hidden-size: '64'", "encoder-hidden-size must be an integer"),
    ("method: distill", "needs --teacher"),
    ("method: bitfit, teacher-scale: {n_layer: 1}", "teacher-scale applies to method distill, not bitfit"),
    ("method: bitfit, beta: 0.1", "applies to the preference methods, not bitfit"),
    ("method: lora, encoder-hidden-size: 64", "--encoder-hidden-size applies to --method ptuning, not lora"),
    ("method: grpo, num-generations: 2", "vocab_size 49152"),
    ("method: grpo, num-generations: 2, reference: copy", "reference does not apply to grpo"),
    ("method: grpo, num-generations: 2, num-labels: 1", "num-labels does not apply to grpo"),
    ("method: grpo, num-generations: '2'", "num-generations must be an integer"),
    ("method: grpo, num-generations: 2, reward-model: qwen2.5-0.5b", "reward-model does not apply to grpo"),
    ("method: grpo", "needs --num-generations"),
    ("method: orpo", "vocab_size 49152"),
    ("method: orpo, reference: copy", "--reference applies to --method dpo or kto or grpo"),
    ("method: dpo, num-generations: 4", "num-generations does not apply to dpo"),
    ("method: dpo, policy: freeze", "policy: lora or full"),
    ("method: dpo", "vocab_size 49152"),
    ("method: bitfit", "give keep-grads: true"),
    ("method: bitfit, keep-grads: true, optimizer: sgd", "AdamW only"),
    ("method: dora, keep-grads: true, lora-targets: all-linear", "explicit LoRA targets"),
    ("method: bitfit, keep-grads: true, expect: {nosuch: 0.1}", "expect names an unknown component 'nosuch'"),
    ("method: adapter", "adapter lab zeroes gradients with set_to_none=False"),
    ("method: adapter, keep-grads: true, optimizer: sgd", "adapter lab steps with AdamW only"),
    ("method: adapter, keep-grads: true, attn: eager", "give attn: sdpa"),
    ("method: adapter, keep-grads: true, grad-accum: 2", "no grad-accum"),
    ("method: adapter, keep-grads: true, precision: fp32, compute-dtype: bf16, training-precision: amp",
     "computes in the weights' dtype"),
    ("method: adapter, keep-grads: true, precision: int8", "int8 is planned only"),
    ("method: lora, keep-grads: true, adapter-size: 16", "--adapter-size applies to --method adapter, not lora"),
])
def test_bad_method_keys_are_one_line_exit_2(capsys, tmp_path, entry, says):
    f = tmp_path / "m.yaml"
    f.write_text(f"scales: {{s: {LLAMA}}}\nconfigurations:\n  - {{id: a, model: llama-3.2-1b, scale: s, "
                 f"precision: fp32, compute-dtype: fp32, {entry}}}\n")
    rc = main(["validate", "--matrix", str(f)])
    err = capsys.readouterr().err
    assert rc == 2
    assert says in err and "configuration a" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---- one row per family, measured --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows():
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("trl")
    from quantlab.commands.validate import load_matrix, run_cases

    cases = load_matrix(MATRIX, ONE_PER_FAMILY)
    assert [c.id for c in cases] == list(ONE_PER_FAMILY)
    return {r["id"]: r for r in run_cases(cases)}


@pytest.mark.parametrize("id", ONE_PER_FAMILY)
def test_one_row_per_family_meets_the_targets(rows, id):
    from quantlab.validate import missed_targets

    r = rows[id]
    assert r["method"] == id.split("-")[1]  # the row names the method asked for, not the one planned over
    compared = [k for k in ("weights", "gradients", "optimizer", "activations", "allocated")
                if r.get(f"err_{k}") is not None]
    assert compared == ["weights", "gradients", "optimizer", "activations", "allocated"]  # measured, not skipped
    assert r["meas_allocated_bytes"] > 0 and r["pred_allocated_bytes"] > 0
    assert r["ok"], f"{id} missed {missed_targets(r)}"


def test_family_specific_components_are_compared(rows):
    ds = rows["llama-distill-gkd-fp32"]
    assert ds["meas_teacher_weights_bytes"] > ds["meas_weights_bytes"]  # the 4-layer, 512-wide teacher
    assert ds["err_teacher_weights"] is not None and ds["err_loss_saved"] is not None
    dpo = rows["llama-dpo-lora-fp32"]
    assert dpo["max_length"] == 128 and dpo["seq"] <= 128  # planned for the step measured
    assert dpo["batch"] == 2 and dpo["reference"] == "adapter" and dpo["plans_over"] == "lora"
    pt = rows["llama-ptuning-mlp-fp32"]
    assert pt["encoder_hidden_size"] == 128 and pt["meas_adapters_bytes"] == pt["pred_adapters_bytes"]
    # ORPO / SimPO: the logits of both sequences and what their loss saves, compared (trl_head H7-H8)
    for i in ("llama-orpo-lora-fp32", "llama-simpo-lora-fp32"):
        r = rows[i]
        assert r["reference"] == "none" and r["batch"] == 2
        assert r["meas_logits_loss_bytes"] >= 4 * r["seq"] * 49152 * 4 and abs(r["err_logits_loss"]) < 0.001
    assert rows["llama-orpo-lora-fp32"]["meas_logits_loss_bytes"] > 1.4 * rows["llama-simpo-lora-fp32"][
        "meas_logits_loss_bytes"]  # ORPO's NLL term: the chosen half's log-softmax
    kto = rows["llama-kto-lora-fp32"]
    assert kto["reference"] == "adapter" and kto["batch"] == 2 and kto["err_reference_weights"] == 0.0
    gr = rows["llama-grpo-lora-ckpt-fp32"]  # both GRPO phases, the generate phase's components (preference P4)
    assert (gr["batch"], gr["seq"], gr["max_completion_length"], gr["reference"]) == (4, 48, 16, "none")
    for k in ("kv_cache", "prefill_transient", "decode_transient", "generation_allocated", "training_allocated"):
        assert gr[f"meas_{k}_bytes"] > 0 and abs(gr[f"err_{k}"]) <= 0.03, k
    rw = rows["llama-reward-lora-fp32"]
    assert rw.get("err_logits_loss") is None and rw["pred_logits_loss_bytes"] is None  # no vocabulary logits
    assert rw["meas_adapters_bytes"] == rw["pred_adapters_bytes"] > dpo["meas_adapters_bytes"]  # + the score copy


def test_the_report_and_measurements_file_take_the_rows(rows, tmp_path):
    """The report writes them like any row. --append-measurements writes the preference rows with their
    ``preference`` settings and the PEFT variants' with their ``variant`` settings, which quantlab.groundtruth
    re-plans through validate.method_plan to the error validate found, and the adapter row with its
    ``adapter_size`` (a plan field, re-planned by memory.plan): every row, none re-planned as its base method."""
    from quantlab.commands.validate import append_measurements, markdown, write_outputs
    from quantlab.validate import summarize

    rs = list(rows.values())
    text = markdown(rs, summarize(rs))
    assert all(f"| {i} | " in text for i in ONE_PER_FAMILY)
    paths = write_outputs(rs, summarize(rs), tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert {r["id"] for r in doc["configurations"]} == set(ONE_PER_FAMILY) and len(paths) == 4
    from quantlab.groundtruth import check_row, load_rows

    planned = list(ONE_PER_FAMILY)
    assert append_measurements(rs, tmp_path / "m.jsonl") == len(planned)
    written = load_rows(tmp_path / "m.jsonl")
    assert sorted(r["id"] for r in written) == sorted(f"quantlab-validate-{i}" for i in planned)
    for w in written:
        r = rows[w["id"][len("quantlab-validate-"):]]
        if r["method"] == "adapter":
            assert w["adapter_size"] == r["adapter_size"] == 64 and "preference" not in w and "variant" not in w
        elif "variant" in w:
            assert w["method"] == r["plans_over"] and w["variant"]["name"] == r["method"] and "preference" not in w
        else:
            assert w["method"] == r["plans_over"] and w["preference"]["objective"] == r["method"]
        c = check_row(w)
        assert c.predicted == r["pred_allocated_bytes"] and c.measured == r["meas_allocated_bytes"], w["id"]
        assert c.ok


def test_a_planner_change_would_show_as_a_miss(rows):
    """The comparison is live: the measured row re-compared against a prediction 5% low misses."""
    from quantlab.commands.validate import load_matrix
    from quantlab.validate import TENSOR_COMPONENTS, compare, missed_targets

    case = load_matrix(MATRIX, ("qwen-bitfit-fp32",))[0]
    meas = {k: v for k, v in rows["qwen-bitfit-fp32"].items() if k.startswith("meas_") or k == "device"}
    meas["meas_activations_bytes"] = int(meas["meas_activations_bytes"] * 1.05)
    r = compare(case, meas)
    assert not r["ok"] and missed_targets(r) == ["activations"]
    assert set(TENSOR_COMPONENTS) >= {"teacher_weights", "loss_saved", "reference_weights"}


# ---- the known misses ----------------------------------------------------------------------------------------

def test_known_misses_are_reported_as_misses_with_their_error():
    pytest.importorskip("peft")
    from quantlab.commands.validate import load_matrix, run_cases
    from quantlab.validate import missed_targets

    cases = load_matrix(KNOWN_MISSES)
    for case, r in zip(cases, run_cases(cases)):
        assert not r["ok"], f"{case.id} now meets its targets: move it to matrix.yaml"
        for comp, expected in case.expect:
            assert comp in missed_targets(r)
            assert r["expected_errors"][comp] == expected
            assert abs(r[f"err_{comp}"] - expected) <= 0.01, (case.id, comp, r[f"err_{comp}"])


# ---- the single-configuration path (quantlab validate --model ... --method bitfit|...) -----------------------

@pytest.mark.parametrize("argv,says", [
    (("--method", "bitfit", "--encoder-hidden-size", "8"), "--encoder-hidden-size applies to --method ptuning"),
    (("--method", "grpo", "--num-generations", "2"), "the grpo lab runs fp32 on a CPU"),
    (("--method", "lora", "--teacher-scale", "num_hidden_layers=1"), "teacher-scale applies to method distill"),
    (("--method", "distill", "--keep-grads"), "needs --teacher"),
    (("--method", "bitfit", "--precision", "fp32", "--compute-dtype", "fp32"), "give keep-grads: true"),
])
def test_bad_method_flags_are_one_line_exit_2(capsys, argv, says):
    rc = main(["validate", "--model", "llama-3.2-1b", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and says in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_flags_and_matrix_entry_make_the_same_case():
    from quantlab.commands.validate import case_from_flags, load_matrix
    from quantlab.cli import build_parser

    m = load_matrix(MATRIX, ("llama-distill-fkl-fp32",))[0]
    scale = dict(m.overrides)
    args = build_parser().parse_args(
        ["validate", "--model", "llama-3.2-1b", "--method", "distill", "--teacher", "llama-3.2-1b",
         "--teacher-scale", ",".join(f"{k}={v}" for k, v in m.teacher[1]), "--distill-beta", "0",
         "--precision", "fp32", "--compute-dtype", "fp32", "--keep-grads", "--batch", "2", "--seq", "64",
         "--attn", "sdpa"])
    c = case_from_flags(args, id=m.id, weights=None, scale=scale)
    assert c.config == m.config and c.teacher == m.teacher and c.variant == m.variant


def test_grpo_flags_and_matrix_entry_make_the_same_case():
    from quantlab.cli import build_parser
    from quantlab.commands.validate import case_from_flags, load_matrix

    m = load_matrix(MATRIX, ("llama-grpo-lora-iter2-fp32",))[0]
    args = build_parser().parse_args(
        ["validate", "--model", "llama-3.2-1b", "--method", "grpo", "--num-generations", "2",
         "--max-completion-length", "16", "--num-iterations", "2", "--lora-r", "8", "--lora-alpha", "16",
         "--precision", "fp32", "--compute-dtype", "fp32", "--batch", "4", "--seq", "48", "--attn", "sdpa"])
    c = case_from_flags(args, id=m.id, weights=None, scale=dict(m.overrides))
    assert c.config == m.config and c.variant == m.variant and c.variant.num_iterations == 2
