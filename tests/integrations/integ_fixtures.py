"""Helpers for the integration tests: tiny random models, token data sets, TrainingArguments, injected CUDA."""

import torch


def lora_model(r=4, targets=("q_proj", "v_proj"), **cfg):
    from peft import LoraConfig, get_peft_model

    from quantlab.lab.model import tiny_model

    return get_peft_model(tiny_model("llama", **cfg), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                                 task_type="CAUSAL_LM"))


def token_dataset(n=16, seq=32, vocab=256, seed=0):
    import datasets

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})


def trainer_args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, report_to="none",
                logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


class FakeCuda:
    """CUDA readings for a CPU test: fixed peaks, counted resets."""

    def __init__(self, allocated=5 * 2**20, reserved=6 * 2**20, process=7 * 2**20):
        self.a, self.r, self.p, self.resets = allocated, reserved, process, 0

    def synchronize(self):
        pass

    def max_memory_allocated(self):
        return self.a

    def max_memory_reserved(self):
        return self.r

    def reset_peak_memory_stats(self):
        self.resets += 1

    def process_bytes(self):
        return self.p
