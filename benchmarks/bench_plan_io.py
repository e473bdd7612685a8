"""Plans on disk under stress: readers during repeated saves, two writers, killed saves; prints one JSON document.

- ``readers``: one process saves two plans in turn into one directory while another
  polls ``PruningPlan.load``; counts reads and failed reads.
- ``writers``: two processes save into the same directory at once; counts errors.
- ``kills``: a process saving in a loop is killed (SIGKILL) at varied moments;
  after each kill the plan must load; counts stray files of ours afterwards.

Usage: python benchmarks/bench_plan_io.py [--seconds 10] [--kills 25]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path


def _plans(root: Path):
    import torch
    import transformers

    import statlab

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=256)
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1, 120, (8, 64), generator=g)} for _ in range(8)]
    import copy

    paths = []
    for i, f in enumerate((0.5, 0.8)):
        plan = statlab.prune(copy.deepcopy(model), batches, mac_fraction=f, base="bench")
        paths.append(plan.save(root / f"source{i}"))
    return paths


def _save_loop(sources, target, seconds, errors):
    from statlab.plan import PruningPlan

    plans = [PruningPlan.load(s) for s in sources]
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        try:
            plans[i % 2].save(target)
        except Exception as error:  # noqa: BLE001 - every failure counts
            errors.put(repr(error))
        i += 1
    errors.put(("saves", i))


def _read_loop(target, seconds, errors):
    from statlab.plan import PruningPlan

    end, reads = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        try:
            PruningPlan.load(target)
            reads += 1
        except Exception as error:  # noqa: BLE001
            errors.put(repr(error))
    errors.put(("reads", reads))


def _drain(queue):
    counts, errors = {}, []
    while not queue.empty():
        item = queue.get()
        if isinstance(item, tuple):
            counts[item[0]] = counts.get(item[0], 0) + item[1]
        else:
            errors.append(item)
    return counts, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=25)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    root = Path(tempfile.mkdtemp(prefix="statlab-plan-io-"))
    sources = _plans(root)
    result = {"python": sys.version.split()[0], "cpus": os.cpu_count()}

    for case, roles in (("readers", (_save_loop, _read_loop)), ("writers", (_save_loop, _save_loop))):
        target = root / case
        from statlab.plan import PruningPlan

        PruningPlan.load(sources[0]).save(target)
        queue = ctx.Queue()
        procs = [ctx.Process(target=role, args=((sources, target, args.seconds, queue) if role is _save_loop
                                                else (target, args.seconds, queue))) for role in roles]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        counts, errors = _drain(queue)
        result[case] = {**counts, "failures": len(errors), "first_failures": errors[:3],
                        "files_after": sorted(p.name for p in target.iterdir())}

    target, rng, loadable = root / "kills", random.Random(0), 0
    from statlab.plan import PruningPlan

    PruningPlan.load(sources[0]).save(target)
    for _ in range(args.kills):
        queue = ctx.Queue()
        proc = ctx.Process(target=_save_loop, args=(sources, target, 60, queue))
        proc.start()
        time.sleep(1.5 + rng.random())  # the child imports torch first (about a second), then saves in a loop
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        try:
            PruningPlan.load(target)
            loadable += 1
        except Exception:  # noqa: BLE001
            pass
    debris_before = sorted(p.name for p in target.iterdir() if p.name.startswith(".statlab-tmp-"))
    PruningPlan.load(sources[1]).save(target)
    result["kills"] = {"kills": args.kills, "loadable_after_kill": loadable, "our_temporaries_left": debris_before,
                       "files_after_next_save": sorted(p.name for p in target.iterdir()),
                       "siblings": sorted(p.name for p in root.iterdir())}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
