"""Build the six networks and print the paper's Table 2 beside the measured parameters and multiply-adds.

Run: ``python -m vgg.summary`` (the demo's first stage). Every figure in the "measured" columns is counted on the
built model; the forward time is one 224x224 image on this machine's CPU threads.
"""

from __future__ import annotations

import time

import torch

from vgg.model import ARCHS, CONFIGS, build, multiply_adds, num_params

# Table 2 of the paper (millions of parameters) and the exact counts/GMACs derived from Table 1.
PAPER_PARAMS_M = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
EXACT_PARAMS = {
    "A": 132_863_336,
    "A-LRN": 132_863_336,
    "B": 133_047_848,
    "C": 133_638_952,
    "D": 138_357_544,
    "E": 143_667_240,
}
EXACT_GMACS = {"A": 7.609, "A-LRN": 7.609, "B": 11.308, "C": 11.771, "D": 15.470, "E": 19.632}


def weight_layers(arch: str) -> int:
    """Conv layers of the column plus the three FC layers."""
    return sum(1 for t in CONFIGS[arch] if t not in ("M", "LRN")) + 3


@torch.no_grad()
def table(time_forward: bool = True) -> list[dict[str, object]]:
    """One row per configuration: paper figures beside measured ones."""
    rows = []
    x = torch.randn(1, 3, 224, 224)
    for arch in ARCHS:
        model = build(arch, init="none").eval()
        params, macs = num_params(model), multiply_adds(model)
        ms = float("nan")
        if time_forward:
            model(x)  # warm-up: first call allocates
            t0 = time.perf_counter()
            logits = model(x)
            ms = 1e3 * (time.perf_counter() - t0)
            assert logits.shape == (1, 1000)
        rows.append(
            dict(
                arch=arch,
                layers=weight_layers(arch),
                paper_m=PAPER_PARAMS_M[arch],
                params=params,
                exact=params == EXACT_PARAMS[arch],
                gmacs=macs / 1e9,
                paper_gmacs=EXACT_GMACS[arch],
                ms=ms,
            )
        )
    return rows


def main() -> None:
    """Print the table."""
    rows = table()
    print("Table 2 (Simonyan & Zisserman 2015) beside the networks built by verydeep (224x224, 1000 classes)\n")
    print("| config | weight layers | paper params (M) | measured params | = Table 1 count | measured GMACs | Table 1 GMACs | CPU forward (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['layers']} | {r['paper_m']} | {r['params']:,} | {'yes' if r['exact'] else 'NO'} "
            f"| {r['gmacs']:.3f} | {r['paper_gmacs']:.3f} | {r['ms']:.0f} |"
        )
    if not all(r["exact"] for r in rows):
        raise SystemExit("error: a measured parameter count differs from Table 1's")


if __name__ == "__main__":
    main()
