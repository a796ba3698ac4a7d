"""What the paper does not say is recorded where it is decided: a GPU run's bf16 autocast among its deviations."""

import mlflow

from trainer.config import compose, to_params
from trainer.run import open_tracking


def test_a_gpu_run_records_bf16_autocast_among_its_deviations(tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(explicit={"data": "manifest.json", "arch": "A", "tracking_uri": tracking})
    assert cfg.deviations_from_paper() == []  # the paper's run on CPUs: fp32, as the paper's Caffe
    (bf16,) = cfg.deviations_from_paper(gpu=True)
    assert bf16.startswith("bf16 autocast on GPUs")
    assert to_params(cfg, gpu=True)["derived.deviations_from_paper"] == bf16
    client = mlflow.MlflowClient(tracking_uri=tracking)
    for gpu in (False, True):
        tracker = open_tracking(cfg, tracking, None, gpu=gpu)
        run = client.get_run(tracker.run_id)
        tracker.end("FINISHED")
        assert run.data.tags["verydeep.deviations"] == (bf16 if gpu else "none")
        assert run.data.params["derived.deviations_from_paper"] == (bf16 if gpu else "none")
