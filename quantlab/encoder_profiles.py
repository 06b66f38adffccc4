"""Encoder model profiles: ``profiles/encoders/*.yaml``, the same format as ``profiles/models/`` (``name``,
``aliases``, ``hf_id``, ``source``, ``notes``, ``config`` with config.json field names).

They live in their own folder because every profile under ``profiles/models/`` is a decoder the LLM planner and
its tests build (``AutoModelForCausalLM``, ``quantlab.families.FAMILIES``); an encoder there would fail them. The
YAML is read by :mod:`quantlab.profiles` (its reader, index and unknown-name rule), only the folder differs.
"""

from __future__ import annotations

from quantlab.errors import QuantlabError

KIND = "encoders"


def list_encoders() -> list[str]:
    from quantlab import profiles

    return sorted(profiles._read(str(p))["name"] for p in profiles._files(KIND))


def encoder_doc(name: str) -> dict:
    """The profile document of ``name`` (a name, alias or Hugging Face id)."""
    import os

    from quantlab import profiles

    hit = profiles._index(KIND).get(name.strip().lower())
    if hit is None:
        raise QuantlabError(f"unknown encoder {name!r}: known: {', '.join(list_encoders())}")
    return profiles._read(os.path.join(str(profiles.profiles_dir()), KIND, hit[0] + ".yaml"))


def load_encoder(name: str):
    """An :class:`~quantlab.planner.encoder.EncoderSpec` from a profile."""
    from quantlab.planner.encoder import EncoderSpec

    doc = encoder_doc(name)
    try:
        return EncoderSpec.from_config(doc["config"], name=doc["name"])
    except (ValueError, KeyError, TypeError) as e:
        raise QuantlabError(f"encoder profile {doc['name']}: {e}") from None
