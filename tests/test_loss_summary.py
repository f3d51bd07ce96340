"""LossSummary: the first and last window means of the training loss, kept across resume."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from callbacks.loss_summary import LossSummary


def feed(callback: LossSummary, losses: list[float]) -> None:
    for step, loss in enumerate(losses):
        callback.on_train_batch_end(None, None, {"loss": torch.tensor(loss)}, None, step)


def test_means_of_first_and_last_window(capsys):
    callback = LossSummary(window=10)
    feed(callback, [1.0] * 10 + [5.0] * 7 + [0.5] * 10)
    callback.on_train_end(SimpleNamespace(is_global_zero=True), None)
    assert capsys.readouterr().out == "loss: first 10 steps 1.00 -> last 10 steps 0.50\n"


def test_fewer_steps_than_window_share_them():
    callback = LossSummary(window=10)
    feed(callback, [3.0, 1.0, 2.0])
    assert callback.summary() == "loss: first 3 steps 2.00 -> last 3 steps 2.00"


def test_only_rank_zero_prints_and_nothing_before_a_step(capsys):
    callback = LossSummary()
    callback.on_train_end(SimpleNamespace(is_global_zero=True), None)
    feed(callback, [1.0])
    callback.on_train_end(SimpleNamespace(is_global_zero=False), None)
    assert capsys.readouterr().out == ""


def test_resumed_run_compares_with_the_first_steps():
    before, after = LossSummary(window=2), LossSummary(window=2)
    feed(before, [4.0, 2.0, 9.0])
    after.load_state_dict(before.state_dict())
    feed(after, [1.0, 0.0])
    assert after.summary() == "loss: first 2 steps 3.00 -> last 2 steps 0.50"
