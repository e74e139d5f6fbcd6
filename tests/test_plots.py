"""Run plots (rl/view/plots.py): the PNGs written from a metrics.jsonl, which curves they hold, and the errors."""

import json
import math

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from rl.view.plots import (
    eval_figure,
    eval_keys,
    main,
    moving_average,
    plot_run,
    read_metrics,
    reward_figure,
    reward_keys,
    series,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train_line(step: int) -> dict:
    answer, judge = step / 40, 0.1 - step / 400
    return {
        "step": step,
        "reward/mean": answer + judge,
        "reward/std": 0.3,
        "reward/search_answer": answer,
        "reward/search_judge": judge,
        "reward/search_judge/correct_judgments": 1.5,  # a sub-component: not a curve of its own
        "learner/loss": 0.01,
        "time/step": 2.0,
    }


def write_metrics(run_dir, lines) -> None:
    # json.dumps writes float("nan") as the bare token NaN, as the trainer's metrics file does.
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def search_run(tmp_path):
    lines = [train_line(s) for s in range(1, 41)]
    lines[4]["reward/mean"] = float("nan")
    evals = {
        step: {
            "eval/reward/mean": 0.2 + step / 100,
            "eval/em": step / 80,
            "eval/f1": step / 70,
            "eval/judge_accuracy": float("nan") if step == 10 else 0.6,
            "eval/searches_per_episode": 1.0 + step / 20,
            "eval/score/first_turn": 0.1,
            "eval/score/last_turn": step / 80,
        }
        for step in (10, 20, 30, 40)
    }
    lines[9].update(evals[10])  # an evaluation on the step's own line ...
    lines += [
        {"step": step, **metrics} for step, metrics in evals.items() if step != 10
    ]  # ... and on lines of their own
    write_metrics(tmp_path, lines)
    return tmp_path


def legend_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_plot_run_writes_both_pngs_at_the_intended_size(search_run):
    paths = plot_run(search_run)
    assert paths == [search_run / "reward.png", search_run / "eval.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert 5_000 < len(data) < 500_000
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == (450, 800)  # (8, 4.5) inches at 100 dpi
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20  # lines and text, not a blank canvas
    assert plt.get_fignums() == []  # nothing left open in pyplot: safe to call at every checkpoint


def test_reward_figure_has_the_mean_its_band_and_one_line_per_named_reward(search_run):
    fig = reward_figure(read_metrics(search_run / "metrics.jsonl"), "t")
    assert legend_labels(fig) == ["mean", "mean ± std", "search_answer", "search_judge"]


def test_eval_figure_keeps_task_metrics_and_puts_searches_on_a_second_axis(search_run):
    fig = eval_figure(read_metrics(search_run / "metrics.jsonl"), "t")
    assert legend_labels(fig) == ["reward/mean", "em", "f1", "judge_accuracy", "searches_per_episode"]
    left, right = fig.axes
    assert right.get_ylabel() == "searches per episode"
    em = next(line for line in left.get_lines() if line.get_label() == "em")
    assert list(em.get_xdata()) == [10, 20, 30, 40]  # the step's own line and the separate lines alike
    judge = next(line for line in left.get_lines() if line.get_label() == "judge_accuracy")
    assert list(judge.get_xdata()) == [20, 30, 40]  # the NaN at step 10 is skipped


def test_eval_figure_draws_the_per_turn_accuracy_of_each_evaluation_in_a_second_panel(tmp_path):
    lines = [train_line(s) for s in range(1, 21)]
    lines += [
        {
            "step": step,
            "eval/acc_t1": 0.2 + step / 100,
            "eval/acc_tT": 0.25 + step / 50,
            "eval/acc_by_turn/1": 0.2 + step / 100,
            "eval/acc_by_turn/2": 0.25 + step / 50,
        }
        for step in (10, 20)
    ]
    lines[0].update(
        {"eval/acc_by_turn/1": 0.2, "eval/acc_by_turn/2": float("nan")}
    )  # step 1: the second turn's point is missing
    write_metrics(tmp_path, lines)
    fig = eval_figure(read_metrics(tmp_path / "metrics.jsonl"), "t")
    by_step, by_turn = fig.axes
    assert by_step.get_xlabel() == "step" and by_turn.get_xlabel() == "turn"
    curves = {
        line.get_label(): (list(line.get_xdata()), pytest.approx(list(line.get_ydata())))
        for line in by_turn.get_lines()
    }
    assert curves == {"step 1": ([1], [0.2]), "step 10": ([1, 2], [0.3, 0.45]), "step 20": ([1, 2], [0.4, 0.65])}
    plot_run(tmp_path)
    assert matplotlib.image.imread(tmp_path / "eval.png").shape[:2] == (450, 1600)  # two panels side by side


def test_key_selection():
    keys = [
        "reward/mean",
        "reward/std",
        "reward/cocos",
        "reward/cocos/R",
        "reward/search_answer",
        "eval/reward/mean",
        "learner/loss",
    ]
    assert reward_keys(keys) == ["reward/cocos", "reward/search_answer"]
    code_eval = [
        "eval/reward/mean",
        "eval/acc_t1",
        "eval/acc_tT",
        "eval/delta",
        "eval/score/first_turn",
        "eval/score/last_turn",
        "eval/confidence",
    ]
    assert eval_keys(code_eval) == ["eval/reward/mean", "eval/acc_t1", "eval/acc_tT", "eval/delta"]
    assert eval_keys(["eval/reward/mean", "eval/score/last_turn", "eval/score/first_turn"]) == [
        "eval/reward/mean",
        "eval/score/first_turn",
        "eval/score/last_turn",
    ]  # no task metrics: the scores stay


def test_series_skips_nan_and_sorts_by_step():
    records = [{"step": 3, "x": 1.0}, {"step": 1, "x": float("nan")}, {"step": 2, "x": 4.0}, {"step": 2, "y": 0.0}]
    steps, values = series(records, "x")
    assert steps.tolist() == [2, 3] and values.tolist() == [4.0, 1.0]


def test_moving_average_is_trailing_and_starts_at_the_first_point():
    assert moving_average(np.array([2.0, 4.0, 6.0, 8.0]), 2).tolist() == [2.0, 3.0, 5.0, 7.0]
    assert moving_average(np.array([1.0, 5.0]), 1).tolist() == [1.0, 5.0]


def test_training_lines_only_write_no_eval_png(tmp_path):
    write_metrics(tmp_path, [train_line(s) for s in range(1, 6)])
    assert plot_run(tmp_path) == [tmp_path / "reward.png"]
    assert not (tmp_path / "eval.png").exists()


def test_missing_or_empty_metrics_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=str(tmp_path)):
        plot_run(tmp_path)


def test_cli_prints_the_written_paths(search_run, capsys):
    assert main([str(search_run)]) == 0
    assert capsys.readouterr().out.split() == [str(search_run / "reward.png"), str(search_run / "eval.png")]
    assert main([str(search_run / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_nan_in_the_file_reads_back_as_nan(search_run):
    records = read_metrics(search_run / "metrics.jsonl")
    assert math.isnan(records[4]["reward/mean"])
