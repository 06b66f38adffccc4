"""quantlab's instrument in users' own jobs: :class:`~quantlab.integrations.transformers.PlanCheckCallback` for
transformers' Trainer and TRL's trainers, :func:`~quantlab.integrations.track.track` for plain PyTorch and
accelerate loops (``quantlab.track``). Both derive the plan from the live job
(:mod:`quantlab.integrations.derive`) and set it beside the lab's measurement (:mod:`quantlab.lab.measure`) with
validate's comparison (:mod:`quantlab.integrations.report`). Nothing is imported here: the modules are light
until used."""
