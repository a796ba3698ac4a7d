"""Build the six networks and print the paper's Table 2 beside the measured parameters and multiply-adds.

Run: ``python -m vgg.summary`` (the demo's first stage). Every figure in the "measured" columns is counted on the
built model; the forward time is one crop-size (224x224) image on this machine's CPU threads.
"""

from __future__ import annotations

import time

import torch

from vgg.model import ARCHS, CONFIGS, build, multiply_adds, num_params
from vgg.paper import CROP, EXACT_GMACS, EXACT_PARAMS, NUM_CLASSES, TABLE2_PARAMS_M


def weight_layers(arch: str) -> int:
    """Conv layers of the column plus the three FC layers."""
    return sum(1 for t in CONFIGS[arch] if t not in ("M", "LRN")) + 3


@torch.no_grad()
def table(time_forward: bool = True) -> list[dict[str, object]]:
    """One row per configuration: paper figures beside measured ones."""
    rows = []
    x = torch.randn(1, 3, CROP, CROP)
    for arch in ARCHS:
        model = build(arch, init="none").eval()
        params, macs = num_params(model), multiply_adds(model)
        ms = float("nan")
        if time_forward:
            model(x)  # warm-up: first call allocates
            t0 = time.perf_counter()
            logits = model(x)
            ms = 1e3 * (time.perf_counter() - t0)
            assert logits.shape == (1, NUM_CLASSES)
        rows.append(
            dict(
                arch=arch,
                layers=weight_layers(arch),
                paper_m=TABLE2_PARAMS_M[arch],
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
    print(f"Table 2 (Simonyan & Zisserman 2015) beside the networks built by verydeep ({CROP}x{CROP}, {NUM_CLASSES} "
          "classes)\n")
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
