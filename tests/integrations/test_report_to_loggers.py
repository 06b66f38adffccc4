"""PlanCheckCallback's scalars reach a real ``report_to`` logger: transformers' TensorBoardCallback writes them to an
event file, read back here with TensorBoard's own reader (callback assumption 2)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from integ_fixtures import lora_model, token_dataset, trainer_args  # noqa: E402


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for ev_dir in {p.parent for p in logdir.rglob("events.out.tfevents.*")}:
        acc = EventAccumulator(str(ev_dir), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


def test_tensorboard_event_file_holds_planned_and_measured_per_component(tmp_path, monkeypatch):
    from transformers import Trainer

    from quantlab.integrations.transformers import PlanCheckCallback

    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))  # transformers 5 reads it there (no logging_dir)
    cb = PlanCheckCallback(print_fn=lambda s: None)
    args = trainer_args(tmp_path, report_to="tensorboard", max_steps=3)
    Trainer(model=lora_model(), args=args, train_dataset=token_dataset(), callbacks=[cb]).train()
    assert cb.check is not None

    got = _scalars(logdir)
    rows = {r.component: r for r in cb.check.rows}
    # transformers' TensorBoardCallback logs train/<key> for every logs key
    for comp in ("weights", "gradients", "optimizer", "activations"):
        tag = f"train/quantlab/{comp}_measured_mib"
        assert tag in got, sorted(got)
        (step, value), = got[tag]  # logged once, at the measured step
        assert step == cb.step
        assert value == pytest.approx(rows[comp].measured_bytes / 2**20, rel=1e-6)
        (_, planned), = got[f"train/quantlab/{comp}_planned_mib"]
        assert planned == pytest.approx(rows[comp].planned_bytes / 2**20, rel=1e-6)
    # the loss is still logged beside them: the callback adds to the logs, it does not replace them
    assert "train/loss" in got


def _wandb_history(path):
    """The history rows of an offline W&B run file. wandb 0.31 reads its files in its Go core and ships no Python
    reader, so this reads the format directly: a 7-byte header (``:W&B``, magic, version), then LevelDB's log
    format (32 KiB blocks; records of crc32 (4), length (2, little-endian), type (1: full, 2: first, 3: middle,
    4: last)) holding ``wandb_internal_pb2.Record`` messages."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            if r.WhichOneof("record_type") == "history":
                out.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return out


def test_wandb_offline_run_file_holds_the_scalars(tmp_path, monkeypatch):
    """W&B in offline mode (no network): transformers' WandbCallback gets the same logs and writes them to the
    offline run file, read back here record by record."""
    pytest.importorskip("wandb")
    from transformers import Trainer

    from quantlab.integrations.transformers import PlanCheckCallback

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "quantlab-test")
    cb = PlanCheckCallback(print_fn=lambda s: None)
    args = trainer_args(tmp_path, report_to="wandb", max_steps=3)
    Trainer(model=lora_model(), args=args, train_dataset=token_dataset(), callbacks=[cb]).train()
    import wandb

    wandb.finish()
    files = list(tmp_path.rglob("run-*.wandb"))
    assert len(files) == 1, files
    rows = {r.component: r for r in cb.check.rows}
    hist = [h for h in _wandb_history(files[0]) if "train/quantlab/weights_measured_mib" in h]
    assert len(hist) == 1  # one log event, at the measured step
    for comp in ("weights", "gradients", "optimizer", "activations"):
        assert hist[0][f"train/quantlab/{comp}_measured_mib"] == pytest.approx(rows[comp].measured_bytes / 2**20)
        assert hist[0][f"train/quantlab/{comp}_planned_mib"] == pytest.approx(rows[comp].planned_bytes / 2**20)
    assert hist[0]["train/global_step"] == cb.step


def test_mlflow_file_store_holds_the_scalars(tmp_path, monkeypatch):
    """MLflow (mlflow-skinny) with a local file store: transformers' MLflowCallback logs the same keys as metrics ('/' kept),
    read back with MLflow's own client."""
    pytest.importorskip("mlflow")
    from transformers import Trainer

    from quantlab.integrations.transformers import PlanCheckCallback

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this opt-in
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "quantlab-test")
    cb = PlanCheckCallback(print_fn=lambda s: None)
    args = trainer_args(tmp_path, report_to="mlflow", max_steps=3)
    Trainer(model=lora_model(), args=args, train_dataset=token_dataset(), callbacks=[cb]).train()
    import mlflow

    mlflow.end_run()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("quantlab-test")
    (run,) = client.search_runs([exp.experiment_id])
    rows = {r.component: r for r in cb.check.rows}
    for comp in ("weights", "activations"):
        hist = client.get_metric_history(run.info.run_id, f"quantlab/{comp}_measured_mib")
        assert [(m.step, m.value) for m in hist] == [(cb.step, pytest.approx(rows[comp].measured_bytes / 2**20))]
