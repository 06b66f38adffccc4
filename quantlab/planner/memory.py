"""Memory of one configuration, per component, in integer bytes (per GPU).

The model follows how transformers 5, PEFT and bitsandbytes allocate on a CUDA device (files named below,
as installed in this project's environment), so that it can be checked against ``max_memory_allocated``.

Components (stable names, shared with the lab's measurements):
``weights`` (stored base weights, high-precision modules included), ``quant_constants`` (absmax, scales,
zeros of k-bit weights), ``adapters`` (LoRA/adapter/prefix/prompt/IA3 parameters), ``gradients``,
``optimizer`` (states), ``optimizer_step`` (transient of the optimizer step), ``activations`` (tensors saved
for backward), ``logits_loss`` (logits and the fp32 loss buffers), ``kv_cache``, ``prefill_transient``
(the largest short-lived buffer of a forward pass), ``ddp_buckets``, ``cuda_context``, ``allocator_reserve``.

:func:`plan` composes named cost functions, each citing its assumption below: :func:`weights` (1),
:func:`trainable` (2), :func:`trainable_state` (gradients and optimizer: 3, 8), :func:`sharding` (9),
:func:`training_activations` (3b, 4, 5, 6), the inference transients :func:`kv_cache` and :func:`prefill_transient`
(7) and :func:`allocator` (10). Architecture facts (norms, positions, sliding windows, softcaps, linear roles) are
data in :mod:`quantlab.families` (F1-F8), one rule each, shared with the throughput roofline.

Assumptions (numbered; notes in the plan refer to them):

1. Weights: block linears take the storage format (:mod:`quantlab.planner.formats`); embeddings, lm_head,
   norms and biases stay in the load dtype (the compute dtype for k-bit models). Under AMP the weights
   are fp32 (master weights). Under k-bit training, PEFT's ``prepare_model_for_kbit_training``
   (peft/utils/other.py) upcasts every fp16/bf16 parameter that is not ``Params4bit`` to fp32. Quantizers
   (bitsandbytes, torchao) replace ``nn.Linear`` modules only: Mixtral's router and fused 3-D expert tensors
   (transformers 5, ``LinearShape.module=False``) stay in the load dtype (checked on a tiny Mixtral).
   Buffers: RoPE's ``inv_freq`` and ``original_inv_freq`` (fp32, head_dim/2 each), Gemma-2's ``embed_scale``
   (families F3).
2. PEFT adapters are fp32 (``autocast_adapter_dtype=True``, the default) and cast their input to fp32
   (``LoraLayer._cast_input_dtype``); their gradients and optimizer states are fp32 too.
3. Gradients and the next forward: transformers 5.24's ``Trainer`` zeroes with ``model.zero_grad()``
   (``trainer.py`` lines 1651 and 1954), whose default is ``set_to_none=True`` (torch 2.13
   ``nn/modules/module.py`` ``Module.zero_grad``; ``optim/optimizer.py`` ``Optimizer.zero_grad`` likewise), so a
   step's forward runs without the previous step's gradients (``keep_grads=False``, the default): they come back
   during backward and are live through the optimizer step. The planned peak is then the largest of the forward and
   loss peak without them (3, 4-6), the end of backward (every gradient, the logits the loop still holds, the
   embedding's tail 3b) and the step (every gradient plus the step's transient, 8). ``keep_grads=True`` is a loop
   that keeps them (``zero_grad(set_to_none=False)``: vramcalc 0.1.2's ``bench.py``), counted through the whole
   step. Gradient accumulation > 1 keeps them live through the later micro-batches' forward whatever the zeroing
   (Trainer zeroes only after the optimizer step), and so do DeepSpeed ZeRO and FSDP plans (their engines keep
   flat gradient buffers, 9d; not modelled otherwise). On CUDA the freed gradient blocks stay cached (10b):
   reserved is planned as with kept gradients. Middle-of-backward points (some gradients made, some activations
   not yet freed) are not summed without checkpointing: measured on a CPU by ``quantlab validate`` below the three
   phases above for the validated rows (profiles/validation/matrix.yaml, ``keep-grads: false``); under
   checkpointing they are (5b).
   3b. At the end of backward a trainable embedding's gradient is a whole V x h tensor before it is added into
   ``.grad``; tied to lm_head, lm_head's gradient waits for it in autograd's input buffer from the start of
   backward (beside every later phase: block backward, checkpoint recompute) and the two are summed out of place
   (under AMP in place): three (two) V x h tensors beside the logits (:func:`_embedding_grad_tail`; measured on a CPU by
   ``quantlab validate``: it decides the peak when the vocabulary is large and the batch small).
4. Saved activations: :mod:`quantlab.planner.activations` (autograd's rule applied op by op to the transformers 5
   modeling code, per family; exact to the byte against ``saved_tensors_hooks`` on tiny CPU models). Dtypes: pure
   training keeps everything in the weights' dtype; AMP keeps an fp32 residual stream and autocast-dtype linear
   outputs; k-bit training under PEFT's upcast runs everything outside the k-bit matmuls in fp32 (bitsandbytes
   casts a k-bit linear's output back to its input dtype), without the upcast in the compute dtype. k-bit
   training is planned without autocast.
5. Gradient checkpointing (transformers 5: ``use_reentrant=False``) keeps each block's input (T·h in the residual
   dtype; ``_NoopSaveInputs``) and, held by the checkpoint's closure, its keyword tensors: RoPE's cos/sin and,
   for eager attention, the causal mask (b·s² in the residual dtype; Gemma-2 also a sliding-window mask), for SDPA
   with a mask (padding; transformers 4.57, activations A3d) the bool mask (b·s², 1 byte; measured on 4.57.6
   and, padded, on 5.24). One block is recomputed at a time during backward, so one block's saved tensors are live
   at once.
   5b. The checkpointed backward (torch 2.13 ``utils/checkpoint.py``, non-reentrant): blocks run backward last to
   first, each recomputed when its first saved tensor is unpacked (activations A14). At a block's backward the
   phase holds the kept inputs of the blocks not yet done, the closure's keyword tensors, what the embedding side
   saved, the logits a manual loop keeps, the tied lm_head gradient autograd holds (3b), the block's recomputed
   tensors without its own input (A14a) and its autocast casts, and the first backward nodes' transient (dY,
   down_proj's input and weight gradients, a gated product's factor gradients: A14b); what the final norm, lm_head
   and a logit softcap saved is already freed. A block done frees its input and RNG state and, where the step
   started without gradients (3: Trainer's zeroing with grad accum 1), leaves its weights' gradients, and lm_head's
   and the final norm's gradients exist from the start of backward: the phase is linear in the blocks done, so the
   plan takes each block group's last and first block. Measured on a CPU to 0.03% by a real Trainer step
   (tests/integrations/test_trainer_loop_plan.py, full and LoRA, grad accum 2; grad accum 1 by the same callback):
   before this the plan missed that phase, 26,772 B (1.3%) below on the full fine-tune. Eager attention's softmax
   backward is one more candidate point of each block (A14d); GPT-2's own attention, attention dropout, Gemma-2's
   softcap backward and SDPA's math kernel (A3b) are not traced.
   5c. ``preserve_rng_state=True`` (torch's default; transformers passes no other): each checkpointed block stashes
   ``torch.get_rng_state()`` (checkpoint.py line 1632), a 5,056-byte CPU tensor, and on CUDA the device's state,
   also a CPU tensor (``torch.cuda.get_rng_state``): device memory only on a CPU plan. Freed with the block's
   frame after its backward.
   5d. Autocast (AMP) caches the casts of trainable leaves until its region exits, after the loss's forward in
   both loops (activations A14c): under checkpointing every block's weight casts are live at ``nll_loss``'s
   forward beside the logits, their fp32 upcast, ``log_softmax``'s output and the padded labels (int64
   b·(s+1), ``nn.functional.pad`` in ``ForCausalLMLoss``); freed before backward. Measured by ``quantlab
   validate`` (qwen-full-amp-ckpt, llama-full-amp-ckpt-eager: 1.5% and 2.8% below before, now to 16 B).
   5e. Without checkpointing, eager attention's softmax backward in the last block (activations A14d) is a phase
   of its own: every block's saved tensors, less the head's and the last block's MLP's (freed), plus the fp32
   gradient and output of the softmax; where the step started without gradients, lm_head's, the final norm's and
   the last block's MLP and o_proj gradients beside. Measured by a Trainer step on the tiny Llama at 512 tokens
   (fp32 and bf16, full and LoRA): the plan was 24% below without it, now within 0.05%. The other middle-of-
   backward points without checkpointing stay unsummed (3).
6. Logits and loss (transformers ``loss/loss_utils.py`` ``ForCausalLMLoss``): the logits (T·vocab in the
   lm_head output dtype) stay referenced by the model output; the loss upcasts them to fp32
   (``logits.float()``), ``log_softmax`` saves its fp32 output, and backward allocates the fp32 gradient of
   ``nll_loss`` and of ``log_softmax``: at the start of backward logits + 3 x 4·T·vocab bytes are live.
7. Inference is a full forward over ``seq`` tokens with the KV cache kept (``use_cache``): weights + KV
   cache (each layer holds min(seq, its window) positions: families F4, the positions a decode step reads in
   :mod:`quantlab.planner.throughput`) + the larger of the logits (T·vocab in the compute dtype) and one
   block's transient (the gated MLP's three T x intermediate tensors; for eager attention the b·heads·s² scores, the fp32 softmax and, for a
   bf16 input, the fp32 copy ``softmax(dtype=float32)`` makes of it; for SDPA on the math kernel (activations
   A3b) fp32 q, k, v, scores and probabilities). A k-bit matmul over many tokens first dequantizes its
   weight (bitsandbytes ``gemm_4bit``): the largest quantized linear in the compute dtype joins the transient.
8. Optimizer states: AdamW 2 x trainable in the parameter dtype; 8-bit AdamW (bitsandbytes blockwise) 2 bytes
   per parameter + one fp32 absmax per 256 values per state; paged optimizers live in CUDA unified memory,
   outside PyTorch's allocator (counted in the process total, not in allocated/reserved); SGD with momentum
   and Lion one state; Adafactor the factored second moment (rows + columns per matrix, fp32). The foreach
   AdamW/Lion step allocates one state-sized temporary (``torch/optim/adamw.py`` ``_multi_tensor_adamw``).
9. Sharding (per GPU, data-parallel degree dp = num_gpus / tp): ZeRO-1 shards optimizer states, ZeRO-2 also
   gradients, ZeRO-3 / FSDP full_shard also weights (plus two gathered blocks: the current and the
   prefetched one); FSDP shard_grad_op is ZeRO-2. Plain DDP keeps gradient buckets the size of the
   gradients (``gradient_as_bucket_view=False``). Offload moves optimizer states (and with ``params``, the
   weights) to CPU memory. Tensor parallel divides block linears and the KV cache (a GPU keeps at least one
   KV head) by tp, and the head- and intermediate-wide activations (activations A12). That reading stays for
   FSDP, DDP, tensor parallel and the ZeRO plans 9a-9h do not cover (offload, PEFT, k-bit); ZeRO 1-3 of a full or
   freeze plan in a float format follows DeepSpeed 0.19.8's own buffers as the emitted JSON configures them
   (:func:`deepspeed_buffers`; files under deepspeed/runtime/, checked against engines built on a CPU by
   ``tests/test_deepspeed_engine.py``; P = this rank's partition of the N trainable parameters):
   9a. The engine casts every parameter to the 16-bit dtype and keeps fp32 buffers (``engine.py``
       ``_configure_distributed_model``, ``_cast_module_mixed_precision``): the model is 16-bit even for an AMP plan.
   9b. Masters, their gradient and the optimizer states are fp32 unless ``bf16_master_weights_and_grads`` /
       ``bf16_optimizer_states`` (a pure plan; ``base_optimizer.py`` ``_configure_master_weights``):
       :func:`ds_master_dtype`, the rule the emitter writes.
   9c. ZeRO 1-2 (``stage_1_and_2.py`` ``DeepSpeedZeroOptimizer.__init__``): the trainable parameters become views
       of one flat 16-bit buffer aligned to 2·dp elements (``nccl_start_alignment_factor``), P = aligned/dp, and the
       master partition is a ``clone().to(master dtype)`` of P elements. ZeRO-3 (``stage3.py``
       ``_create_fp16_partitions_with_defragmentation``, ``_create_fp32_partitions``): each parameter keeps
       ceil(numel/dp) elements in ``lp_param_buffer``, and the master partition is a copy in every dtype (the
       branch that would share a same-dtype partition compares ``tensor.device`` with a device-name string, False in
       torch 2.13).
   9d. 16-bit gradients: ZeRO 1-2 with ``overlap_comm`` and ``contiguous_gradients`` (both emitted) copy each
       gradient of a parameter that overlaps this rank's partition, whole, into ``grads_in_partition`` at the
       gradient hook (``copy_grads_in_partition``); the others stay views of the reduce bucket. ZeRO-1 therefore
       keeps what ZeRO-2 keeps. ZeRO-3 keeps ``grad_partitions_flat_buffer`` (P elements) for the engine's life
       (``_setup_for_real_optimizer``).
   9e. Reduce buckets of ``reduce_bucket_size`` elements (:func:`ds_reduce_bucket`, hidden²) in the 16-bit
       dtype: two at ZeRO 1-2 under ``overlap_comm`` (``setup_buckets``, freed at the end of backward), one at
       ZeRO-3 (kept). A parameter larger than a bucket keeps its own gradient until it is reduced
       (``extra_large_param_to_reduce``; stage3 ``__add_grad_to_ipg_bucket``).
   9f. ZeRO-3 gathered parameters: at most ``stage3_max_live_parameters`` (two blocks, :func:`ds_gathered_bounds`)
       in the 16-bit dtype, or one module whole where it is larger (a module gathers all its parameters; the bound
       stops prefetching, ``partitioned_param_coordinator.py``). The plan counts the bound.
   9g. Optimizer states sit on the master partition in the master dtype (assumption 8 on one flat tensor of P
       elements; ZeRO-3 keeps one flat tensor per sub-group, parameters in order until ``sub_group_size`` = 1e9
       elements is reached, and steps one sub-group at a time).
   9h. The step (``step`` / ``_prepare_fp32_grad_for_sub_group``) flattens the 16-bit gradients (P elements) and
       casts them to the master dtype (``.to`` returns the same tensor when the dtypes agree), then steps on that
       gradient: the larger of the two phases, above the 16-bit gradients, is the step transient. ZeRO 1-2 drop
       their references to the 16-bit gradients before the inner step, yet the CPU allocator's peak over
       ``engine.step()`` is the master gradient plus the optimizer's temporaries above them (measured; the
       reference that keeps them is not traced), so they are not subtracted.
10. CUDA context: 150 MiB per process (assumed: CUDA 12 with lazy module loading; the published T4 row shows
    141 MiB between NVML and reserved). Allocator reserve: the caching allocator rounds blocks up to 2 MiB and
    keeps freed activation blocks of sizes later requests cannot reuse; modelled as 25% of the dynamic
    (non-static) peak (assumed; one published reserved/allocated pair checks it). On a CPU (``device=cpu``)
    both are zero: the lab counts tensor bytes exactly there.
11. ``stack="litgpt"`` (LitGPT's own model code, as in its published tables): no PEFT upcast, and the
    bitsandbytes it pins (0.41) saves each 4-bit linear's input for backward (``MatMul4Bit``:
    ``ctx.tensors = (A, B)``; 0.50 keeps only B), so a k-bit block also keeps its norm outputs, the
    attention output and the MLP product.
12. ``loss=chunked``: torchtune's ``CEWithChunkedOutputLoss`` (torchtune/modules/loss/ce_chunked_output_loss.py,
    read at pytorch/torchtune main; torchtune is not installed here): the model returns its logits as 8 chunks
    (``set_num_output_chunks``: lm_head applied to each ``tensor_split`` of the last hidden state along the
    sequence), all kept (T·V in lm_head's output dtype); each chunk is upcast on its own (``logits.float()``, a
    no-op in fp32) and goes through ``F.cross_entropy(reduction="sum")``: every chunk's fp32 ``log_softmax`` output
    is saved (4·T·V in all), its int64 labels (a copy when B > 1: the label chunk is not contiguous) and
    ``nll_loss``'s ``total_weight``, and the division by the token count saves the int64 count. One chunk's
    transients at a time: its fp32 upcast, or in backward the nll and log_softmax gradients (2 x 4 x chunk x V) and
    the cast back. A trainable lm_head gets one V x h weight gradient per chunk, summed into the buffer autograd
    holds for the weight: bounded by three V x h (measured on a CPU, tiny tied Llama, batch 2 x 64: the total 1.5%
    above for an fp32 full fine-tune with kept gradients, 28% above for a bf16 one with Trainer's zeroing, so the
    full rows are not in the matrix; the LoRA rows are within 1%).
13. ``loss=liger``: Liger-Kernel's ``LigerFusedLinearCrossEntropyFunction``
    (src/liger_kernel/ops/fused_linear_cross_entropy.py, read at linkedin/Liger-Kernel main): no logits; the
    forward computes the loss and its gradients chunk by chunk over the N = B·(S-1) shifted tokens, chunk =
    ``min(next_power_of_2(ceil(N / ceil(V / H))), N)`` rows; it keeps ``grad_input`` (N x H in the input dtype) and
    ``grad_weight`` (V x H in the weight dtype, when lm_head trains) for backward, and holds one ``chunk x V``
    logits tile (in place turned into its gradient), its ``chunk x H`` product, ``loss_1d`` (fp32 N), the bool
    target mask and the shifted hidden states' contiguous copy. Liger needs Triton (CUDA, ROCm, XPU): it cannot run
    on this CPU, so this rule is read from the code, not validated.
14. ``loss=trl-fused``: TRL 1.16's fused LM head, :mod:`quantlab.planner.trl_head` (H1-H6) with SFTTrainer's
    outputs (``log_probs``, ``entropy``, ``is_top1``): the per-token outputs are kept, the function's saved tensors
    and the larger of its forward and backward transients replace assumption 6; the lm_head input and a logit softcap
    are not saved by modules (the function saves its own hidden rows). Measured by the integration in TRL's own
    SFTTrainer (reports/integrations-cpu: every component within 0.02%).
15. ``optimizer_in_backward``: torch's "fuse the optimizer step into the backward pass" recipe
    (``Tensor.register_post_accumulate_grad_hook``, torch 2.13 ``_tensor.py``; one optimizer per parameter, stepped
    and zeroed with ``set_to_none=True`` in the hook): no gradient outlives its parameter's hook, so the plan holds
    no gradients; the largest parameter's gradient and its step transient (assumption 8 for that one tensor) are in
    flight (``optimizer_step``), at the end of backward no more than a trainable embedding's tail (3b) beside the
    logits. Gradient accumulation cannot be combined with it (the gradient is consumed as it is made): an error.
    Middle-of-backward points (a block's gradient stepped beside the activations not yet freed) are not summed:
    measured 1.5% below on a tied fp32 AdamW full fine-tune (matrix row llama-full-fp32-oib).
16. ``packed``: rows hold several documents told apart by ``position_ids`` (no padding, no mask). transformers 5.24
    ``masking_utils.py`` (``_preprocess_mask_arguments``) runs ``find_packed_sequence_indices`` when the 2-D mask is
    None and there is no cache: a row whose positions restart is packed, and the mask function gains
    ``packed_sequence_mask_function`` with ``allow_is_causal_skip = False``, so SDPA gets a block-diagonal bool mask
    (b·s², 1 byte; under checkpointing a keyword every block's closure holds, as for padded batches, 5). The caller's
    (B, S) position ids make RoPE's cos and sin one row per sequence (B·S·head_dim each, not one broadcast row).
    Measured on a CPU (tiny Llama, bf16 LoRA and fp32 checkpointed full fine-tune): exactly those two changes; the
    padded batches' other terms (activations A3c) do not appear. A row with one document is not packed
    (``find_packed_sequence_indices`` returns None) and plans as unpacked. FlashAttention-2's varlen path is not
    modelled.
17. ``torch_compile``: inductor's partitioner (``torch/_functorch/partitioners.py``, ``min_cut_rematerialization_
    partition``) chooses what the compiled forward saves and recomputes cheap elementwise ops in backward; the saved
    set then differs from eager's op-by-op rule (assumption 4). Not modelled: the plan is the eager plan, with a
    note.
18. ``qat_group``: torchao 0.18's QAT (``QATConfig(IntxWeightOnlyConfig(int4, PerGroup(g)), step="prepare")``,
    as :mod:`quantlab.lab.qat` runs it) swaps every block linear for ``FakeQuantizedLinear``, whose forward
    (``torchao/quantization/qat/fake_quantizer.py`` ``IntxFakeQuantizer.forward`` -> ``_fake_quantize_affine`` in
    ``quant_primitives.py``) saves, beside what ``nn.Linear`` saves: the grouped ``w / scale + zero_point`` (out,
    in/g, g) the rounding's straight-through backward keeps, the dequantized weight (a new tensor) the matmul keeps
    for the input gradient, and two fp32 per-group tensors (scale, zero point): 4·W + b·W + 2·4·W/g bytes per linear
    of W weights in dtype b (measured in fp32 by tests/lab/test_qat.py and tests/planner/test_qat_plan.py; the fp32
    grouped copy under bf16 weights is read from the code, not measured). lm_head and the embeddings are not
    fake-quantized. A frozen block keeps the dequantized weight only.
19. ``loop``: who holds the model output through backward. ``manual`` (the default, assumption 6: quantlab
    validate's loop and the published rows): ``out = model(...); out.loss.backward()`` keeps ``out.logits``
    referenced through backward. ``trainer``: transformers 5.24 ``Trainer.compute_loss`` (``trainer.py`` lines
    2130-2217: ``outputs = model(**inputs)``, ``loss = outputs["loss"]``, ``return loss``) drops the model output
    before ``training_step`` calls ``accelerator.backward(loss)`` (line 2126), and nothing autograd saves refers to
    the logits: ``ForCausalLMLoss`` (``loss/loss_utils.py`` lines 51-73) takes ``logits.float()`` (the same tensor
    in fp32), pads the labels by one -100 and shifts them (lines 65-66: the loss runs over all T positions, as
    assumption 6 counts), views the logits ``(-1, V)`` (a view saves no tensor) and ``cross_entropy``'s
    ``log_softmax`` saves its output, not its input (``fixed_cross_entropy`` lines 34-48). Trainer passes
    ``num_items_in_batch`` (a model whose forward takes ``**kwargs``, ``model_accepts_loss_kwargs``): the loss is a
    sum divided by it, and ``DivBackward`` keeps the divisor, a 0-d fp32 tensor (the int64 count divided by the
    parallel sizes, ``_get_num_items_in_batch`` lines 2343 and 2362-2364): 4 more saved bytes. So the
    logits are live through the loss's forward only: its forward holds the logits, the fp32 upcast when lm_head's
    output is not fp32 and the saved tensors (at most out·T·V + 8·T·V, out <= 4), its backward the saved tensors
    and the two fp32 gradients (12·T·V): the backward is the larger, so the loss peak is assumption 6's without
    the logits, and the end of backward (3, 3b) holds no logits. Applies to the HF loss; ``liger`` and
    ``trl-fused`` (13, 14; TRL's SFTTrainer is a Trainer) make no full logits and plan as before; ``chunked`` (12) is
    torchtune's own loop: an error with ``trainer``. Gradient accumulation: Trainer fetches every micro-batch of an
    optimizer step before the first forward (``get_batch_samples``, lines 2289-2304) and holds their inputs (ids,
    mask and labels, 3 x 8·b·s int64 bytes per micro-batch) through the step; the plan, as for the manual loop,
    counts no input tensors (not modelled). Measured on a CPU by tests/integrations/test_trainer_loop_plan.py.
20. ``eval_batch``: evaluation during training (transformers 5.24 ``trainer.py``). ``_inner_training_loop`` calls
    ``_maybe_log_save_evaluate`` (line 1958) after ``optimizer.step()`` (1943) and ``model.zero_grad()`` (1954,
    set_to_none: the gradients are None, unless the loop keeps them, assumption 3, or ZeRO/FSDP keep flat
    buffers); it calls ``evaluate`` (line 2805), which passes ``prediction_loss_only=True`` when there is no
    ``compute_metrics`` (line 2876), so ``evaluation_loop`` (2904) accumulates the loss only, no logits.
    ``prediction_step`` (3193) runs ``compute_loss(model, inputs, return_outputs=True)`` under ``torch.no_grad()``
    after ``model.eval()`` (no checkpointing, no dropout); Trainer sets ``model.config.use_cache =
    args.use_cache`` (line 646; ``TrainingArguments.use_cache`` defaults to False), so no KV cache. The phase holds
    the static tensors (weights, quantization constants, adapters, optimizer states, DDP buckets; gradients only
    where they are kept) and the no-grad forward over ``eval_batch`` x ``seq`` tokens: assumption 7's transient
    (:func:`prefill_transient`, one block's buffers beside the residual stream) or, at its end, the logits (in
    lm_head's output dtype, as in training), the final hidden states, ``ForCausalLMLoss``'s fp32 upcast (none when
    the logits are fp32), ``log_softmax``'s fp32 output (no autograd: nothing else is saved) and the padded and
    shifted int64 labels (``loss/loss_utils.py`` lines 51-73). The plan's peak is the larger of the training step
    and this phase (the ``eval_forward`` component; a note says which). The eval inputs, like the training inputs,
    are not counted. On CUDA the evaluation is planned above the step's cached blocks (not measured on a GPU).
    Measured on a CPU by tests/integrations/test_trainer_eval_plan.py (tiny Llama, full fine-tune, eval batch 64 x
    32, fp32 and bf16 weights): the plan 0.6% below the evaluation's peak (the eval inputs, not counted).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections import namedtuple

from quantlab.families import (attended_positions, attention_masks, block_linears, family, ia3_linears,
                               learned_positions, model_cache, model_keyed, module_linears, rope_buffer_bytes)
from quantlab.planner.activations import (Act, amp_weight_cache, amp_weight_casts, attention_backward_point,
                                          block_backward_points, block_saved, outside_blocks, recompute_reused,
                                          sdpa_kernel, sdpa_math)
from quantlab.planner.formats import weight_format
from quantlab.planner.params import ParamCounts, Tensors, block_tensors, count_params, outside_tensors
from quantlab.specs import (ALL_LINEAR, Attention, DeviceMode, DType, LinearShape, Loop, Loss, Method, ModelSpec,
                            Offload, Optimizer, PlanConfig, Precision, SpecError, TrainingPrecision)

from quantlab.planner.allocator import CUDA_CONTEXT_BYTES, RESERVE_FRACTION, SEGMENT, allocator  # noqa: F401

MiB = 1 << 20

_FLOAT_BYTES = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2}
_NBYTES = {d: d.nbytes for d in DType}  # DType.nbytes builds its table on every call
_PEFT = frozenset(m for m in Method if m.is_peft)
_LORA = frozenset((Method.LORA, Method.QLORA))
_PAGED = frozenset((Optimizer.PAGED_ADAMW, Optimizer.PAGED_ADAMW_8BIT))
_NONE: frozenset = frozenset()


class Plan(namedtuple("Plan", "config params active_params trainable_params components peak_allocated_bytes "
                             "peak_reserved_bytes process_bytes notes", defaults=((),))):
    """The plan of one configuration: components per GPU, totals, and the notes behind automatic choices.

    Fields: ``config`` (the PlanConfig), ``params``, ``active_params``, ``trainable_params``, ``components`` (name ->
    bytes per GPU), ``peak_allocated_bytes``, ``peak_reserved_bytes``, ``process_bytes`` and ``notes``. A named
    tuple: a frozen value, built in a fraction of a frozen dataclass's ``__init__`` and without its class-creation
    cost at start-up (a plan is built thousands of times in a sweep and once per CLI call)."""

    __slots__ = ()

    def to_dict(self) -> dict:
        c = self.config
        return {
            "model": c.model.name, "method": c.method.value, "precision": c.precision.value,
            "compute_dtype": c.compute_dtype.value, "training_precision": c.training_precision.value,
            "optimizer": c.optimizer.value if c.method.is_training else None,
            "batch": c.batch, "seq": c.seq, "attn": c.attn.value, "grad_checkpointing": c.grad_checkpointing,
            "num_gpus": c.num_gpus, "zero": c.zero, "fsdp": c.fsdp, "offload": c.offload.value, "tp": c.tp,
            "device": c.device.value,
            "params": self.params, "active_params": self.active_params, "trainable_params": self.trainable_params,
            "components": dict(self.components),
            "peak_allocated_bytes": self.peak_allocated_bytes, "peak_reserved_bytes": self.peak_reserved_bytes,
            "process_bytes": self.process_bytes, "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------------------
# helpers tied to the architecture

def _targets(m: ModelSpec, targets: tuple[str, ...]) -> tuple[LinearShape, ...]:
    """The block linears a LoRA target list names: PEFT's suffix rule, kept once in ``ModelSpec.lora_linears``."""
    return m.lora_linears(targets)


@model_keyed
def _adapter_params(m: ModelSpec, method: Method, lora_r: int, targets: tuple[str, ...], adapter_size: int,
                    nvt: int) -> tuple[int, Tensors]:
    """(trainable adapter parameters, their tensors as ((shape, how many), ...)) for a PEFT method."""
    L, h = m.num_hidden_layers, m.hidden_size
    kv = m.kv_heads * m.head_dim
    if method in (Method.LORA, Method.QLORA):  # lora_A (r, in), lora_B (out, r) per target and layer
        t = tuple(x for l in _targets(m, targets) for x in (((lora_r, l.in_features), l.count * L),
                                                             ((l.out_features, lora_r), l.count * L)))
    elif method is Method.ADAPTER:  # Houlsby: two bottleneck adapters per block, with biases
        t = (((adapter_size, h), 2 * L), ((adapter_size,), 2 * L), ((h, adapter_size), 2 * L), ((h,), 2 * L))
    elif method is Method.PREFIX:  # PEFT PrefixEncoder without projection: keys and values of every layer
        t = (((nvt, L * 2 * kv), 1),)
    elif method is Method.PROMPT:
        t = (((nvt, h), 1),)
    elif method is Method.IA3:  # PEFT's IA3 defaults per family (activations.IA3_TARGETS): (out, 1) / (1, in), one
        # vector per target and layer (each its own tensor: the optimizer keeps a step counter per tensor)
        targets, ff = ia3_linears(m)
        t = tuple(((l.out_features, 1), L) for l in targets) + ((((1, ff.in_features), L),) if ff else ())
    else:
        t = ()
    return _numel(t), t


def _numel(tensors: Tensors) -> int:
    total = 0
    for shape, n in tensors:
        size = n
        for d in shape:
            size *= d
        total += size
    return total


@functools.lru_cache(maxsize=4096)
def _optimizer_bytes(opt: Optimizer, tensors: Tensors, state_bytes: int, cpu: bool) -> tuple[int, int]:
    """(persistent state bytes, step transient bytes) for the trainable ``tensors`` (assumption 8)."""
    n = _numel(tensors)
    if n == 0:
        return 0, 0
    count = sum(k for _, k in tensors)
    if opt in (Optimizer.ADAMW, Optimizer.PAGED_ADAMW):
        # exp_avg, exp_avg_sq like the parameter; the 0-dim fp32 ``step`` lives on the CPU unless capturable/fused.
        # CUDA defaults to the foreach step (one state-sized temporary, ``torch._foreach_sqrt``); a CPU runs
        # ``_single_tensor_adamw``, one parameter at a time: ``exp_avg_sq.sqrt() / bias_correction2_sqrt`` holds
        # two temporaries of the largest parameter (checked with the profiler, torch 2.13)
        if cpu:
            return 2 * n * state_bytes + 4 * count, 2 * max(_numel(((s, 1),)) for s, _ in tensors) * state_bytes
        return 2 * n * state_bytes, n * state_bytes
    if opt in (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT):
        # bitsandbytes blockwise: uint8 state1/state2 + one fp32 absmax per 256 values each; tensors under
        # min_8bit_size (4096 values) keep fp32 states (checked on a CPU against bitsandbytes 0.50 AdamW8bit)
        total, eight_bit, biggest = 0, False, 0
        for shape, k in tensors:
            size = _numel(((shape, 1),))
            total += k * (2 * size + 2 * 4 * -(-size // 256) if size >= 4096 else 2 * 4 * size)
            eight_bit = eight_bit or size >= 4096
            biggest = max(biggest, size if size >= 4096 else 0)
        # CUDA runs the update in one fused kernel; on a CPU bitsandbytes 0.50 (``optimizer_update_8bit_blockwise``)
        # works in torch ops on one parameter at a time: both states dequantized to fp32, then the mul, sqrt and div
        # of the update: five fp32 tensors of the largest 8-bit parameter (checked with the profiler)
        tmp = 5 * 4 * biggest if cpu else 0
        return total + (2 * 256 * 4 if eight_bit else 0), tmp  # + the two 256-entry fp32 quantile maps, shared
    if opt is Optimizer.SGD:
        return 0, 0
    if opt is Optimizer.SGD_MOMENTUM:
        return n * state_bytes, 0
    if opt is Optimizer.LION:
        return n * state_bytes, n * state_bytes
    if opt is Optimizer.ADAFACTOR:
        # transformers' Adafactor: a matrix keeps row and column second-moment factors, a vector its full second
        # moment, in fp32 (``.to(grad)`` after ``grad.float()``), every tensor an fp32 ``RMS`` scalar; a step works
        # in fp32 on one parameter at a time: ``update = grad**2 + eps`` holds the power and the sum at once, and so
        # does ``_approx_sq_grad`` (the new update beside the old); a half parameter adds its fp32 copy and the fp32
        # copy of its gradient (four fp32 tensors of the largest parameter, two for an fp32 one; profiler-checked)
        # The previous parameter's fp32 ``update`` is still bound while the next one's ``grad**2 + eps`` is computed,
        # so the peak is the largest (2 + copies) x N_i + N_{i-1} over parameters in the model's order (``tensors``
        # lists them in that order; a block's first tensor follows the previous block's last).
        copies = 2 if state_bytes < 4 else 0
        state_bytes = 4
        total, biggest = 0, 0
        sizes = [_numel(((shape, 1),)) for shape, _ in tensors]
        for j, (shape, k) in enumerate(tensors):
            size = sizes[j]
            prev = size if k > 1 and len(tensors) == 1 else sizes[j - 1] if j else 0
            biggest = max(biggest, (2 + copies) * size + prev)
            if len(shape) >= 2:
                rows = _numel(((shape[:-1], 1),))
                cols = _numel(((shape[:-2], 1),)) * shape[-1]
                total += k * ((rows + cols) * state_bytes + 4)
            else:
                total += k * (size * state_bytes + 4)
        return total, 4 * biggest
    raise ValueError(opt)  # pragma: no cover


# ---------------------------------------------------------------------------------------------------------


def _dtypes(cfg: PlanConfig) -> tuple[int, int, int, bool, bool]:
    """(load bytes of float weights, residual bytes r, linear-output bytes a, amp, k-bit upcast) (assumptions 1, 4)."""
    kbit = cfg.precision not in _FLOAT_BYTES
    training = cfg.method is not Method.INFERENCE
    amp = training and cfg.training_precision is TrainingPrecision.AMP
    c = _NBYTES[cfg.compute_dtype]
    load = c if kbit else 4 if amp else _FLOAT_BYTES[cfg.precision]
    upcast = kbit and training and cfg.kbit_upcast and cfg.library == "transformers"
    if kbit:
        r = 4 if upcast else c
        a = r  # bitsandbytes casts a k-bit linear's output back to its input dtype
    elif amp:
        r, a = 4, c
    else:
        r = a = load
    return load, r, a, amp, upcast


def _embedding_grad_tail(cfg: PlanConfig, pc: ParamCounts, grad_bytes: int) -> tuple[int, int]:
    """(bytes at the end of backward, bytes held through backward) of a trainable embedding's gradient (3b).

    ``embedding_dense_backward`` returns a whole vocab x hidden gradient, added in place into the existing ``.grad``
    (untied: one V·h). Tied to lm_head, the weight's two gradients meet in autograd's input buffer: lm_head's,
    computed first and held through the whole backward, the embedding's, and their out-of-place sum (three V·h).
    """
    if not _embed_trains(cfg, pc):  # (inference trains nothing)
        return 0, 0
    m = cfg.model
    n = m.vocab_size * m.hidden_size * grad_bytes
    if not m.tie_word_embeddings:
        return n, 0
    # lm_head's gradient of a tied weight reaches the input buffer as a transposed view (summed out of place: three
    # V·h at the end); under AMP as the fp32 cast of the bf16 gradient, a fresh tensor summed in place (two)
    amp = cfg.training_precision is TrainingPrecision.AMP
    return (2 if amp else 3) * n, n


def loss_buffers(cfg: PlanConfig, dtypes: tuple | None = None, batch: int | None = None,
                 seq: int | None = None) -> tuple[int, int, int]:
    """(kept, saved, transient) bytes of the loss head (assumptions 6, 12-14): ``kept`` is held from the forward to
    the end of backward (the logits, or the fused head's per-token outputs), ``saved`` is what the loss saves for
    backward, ``transient`` the peak of its own buffers above both (the HF loss: its backward's two fp32 T x V
    gradients). The loss peak is their sum.

    ``hf`` (6): the logits are T x vocab in lm_head's output dtype; ``ForCausalLMLoss`` saves the fp32
    ``log_softmax`` output (4·T·V), the int64 targets (8·T) and ``nll_loss``'s fp32 ``total_weight`` (4 bytes);
    backward allocates the fp32 gradients of ``nll_loss`` and of ``log_softmax`` (2 x 4·T·V). T counts prompt
    tuning's virtual tokens. ``chunked`` (12), ``liger`` (13), ``trl-fused`` (14): see the assumptions."""
    if cfg.method is Method.INFERENCE:
        return 0, 0, 0
    load, r, _, amp, upcast = dtypes or _dtypes(cfg)
    b = cfg.batch if batch is None else batch
    s = cfg.seq if seq is None else seq
    T = b * (s + (cfg.num_virtual_tokens if cfg.method is Method.PROMPT else 0))
    m = cfg.model
    V = m.vocab_size
    out = _NBYTES[cfg.compute_dtype] if amp else r  # lm_head's output dtype
    loss = cfg.loss
    if loss is Loss.HF:  # (Trainer's num_items_in_batch: the divisor DivBackward keeps, 0-d fp32, assumption 19)
        return out * T * V, 4 * T * V + 8 * T + 4 + (4 if cfg.loop is Loop.TRAINER else 0), 8 * T * V
    if loss is Loss.CHUNKED:  # assumption 12
        k = CHUNKS
        rows = b * -(-s // k)  # the largest tensor_split chunk of the sequence, over the batch
        labels = 8 * T if b > 1 else 0  # a non-contiguous label chunk's reshape(-1) copies (B > 1)
        upcast = 4 * rows * V if out != 4 else 0  # .float() of one chunk (a no-op in fp32)
        back = 8 * rows * V + (out * rows * V if out != 4 else 0)  # nll and log_softmax gradients, the cast back
        if _head_trains(cfg):  # each chunk's lm_head call returns its own V x h weight gradient, summed into the one
            back += 3 * V * m.hidden_size * (4 if upcast else load)  # autograd holds: bounded by three (assumption 12)
        # saved: every chunk's fp32 log_softmax, the label copies, nll's total_weight per chunk, the int64 divisor
        return out * T * V, 4 * T * V + labels + 4 * k + 8, max(upcast, back)
    H = m.hidden_size
    if s < 2:  # no next-token position to score (the closed form's sample points only)
        return 0, 0, 0
    head_trains = _head_trains(cfg)
    w = 4 if upcast else load  # lm_head's weight (assumption 1)
    if loss is Loss.LIGER:  # assumption 13
        N = b * (s - 1)
        inc = -(-V // H)
        chunk = min(_next_pow2(-(-N // inc)), N)
        saved = N * H * out + (V * H * w if head_trains else 0)  # grad_input, grad_weight (made in the forward)
        # the shifted hidden states' contiguous copy, loss_1d (fp32), target_mask (bool), one logits chunk and its
        # grad_input product
        return 0, saved, N * H * r + 4 * N + N + chunk * V * out + chunk * H * out
    from quantlab.planner import trl_head

    fh = trl_head.fused_head(batch=b, seq=s, hidden=H, vocab=V, hidden_bytes=r, compute_bytes=out, weight_bytes=w,
                             head_trains=head_trains, triton=cfg.device is DeviceMode.CUDA,
                             outputs=trl_head.TRAINER_OUTPUTS["sft"])  # assumption 14
    return fh.outputs_kept, fh.saved, max(fh.forward_transient, fh.backward_peak)


# assumption 5c: ``torch.get_rng_state().nbytes`` (torch 2.13, CPU: the uint8 serialisation of the mt19937 CPU
# generator, ``CPUGeneratorImpl::get_state``), stashed by each checkpointed block (utils/checkpoint.py line 1632)
CPU_RNG_STATE_BYTES = 5056
CHUNKS = 8  # torchtune CEWithChunkedOutputLoss(num_output_chunks=8), the default (assumption 12)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _head_trains(cfg: PlanConfig) -> bool:
    return cfg.method is Method.FULL or (cfg.method is Method.FREEZE and "lm_head" in cfg.freeze_modules)


def _block_groups(cfg: PlanConfig, pc: ParamCounts) -> tuple[tuple[int, bool, bool], ...]:
    """(blocks, weights train, input needs a gradient) groups of decoder blocks (assumption 4, activations A10)."""
    L = cfg.model.num_hidden_layers
    method = cfg.method
    if method is Method.FULL:
        return ((L, True, True),)
    if method is Method.FREEZE:
        k = cfg.freeze_last_layers
        if _embed_trains(cfg, pc):
            return ((L - k, False, True), (k, True, True))
        return ((1, True, False), (k - 1, True, True)) if k else ()
    # PEFT freezes the embedding: the first block's input needs a gradient only under checkpointing
    # (enable_input_require_grads) or prompt tuning (trainable virtual tokens)
    first = cfg.grad_checkpointing or method is Method.PROMPT
    return ((1, False, first), (L - 1, False, True))


def _block_grad_bytes(cfg: PlanConfig, pc: ParamCounts, trains: bool, grad_bytes: int) -> int:
    """Gradient bytes one decoder block's backward leaves in ``.grad`` (assumption 5b): its weights where they train,
    else its PEFT adapters (the per-block ones: LoRA, bottleneck adapters, IA3; prefix and prompt tuning train no
    block tensor)."""
    if trains:
        return pc.per_block * grad_bytes
    if cfg.method in (Method.LORA, Method.QLORA, Method.ADAPTER, Method.IA3):
        n, _ = _adapter_params(cfg.model, cfg.method, cfg.lora_r, tuple(cfg.lora_targets), cfg.adapter_size,
                               cfg.num_virtual_tokens)
        return n // cfg.model.num_hidden_layers * grad_bytes
    return 0


def _embed_trains(cfg: PlanConfig, pc: ParamCounts) -> bool:
    if cfg.method is Method.FULL:
        return True
    if cfg.method is not Method.FREEZE:
        return False
    mods = set(cfg.freeze_modules)
    return bool(mods & {"embed_tokens", "wte"}) or ("lm_head" in mods and pc.lm_head == 0)


def _saver_notes(cfg: PlanConfig) -> list[str]:
    """What the memory savers of a training plan change, one note each (assumptions 12-17)."""
    out = []
    loss = cfg.loss
    if loss is Loss.CHUNKED:
        out.append(f"chunked loss (torchtune CEWithChunkedOutputLoss, {CHUNKS} chunks): the logits are kept, the fp32 "
                   "upcast and the loss's backward buffers are one chunk at a time (assumption 12)")
    elif loss is Loss.LIGER:
        out.append("Liger fused linear cross-entropy: no logits; the loss's gradients are computed in the forward, "
                   "one token chunk at a time (assumption 13; modelled from Liger-Kernel's code: it needs Triton, "
                   "not validated on this CPU)")
        if cfg.device is not DeviceMode.CUDA:
            out.append("Liger's kernels are Triton kernels: a CPU cannot run them (planned as on a GPU)")
    elif loss is Loss.TRL_FUSED:
        out.append("TRL fused LM head (trl_head H1-H6): per-token log-probabilities in vocabulary tiles, no logits "
                   "(assumption 14)")
    if cfg.loop is Loop.TRAINER and loss is Loss.HF:
        out.append("transformers Trainer loop: compute_loss returns the loss only, so the logits are freed before "
                   "backward (assumption 19)")
    if cfg.packed:
        out.append("packed sequences: transformers 5 finds the packed rows from position_ids "
                   "(find_packed_sequence_indices) and SDPA gets a block-diagonal mask; RoPE's cos/sin are per row "
                   "(assumption 16)")
    if cfg.qat_group:
        out.append(f"QAT (torchao 0.18 int4 fake quantization, groups of {cfg.qat_group}): each block linear also "
                   "saves its grouped and its dequantized weight and two per-group tensors (assumption 18)")
    if cfg.torch_compile:
        out.append("torch.compile: inductor's min-cut partitioner recomputes cheap ops instead of saving them, so the "
                   "saved tensors differ from eager; not modelled: this is the eager plan (assumption 17)")
    return out


def _qat_saved(cfg: PlanConfig, w: int) -> tuple[int, int]:
    """(bytes a trained block, a frozen block with an input gradient) saves for backward beyond nn.Linear's under
    torchao's QAT fake quantization (assumption 18): per linear of W weights, the grouped ``w / scale + zero_point``
    (fp32: the scales are fp32) and the dequantized weight (``w``'s dtype), and two fp32 per-group tensors; frozen,
    only the dequantized weight the matmul keeps for the input gradient."""
    g = cfg.qat_group
    trained = frozen = 0
    for l in block_linears(cfg.model):
        if l.module:
            W = l.count * l.in_features * l.out_features // cfg.tp
            trained += 4 * W + w * W + 2 * 4 * (W // g)
            frozen += w * W
    return trained, frozen


def keeps_grads(cfg: PlanConfig) -> bool:
    """Gradients are live through the forward (assumption 3): the loop keeps them (``keep_grads``), gradient
    accumulation > 1 carries them across micro-batches, or a ZeRO/FSDP engine keeps its flat gradient buffers."""
    return cfg.keep_grads or cfg.grad_accum > 1 or bool(cfg.zero or cfg.fsdp)


# ---------------------------------------------------------------------------------------------------------
# named cost functions: plan() composes them, each cites its assumption

def _attention(cfg: PlanConfig, notes: list) -> Attention:
    """The attention that runs: a family without an SDPA path in transformers 5 runs eager (families F5)."""
    fam = family(cfg.model)
    if cfg.attn is Attention.SDPA and not fam.sdpa and cfg.library == "transformers":
        notes.append(f"{fam.model_type}: transformers 5 has no SDPA path for attention softcapping: planned with "
                     "eager attention (heads x seq^2 scores)")
        return Attention.EAGER
    return cfg.attn


@model_keyed
def _kbit_linears(m: ModelSpec, precision: Precision, double_quant: bool, group_size: int, load: int,
                  all_linears: bool) -> tuple[int, int, int]:
    """(k-bit data bytes, constant bytes, unquantized weights) of one block's linears in a k-bit format (assumption 1).

    Quantizers take ``nn.Linear`` modules only (``all_linears``: LitGPT quantizes its fused tensors too); the rest
    stays in the load dtype.
    """
    fmt = weight_format(precision, double_quant, group_size)
    quantized = [l for l in block_linears(m) if l.module or all_linears]
    kept = sum(l.count * l.in_features * l.out_features for l in block_linears(m) if not (l.module or all_linears))
    total = sum(l.count * fmt.linear_bytes(l.in_features, l.out_features, load) for l in quantized)
    bits = sum(l.count * -(-(l.in_features * l.out_features * fmt.bits) // 8) for l in quantized)
    return bits, total - bits, kept


def weights(cfg: PlanConfig, pc: ParamCounts, load: int, hp: int, notes: list) -> tuple[int, int]:
    """(stored weights, quantization constants) per GPU before data-parallel sharding (assumption 1; tensor
    parallel divides the block linears, assumption 9). ``hp``: bytes of the modules that stay in high precision."""
    m = cfg.model
    L = pc.layers
    if cfg.precision in _FLOAT_BYTES:
        lin_data, lin_const = pc.block_linear_weights * load, 0
    else:
        lin_bits, lin_const, kept = _kbit_linears(m, cfg.precision, cfg.double_quant, cfg.group_size, load,
                                                  cfg.stack == "litgpt")
        lin_data = lin_bits + kept * hp
        if kept:
            notes.append(f"transformers 5 keeps {m.name}'s router and fused expert tensors (not nn.Linear) in "
                         f"{'fp32' if hp == 4 else cfg.compute_dtype.value}: bitsandbytes and torchao quantize "
                         f"nn.Linear modules only ({L * kept:,} of {pc.total:,} parameters stay unquantized)")
        if cfg.precision is Precision.INT8:
            notes.append("LLM.int8: block linears int8 + fp32 row scales; lm_head, embeddings and norms stay in "
                         f"{'fp32' if hp == 4 else cfg.compute_dtype.value}")
    other = (pc.embedding + pc.lm_head + L * (pc.block_linear_biases + pc.block_norms) + pc.final_norm) * hp
    # buffers (families F3): RoPE inv_freq and original_inv_freq; Gemma-2's embed_scale scalar in the load dtype
    buffers = rope_buffer_bytes(m) + (load if family(m).embed_scale else 0)
    return L * lin_data // cfg.tp + other + buffers, L * lin_const // cfg.tp


@model_cache
def _full_tensors(m: ModelSpec) -> Tensors:
    """Every parameter tensor, in the model's parameter order (embedding, blocks, final norm, lm_head)."""
    outside = outside_tensors(m)
    L = m.num_hidden_layers
    return outside["embed_tokens"] + tuple((s, k * L) for s, k in block_tensors(m)) + outside["norm"] \
        + outside["lm_head"]


def trainable(cfg: PlanConfig, pc: ParamCounts, notes: list) -> tuple[int, Tensors, int]:
    """(trainable parameters, their tensors, PEFT adapter parameters) (assumption 2)."""
    method = cfg.method
    if method is Method.FULL:
        return pc.total, _full_tensors(cfg.model), 0
    if method is Method.FREEZE:
        m = cfg.model
        k = cfg.freeze_last_layers
        n = k * pc.per_block
        tensors = tuple((s, c * k) for s, c in block_tensors(m) if k)
        outside = outside_tensors(m)
        for name in cfg.freeze_modules:
            if name in ("lm_head", "embed_tokens", "wte"):
                head = name == "lm_head" and pc.lm_head
                n += pc.lm_head if head else pc.embedding
                tensors += outside["lm_head"] if head else outside["embed_tokens"]
            elif name in ("norm", "ln_f"):
                n += pc.final_norm
                tensors += outside["norm"]
            else:
                raise SpecError(f"--freeze-modules: unknown module {name!r} (known: lm_head, embed_tokens, norm)")
        notes.append(f"freeze: the last {k} of {pc.layers} blocks train" + (f", plus {', '.join(cfg.freeze_modules)}"
                                                                             if cfg.freeze_modules else ""))
        return n, tensors, 0
    if method in _PEFT:
        n, tensors = _adapter_params(cfg.model, method, cfg.lora_r, tuple(cfg.lora_targets), cfg.adapter_size,
                                     cfg.num_virtual_tokens)
        return n, tensors, n
    return 0, (), 0


def trainable_state(cfg: PlanConfig, n_trainable: int, tensors: Tensors, weight_bytes: int) -> tuple[int, int, int]:
    """(gradients, optimizer states, optimizer-step transient) before sharding (assumptions 2, 3, 8).

    PEFT adapters train in fp32 (assumption 2); trainable base weights in ``weight_bytes``.
    """
    grad_bytes = 4 if cfg.method in _PEFT else weight_bytes
    opt_state, step_tmp = _optimizer_bytes(cfg.optimizer, tensors, grad_bytes, cfg.device is DeviceMode.CPU)
    return n_trainable * grad_bytes, opt_state, step_tmp


# ---------------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO's own buffers (assumption 9a-9h): the rules the emitted DeepSpeed JSON and the plan share

DS_SUB_GROUP = 10**9  # zero_optimization.sub_group_size default (runtime/zero/config.py)
DS_ALIGN = 2  # nccl_start_alignment_factor (stage_1_and_2.py DeepSpeedZeroOptimizer.__init__)


class DSBuffers(namedtuple("DSBuffers", "stage dp lp_bytes master_bytes weights16 padding masters gathered "
                                        "gradients16 buckets optimizer step_transient")):
    """Per-GPU bytes of the tensors a DeepSpeed 0.19.8 ZeRO engine holds for one plan (assumption 9a-9h):
    ``weights16`` (the 16-bit model the engine casts to, plus its fp32 buffers; at stage 3 the 16-bit partitions and
    the persistent parameters), ``padding`` (the flat buffer's alignment padding, 16-bit), ``masters`` (the master
    partition, its own copy in every dtype), ``gathered`` (stage 3: gathered parameters),
    ``gradients16`` (the 16-bit gradient partition), ``buckets`` (the ipg reduce buckets, plus a parameter's own
    gradient where it is larger than one), ``optimizer`` (states on the master partition), ``step_transient``
    (the step's master-dtype gradient and the optimizer's temporaries, above the rest)."""

    __slots__ = ()


def ds_reduce_bucket(m: ModelSpec) -> int:
    """``reduce_bucket_size`` and ``allgather_bucket_size`` in elements: hidden², as transformers' DeepSpeed
    integration fills ``auto`` (``transformers/integrations/deepspeed.py``); the emitted JSON writes this value."""
    return m.hidden_size * m.hidden_size


def ds_persistence_threshold(m: ModelSpec) -> int:
    """``stage3_param_persistence_threshold``: 10·hidden elements (transformers' ``auto``)."""
    return 10 * m.hidden_size


def ds_gathered_bounds(m: ModelSpec) -> tuple[int, int]:
    """(``stage3_max_live_parameters``, ``stage3_prefetch_bucket_size``) in parameters: two decoder blocks and
    one (the plan's gathered term, assumption 9f)."""
    per_block = count_params(m).per_block
    return 2 * per_block, per_block


def ds_master_dtype(cfg: PlanConfig) -> DType:
    """The dtype DeepSpeed keeps master weights, gradients and optimizer states in for this plan (assumption 9b):
    fp32 for AMP and for PEFT adapters (DeepSpeed's default), the weights' dtype for a pure full/freeze plan (the
    emitted ``bf16_master_weights_and_grads`` / ``bf16_optimizer_states``)."""
    if cfg.training_precision is TrainingPrecision.AMP or cfg.method in _PEFT or cfg.precision not in _FLOAT_BYTES:
        return DType.FP32
    return DType(cfg.precision.value)


def _ds_modelled(cfg: PlanConfig) -> bool:
    """Plans whose ZeRO terms follow DeepSpeed's buffers (assumption 9): ZeRO 1-3 without offload, base weights in
    a float format trained in full or frozen in part (PEFT and k-bit plans keep the divided reading: their adapter
    dtype under DeepSpeed's cast is not modelled)."""
    return (cfg.zero >= 1 and not cfg.fsdp and cfg.offload is Offload.NONE and cfg.precision in _FLOAT_BYTES
            and cfg.method in (Method.FULL, Method.FREEZE) and cfg.tp == 1)


def _ds_tensors(cfg: PlanConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(trainable, frozen) parameter sizes in the module's parameter order (the order DeepSpeed flattens them in)."""
    m = cfg.model
    L = m.num_hidden_layers
    outside = outside_tensors(m)

    def size(ts: Tensors) -> list[int]:
        return [_numel(((s, 1),)) for s, k in ts for _ in range(k)]

    block = size(block_tensors(m))
    if cfg.method is Method.FULL:
        return tuple(size(outside["embed_tokens"]) + block * L + size(outside["norm"]) + size(outside["lm_head"])), ()
    k = cfg.freeze_last_layers  # FREEZE: the last k blocks and the named modules train
    mods = set(cfg.freeze_modules)
    emb = size(outside["embed_tokens"])
    head = size(outside["lm_head"]) if outside["lm_head"] else []
    emb_trains = bool(mods & {"embed_tokens", "wte"}) or ("lm_head" in mods and not head)
    train = (emb if emb_trains else []) + block * k + (size(outside["norm"]) if mods & {"norm", "ln_f"} else []) \
        + (head if "lm_head" in mods else [])
    frozen = ([] if emb_trains else emb) + block * (L - k) \
        + ([] if mods & {"norm", "ln_f"} else size(outside["norm"])) + ([] if "lm_head" in mods else head)
    return tuple(train), tuple(frozen)


def _ds_rank_grad_numel(sizes: tuple[int, ...], part: int, dp: int) -> int:
    """The largest, over ranks, count of gradient elements ``copy_grads_in_partition`` (stage_1_and_2.py) keeps:
    every parameter that overlaps the rank's partition [r·part, (r+1)·part) of the flat buffer, whole."""
    if part == 0:
        return 0
    held = [0] * dp
    start = 0
    for n in sizes:
        if n:
            for r in range(start // part, min(dp - 1, (start + n - 1) // part) + 1):
                held[r] += n
        start += n
    return max(held)


def _ds_sub_groups(parts: list[int]) -> list[int]:
    """ZeRO-3's optimizer sub-groups, in elements: partitions in order, a group closed once it reaches
    ``sub_group_size`` (``stage3.py`` ``_create_fp16_sub_groups``; one group when everything fits)."""
    if sum(parts) <= DS_SUB_GROUP:
        return [sum(parts)] if parts else []
    groups, cur = [], 0
    for n in parts:
        cur += n
        if cur >= DS_SUB_GROUP:
            groups.append(cur)
            cur = 0
    return groups + ([cur] if cur else [])


def deepspeed_buffers(cfg: PlanConfig, pc: ParamCounts | None = None, cpu: bool | None = None) -> DSBuffers:
    """Per-GPU bytes of DeepSpeed 0.19.8's ZeRO buffers for ``cfg`` as emitted (assumption 9a-9h). ``cpu``: the
    optimizer runs on a CPU (assumption 8's CPU step), by default where ``cfg.device`` is the CPU; several CPU ranks,
    which a PlanConfig does not describe, pass it."""
    pc = pc or count_params(cfg.model)
    stage, dp = cfg.zero, cfg.dp
    cpu = cfg.device is DeviceMode.CPU if cpu is None else cpu
    lp = _NBYTES[cfg.compute_dtype] if cfg.compute_dtype in (DType.BF16, DType.FP16) else 4
    mb = _NBYTES[ds_master_dtype(cfg)]
    train, frozen = _ds_tensors(cfg)
    B = ds_reduce_bucket(cfg.model)
    buffers = rope_buffer_bytes(cfg.model) + (lp if family(cfg.model).embed_scale else 0)
    largest = max(train, default=0)
    oversized = largest * lp if largest > B else 0  # (9e) its gradient bypasses the bucket until reduced
    if stage in (1, 2):
        N = sum(train)
        align = DS_ALIGN * dp
        P = -(-N // align) * align // dp  # (9c) partition_size
        padding = (P * dp - N) * lp
        weights16 = (N + sum(frozen)) * lp + buffers
        masters = P * mb
        grads16 = _ds_rank_grad_numel(train, P, dp) * lp  # (9d)
        buckets = 2 * B * lp + oversized  # (9e) overlap_comm: two buffers
        opt, tmp = _optimizer_bytes(cfg.optimizer, (((P,), 1),), mb, cpu)  # (9g)
        # (9h) flatten (16-bit) then .to(master dtype) (the same tensor when the dtypes agree), then the optimizer
        # step on the master gradient, all beside the 16-bit gradients
        step = max(P * lp + (P * mb if mb != lp else 0), P * mb + tmp)
        return DSBuffers(stage, dp, lp, mb, weights16, padding, masters, 0, grads16, buckets, opt, step)
    parts = [-(-n // dp) for n in train]
    keep = ds_persistence_threshold(cfg.model)
    S = sum(parts)
    # a persistent parameter (numel <= the threshold) keeps its gathered copy beside its partition (one rank: the same)
    persistent = sum(n for n in train + frozen if n <= keep) if dp > 1 else 0
    weights16 = (S + sum(-(-n // dp) for n in frozen) + persistent) * lp + buffers  # (9f)
    live, _ = ds_gathered_bounds(cfg.model)
    gathered = max(live, max(train + frozen, default=0)) * lp  # (9f) a module gathers whole; the bound stops prefetch
    masters = S * mb  # (9c) a copy even in the 16-bit dtype (the sharing branch compares a device with a str)
    grads16 = S * lp  # (9d) grad_partitions_flat_buffer, kept for the engine's life
    buckets = B * lp + oversized  # (9e) one buffer at stage 3
    groups = _ds_sub_groups(parts)
    sub = max(groups, default=0)
    opt, _ = _optimizer_bytes(cfg.optimizer, tuple(((g,), 1) for g in groups), mb, cpu)
    _, tmp = _optimizer_bytes(cfg.optimizer, (((sub,), 1),), mb, cpu)  # one sub-group steps at a time
    step = max(sub * lp + (sub * mb if mb != lp else 0), sub * mb + tmp)
    return DSBuffers(3, dp, lp, mb, weights16, 0, masters, gathered, grads16, buckets, opt, step)


def sharding(cfg: PlanConfig, pc: ParamCounts, load: int, weights_b: int, quant_constants: int, gradients: int,
             opt_state: int, step_tmp: int, notes: list) -> tuple[int, int, int, int, int, int]:
    """Per-GPU (weights, quant constants, gradients, optimizer, step transient, communication buckets) of a
    training configuration under ZeRO / FSDP / DDP and offload (assumption 9). DeepSpeed plans (9a-9h): weights =
    the 16-bit model (+ padding, master partition, gathered parameters), gradients = the 16-bit gradient partition,
    buckets = the ipg reduce buckets (:func:`deepspeed_buffers`)."""
    if _ds_modelled(cfg):
        ds = deepspeed_buffers(cfg, pc)
        notes.append(f"DeepSpeed ZeRO-{ds.stage} buffers (assumption 9): {ds.lp_bytes * 8}-bit model, "
                     f"{ds_master_dtype(cfg).value} master partition "
                     f"and optimizer states, 16-bit gradient partition, reduce buckets of "
                     f"{ds_reduce_bucket(cfg.model):,} elements")
        return (ds.weights16 + ds.padding + ds.masters + ds.gathered, quant_constants, ds.gradients16, ds.optimizer,
                ds.step_transient, ds.buckets)
    dp = cfg.dp
    zero = cfg.zero if not cfg.fsdp else (3 if cfg.fsdp == "full_shard" else 2)
    ddp_buckets = 0
    if dp > 1:
        if zero >= 1:
            opt_state //= dp
            step_tmp //= dp
        if zero >= 2:
            gradients //= dp
        if zero >= 3:
            weights_b = weights_b // dp + 2 * (pc.per_block * load)  # plus two gathered blocks
            quant_constants //= dp
        if zero == 0:
            ddp_buckets = gradients
            notes.append("data parallel (DDP) keeps gradient buckets the size of the gradients (assumption 9)")
    if cfg.offload is not Offload.NONE:
        opt_state, step_tmp = 0, 0
        notes.append("optimizer states offloaded to CPU memory")
        if cfg.offload is Offload.PARAMS:
            weights_b = 2 * pc.per_block * load
            notes.append("parameters offloaded to CPU: two blocks gathered at a time on the GPU")
    return weights_b, quant_constants, gradients, opt_state, step_tmp, ddp_buckets


def kv_cache(cfg: PlanConfig, batch: int | None = None, seq: int | None = None) -> int:
    """KV cache bytes per GPU (assumptions 7, 9): 2 (K, V) x kv_heads x head_dim x bytes per cached position, with
    each layer's positions capped by its window (families F4, the rule throughput's decode step reads)."""
    m = cfg.model
    per_position = 2 * m.kv_heads * m.head_dim * _NBYTES[cfg.kv_dtype or cfg.compute_dtype]
    # beyond the KV heads, each GPU keeps one (replicated)
    b = cfg.batch if batch is None else batch
    return b * per_position * attended_positions(m, cfg.seq if seq is None else seq) // min(cfg.tp, m.kv_heads)


@model_cache
def _largest_linears(m: ModelSpec) -> tuple[int, int]:
    """(widest output, most weights) over one block's ``nn.Linear`` modules."""
    lins = module_linears(m)
    return (max((l.out_features for l in lins), default=0),
            max((l.in_features * l.out_features for l in lins), default=0))


def prefill_transient(cfg: PlanConfig, attn: Attention, notes: list, batch: int | None = None,
                      seq: int | None = None, scored: int | None = None) -> int:
    """The largest short-lived buffer of an inference forward over ``seq`` tokens (assumption 7): one block's
    transient beside the residual stream, or the logits. ``batch``/``seq`` override the configuration's.
    ``scored``: the forward also computes transformers' loss without autograd (evaluation, assumption 20) over
    logits of that many bytes each: the logits, their fp32 upcast and ``log_softmax``'s fp32 output at once."""
    m = cfg.model
    fam = family(m)
    tp = cfg.tp
    b = cfg.batch if batch is None else batch
    seq = cfg.seq if seq is None else seq
    T = b * seq
    a = _NBYTES[cfg.compute_dtype]
    h, H = m.hidden_size, m.num_attention_heads
    I = m.intermediate_size * (m.num_experts_per_tok if m.is_moe else 1)
    # the residual stream beside a block's transients (whole on every tensor-parallel rank): the model forward's
    # ``inputs_embeds`` (a local), the block input (the caller's loop variable), the residual after attention and
    # the norm output; from the second block on these are four tensors (learned position embeddings, families F3,
    # are one more local)
    stream = (4 if m.num_hidden_layers > 1 else 3) * a * T * h + (a * seq * h if learned_positions(m) else 0)
    # a gated MLP holds act(gate), up and their product; GPT-2's two-linear MLP with gelu_new (``NewGELUActivation``,
    # written in tensor ops: 0.5*x, x**3, ... each a new tensor) holds its input and three temporaries
    mlp = 3 if fam.gated_mlp else 4 if m.hidden_act == "gelu_new" else 2
    layer = mlp * a * T * I // tp + stream
    if m.is_moe:  # transformers 5 grouped_mm experts: the k·T routed token states, the fused gate_up output (2I
        # wide), its activation and the product, all over k·T rows (I here is already k x intermediate)
        k = m.num_experts_per_tok
        layer = (4 * a * T * I + a * k * T * h) // tp + stream
    widest, largest = _largest_linears(m)
    if cfg.precision is Precision.INT8 and cfg.device is DeviceMode.CPU:
        # bitsandbytes 0.50's CPU LLM.int8 (backends/default/ops.py): ``torch._int_mm`` gives an int32 T x out,
        # ``int8_mm_dequant`` multiplies its fp32 copy by the fp32 outer product of the row and column scales:
        # four 4-byte T x out tensors at once, beside act(gate) and the int8 input, at the up projection
        layer = max(layer, (a * T * I + 16 * T * widest + T * h) // tp + stream)
    S = b * H * seq * seq
    qd = H * m.head_dim
    if attn is Attention.EAGER:
        fp32_copy = 4 * S if (a == 2 and not (cfg.compute_dtype.value == "fp16" and cfg.device is DeviceMode.CUDA)) else 0
        att = max(2 * S * a, S * a + fp32_copy + 4 * S, S * a + 4 * S + S * a) if a != 4 else 2 * 4 * S
        mask = attention_masks(m) * b * seq * seq * a  # Gemma-2: also a sliding one (families F4)
        layer = max(layer, (att + 4 * a * T * qd) // tp + mask)
    elif sdpa_math(m, cfg.device is DeviceMode.CUDA, a, cfg.flash_attention, False):
        # activations A3b: GQA without FlashAttention takes the math kernel: fp32 scaled q, repeated k and v,
        # fp32 scores and probabilities
        layer = max(layer, (12 * T * qd + 8 * S) // tp)
        notes.append("SDPA with grouped-query attention falls back to the math kernel here (fp32 inputs or no "
                     "FlashAttention on this GPU): heads x seq^2 fp32 scores are materialized (activations A3b)")
    if cfg.precision not in _FLOAT_BYTES and cfg.precision is not Precision.INT8:
        # a k-bit matmul over more than one token dequantizes the whole weight first (bitsandbytes
        # gemm_4bit; GPTQ/torchao dequantizing kernels): the largest quantized linear, in the compute dtype, is
        # alive during its own matmul only: beside act(gate) and the up projection's output (not beside their
        # product, measured by quantlab validate)
        layer = max(layer, (2 if fam.gated_mlp else 1) * a * T * I // tp + a * largest // tp + stream)
    # a final logit softcap (``logits / cap``, tanh, ``* cap``; families F5) makes a second T x vocab tensor
    if scored is None:
        logits = (2 if fam.final_logit_softcap else 1) * a * T * m.vocab_size + a * T * h
    else:  # assumption 20: ForCausalLMLoss's ``logits.float()`` (a new tensor unless fp32), ``log_softmax``'s fp32
        # output, the labels padded by one (int64 b x (s+1)) and their shifted contiguous copy (int64 T)
        V = m.vocab_size
        logits = ((2 if fam.final_logit_softcap else 1) * scored * T * V + a * T * h
                  + (4 * T * V if scored != 4 else 0) + 4 * T * V + 8 * (T + b * (seq + 1)))
    return max(layer, logits)


def eval_forward(cfg: PlanConfig, attn: Attention, dtypes: tuple | None = None, batch: int | None = None,
                 seq: int | None = None) -> int:
    """The transient of evaluation during training (assumption 20): a no-grad forward over ``batch`` rows
    (``cfg.eval_batch`` unless given) of ``seq`` tokens that computes the HF loss, beside the static tensors."""
    _, r, _, amp, _ = dtypes or _dtypes(cfg)
    b = cfg.eval_batch if batch is None else batch
    s = (cfg.seq if seq is None else seq) + (cfg.num_virtual_tokens if cfg.method is Method.PROMPT else 0)
    return prefill_transient(cfg, attn, [], b, s, scored=_NBYTES[cfg.compute_dtype] if amp else r)


@model_keyed
def _lora_names(m: ModelSpec, targets: tuple[str, ...]) -> frozenset:
    return frozenset(l.name for l in _targets(m, targets))


def _train_terms(cfg: PlanConfig, pc: ParamCounts, attn: Attention, dtypes: tuple, notes: list, batch: int,
                 seq: int) -> tuple[tuple[int, ...], tuple[int, int, int, int]]:
    """The parts of one training step's activation peak (assumptions 3b, 4, 5, 6): ``(A, loss peak, logits kept,
    v_1 .. v_k)`` at (``batch``, ``seq``) — A the saved activations without the autocast weight copies, v_g the
    tensors one block of group g saves; under checkpointing ``(A, loss peak, logits kept, RNG states, loss forward
    beside autocast's cache, w_1 .. w_n)`` instead, w the last block's backward phase above A per block group and
    candidate point (assumptions 5b-5d); without it parts[3] is eager attention's backward in the last block above
    A (5e; 0 where not modelled) and the v_g follow — and the shape-free
    ``(autocast weight copies, tail held through backward, recompute's autocast copies, embedding-gradient tail)``.
    Without tensor parallelism each part of the first tuple is ``g(s) + b·h(s)`` with g, h quadratic in s
    (:func:`_bipoly`); :func:`_compose_train` turns both into the step's figures."""
    tw_bytes, r, a, amp, _ = dtypes
    m = cfg.model
    method = cfg.method
    c = _NBYTES[cfg.compute_dtype]
    kbit = cfg.precision not in _FLOAT_BYTES
    tp = cfg.tp
    prompt = method is Method.PROMPT
    prefix = method is Method.PREFIX
    s_eff = seq + (cfg.num_virtual_tokens if prompt else 0)
    kv_s = s_eff + (cfg.num_virtual_tokens if prefix else 0)
    lora = _lora_names(m, tuple(cfg.lora_targets)) if method in _LORA else _NONE
    x = Act(b=batch, s=s_eff, kv_s=kv_s, r=r, a=a, c=c, amp=amp, eager=attn is Attention.EAGER,
            cuda=cfg.device is DeviceMode.CUDA, flash=cfg.flash_attention, rank=cfg.lora_r if lora else 0,
            lora_dropout=bool(lora) and cfg.lora_dropout > 0,
            kbit_keeps_input=kbit and (cfg.stack == "litgpt" or cfg.precision is Precision.INT8),
            prefix=prefix, padded=cfg.padding_mask, kbit=kbit, tp=tp,
            sdpa_mask=cfg.stack == "transformers==4.57" and attn is Attention.SDPA)  # activations A3d
    T = x.T
    if not x.eager and sdpa_kernel(m, x) == "math":
        notes.append("SDPA with grouped-query attention falls back to the math kernel here (fp32 attention "
                     "inputs or no FlashAttention on this GPU): it keeps heads x seq^2 fp32 probabilities per "
                     "layer (activations A3b); autocast to bf16/fp16 or eager attention avoids the fallback")
    ia3 = method is Method.IA3
    adapter_size = cfg.adapter_size if method is Method.ADAPTER else 0
    per = []
    grad_blocks = blocks = 0
    qat = _qat_saved(cfg, tw_bytes) if cfg.qat_group else (0, 0)  # assumption 18
    ckpt_phase = []  # assumption 5b: (the recomputed block's new tensors + its backward's first transient) per group
    gb = 4 if method in _PEFT else tw_bytes  # a trainable weight's .grad
    for n, trains, ig in _block_groups(cfg, pc):
        if n > 0:
            v = block_saved(m, x, trains, lora, ig, ia3, adapter_size) + (qat[0] if trains else qat[1] if ig else 0)
            per.append((n, trains, ig, v))
            if v:
                grad_blocks += n
                blocks += n * v
            if cfg.grad_checkpointing:
                ckpt_phase.append((v - recompute_reused(m, x, trains, ig),
                                   block_backward_points(m, x, trains, lora, ig, gb, keeps_grads(cfg))))
    freeze = method is Method.FREEZE
    head_trains = method is Method.FULL or (freeze and "lm_head" in cfg.freeze_modules)
    norm_trains = method is Method.FULL or (freeze and bool({"norm", "ln_f"} & set(cfg.freeze_modules)))
    head_grad = grad_blocks > 0 or norm_trains
    outside = outside_blocks(m, x, head_grad=head_grad, norm_trains=norm_trains, head_trains=head_trains,
                             embed_trains=_embed_trains(cfg, pc), head_bytes=c if amp else r,  # lm_head's output
                             prompt_tokens=cfg.num_virtual_tokens if (prompt or prefix) else 0,
                             inputs_grad=(cfg.grad_checkpointing and method in _PEFT) or prompt)
    # assumption 5b: what the final norm, lm_head and a logit softcap save is freed before the last block's backward
    before = outside_blocks(m, x, head_grad=False, norm_trains=False, head_trains=False,
                            embed_trains=_embed_trains(cfg, pc), head_bytes=c if amp else r,
                            prompt_tokens=cfg.num_virtual_tokens if (prompt or prefix) else 0,
                            inputs_grad=(cfg.grad_checkpointing and method in _PEFT) or prompt)
    if cfg.packed and family(m).positional == "rope":  # assumption 16: the caller's (B, S) position ids give RoPE's
        outside += 2 * (batch - 1) * s_eff * m.head_dim * r  # cos and sin one row per sequence, not one broadcast
        before += 2 * (batch - 1) * s_eff * m.head_dim * r
    keep_logits, loss_saved, loss_grads = loss_buffers(cfg, dtypes, batch, seq)
    embed_tail, held = _embedding_grad_tail(cfg, pc, tw_bytes)  # assumption 3b
    loss_peak = keep_logits + loss_saved + loss_grads  # assumptions 6, 12-14
    if cfg.loop is Loop.TRAINER and cfg.loss is Loss.HF:  # assumption 19: the logits are freed before backward
        loss_peak -= keep_logits  # (the loss's forward, logits + upcast + saved, is below its backward)
        keep_logits = 0
    fused = cfg.loss in (Loss.LIGER, Loss.TRL_FUSED)
    if fused:  # assumptions 13, 14: lm_head's matmul (and the logit softcap) never run as modules
        if head_trains:
            outside -= (c if amp else r) * T * m.hidden_size
        if family(m).final_logit_softcap and (head_grad or head_trains):
            outside -= (c if amp else r) * T * m.vocab_size
    amp_casts = recompute_amp = 0
    if amp:
        amp_casts = c * m.vocab_size * m.hidden_size if (head_grad or head_trains) and cfg.loss is not Loss.TRL_FUSED \
            else 0
        if not cfg.grad_checkpointing:
            amp_casts += sum(n * amp_weight_casts(m, x, trains, lora, ig) // tp for n, trains, ig, v in per if v)
    if cfg.grad_checkpointing:  # assumption 5
        ckpt = grad_blocks * r * T * m.hidden_size  # block inputs: the residual stream, whole on every rank
        if x.eager and grad_blocks:  # the causal mask (Gemma-2: also the sliding-window one), a block input
            ckpt += attention_masks(m) * batch * s_eff * kv_s * r
        elif (x.sdpa_mask or x.padded or cfg.packed) and grad_blocks and not prefix:  # SDPA's bool mask (A3d; 16)
            ckpt += attention_masks(m) * batch * s_eff * kv_s
        if grad_blocks and family(m).positional == "rope":  # int64 position ids, a keyword of every block
            ckpt += 8 * s_eff
        activations = ckpt + outside
        recompute_amp = max((amp_weight_casts(m, x, trains, lora, True) // tp for _, trains, _, v in per if v),
                            default=0) if amp else 0
        notes.append("gradient checkpointing: one input per block kept, one block recomputed at a time, its "
                     "backward beside it (assumption 5)")
        tail = max(0, outside - before)  # 5b: freed by the time the last block's backward runs
        # 5b: the gradients made before the last block's backward (lm_head's, the final norm's) where the step
        # started without gradients (Trainer's zeroing, grad accum 1); a tied lm_head's is ``held`` (3b)
        dyn = not keeps_grads(cfg) and not cfg.optimizer_in_backward
        pre_grads = 0
        if dyn:
            pre_grads = (pc.lm_head * gb if head_trains and not m.tie_word_embeddings else 0) \
                + (pc.final_norm * gb if norm_trains else 0)
        # 5c: torch's checkpoint stashes the CPU generator's state per checkpointed block (preserve_rng_state): a
        # CPU tensor, so on a GPU no device bytes; a block's state goes with its frame after its backward
        rng_b = CPU_RNG_STATE_BYTES if cfg.device is DeviceMode.CPU else 0
        rng = rng_b * grad_blocks
        # 5b: blocks run backward last to first; once a block is done its input and RNG state are freed and, where
        # the step started without gradients, its weights' gradients are live: the phase is linear in the blocks
        # done, so each group's candidates are its last block and its first
        ws = []
        after = 0  # (gradients made) - (inputs and states freed) by the blocks after the group
        for (n, trains, ig, v), (new, points) in reversed(list(zip(per, ckpt_phase))):
            if not v:
                ws.append(0)
                continue
            d = (_block_grad_bytes(cfg, pc, trains, gb) if dyn else 0) - r * T * m.hidden_size - rng_b
            for p in points:
                last = new + p - tail + pre_grads + after
                ws += [last, last + (n - 1) * d] if n > 1 else [last]
            after += n * d
        ws = tuple(ws)
        # 5d: autocast's cache keeps every block's trainable weight casts through the loss's forward
        cache = sum(n * amp_weight_cache(m, x, trains, lora) for n, trains, _, v in per) if amp else 0
        loss_fwd = 0
        if cache:
            if cfg.loss is Loss.HF:  # (6, 19) the logits, their fp32 upcast, the loss's saved tensors and the
                # padded labels (``nn.functional.pad``, int64 b x (s+1)) at nll_loss's forward, and its output
                out_b = c if amp else r
                logits = out_b * T * m.vocab_size
                loss_fwd = logits + (4 * T * m.vocab_size if out_b != 4 else 0) + loss_saved \
                    + 8 * batch * (s_eff + 1) + 4
            else:  # (12-14) not traced: the loss's whole peak beside the cache, an upper bound
                loss_fwd = keep_logits + loss_saved + loss_grads
            loss_fwd += cache
        return ((activations, loss_peak, keep_logits, rng, loss_fwd) + ws,
                (amp_casts, held, recompute_amp, embed_tail))
    else:
        activations = blocks + outside
    # 5e: without checkpointing, eager attention's softmax backward in the last block, every block's saved tensors
    # live but the head's (freed) and the last block's MLP's (activations A14d); 0 where not modelled (SDPA)
    attn_bwd = 0
    if per and not cfg.grad_checkpointing:
        n, trains, ig, v = per[-1]
        dyn = not keeps_grads(cfg) and not cfg.optimizer_in_backward
        pt = attention_backward_point(m, x, trains, lora, ig, gb, not dyn) if v else None
        if pt is not None:
            pre = (pc.lm_head * gb if head_trains and not m.tie_word_embeddings else 0) \
                + (pc.final_norm * gb if norm_trains else 0) if dyn else 0
            attn_bwd = pt - (outside - before) + pre
    return ((activations, loss_peak, keep_logits, attn_bwd) + tuple(v for _, _, _, v in per),
            (amp_casts, held, recompute_amp, embed_tail))


def _compose_train(parts: tuple, consts: tuple, ckpt: bool) -> tuple[int, int, int, int, int]:
    """(activations, logits and loss, forward+backward peak, logits kept, embedding-gradient tail) from
    :func:`_train_terms`' parts: under checkpointing (assumption 5) the loss peak or one block's recompute beside
    the kept inputs, else the loss peak beside every block's saved tensors (assumption 6)."""
    activations, loss_peak, keep_logits = parts[0], parts[1], parts[2]
    amp_casts, held, recompute_amp, embed_tail = consts
    rng = 0
    if ckpt:  # parts[3]: the stashed RNG states (5c), parts[4]: the loss's forward beside autocast's cache (5d),
        # parts[5:]: the last block's backward, per block group and candidate point (5b)
        rng = parts[3]
        recompute = max(parts[5:], default=0)
        fwd_bwd = activations + rng + max(loss_peak + amp_casts, parts[4] + amp_casts,
                                          keep_logits + held + recompute + recompute_amp)
    else:  # parts[3]: eager attention's backward in the last block (assumption 5e), parts[4:] the blocks' saves
        fwd_bwd = activations + amp_casts + max(loss_peak, keep_logits + held, keep_logits + held + parts[3])
    return activations + amp_casts, fwd_bwd - activations - amp_casts - rng, fwd_bwd, keep_logits, embed_tail


def training_activations(cfg: PlanConfig, pc: ParamCounts, attn: Attention, dtypes: tuple,
                         notes: list) -> tuple[int, int, int, int, int]:
    """(activations, logits and loss, forward+backward peak, logits kept, embedding-gradient tail) of one training
    step (assumptions 3b, 4, 5, 6; per-block saved tensors: :mod:`quantlab.planner.activations`). ``dtypes``:
    :func:`_dtypes`. Summed op by op at the configuration's batch and sequence: the oracle of the closed form
    :func:`plan` evaluates."""
    parts, consts = _train_terms(cfg, pc, attn, dtypes, notes, cfg.batch, cfg.seq)
    return _compose_train(parts, consts, cfg.grad_checkpointing)


# ---------------------------------------------------------------------------------------------------------
# plan(): the shape-free part once per configuration without its batch and sequence, then the shape


def _bipoly(f) -> tuple | None:
    """Coefficients of every component of a vector function ``f(b, s) = g(s) + b·h(s)``, g and h quadratic in s,
    in Newton form on s = 1, 2, 3 (integer-exact: ``(s-1)(s-2)/2`` is an integer), from six points; None unless
    the form reproduces ``f`` at three check points (one past 4,096 and one past 32,768 tokens, where windows of
    that size would break it)."""
    f1 = (f(1, 1), f(1, 2), f(1, 3))
    f2 = (f(2, 1), f(2, 2), f(2, 3))
    coefs = []
    for i in range(len(f1[0])):
        h = [f2[j][i] - f1[j][i] for j in range(3)]
        g = [f1[j][i] - h[j] for j in range(3)]
        coefs.append((g[0], g[1] - g[0], g[2] - 2 * g[1] + g[0], h[0], h[1] - h[0], h[2] - 2 * h[1] + h[0]))
    coefs = tuple(coefs)
    for b, s in ((3, 7), (5, 4099), (2, 40_000)):
        if _bipoly_at(coefs, b, s) != f(b, s):
            return None
    return coefs


def _bipoly_at(coefs: tuple, b: int, s: int) -> tuple[int, ...]:
    t1 = s - 1
    t2 = t1 * (s - 2) // 2
    return tuple(g0 + t1 * g1 + t2 * g2 + b * (h0 + t1 * h1 + t2 * h2) for g0, g1, g2, h0, h1, h2 in coefs)


class _Static(namedtuple("_Static", "cfg training pc params active attn dtypes trainable head static paged_state "
                                   "opt_step ddp_buckets notes_pre notes_post poly consts context_len notes grads_dyn embed_grad")):
    """What a plan does not owe to its batch and sequence: ``cfg`` (the configuration it was built from; its batch
    and sequence are not used), ``training``, ``pc`` (ParamCounts), ``params``, ``active``, ``attn`` (the attention
    that runs), ``dtypes`` (:func:`_dtypes`), ``trainable``, ``head`` ((name, bytes) of the static components, in
    the plan's order), ``static`` (their bytes held in allocated memory), ``paged_state``, ``opt_step``,
    ``ddp_buckets``, the notes before (``notes_pre``) and after (``notes_post``) the sequence warning and both
    (``notes``), ``poly`` (:func:`_bipoly` coefficients of :func:`_train_terms`, or None where it is evaluated
    directly: tensor parallelism's integer division), ``consts`` (its shape-free terms) and ``context_len`` (the
    model's context: beyond it a plan warns), ``grads_dyn`` (gradient bytes that are not live through the forward,
    assumption 3: part of the dynamic peak, not of ``static``) and ``embed_grad`` (a trainable embedding's one V·h
    gradient, 3b)."""

    __slots__ = ()


_KEY_FIELDS = tuple(f.name for f in dataclasses.fields(PlanConfig) if f.name not in ("model", "batch", "seq"))
_shape_free_key = operator.attrgetter(*_KEY_FIELDS)
_static_tables = model_cache(lambda m: {})


def _static(cfg: PlanConfig, key: tuple | None = None) -> _Static:
    """The shape-free part of ``cfg``'s plan, cached per model and the configuration's other fields (a sweep over
    batch and sequence builds it once). ``key``: ``_shape_free_key(cfg)`` where the caller has it already (the
    key hashes every field, enums at Python speed: :func:`plan` makes it once for this and the allocator)."""
    table = _static_tables(cfg.model)
    if key is None:
        key = _shape_free_key(cfg)
    st = table.get(key)
    if st is None:
        st = _build_static(cfg)
        if len(table) >= 4096:
            table.clear()
        table[key] = st
    return st


def _build_static(cfg: PlanConfig) -> _Static:
    """The cost functions that do not depend on the batch and sequence, in the order their notes read."""
    m = cfg.model
    pc = count_params(m)
    notes: list[str] = []
    method = cfg.method
    training = method is not Method.INFERENCE
    dtypes = _dtypes(cfg)
    load, r, a, amp, upcast = dtypes
    if amp and cfg.precision is not Precision.FP32:
        notes.append("AMP keeps fp32 master weights: weights counted in fp32 (assumption 1)")
    if amp and cfg.precision not in _FLOAT_BYTES:
        notes.append("k-bit training under autocast: the k-bit linears return their input's dtype (fp32 after "
                     "PEFT's upcast); autocast casts attention inputs and adapter inputs (assumption 4)")
    hp = 4 if upcast else load  # bytes of the modules that stay in high precision
    if upcast:
        notes.append("k-bit training: PEFT prepare_model_for_kbit_training upcasts embeddings, norms and lm_head "
                     "to fp32 (assumption 1)")
        if not cfg.grad_checkpointing:
            notes.append("prepare_model_for_kbit_training turns gradient checkpointing on unless told not to "
                         "(use_gradient_checkpointing=True): this plan has it off; --grad-checkpointing plans the "
                         "default recipe")
    if training:
        notes += _saver_notes(cfg)
    if cfg.device is DeviceMode.CUDA:
        notes.append("allocator: expandable_segments:True, one growing segment per pool (allocator 10h)"
                     if cfg.expandable_segments else
                     "allocator: PyTorch's default caching allocator, expandable_segments off (allocator 10a-10g; "
                     "--expandable-segments plans PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)")
    pre = tuple(notes)
    notes = []  # (the sequence warning goes between, per shape)
    attn = _attention(cfg, notes)
    weights_b, quant_constants = weights(cfg, pc, load, hp, notes)  # assumption 1
    n_trainable, tensors, adapter_n = trainable(cfg, pc, notes)  # assumption 2
    adapters = adapter_n * 4
    head = [("weights", weights_b)]
    opt_step = ddp_buckets = paged_state = grads_dyn = embed_grad = 0
    poly = consts = None
    if not training:  # assumption 7
        if quant_constants:
            head.append(("quant_constants", quant_constants))
        if adapters:
            head.append(("adapters", adapters))
        static = weights_b + quant_constants + adapters
        prefill_transient(cfg, attn, notes, 1, 1)  # (its notes do not depend on the shape)
    else:
        gradients, opt_state, step_tmp = trainable_state(cfg, n_trainable, tensors, load)  # assumptions 3, 8
        weights_b, quant_constants, gradients, opt_state, opt_step, ddp_buckets = sharding(
            cfg, pc, load, weights_b, quant_constants, gradients, opt_state, step_tmp, notes)  # assumption 9
        head = [("weights", weights_b)]
        if quant_constants:
            head.append(("quant_constants", quant_constants))
        if adapters:
            head.append(("adapters", adapters))
        grads_dyn = 0 if keeps_grads(cfg) else gradients  # assumption 3
        if cfg.optimizer_in_backward and tensors:  # assumption 15: one gradient and its step at a time
            big = max(tensors, key=lambda t: _numel(((t[0], 1),)))[0]
            gb = 4 if method in _PEFT else load
            one_grad = _numel(((big, 1),)) * gb
            one_step = _optimizer_bytes(cfg.optimizer, ((big, 1),), gb, cfg.device is DeviceMode.CPU)[1]
            gradients, opt_step, grads_dyn = 0, 0, one_grad + one_step
            notes.append("optimizer in backward: each parameter steps in its post-accumulate-grad hook and its "
                         f"gradient is freed; at most one gradient ({one_grad:,} B) and its step are live "
                         "(assumption 15)")
        elif grads_dyn:
            notes.append("gradients freed by zero_grad(set_to_none=True) (Trainer's zeroing): the forward runs without "
                         "them; --keep-grads plans a loop that keeps them (assumption 3)")
        elif not cfg.keep_grads:
            notes.append("gradients live through the forward: " + ("gradient accumulation keeps them through the "
                         "later micro-batches" if cfg.grad_accum > 1 else "ZeRO/FSDP keep flat gradient buffers")
                         + " (assumption 3)")
        head += [("gradients", gradients), ("optimizer", opt_state)]
        # paged states live in CUDA unified memory; on a CPU bitsandbytes' paged optimizers hold ordinary tensors
        paged = cfg.optimizer in _PAGED and cfg.device is DeviceMode.CUDA
        _, consts = _train_terms(cfg, pc, attn, dtypes, notes, 1, 1)  # assumptions 3b, 4, 5, 6 (notes shape-free)
        if cfg.tp == 1:
            poly = _bipoly(lambda b, s: _train_terms(cfg, pc, attn, dtypes, [], b, s)[0])
        if _embed_trains(cfg, pc):
            embed_grad = cfg.model.vocab_size * cfg.model.hidden_size * (4 if method in _PEFT else load)
        static = weights_b + quant_constants + adapters + (0 if grads_dyn else gradients) + ddp_buckets \
            + (0 if paged else opt_state)
        paged_state = opt_state if paged else 0
        if paged:
            notes.append("paged optimizer states live in CUDA unified memory: counted in the process total, "
                         "not in PyTorch's allocated/reserved (assumption 8)")
    if poly is not None and not cfg.grad_checkpointing:
        poly = poly[:4]  # (the per-block recompute terms matter under checkpointing only)
    return _Static(cfg=cfg, training=training, pc=pc, params=pc.total, active=pc.active, attn=attn, dtypes=dtypes,
                   trainable=n_trainable if training else 0, head=tuple(head), static=static, paged_state=paged_state,
                   opt_step=opt_step, ddp_buckets=ddp_buckets, notes_pre=pre, notes_post=tuple(notes), poly=poly,
                   consts=consts, context_len=m.max_position_embeddings,
                   notes=pre + tuple(notes), grads_dyn=grads_dyn, embed_grad=embed_grad)


def _shaped(st: _Static, cfg: PlanConfig, b: int, s: int) -> tuple[dict, int, int, int]:
    """(components, dynamic peak, allocated, dynamic peak the allocator plans) of ``st``'s configuration at batch
    ``b`` and sequence ``s``: the last is the dynamic peak with the gradients counted static (assumption 3: freed
    gradient blocks stay cached; the allocator plans above them), the dynamic peak itself where they are static.
    With evaluation during training (assumption 20) each is the larger of the training step's and the
    evaluation forward's (``eval_forward``, beside the static tensors only)."""
    if cfg.eval_batch is None:
        return _shaped_step(st, cfg, b, s)
    comps, dynamic, allocated, planned = _shaped_step(st, cfg, b, s)
    ev = eval_forward(cfg, st.attn, st.dtypes, cfg.eval_batch, s)
    comps["eval_forward"] = ev
    if ev > dynamic:
        dynamic = ev
        allocated = st.static + ev
    return comps, dynamic, allocated, max(planned, ev)


def _shaped_step(st: _Static, cfg: PlanConfig, b: int, s: int) -> tuple[dict, int, int, int]:
    """:func:`_shaped` of the training step (or the inference forward) alone."""
    comps = dict(st.head)
    if not st.training:  # assumption 7
        kv = kv_cache(cfg, b, s)
        transient = prefill_transient(cfg, st.attn, [], b, s)
        comps["kv_cache"] = kv
        comps["prefill_transient"] = transient
        dynamic = kv + transient
    else:
        poly = st.poly
        if poly is not None:  # _bipoly_at, inlined: this is the hot path of every sweep and search
            t1 = s - 1
            t2 = t1 * (s - 2) // 2
            parts = [g0 + t1 * g1 + t2 * g2 + b * (h0 + t1 * h1 + t2 * h2) for g0, g1, g2, h0, h1, h2 in poly]
        else:
            parts = _train_terms(cfg, st.pc, st.attn, st.dtypes, [], b, s)[0]
        activations, logits_loss, fwd_bwd, keep_logits, embed_tail = _compose_train(
            parts, st.consts, cfg.grad_checkpointing)  # assumptions 3b, 4, 5, 6
        comps["activations"] = activations
        comps["logits_loss"] = logits_loss
        if st.ddp_buckets:
            comps["ddp_buckets"] = st.ddp_buckets
        comps["optimizer_step"] = st.grads_dyn if cfg.optimizer_in_backward else st.opt_step
        kept = max(fwd_bwd, st.opt_step, keep_logits + embed_tail)
        G = st.grads_dyn
        if G and cfg.optimizer_in_backward:  # assumption 15: the in-flight gradient is the embedding's sum at the end
            dynamic = max(fwd_bwd, keep_logits + max(embed_tail, G))
            if embed_tail:
                comps["embedding_grad_tail"] = embed_tail
            return comps, dynamic, st.static + dynamic, kept
        if G:  # assumption 3: forward without gradients; end of backward and the step with them
            embed_tail -= st.embed_grad  # (.grad is None: AccumulateGrad takes the embedding's gradient as it is)
            dynamic = max(fwd_bwd, G + st.opt_step, G + keep_logits + embed_tail)
            if embed_tail:
                comps["embedding_grad_tail"] = embed_tail
            return comps, dynamic, st.static + dynamic, kept
        if embed_tail:
            comps["embedding_grad_tail"] = embed_tail
        dynamic = kept
    return comps, dynamic, st.static + dynamic, dynamic


def _seq_notes(cfg: PlanConfig, seq: int) -> tuple:
    m = cfg.model
    if seq > m.max_position_embeddings:
        return (f"warning: seq {seq} is beyond the model's context ({m.max_position_embeddings} tokens)",)
    return ()


def _plan_from(st: _Static, cfg: PlanConfig, key: tuple | None = None) -> Plan:
    """The plan of ``cfg`` from its shape-free part ``st``: the shaped terms, then the allocator (assumption 10);
    ``key`` as :func:`_static` takes it."""
    comps, dynamic, allocated, planned = _shaped(st, cfg, cfg.batch, cfg.seq)
    reserve, context = allocator(cfg, planned, comps, key=key, owner=st)
    if cfg.device is DeviceMode.CUDA:  # freed gradient blocks stay cached (assumption 3)
        reserve += st.static + st.grads_dyn + planned - allocated
    comps["cuda_context"] = context
    comps["allocator_reserve"] = reserve
    reserved = allocated + reserve
    seq = cfg.seq
    notes = st.notes if seq <= st.context_len else st.notes_pre + _seq_notes(cfg, seq) + st.notes_post
    if cfg.eval_batch is not None:
        notes += (_eval_note(cfg, comps["eval_forward"], allocated - st.static),)
    return Plan(cfg, st.params, st.active, st.trainable, comps, allocated, reserved,
                reserved + context + st.paged_state, notes)


def _eval_note(cfg: PlanConfig, ev: int, dynamic: int) -> str:
    """Which phase is the peak (assumption 20)."""
    which = ("the evaluation forward is the peak" if ev >= dynamic and ev > 0 else "the training step is the peak")
    return (f"evaluation during training: a no-grad forward over {cfg.eval_batch} rows (per_device_eval_batch_size)"
            f" beside the weights and optimizer states: {which} (assumption 20)")


def plan(cfg: PlanConfig) -> Plan:
    """Plan one configuration (pure arithmetic; no I/O): the cost functions above, in the order their notes read.

    The batch- and sequence-free part (:func:`_build_static`) is built once per configuration without them; the
    shape-dependent terms are then closed forms (:func:`_bipoly`) checked against the op-by-op sum
    (:func:`plan_direct` is that sum, the tests' oracle)."""
    return _plan_from(_static(cfg), cfg)


def process_bytes_at(cfg: PlanConfig, batch: int | None = None, seq: int | None = None) -> int:
    """``plan(cfg with batch, seq).process_bytes`` without building the configuration or the plan (fit's searches).
    Batch and sequence must be positive: the only checks PlanConfig makes on them."""
    b = cfg.batch if batch is None else batch
    s = cfg.seq if seq is None else seq
    if b <= 0 or s <= 0:
        raise SpecError(f"batch and seq must be positive integers, got {b}, {s}")
    st = _static(cfg)
    comps, dynamic, allocated, planned = _shaped(st, cfg, b, s)
    reserve, context = allocator(cfg, planned, comps)
    if cfg.device is DeviceMode.CUDA:  # freed gradient blocks stay cached (assumption 3)
        allocated = st.static + st.grads_dyn + planned
    return allocated + reserve + context + st.paged_state


def plan_direct(cfg: PlanConfig) -> Plan:
    """The same plan summed op by op at the configuration's shape, with nothing cached per configuration: the
    oracle of :func:`plan` in the tests."""
    return _plan_from(_build_static(cfg)._replace(poly=None), cfg)


def _clear_static() -> None:
    from quantlab.planner import allocator as _allocator

    _static_tables.cache_clear()
    _allocator._kept_by_owner.clear()  # (keyed by the shape-free parts just dropped)


plan.cache_clear = _clear_static  # type: ignore[attr-defined]  (benchmarks clear it for cold figures)


def replace(cfg: PlanConfig, **changes) -> PlanConfig:
    return dataclasses.replace(cfg, **changes)
