"""Plan from the data: the peak of the batches a dataloader draws, whether the longest fits, and an epoch's time
and cost.

Assumptions:

1. The planner plans one batch x seq shape; a data set draws many. Each batch is planned at its own width
   (:func:`quantlab.planner.plan` with ``seq`` = the width, ``batch`` = the configured micro-batch), and the
   report gives the p50, p95 and max of the widths the sampler draws (lengths assumptions 3-4). The peak of a
   run is the plan at the max width: the longest batch must fit, not the average one.
2. Dynamic padding plans with ``padding_mask`` on (``--padded``: transformers builds an attention mask for a padded
   batch, activations A3c); packing plans every batch at ``batch`` x ``max_len`` without a mask. A partial last
   batch is planned as a full one (the peak is never below it).
3. Preference pairs: TRL's DPO trainer concatenates the chosen and rejected sequences of a batch into one forward
   (``concatenated_forward``, ``trl/trainer/dpo_trainer.py``), so a batch of ``batch`` pairs is planned as
   ``2 x batch`` sequences at the pair's width. The reference model is not added: under PEFT it is the base with
   the adapter disabled (no second copy); a full-weight DPO needs a second model, which this plan does not count.
4. Time: each micro-batch takes the planner's training roofline (``quantlab/planner/throughput.py``
   ``train_step``, default GPU utilisations) at its own records x width, with ``grad_accum`` = 1, so the weights
   are read once per micro-batch pass and the gradient and optimizer traffic is counted per micro-batch (an upper
   bound for ``grad_accum`` > 1, where it is paid once per step). An epoch is the sum over its micro-batches,
   divided by the data-parallel degree (each GPU draws its share). Steps per epoch = ceil(batches / (grad_accum x
   data-parallel degree)). Cost = hours x GPUs x the profile's price per GPU-hour (none when the profile has no
   price).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from quantlab.data.lengths import batch_sizes, batch_widths, packed_rows, percentile

POINTS = ("p50", "p95", "max")


def width_points(widths: Sequence[int]) -> dict[str, int]:
    return {"p50": percentile(widths, 50), "p95": percentile(widths, 95), "max": max(widths)}


def config_at(cfg, width: int, *, packing: bool, preference: bool = False):
    """The PlanConfig of one batch of ``width`` tokens (assumptions 1-3)."""
    return dataclasses.replace(cfg, seq=int(width), padding_mask=not packing,
                               batch=cfg.batch * (2 if preference else 1))


def data_plan(cfg, lengths: Sequence[int], gpu=None, *, packing: bool = False, max_len: int | None = None,
              epochs: float = 1.0, seed: int = 0, preference: bool = False) -> dict:
    """The plan at the p50 / p95 / max batch widths, the fit of each on ``gpu``, and the epoch time and cost."""
    from quantlab.errors import QuantlabError
    from quantlab.planner import fit, plan
    from quantlab.planner import throughput as tp
    from quantlab.planner.recommend import model_bytes

    if not cfg.method.is_training:
        raise QuantlabError("--plan plans a fine-tune: give a training --method (qlora, lora, full, ...)")
    if not (epochs > 0 and math.isfinite(epochs)):
        raise QuantlabError(f"--epochs must be a positive number, got {epochs}")
    seqs_per_record = 2 if preference else 1
    notes = []
    if packing:
        if not max_len:
            raise QuantlabError("--packing needs --max-len (the row width the records are packed to)")
        rows = packed_rows(lengths, max_len)
        if rows < 1:
            raise QuantlabError(f"{sum(lengths)} tokens are too few to pack one row of --max-len {max_len}")
        sizes = batch_sizes(rows, cfg.batch)
        widths = [max_len] * len(sizes)
        order = f"packed: {rows} rows of {max_len} tokens (the last partial row dropped), batches of {cfg.batch}"
        real_tokens = rows * max_len
    else:
        widths = batch_widths(lengths, cfg.batch, seed)
        sizes = batch_sizes(len(lengths), cfg.batch)
        order = (f"dynamic padding: a seeded shuffle (random.Random({seed})) cut into batches of {cfg.batch}, "
                 "the last partial, each padded to its longest record")
        real_tokens = sum(lengths) * seqs_per_record
    if preference:
        notes.append(f"preference pairs: each batch is planned as {2 * cfg.batch} sequences (chosen and rejected "
                     "concatenated, as TRL's DPO trainer does); a full-weight reference model is not counted")
    pts = width_points(widths)
    at = []
    for name in POINTS:
        c = config_at(cfg, pts[name], packing=packing, preference=preference)
        f = fit(c, gpu, suggest=False) if gpu is not None else None
        p = f.plan if f is not None else plan(c)  # fit plans the configuration as it runs on the GPU
        row = {"point": name, "batch": c.batch, "seq": c.seq, "peak_allocated_bytes": p.peak_allocated_bytes,
               "peak_reserved_bytes": p.peak_reserved_bytes, "process_bytes": p.process_bytes,
               "fits": None if f is None else bool(f.fits), "margin_bytes": None if f is None else int(f.margin_bytes),
               "components": dict(p.components)}
        at.append(row)
    doc = {"order": order, "packing": packing, "max_len": max_len, "seed": None if packing else seed,
           "batch": cfg.batch, "grad_accum": cfg.grad_accum, "num_gpus": cfg.num_gpus,
           "batches_per_epoch": len(widths),
           "optimizer_steps_per_epoch": math.ceil(len(widths) / (cfg.grad_accum * cfg.dp)),
           "widths": pts, "plans": at, "longest_batch_fits": at[-1]["fits"],
           "gpu": gpu.name if gpu is not None else None,
           "real_tokens_per_epoch": int(real_tokens),
           "padded_tokens_per_epoch": int(sum(w * s * seqs_per_record for w, s in zip(widths, sizes))),
           "epochs": epochs, "epoch_s": None, "total_s": None, "tokens_per_s": None, "bound": None,
           "price_usd_per_gpu_hour": None, "cost_usd": None, "notes": notes}
    if gpu is None:
        notes.append("no --gpu: memory only (give --gpu for the fit, the epoch time and its cost)")
        return doc
    base = plan(config_at(cfg, pts["max"], packing=packing, preference=preference))
    nbytes = model_bytes(base)
    r = tp.roof(gpu, cfg.compute_dtype)
    cache: dict[tuple[int, int], tp.StepTime] = {}
    total, bounds = 0.0, {}
    for w, s in zip(widths, sizes):
        key = (s * seqs_per_record, w)
        if key not in cache:
            c = dataclasses.replace(cfg, batch=key[0], seq=w, grad_accum=1, padding_mask=not packing)
            cache[key] = tp.train_step(c, base.trainable_params, nbytes, r)
        st = cache[key]
        total += st.seconds
        bounds[st.bound] = bounds.get(st.bound, 0.0) + st.seconds
    epoch_s = total / cfg.dp
    price = gpu.price_usd_per_hour
    doc.update(epoch_s=epoch_s, total_s=epoch_s * epochs, tokens_per_s=real_tokens / epoch_s if epoch_s else None,
               bound=max(bounds, key=bounds.get), price_usd_per_gpu_hour=price,
               cost_usd=None if price is None else epoch_s * epochs / 3600 * cfg.num_gpus * price)
    if price is None:
        notes.append(f"{gpu.name} has no price in its profile: no cost")
    if cfg.grad_accum > 1:
        notes.append("time counts gradient and optimizer traffic per micro-batch (an upper bound with --grad-accum)")
    return doc
