"""Merges on tiny random Llamas (seconds): PEFT's add_weighted_adapter through quantlab.lab.merge, the bad inputs,
the task metrics, and one whole study (adapters, merges, baselines) end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantlab.errors import QuantlabError
from quantlab.lab import merge
from quantlab.lab.merge_tasks import date_metrics, json_metrics, label_metrics

from ft_fixtures import tiny_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _adapter(base_dir, out, r=4, seed=0, targets=("q_proj", "v_proj")):
    """A random (non-zero B) LoRA adapter on the tiny model, saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model

    from quantlab.lab.model import load_model, resolve

    torch.manual_seed(seed)
    m = load_model(resolve(base_dir), progress=False)
    pm = get_peft_model(m, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False,
                                      task_type="CAUSAL_LM"))
    pm.save_pretrained(out, safe_serialization=True)
    return Path(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    base = tiny_folder(d / "base")
    a = _adapter(base, d / "lora-json-extract-adapter", seed=1)
    b = _adapter(base, d / "lora-intent-label-adapter", seed=2)
    c = _adapter(base, d / "r8", r=8, seed=3)
    return {"base": base, "a": a, "b": b, "r8": c, "dir": d}


def test_method_names():
    assert merge.parse_method("ties") == merge.MergeMethod("peft", "ties")
    assert merge.parse_method("mk:ties") == merge.MergeMethod("mergekit", "ties")
    assert merge.parse_method("slerp").library == "mergekit"
    assert merge.parse_method("task-arithmetic").name == "task_arithmetic"
    with pytest.raises(QuantlabError, match="unknown merge method 'soup'"):
        merge.parse_method("soup")


def test_bad_inputs(tiny):
    a, b, r8 = (merge.AdapterInfo.read(tiny[k]) for k in ("a", "b", "r8"))
    ties = [merge.parse_method("ties")]
    merge.check_inputs([a, b], ties, [1.0, 1.0], 0.5)
    with pytest.raises(QuantlabError, match="equal rank"):
        merge.check_inputs([a, r8], ties, [1.0, 1.0], 0.5)
    merge.check_inputs([a, r8], [merge.parse_method("cat"), merge.parse_method("svd")], [1.0, 1.0], 0.5)
    with pytest.raises(QuantlabError, match="2 weights for 3 adapters"):
        merge.check_inputs([a, b, r8], [merge.parse_method("svd")], [1.0, 1.0], 0.5)
    with pytest.raises(QuantlabError, match="slerp interpolates two"):
        merge.check_inputs([a, b, r8], [merge.parse_method("slerp")], [1.0, 1.0, 1.0], 0.5)
    other = merge.AdapterInfo(b.path, "/somewhere/else", b.r, b.alpha, b.targets, b.peft_type)
    with pytest.raises(QuantlabError, match="different base models"):
        merge.check_inputs([a, other], ties, [1.0, 1.0], 0.5)
    with pytest.raises(QuantlabError, match="density"):
        merge.check_inputs([a, b], ties, [1.0, 1.0], 0.0)
    with pytest.raises(QuantlabError, match="not a saved PEFT adapter"):
        merge.AdapterInfo.read(tiny["dir"])


def test_cat_is_the_weighted_sum_of_updates_and_ties_trims(tiny):
    """cat stacks A and B, so its update is exactly sum_i w_i s_i B_i A_i; ties at density 0.3 leaves a sparser
    update than linear; svd keeps rank r."""
    import torch

    from quantlab.lab.model import load_model, resolve

    infos = [merge.AdapterInfo.read(tiny[k]) for k in ("a", "b")]
    model = merge.load_adapters(load_model(resolve(tiny["base"]), progress=False), infos, ["x", "y"])
    w = [0.7, 1.3]
    cost = merge.peft_merge(model, ["x", "y"], merge.parse_method("cat"), w, 0.5)
    assert cost.rank == 8 and cost.seconds >= 0 and cost.disk_bytes > 0
    from peft.tuners.lora import LoraLayer

    n = 0
    for mod in model.modules():
        if isinstance(mod, LoraLayer) and "merged" in mod.lora_A:
            want = w[0] * mod.get_delta_weight("x") + w[1] * mod.get_delta_weight("y")
            assert torch.allclose(mod.get_delta_weight("merged"), want, atol=1e-6)
            n += 1
    assert n == 4  # q_proj and v_proj of 2 blocks
    lin = merge.peft_merge(model, ["x", "y"], merge.parse_method("linear"), [1, 1], 0.3)
    ties = merge.peft_merge(model, ["x", "y"], merge.parse_method("ties"), [1, 1], 0.3)
    assert lin.delta_density == pytest.approx(1.0)
    assert ties.delta_density <= lin.delta_density
    svd = merge.peft_merge(model, ["x", "y"], merge.parse_method("svd"), [1, 1], 0.5)
    assert svd.rank == 4


def test_mergekit_configs():
    m = merge.parse_method
    c = merge.mergekit_config(m("slerp"), Path("B"), [Path("x"), Path("y")], [1.0, 3.0], 0.5)
    assert c["parameters"]["t"] == 0.75 and c["base_model"] == "x"
    c = merge.mergekit_config(m("mk:ties"), Path("B"), [Path("x"), Path("y")], [1.0, 1.0], 0.4)
    assert c["base_model"] == "B" and c["models"][0]["parameters"] == {"weight": 1.0, "density": 0.4}
    c = merge.mergekit_config(m("mk:linear"), Path("B"), [Path("x"), Path("y")], [1.0, 1.0], 0.4)
    assert "base_model" not in c and c["parameters"] == {"normalize": True}


def test_mergekit_linear_is_the_mean(tiny, tmp_path):
    """mergekit's normalized linear merge of two folded models is their elementwise mean (read back from the
    safetensors it writes)."""
    pytest.importorskip("mergekit", reason="mergekit is the optional [merge] extra")
    from safetensors.torch import load_file

    from quantlab.lab.model import resolve

    src = resolve(tiny["base"])
    x = merge.fold_adapter(src, merge.AdapterInfo.read(tiny["a"]), tmp_path / "x")
    y = merge.fold_adapter(src, merge.AdapterInfo.read(tiny["b"]), tmp_path / "y")
    conf = merge.mergekit_config(merge.parse_method("mk:linear"), Path(tiny["base"]), [x, y], [1.0, 1.0], 0.5)
    cost = merge.mergekit_merge(conf, tmp_path / "out")
    assert cost.disk_bytes > 0 and cost.seconds > 0
    out = {}
    for f in (tmp_path / "out").glob("*.safetensors"):
        out.update(load_file(f))
    a, b = load_file(x / "model.safetensors"), load_file(y / "model.safetensors")
    k = "model.layers.0.self_attn.q_proj.weight"
    assert (out[k] - (a[k] + b[k]) / 2).abs().max() < 1e-6
    changed = merge.changed_tensors(Path(tiny["base"]), x)
    assert k in changed and "model.layers.0.mlp.up_proj.weight" not in changed


def test_task_metrics():
    assert label_metrics(["Billing.", "refund", "x"], ["billing", "shipping", "refund"]) == pytest.approx(
        {"accuracy": 1 / 3, "macro_f1": (1 + 0 + 0) / 3})
    d = date_metrics(["2021-03-04\nmore", "2021-03-05"], ["2021-03-04", "2021-04-05"])
    assert d == pytest.approx({"exact_match": 0.5, "field_accuracy": 5 / 6})
    j = json_metrics(['{"a": 1} trailing', "{"], ['{"a": 1}', '{"a": 2}'])
    assert j["exact_match"] == 0.5


def test_retention_and_best():
    rows = [{"kind": "adapter", "method": "adapter:a", "adapter_task": "a", "score_a": 0.8, "score_b": 0.0},
            {"kind": "adapter", "method": "adapter:b", "adapter_task": "b", "score_a": 0.0, "score_b": 0.5},
            {"kind": "peft", "method": "linear", "score_a": 0.8, "score_b": 0.1},
            {"kind": "peft", "method": "ties", "score_a": 0.4, "score_b": 0.4}]
    merge.retention(rows, ["a", "b"])
    assert rows[2]["min_retention"] == pytest.approx(0.2) and rows[3]["min_retention"] == pytest.approx(0.5)
    assert merge.best_merge(rows)["method"] == "ties"


def _cli(*args):
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "quantlab", "lab", "merge", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("extra, msg", [
    (["--methods", "linear,soup"], "unknown merge method 'soup'"),
    (["--weights", "1,2,3"], "3 weights for 2 adapters"),
    (["--methods", "ties", "--with-r8"], "equal rank"),
    (["--tasks", "json-extract,nope"], "unknown task 'nope'"),
])
def test_cli_bad_input_is_one_line_exit_2(tiny, extra, msg):
    adapters = f"{tiny['a']},{tiny['r8'] if '--with-r8' in extra else tiny['b']}"
    extra = [e for e in extra if e != "--with-r8"]
    if "--tasks" not in extra:
        extra += ["--tasks", "json-extract,intent-label"]
    p = _cli("--adapters", adapters, "--model", tiny["base"], "--out", str(tiny["dir"] / "rep"), *extra)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip() and "Warning" not in l and "warn" not in l]
    assert msg in p.stderr and "Traceback" not in p.stderr and len(lines) == 1, p.stderr


def test_study_end_to_end(tiny, tmp_path):
    """Every PEFT merge, the base, each adapter and both baselines scored on both tasks (tiny model: the scores
    are near zero; the shape of the result is what is checked)."""
    from quantlab.lab.merge_run import MergeStudy, forgetting, run_study

    methods = tuple(merge.parse_method(m) for m in ("linear", "cat", "dare_ties"))
    st = MergeStudy(adapters=(str(tiny["a"]), str(tiny["b"])), tasks=("json-extract", "intent-label"),
                    methods=methods, weights=(1.0, 1.0), model=tiny["base"], eval_items=2, baseline_steps=2)
    res = run_study(st, log=lambda s: None, progress=False, workdir=str(tmp_path))
    kinds = [r["method"] for r in res["rows"]]
    assert kinds == ["base", "adapter:json-extract", "adapter:intent-label", "linear", "cat", "dare_ties", "joint",
                     "sequential"]
    for r in res["rows"]:
        assert 0.0 <= r["score_json-extract"] <= 1.0 and 0.0 <= r["score_intent-label"] <= 1.0
    dt = next(r for r in res["rows"] if r["method"] == "dare_ties")
    assert dt["merge_s"] > 0 and dt["merge_rss_peak_bytes"] > 0 and dt["density"] == 0.5
    assert 0.0 < dt["meas_delta_density"] <= 1.0
    assert forgetting(res["rows"], "json-extract") is not None
    assert not list(tmp_path.iterdir())  # the temporary models are removed


def test_render_rewrites_the_report_from_merge_json(tiny, tmp_path):
    """--render: the table and the planner's columns come from merge.json alone (no model runs)."""
    rows = [{"kind": "adapter", "method": "adapter:json-extract", "adapter_task": "json-extract",
             "score_json-extract": 0.9, "score_intent-label": 0.0, "metric_json-extract": "exact_match",
             "metric_intent-label": "accuracy"},
            {"kind": "adapter", "method": "adapter:intent-label", "adapter_task": "intent-label",
             "score_json-extract": 0.0, "score_intent-label": 1.0},
            {"kind": "peft", "method": "cat", "score_json-extract": 0.45, "score_intent-label": 0.5, "merge_s": 0.5,
             "merge_rss_peak_bytes": 2**30, "merge_rss_delta_bytes": 2**20, "merge_disk_bytes": 2**21},
            {"kind": "mergekit", "method": "mk:ties", "score_json-extract": 0.9, "score_intent-label": 0.2,
             "merge_s": 9.0, "merge_rss_peak_bytes": 2**31, "merge_rss_delta_bytes": 2**30, "merge_disk_bytes": 2**29}]
    merge.retention(rows, ["json-extract", "intent-label"])
    doc = {"command": "quantlab lab merge ...", "model": "smollm2-135m", "adapters": [str(tiny["a"]), str(tiny["b"])],
           "tasks": ["json-extract", "intent-label"], "eval_items": {"json-extract": 2, "intent-label": 2},
           "best": merge.best_merge(rows)["method"], "sequential_forgetting_first_task": 0.5, "rows": rows,
           "env": {"git_commit": "x"}}
    (tmp_path / "merge.json").write_text(json.dumps(doc))
    p = _cli("--render", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "kept all tasks best: cat (worst-task retention 0.50" in p.stdout
    assert max(len(l) for l in p.stdout.splitlines()) <= 80
    back = json.loads((tmp_path / "merge.json").read_text())
    assert all(r.get("pred_merge_rss_delta_bytes", 0) > 0 for r in back["rows"] if r["kind"] != "adapter")
    assert (tmp_path / "merge.md").read_text().startswith("Made by `quantlab lab merge ...`")
