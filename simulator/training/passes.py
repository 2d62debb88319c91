"""One micro-batch's forward and backward passes of a training step, simulated once per process
for every step that shares them (steps that differ only in pipeline schedule or recompute)."""
from __future__ import annotations

from collections import OrderedDict

from simulator.notes import collecting, note
from simulator.schema import HardwareProfile, ModelSpec, TrainingSpec, Workload
from simulator.step.whatif import resolve, simulate

PASSES_KEPT = 8       # a process's last passes, for steps that differ only in pipeline/recompute
KEPT_PASSES: OrderedDict = OrderedDict()


def micro_batch_passes(w: Workload, model: ModelSpec, prof: HardwareProfile,
                       sim_prof: HardwareProfile) -> dict:
    """One micro-batch's forward and backward passes on a rank, simulated on `sim_prof`;
    memoised per process by all that sets them (the passes' workload less its name, the model
    and profile objects, held while kept), their notes given again on a repeat."""
    grads = TrainingSpec(global_batch_sequences=1, grad_bytes=w.training.grad_bytes)
    wps = {phase: w.variant(phase=phase, batch_per_device=w.training.micro_batch_sequences,
                            training=grads, serving=None, name="pass")
           for phase in ("train_fwd", "train_bwd")}
    key = (wps["train_fwd"].model_dump_json(), id(model), id(prof))
    kept = KEPT_PASSES.get(key)
    if kept is not None and kept[0] is model and kept[1] is prof:
        KEPT_PASSES.move_to_end(key)
        for n in kept[3]:
            note(n)
        return kept[2]
    with collecting() as notes:
        runs = {phase: simulate(wp, resolved=resolve(wp, model=model, profile=sim_prof))
                for phase, wp in wps.items()}
    KEPT_PASSES[key] = (model, prof, runs, tuple(notes))
    while len(KEPT_PASSES) > PASSES_KEPT:
        KEPT_PASSES.popitem(last=False)
    return runs
