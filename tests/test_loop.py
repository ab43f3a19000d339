"""The shared training loop's time-to-target bookkeeping, with a scripted validation accuracy."""
import logging
import time

import numpy as np
import pytest

from pipeline import backends, spec as specs
from pipeline.train import loop

tb = backends.create("torch", 1, "cpu", 0, "fp32")
SPEC = specs.mlp((8, 8, 1), 10, [8], "relu", 0.0)
OPTIM = specs.Optim("sgd", 0.01, 0.9, 0.9, 0.999, 1e-8)
EVAL_S = 0.15


@pytest.fixture
def scripted(monkeypatch):
    """Validation accuracy follows a script; each evaluation takes EVAL_S seconds of wall time."""
    def use(accs):
        it = iter(accs)

        def evaluate(be, fn, data, y, batch_size):
            time.sleep(EVAL_S)
            return 1.0, next(it), None
        monkeypatch.setattr(loop, "evaluate", evaluate)
    return use


def run(target, stop, epochs=2, eval_every=2):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(70, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 70)  # 70 // 16 = 4 full batches
    data = tb.put(x, y)
    t0 = time.perf_counter()
    out = loop.train(tb, tb.build(SPEC, specs.init_weights(SPEC, 0)), OPTIM, data, data, y, epochs=epochs,
                     batch_size=16, eval_batch_size=70, eval_every=eval_every, target=target, stop_at_target=stop,
                     seed=0,
                     desc="t")
    return out, time.perf_counter() - t0


def test_time_to_target_excludes_evaluation_and_stops_there(scripted):
    scripted([0.5, 0.7, 0.91, 0.95])
    (history, outcome), wall = run(target=0.9, stop=True)
    assert [h["step"] for h in history] == [2, 4, 6]  # evaluated every 2 steps; stopped at the first >= 0.9
    assert outcome.reached and outcome.steps_to_target == 6 and outcome.epochs_to_target == 1.5
    assert outcome.time_to_target_s == history[-1]["train_s"] == outcome.train_s
    assert wall >= 3 * EVAL_S and outcome.time_to_target_s < wall - 3 * EVAL_S + 0.05  # evaluation not counted
    assert all(h["eval_s"] >= EVAL_S for h in history)
    assert history[0]["train_s"] < history[1]["train_s"] < history[2]["train_s"]


def test_without_stopping_training_runs_to_the_cap_and_remembers_the_first_crossing(scripted):
    scripted([0.5, 0.91, 0.7, 0.95])
    (history, outcome), _ = run(target=0.9, stop=False)
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    assert outcome.steps_to_target == 4 and outcome.best_val_acc == 0.95 and outcome.stopped_at_step == 8


def test_a_target_never_reached_says_so_with_the_best_value(scripted):
    scripted([0.5, 0.6, 0.7, 0.8])
    (history, outcome), _ = run(target=0.99, stop=True)
    assert len(history) == 4 and not outcome.reached
    assert outcome.time_to_target_s is None and outcome.best_val_acc == 0.8


def test_without_a_terminal_each_evaluation_logs_a_line(scripted, caplog):
    scripted([0.5, 0.6, 0.7, 0.8])
    with caplog.at_level(logging.INFO, logger="train"):
        run(target=0.99, stop=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "train"]
    assert len(lines) == 4  # pytest's stderr is not a TTY: no bar, one line per evaluation
    assert lines[1].startswith("t step 4/8 (epoch 1.00): train loss ") and "val acc 0.6000" in lines[1]
    assert "samples/s" in lines[1] and "ETA" in lines[1]


def test_an_epoch_shorter_than_the_cadence_still_gets_an_evaluation(scripted):
    scripted([0.5, 0.6, 0.7])
    (history, _), _ = run(target=0.99, stop=True, epochs=3, eval_every=100)  # 4 steps per epoch
    assert [h["step"] for h in history] == [4, 8, 12] and [h["epoch"] for h in history] == [1.0, 2.0, 3.0]
