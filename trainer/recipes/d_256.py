"""Net D (VGG-16), fixed S=256, pre-initialised from net A: Table 3, D at S=256 - 27.0 % top-1 / 8.8 % top-5 val error.

    python -m trainer.run --config d_256 --data <ILSVRC-2012 manifest URI> --init-from runs:/<run id of a_256>
    python -m trainer.run --config d_256 --smoke

The paper (Sec. 3.1) copies net A's first four conv layers and its three FC layers into the deeper net and draws
the rest at random; ``init_layers: transfer`` does that. The pre-initialised layers keep the full LR of 1e-2.
Without --init-from the run starts from random weights, which the run's deviations from the paper record.
"""


def get_config(smoke: bool = False) -> dict:
    """Net D at S=256; a smoke run keeps the transfer (a smoke A run's weights fit a smoke D)."""
    return {
        "model": {"arch": "D", "init_layers": "transfer"},
        "data": {"scale": 256},
    }
