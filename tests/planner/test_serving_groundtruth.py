"""The serving planner against published serving measurements (profiles/validation/serving-published.jsonl).

Every row parses into a ServeConfig through the planner's own builders and plans; every row's error stays within
the tolerance its ``tolerance_reason`` derives (quantlab/serving_groundtruth.py G5); the weights, exact arithmetic,
are within 1% everywhere; a row outside its metric's target misses in the direction its reason names (vLLM's pool is
over-planned: a residual of a budget planned from NVML's total; transformers 4.34 and v0 vLLM under-planned).
No GPU is used: these are published figures, read, not measured here.
"""

from urllib.parse import urlparse

import pytest

from quantlab.errors import QuantlabError
from quantlab.groundtruth import load_rows
from quantlab.serving_groundtruth import (METRICS, SERVING_PUBLISHED, TARGETS, check_row, predict, row_to_serve_config,
                                          summarize)

ROWS = load_rows(SERVING_PUBLISHED)
IDS = [r["id"] for r in ROWS]
GiB = 1 << 30
POOL = ("vllm_kv_pool_bytes", "vllm_num_blocks", "vllm_max_concurrency")


def test_rows_are_there_from_several_sources():
    assert len(ROWS) >= 8
    assert len(set(IDS)) == len(IDS), "row ids must be unique"
    repos = {"/".join(urlparse(r["url"]).path.split("/")[1:3]) for r in ROWS}  # owner/name
    threads = {r["url"].split("/blob/")[0] for r in ROWS}  # an issue, a pull request or a repository
    assert len(repos) >= 2 and len(threads) >= 4, (repos, threads)
    assert {r["engine"] for r in ROWS} == {"vllm", "transformers"}


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_row_parses_and_plans_at_its_settings(row):
    from quantlab.planner.serving import Engine

    s = row_to_serve_config(row)
    serve, plan = row["serve"], row["plan"]
    assert s.concurrency == serve.get("concurrency", 1) == s.plan.batch
    assert s.prompt_tokens == serve["prompt_tokens"]
    assert s.plan.precision.value == plan["precision"] and s.plan.compute_dtype.value == plan["compute_dtype"]
    assert s.plan.tp == plan.get("tp", 1)
    if s.engine is Engine.VLLM:
        for k in ("gpu_memory_utilization", "max_model_len", "max_num_batched_tokens", "max_num_seqs", "block_size"):
            assert getattr(s, k) == serve[k], k
    p, pred = predict(row)
    assert pred > 0 and p.process_bytes > 0


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_row_within_its_stated_tolerance(row):
    c = check_row(row)
    assert c.ok, (f"{c.id}: planned {c.predicted:,.2f} vs published {c.published:,.2f} ({100 * c.error:+.1f}%), "
                  f"tolerance {100 * c.tolerance:.1f}%: {row['tolerance_reason']}")


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_row_documents_its_figure(row):
    """The quote carries the figure (unless derived from two quoted figures), and the settings say their basis."""
    assert row["settings_basis"] and row["tolerance_reason"] and row["source"]
    assert 0 < row["tolerance"] < 1 and row["metric"] in METRICS
    v, unit = row["value"], row["unit_published"]
    if "derived" in unit:
        return
    if unit.startswith("MB"):
        shown = str(v // 10**6)
    elif unit.startswith("GiB"):
        shown = f"{v / GiB:.2f}"
    elif unit.startswith("GB as logged"):
        shown = f"{v / GiB:.4f}"
    else:
        shown = f"{v}"
    assert shown in row["quote"], (shown, row["quote"])


def test_weights_are_on_target_everywhere():
    checks = [check_row(r) for r in ROWS if r["metric"] == "vllm_weights_bytes"]
    assert checks and all(c.on_target for c in checks), [(c.id, c.error) for c in checks]


def test_known_misses_go_the_documented_way():
    """vLLM's pool is over-planned (budget from NVML's total, not CUDA's); everything else that misses is
    under-planned (a second KV copy in transformers 4.34, v0 vLLM's larger sampler and non-torch memory)."""
    for c in map(check_row, ROWS):
        if c.on_target:
            continue
        assert (c.error > 0) == (c.metric in POOL), (c.id, c.error)


def test_summary_counts_every_row():
    s = summarize([check_row(r) for r in ROWS])
    assert sum(g["rows"] for g in s) == len(ROWS)
    assert all(g["target"] == TARGETS[g["metric"]] for g in s)


def test_bad_rows_are_one_line_errors():
    good = dict(ROWS[0])
    with pytest.raises(QuantlabError, match="serving row x: metric 'peak'"):
        row_to_serve_config(dict(good, id="x", metric="peak"))
    with pytest.raises(QuantlabError, match="serving row y: missing tolerance"):
        row_to_serve_config({k: v for k, v in dict(good, id="y").items() if k != "tolerance"})
    with pytest.raises(QuantlabError, match="serving row z"):
        row_to_serve_config(dict(good, id="z", serve=dict(good["serve"], mode="decode")))
    with pytest.raises(QuantlabError, match="serving row w"):
        row_to_serve_config(dict(good, id="w", serve=dict(good["serve"], max_model_len=4096)))  # vLLM setting


def test_budget_on_cudas_total_moves_every_pool_row_towards_the_log():
    """G7: planned on the CUDA total the same log prints (vLLM budgets gpu_memory_utilization x
    torch.cuda.mem_get_info()[1], not NVML's total), every pool figure gets closer to the published one; the v0.6.4
    RTX 3090 rows, whose other terms agree, come within 5%. (Once the planner budgets on CUDA's total itself, the
    what-if equals the plan: the first assertion stays true with equality.)"""
    rows = [r for r in ROWS if r.get("gpu_cuda_total_bytes") and r["metric"] in POOL]
    assert len(rows) >= 4
    for r in rows:
        now = check_row(r).error
        _, v = predict(r, cuda_total=True)
        after = (v - r["value"]) / r["value"]
        assert abs(after) <= abs(now) + 1e-12, (r["id"], now, after)
        if "3090" in r["id"]:
            assert abs(after) <= 0.05, (r["id"], after)
