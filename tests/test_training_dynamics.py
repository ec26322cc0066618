"""tinyfbi.training.dynamics on series whose answer is known by construction."""
import numpy as np

from tinyfbi.training import dynamics


def test_jitter_of_a_smooth_curve_is_its_step_to_step_change():
    steps = np.arange(300)
    assert abs(dynamics.jitter(np.exp(-steps / 100)) - (1 - np.exp(-1 / 100))) < 1e-12
    assert dynamics.jitter(np.full(300, 0.3)) == 0.0


def test_jitter_measures_the_jumps():
    wobble = 1 + 0.1 * (-1) ** np.arange(301)                               # 1.1, 0.9, 1.1, ...
    # every step goes 1.1 -> 0.9 (by 0.2/1.1) or 0.9 -> 1.1 (by 0.2/0.9), 150 of each: the median is their mean
    assert abs(dynamics.jitter(wobble) - (0.2 / 1.1 + 0.2 / 0.9) / 2) < 1e-12
    assert abs(dynamics.jitter(wobble, start=2) - 0.2 / 0.9) < 1e-12        # from step 2: one more of the second


def test_spikes_are_steps_far_above_their_neighbours():
    values = np.ones(50)
    values[[9, 30]] = [5.0, 2.0]
    assert dynamics.spikes(values, 3.0) == [10]                              # 1-based, as metrics.jsonl
    assert dynamics.spikes(values, 3.0, start=10) == []
    assert dynamics.spikes(values, 1.5) == [10, 31]


def test_series_reads_a_metrics_row():
    rows = [{"step": 1, "loss": 2.0, "lr": 1e-3, "grad_norm": 0.5, "flips": {"all": 0.01, "layer": 0.02}}]
    assert dynamics.series(rows, "flips").tolist() == [0.01]
    assert dynamics.series(rows, "grad_norm").tolist() == [0.5]
