"""A separate process for tests/core/test_artifact_concurrency.py: saves to, or loads from, one artifact folder in a
loop and prints what happened as one JSON line.

    python _artifact_stress.py writer FOLDER GO_FILE N SEED [SEED ...]  # waits for GO_FILE, then saves the
                                                                        # TinyMLP of each seed in turn, N times
    python _artifact_stress.py reader FOLDER GO_FILE STOP_FILE SEED ...  # creates GO_FILE after its first load;
                                                                        # loads until STOP_FILE exists, then once more
"""
import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import condense  # noqa: E402
from condense.testing import TinyMLP  # noqa: E402


def model(seed: int) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP()


def writer(folder: str, go: str, n: int, seeds: list[int]) -> dict:
    models = {s: model(s) for s in seeds}
    errors = []
    while not Path(go).exists():  # the reader is loading: start racing it
        time.sleep(0.01)
    for i in range(n):
        s = seeds[i % len(seeds)]
        try:
            condense.save(models[s], folder, metadata={"seed": s, "i": i})
        except Exception as e:  # noqa: BLE001  (counted: the test expects none)
            errors.append(repr(e))
    return {"saves": n, "failed": len(errors), "errors": errors[:3]}


def reader(folder: str, go: str, stop: str, seeds: list[int]) -> dict:
    refs = {s: model(s).state_dict() for s in seeds}
    loads, errors, unmatched, seen = 0, [], 0, set()
    last = False
    while not last:
        last = Path(stop).exists()  # one more load after the writers finished
        loads += 1
        try:
            sd = condense.load(folder, model=TinyMLP()).state_dict()
        except Exception as e:  # noqa: BLE001  (counted: the test expects none)
            errors.append(repr(e))
            continue
        match = [s for s, ref in refs.items() if all(torch.equal(sd[k], v) for k, v in ref.items())]
        if match:
            seen.add(match[0])
        else:
            unmatched += 1
        Path(go).touch()
    return {"loads": loads, "failed": len(errors), "errors": errors[:3], "unmatched": unmatched,
            "seen": sorted(seen)}


if __name__ == "__main__":
    role, folder = sys.argv[1], sys.argv[2]
    if role == "writer":
        out = writer(folder, sys.argv[3], int(sys.argv[4]), [int(s) for s in sys.argv[5:]])
    else:
        out = reader(folder, sys.argv[3], sys.argv[4], [int(s) for s in sys.argv[5:]])
    print(json.dumps(out))
