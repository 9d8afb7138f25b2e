"""One rank of tests/test_fsdp.py: `spa_core.training.train` under torchrun on CPUs (gloo),
FSDP2 from the fsdp.json named by $SPA_DISTRIBUTED_CONFIG.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/fsdp_worker.py \
        MODEL PAIRS OUTPUT_DIR RESULT_JSON --max-steps 3 [--die-at-step 2]

accelerate never turns FSDP on for CPU processes: with `use_cpu=True` its PartialState is
MULTI_CPU (gloo), and AcceleratorState.__init__ sets `distributed_type = FSDP` and keeps the
`fsdp_plugin` only for the GPU-like MULTI_* types (accelerate 1.15, accelerate/state.py), so
the Trainer would silently train with DDP. `_fsdp_on_cpu` makes that one decision the GPU
way; everything after it (fully_shard on a CPU mesh, sharded torch.distributed.checkpoint
saves and loads, the gathered final save) is the code a GPU run goes through.

OUTPUT_DIR may be an object store's URI (s3://...): the ranks then train in the node's scratch
directory and keep the checkpoints on the store, as the train stage does on one.

`--die-at-step N` raises on rank 0 when step N is logged, i.e. after checkpoint-(N-1) was
saved and before checkpoint-N is; torchrun then stops the other rank, as a killed pod would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from dataclasses import asdict
from typing import Any


class Killed(Exception):
    pass


def _fsdp_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def init_with_fsdp(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init_with_fsdp


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("model", "pairs", "output_dir", "result"):
        parser.add_argument(name)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--die-at-step", type=int)
    opts = parser.parse_args()

    _fsdp_on_cpu()
    from accelerate.state import AcceleratorState

    from spa_core.spec import TrainingSpec
    from spa_core.training import train
    from spa_core.training.checkpoints import scratch_dir

    logs: list[dict[str, Any]] = []

    def on_log(record: dict[str, Any]) -> None:
        logs.append(record)
        if "loss" in record:
            print(f"logged step {record['step']} loss {record['loss']!r}", flush=True)
        if record["step"] == opts.die_at_step and "loss" in record:
            raise Killed(f"killed at step {opts.die_at_step}")

    # Two ranks of one pair per step: the same batches as one process of two pairs per step.
    spec = TrainingSpec(max_steps=opts.max_steps, per_device_batch_size=1, learning_rate=1e-2,
                        warmup_ratio=0.0, max_length=64, max_completion_length=32)
    store = opts.output_dir if "://" in opts.output_dir else None
    with contextlib.ExitStack() as stack:
        output_dir = str(stack.enter_context(scratch_dir(store))) if store else opts.output_dir
        result = train(opts.pairs, model_path=opts.model, gguf_file=None, output_dir=output_dir,
                       spec=spec, device="cpu", on_log=on_log, save_steps=1, store=store)
    if int(os.environ["RANK"]) == 0:
        record: dict[str, Any] = {"result": asdict(result), "logs": logs}
        if AcceleratorState._shared_state:  # not when a finished run's result came back at once
            state = AcceleratorState()
            record.update(world_size=state.num_processes,
                          distributed_type=str(state.distributed_type),
                          fsdp_version=state.fsdp_plugin.fsdp_version)
        with open(opts.result, "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main()
