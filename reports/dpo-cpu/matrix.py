"""Validation-matrix-style DPO rows: TRL 1.16 DPOTrainer on small random-weight models with the architectures of
profiles/validation/matrix.yaml's scales (vocabulary 49152: the embedded tokenizer's, so json-prefs tokenizes),
one measured optimizer step (the second) each, beside preference_plan for that step. CPU, fp32.

    PYTHONPATH=$PWD python reports/dpo-cpu/matrix.py      # writes reports/dpo-cpu/matrix.{json,md}
    PYTHONPATH=$PWD python reports/dpo-cpu/matrix.py --replan   # re-plan the stored measurements, rewrite the md
"""

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
V = 49152
SCALES = {  # profiles/validation/matrix.yaml scales, vocabulary 49152
    "llama-3.2-1b/16": ("llama", dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4,
                                      num_key_value_heads=1, head_dim=64, intermediate_size=1024, vocab_size=V,
                                      tie_word_embeddings=True, max_position_embeddings=512)),
    "qwen2.5-0.5b/16": ("qwen2", dict(num_hidden_layers=2, hidden_size=448, num_attention_heads=7,
                                      num_key_value_heads=1, intermediate_size=1216, vocab_size=V,
                                      tie_word_embeddings=True, max_position_embeddings=512)),
    "gpt2/12": ("gpt2", dict(n_layer=2, n_embd=256, n_head=4, vocab_size=V, n_positions=512, n_ctx=512)),
}
ROWS = [  # id, scale, DPORun overrides
    ("dpo-llama-lora-ckpt", "llama-3.2-1b/16", {}),
    ("dpo-llama-lora", "llama-3.2-1b/16", {"grad_checkpointing": False}),
    ("dpo-llama-full-refcopy", "llama-3.2-1b/16", {"policy": "full", "grad_checkpointing": False}),
    ("dpo-llama-full-refcopy-ckpt", "llama-3.2-1b/16", {"policy": "full"}),
    ("dpo-qwen-lora-ckpt", "qwen2.5-0.5b/16", {}),
    ("dpo-gpt2-lora", "gpt2/12", {"grad_checkpointing": False, "lora_targets": ("c_attn",)}),
]


def main() -> int:
    if "--replan" in sys.argv[1:]:
        from quantlab.commands.lab_preference import compare_rows

        out = json.loads((HERE / "matrix.json").read_text())
        for r in out:
            r["rows"] = compare_rows(r["result"])
        (HERE / "matrix.json").write_text(json.dumps(out, indent=2) + "\n")
        return write_md(out)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from quantlab.commands.lab_preference import compare_rows, model_spec
    from quantlab.lab.model import ensure_embedded
    from quantlab.lab.preference import DPORun, run_dpo

    tok = AutoTokenizer.from_pretrained(ensure_embedded(progress=False))
    out, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for scale, (mt, kw) in SCALES.items():
            torch.manual_seed(0)
            d = Path(tmp) / scale.replace("/", "_")
            AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **kw), dtype=torch.float32).save_pretrained(d)
            tok.save_pretrained(d)
            folders[scale] = d
        for rid, scale, kw in ROWS:
            cfg = DPORun(model=str(folders[scale]), max_steps=2, batch=2, eval_batch=2, train_pairs=4, eval_pairs=2,
                         lora_r=8, lora_alpha=16, **kw)
            res = run_dpo(cfg, Path(tmp) / rid, log=lambda s: print(s, file=sys.stderr))
            res["model_spec"] = model_spec(str(folders[scale]))
            rows = compare_rows(res)
            out.append({"id": rid, "scale": scale, "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in kw.items()},
                        "step_sequences": res["step_sequences"], "step_seq": res["step_seq"],
                        "padded": res["step_padded"], "grad_checkpointing": res["grad_checkpointing"],
                        "reference": res["reference"], "rows": rows, "env": res["env"], "result": res})
            print(rid, [(r["component"].split(" ")[0], r["error"]) for r in rows], file=sys.stderr)
    (HERE / "matrix.json").write_text(json.dumps(out, indent=2) + "\n")
    return write_md(out)


def write_md(out: list) -> int:
    comps = ("weights", "adapters", "gradients", "optimizer", "activations", "reference_weights", "allocated")
    lines = ["# DPO validation rows (TRL 1.16 DPOTrainer, CPU, fp32, random weights at matrix.yaml scales)", "",
             "Made by `PYTHONPATH=$PWD python reports/dpo-cpu/matrix.py` (torch {torch}, transformers {transformers}, "
             "peft {peft}, trl {trl}; {cpu}, {cores} cores shared). Each row: 2 optimizer steps of 2 json-prefs "
             "pairs (4 sequences, padded to the longest), the second measured with StepProbe, planned by "
             "`preference_plan` for the measured shape (`--device cpu`). Cells: planned / measured MiB (2^20 "
             "bytes) and the error (planned - measured) / measured.".format(**out[0]["env"]), "",
             "| id | policy, ckpt, ref | shape | " + " | ".join(comps) + " |",
             "|---|---|---|" + "---|" * len(comps)]
    for r in out:
        by = {x["component"].split(" ")[0]: x for x in r["rows"]}
        cells = []
        for c in comps:
            x = by[c]
            if x["meas_bytes"] is None:
                cells.append("-")
            elif x["error"] is None:
                cells.append(f"{x['pred_bytes'] / 2**20:.2f} / {x['meas_bytes'] / 2**20:.2f}")
            else:
                cells.append(f"{x['pred_bytes'] / 2**20:.2f} / {x['meas_bytes'] / 2**20:.2f} "
                             f"({100 * x['error']:+.2f}%)")
        pol = (r["overrides"].get("policy", "lora") + (", ckpt" if r["grad_checkpointing"] else ", no ckpt")
               + f", ref {r['reference']}")
        lines.append(f"| {r['id']} | {pol} | {r['step_sequences']}x{r['step_seq']} | " + " | ".join(cells) + " |")
    lines += ["", "Reading it:", ""]
    for r in out:
        by = {x["component"].split(" ")[0]: x for x in r["rows"]}
        a, g = by["allocated"], by["gradients"]
        if a["error"] and abs(a["error"]) > 0.01:
            gap = a["pred_bytes"] - a["meas_bytes"]
            lines.append(f"- {r['id']}: the peak is {gap:,} bytes over the measured one; the gradients are "
                         f"{g['pred_bytes']:,} bytes. The planner counts gradients live through every phase "
                         "(memory.py assumption 3, the safe reading); Trainer's model.zero_grad() sets them to "
                         "None, and the planned peak is the fused head's backward, the first op of backward: a gap "
                         "equal to the gradient bytes (to within a few KiB) is what no gradient existing yet at the "
                         "peak would give (not observed directly: the instrument reads the peak, not its moment).")
    lines.append("- Every other component (weights, adapters, gradients, optimizer states, the bytes the policy's "
                 "forward saves, a reference copy's weights) equals the plan to the byte in every row; GPT-2 "
                 "(dropout 0.1 in its config) matches because DPOTrainer's disable_dropout=True removes the masks "
                 "(preference P7).")
    (HERE / "matrix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
