"""Run the README example (examples/sft_plan_check.py) and keep its check as JSON beside its printed output.

    PYTHONPATH=$PWD python reports/integrations-cpu/run.py > reports/integrations-cpu/output.txt 2>/dev/null
"""
import dataclasses
import json
import runpy
from pathlib import Path

from quantlab.fileio import atomic_write_text

g = runpy.run_path("examples/sft_plan_check.py")
c = g["check"].check
doc = {"plan": c.derived.config.to_dict() if c.derived.config else None, "underived": list(c.derived.underived),
       "measurement": dataclasses.asdict(c.measurement), "rows": [dataclasses.asdict(r) for r in c.rows],
       "ok": c.ok, "device": "cpu (2 cores, shared), torch 2.13.0+cpu, transformers 5.24.0, peft 0.21.2, trl 1.16.0"}
atomic_write_text(Path(__file__).with_name("check.json"), json.dumps(doc, indent=2, default=str) + "\n")
