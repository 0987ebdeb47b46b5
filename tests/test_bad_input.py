"""Bad input from a user: one line on stderr naming the problem, exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reml_core.cli import bench, run

BAD_FILES = {
    "malformed.toml": ('plugin = "sine\n', "invalid TOML"),
    "malformed.yaml": ("plugin: sine\nenv: {depth: 5\n", "invalid YAML"),
    "unknown-key.toml": ('plugin = "sine"\nlearning_rate = 0.1\n', "learning_rate: Extra inputs are not permitted"),
    "unknown-nested.yaml": (
        "plugin: sine\npolicy:\n  name: ppo-mlp\n  learning_rat: 0.1\n",
        "policy.learning_rat: Extra inputs are not permitted",
    ),
    "wrong-type.toml": ('plugin = "sine"\nseed = "zero"\n', "seed: Input should be a valid integer"),
    "wrong-type-nested.yaml": ("plugin: sine\neval:\n  shots: five\n", "eval.shots: Input should be a valid list"),
    "top-level-list.yaml": ("- plugin\n- sine\n", "the top level must be a table of settings"),
    "not-utf8.toml": (b'plugin = "\xff\xfe"\n', "cannot read"),
    "bad-quantiles.toml": (
        'plugin = "sine"\n[reward]\nname = "neg-mse-minmax"\nlow_quantile = 0.9\nhigh_quantile = 0.1\n',
        "reward: Value error, low_quantile must be below high_quantile",
    ),
}

BAD_FLAGS = [
    (
        ["--plugin", "nosuch"],
        "plugin: unknown task plugin 'nosuch' (available: digits, files, image-folder, omniglot, sine)",
    ),
    (["--plugin", "sine", "--policy", "ppo-gpt"], "policy.name: unknown policy backend 'ppo-gpt'"),
    (["--plugin", "sine", "--encoder", "telepathy"], "encoder.name: unknown state encoder 'telepathy'"),
    (["--plugin", "sine", "--pool", "nosuch"], "pool.name: unknown layer pool 'nosuch'"),
    (
        ["--plugin", "sine", "--pool", "conv"],
        "pool: layer pool 'conv' cannot be used in this run: the conv pool needs a task sampler with input_shape",
    ),
    (
        ["--plugin", "digits", "--encoder", "support-set"],
        "encoder: state encoder 'support-set' cannot be used in this run",
    ),
    (["--plugin", "sine", "--reward", "pos-mse"], "reward.name: unknown reward function 'pos-mse'"),
    (
        ["--plugin", "sine", "--set", "pool.hidden_layers=-3"],
        "pool.hidden_layers: Input should be greater than 0 (got -3)",
    ),
    (["--plugin", "sine", "--set", "pool.width=0"], "pool.width: Input should be greater than 0 (got 0)"),
    (["--plugin", "sine", "--set", "task.train_points=0"], "task.train_points: Input should be greater than 0 (got 0)"),
    (["--plugin", "sine", "--set", "eval.test_tasks=0"], "eval.test_tasks: Input should be greater than 0 (got 0)"),
    (["--plugin", "sine", "--set", "env.depth=1"], "env.depth: Input should be greater than or equal to 2 (got 1)"),
    (
        ["--plugin", "sine", "--set", "env.depth=40"],
        "env.depth: a depth-40 network needs 38 distinct hidden layer(s) but the pool has 30",
    ),
    (
        ["--plugin", "sine", "--set", "eval.shots=[5, 50]"],
        "eval.shots: K = 50 is more than the 10 support points a 'sine' task holds",
    ),
    (["--plugin", "sine", "--set", "env.shots=[20]"], "env.shots: K = 20 is more than the 10 support points"),
    (["--plugin", "sine", "--set", "env.inner_lr=-0.1"], "env.inner_lr: Input should be greater than 0 (got -0.1)"),
    (["--plugin", "sine", "--set", "env.detph=4"], "env.detph: Extra inputs are not permitted"),
    (["--plugin", "sine", "--set", "env.depth"], "--set: expected KEY.PATH=VALUE, got 'env.depth'"),
    (["--plugin", "sine", "--set", "policy.n_steps=1"], "policy.n_steps: Input should be greater than 1 (got 1)"),
    (["--plugin", "sine", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--plugin", "sine", "--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
]


def _fails_cleanly(main, argv, expected, capsys, out: Path) -> None:
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse's own errors
        code = exited.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists(), "a failed command wrote its output directory"


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_config_files(name, tmp_path, capsys):
    text, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    _fails_cleanly(run.main, ["--config", str(path), "--out", str(out)], expected, capsys, out)


@pytest.mark.parametrize(("argv", "expected"), BAD_FLAGS, ids=[" ".join(a[-2:]) for a, _ in BAD_FLAGS])
def test_bad_flags(argv, expected, tmp_path, capsys):
    out = tmp_path / "out"
    _fails_cleanly(run.main, [*argv, "--out", str(out)], expected, capsys, out)


def test_missing_and_unreadable_config_files(tmp_path, capsys):
    out = tmp_path / "out"
    _fails_cleanly(
        run.main, ["--config", str(tmp_path / "nope.toml"), "--out", str(out)], "--config: file not found", capsys, out
    )
    _fails_cleanly(run.main, ["--config", str(tmp_path), "--out", str(out)], "unsupported file type", capsys, out)
    (tmp_path / "dir.yaml").mkdir()
    _fails_cleanly(
        run.main,
        ["--config", str(tmp_path / "dir.yaml"), "--out", str(out)],
        "is a directory, not a config file",
        capsys,
        out,
    )


@pytest.mark.parametrize("target", ["/sys/reml-test-run", "file/run"])
def test_unwritable_out(target, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a directory")
    out = Path(target) if target.startswith("/") else tmp_path / target
    _fails_cleanly(
        run.main, ["--plugin", "sine", "--preset", "smoke", "--out", str(out)], "is not writable", capsys, out
    )


def test_out_that_already_holds_a_run_or_other_files(tmp_path, capsys):
    from reml_core.folders import claim_new_folder, release_all

    existing = tmp_path / "previous"
    claim_new_folder(existing, kind="run", force=False)
    release_all()
    (existing / "config.json").write_text(json.dumps({"plugin": "sine"}))
    (existing / "results.json").write_text("{}")
    for main in (run.main, bench.main):
        code = main(["--plugin", "sine", "--preset", "smoke", "--out", str(existing)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0
        assert f"--out {existing} already holds a run; continue it with --resume {existing}, or pass --force" in err
    assert (existing / "results.json").read_text() == "{}"  # nothing of the old run was touched
    # A config.json alone does not make a folder REML's: --force refuses and deletes nothing.
    other = tmp_path / "work"
    (other / "src").mkdir(parents=True)
    (other / "config.json").write_text("{}")
    (other / "src" / "a.js").write_text("x")
    for main in (run.main, bench.main):
        code = main(["--plugin", "sine", "--preset", "smoke", "--out", str(other), "--force"])
        assert code == 2 and "holds files that are not a REML run" in capsys.readouterr().err
    assert (other / "src" / "a.js").read_text() == "x" and (other / "config.json").read_text() == "{}"


def test_bench_rejects_unknown_methods_and_bad_lists(tmp_path, capsys):
    out = tmp_path / "out"
    _fails_cleanly(
        bench.main,
        ["--plugin", "sine", "--methods", "reml,mamI", "--out", str(out)],
        "--methods: unknown method 'mamI' (available: reml, maml, maml-select, meta-sgd, pool-search, reference, "
        "scratch)",
        capsys,
        out,
    )
    _fails_cleanly(
        bench.main,
        ["--plugin", "sine", "--shots", "5,ten", "--out", str(out)],
        "expected comma-separated integers",
        capsys,
        out,
    )
    _fails_cleanly(
        bench.main,
        ["--plugin", "sine", "--seeds", "0", "--out", str(out)],
        "argument --seeds: must be > 0",
        capsys,
        out,
    )
    _fails_cleanly(
        bench.main,
        ["--plugin", "sine", "--shots", "5,11", "--out", str(out)],
        "eval.shots: K = 11 is more than the 10 support points",
        capsys,
        out,
    )
    _fails_cleanly(
        bench.main,
        ["--plugin", "sine", "--encoder", "oracle,esp", "--out", str(out)],
        "encoder.name: unknown state encoder 'esp'",
        capsys,
        out,
    )
    _fails_cleanly(
        bench.main, ["--plugin", "sine", "--from", str(tmp_path / "missing"), "--out", str(out)], "--from", capsys, out
    )


# -- numbers: no NaN or infinity gets past validation, in the core's sections or any plugin's ----------

NON_FINITE = [
    (["--set", "env.inner_lr=1e309"], "env.inner_lr: Input should be a finite number"),
    (["--set", "env.inner_lr=inf"], "env.inner_lr: Input should be a finite number"),
    (["--set", "eval.sgd_lr=.nan"], "eval.sgd_lr: Input should be a finite number"),
    (["--set", "reward.max_loss=.inf"], "reward.max_loss: Input should be a finite number"),
    (
        ["--set", "reward.invalid_action_penalty=-.inf"],
        "reward.invalid_action_penalty: Input should be a finite number",
    ),
    (["--set", "task.amplitude_high=.inf"], "task.amplitude_high: Input should be a finite number"),
    (["--set", "policy.clip_range=.inf"], "policy.clip_range: Input should be a finite number"),
    (["--set", "baselines.maml.meta_lr=.inf"], "baselines.maml.meta_lr: Input should be a finite number"),
]


@pytest.mark.parametrize(("argv", "expected"), NON_FINITE, ids=[a[-1] for a, _ in NON_FINITE])
@pytest.mark.parametrize("main", [run.main, bench.main], ids=["run", "bench"])
def test_non_finite_numbers_are_refused_before_anything_is_written(main, argv, expected, tmp_path, capsys):
    out = tmp_path / "out"
    _fails_cleanly(main, ["--plugin", "sine", "--preset", "smoke", *argv, "--out", str(out)], expected, capsys, out)


def test_non_finite_numbers_in_config_files(tmp_path, capsys):
    out = tmp_path / "out"
    for name, text in {
        "inf.toml": 'plugin = "sine"\n[env]\ninner_lr = inf\n',
        "nan.toml": 'plugin = "sine"\n[pool]\nname = "dense"\n[reward]\nmax_loss = nan\n',
        "inf.yaml": "plugin: sine\ntrain:\n  env_steps: 100\neval:\n  curve_lr: .inf\n",
    }.items():
        (tmp_path / name).write_text(text)
        _fails_cleanly(
            run.main,
            ["--config", str(tmp_path / name), "--out", str(out)],
            "Input should be a finite number",
            capsys,
            out,
        )


# -- sizes that cannot fit in memory (or finish) are refused before allocation, with the limit named --

TOO_LARGE = [
    (["--set", "policy.net_arch=[100000]"], "policy.net_arch.0: Input should be less than or equal to 4096"),
    (["--set", "pool.width=1000000000"], "pool.width: Input should be less than or equal to 4096"),
    (["--set", "pool.hidden_layers=1000", "--set", "pool.width=4000"], "the limit is 50,000,000"),
    (["--set", "pool.input_layers=100000000"], "pool.input_layers: Input should be less than or equal to 1000"),
    (["--set", "policy.n_steps=100000000000"], "policy.n_steps: Input should be less than or equal to 65536"),
    (["--set", "eval.test_tasks=10000000000"], "eval.test_tasks: Input should be less than or equal to 100000"),
    (["--set", "eval.steps=[0, 10000000000]"], "fine-tuning steps must be at most"),
    (
        ["--set", "train.env_steps=1000000000000000"],
        "train.env_steps: Input should be less than or equal to 1000000000",
    ),
    (["--set", "env.depth=100000"], "env.depth: Input should be less than or equal to 64"),
    (
        ["--policy", "ppo-lstm", "--set", "policy.lstm_hidden_size=1000000"],
        "policy.lstm_hidden_size: Input should be less than or equal to 4096",
    ),
    (
        ["--set", "baselines.maml.hidden=[100000]"],
        "baselines.maml.hidden.0: Input should be less than or equal to 4096",
    ),
    (
        ["--set", "baselines.maml.meta_batch=1000000000"],
        "baselines.maml.meta_batch: Input should be less than or equal to 100000",
    ),
    (["--set", "task.train_points=1000000000"], "task.train_points: Input should be less than or equal to 100000"),
]


@pytest.mark.parametrize(("argv", "expected"), TOO_LARGE, ids=[a[-1] for a, _ in TOO_LARGE])
def test_sizes_that_cannot_fit_are_refused_with_the_limit_named(argv, expected, tmp_path, capsys):
    out = tmp_path / "out"
    _fails_cleanly(run.main, ["--plugin", "sine", "--preset", "smoke", *argv, "--out", str(out)], expected, capsys, out)


def test_absurd_seed_counts_fail_at_once(tmp_path, capsys):
    import time

    out = tmp_path / "out"
    start = time.monotonic()
    _fails_cleanly(
        bench.main,
        ["--plugin", "sine", "--preset", "smoke", "--seeds", "99999999999", "--out", str(out)],
        "--seeds: 99999999999 seeds; the limit is 1000",
        capsys,
        out,
    )
    _fails_cleanly(
        bench.main,
        ["--plugin", "sine", "--preset", "smoke", "--seed", "4294967295", "--seeds", "2", "--out", str(out)],
        "go past the largest seed, 4294967295",
        capsys,
        out,
    )
    _fails_cleanly(
        run.main,
        ["--plugin", "sine", "--preset", "smoke", "--seed", "4294967296", "--out", str(out)],
        "seed: Input should be less than 4294967296",
        capsys,
        out,
    )
    assert time.monotonic() - start < 60


# -- paths are checked (length, encoding, emptiness) before anything is written --------------------

BAD_PATHS = [
    ("a" * 300, "a path component is 300 bytes long; the limit is 255"),
    ("/".join(["b" * 200] * 21), "the path is"),
    (os.fsdecode(b"bad\xffname"), "is not valid UTF-8"),
    ("", "empty path"),
]


@pytest.mark.parametrize(("path", "expected"), BAD_PATHS, ids=["long-component", "long-path", "not-utf8", "empty"])
@pytest.mark.parametrize("flag", ["--out", "--config", "--resume"])
def test_bad_paths_are_refused_and_leave_nothing_behind(flag, path, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--resume", path] if flag == "--resume" else ["--plugin", "sine", "--preset", "smoke", flag, path]
    _fails_cleanly(run.main, argv, expected, capsys, tmp_path / "never")
    assert os.listdir(tmp_path) == [], "a refused path left files behind"


@pytest.mark.parametrize(("path", "expected"), BAD_PATHS, ids=["long-component", "long-path", "not-utf8", "empty"])
@pytest.mark.parametrize("flag", ["--out", "--from"])
def test_bench_paths_are_checked_too(flag, path, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fails_cleanly(
        bench.main, ["--plugin", "sine", "--preset", "smoke", flag, path], expected, capsys, tmp_path / "never"
    )
    assert os.listdir(tmp_path) == []


# -- config files too large to be a config --------------------------------------------------------


def test_a_huge_config_is_refused_at_once_with_few_lines(tmp_path, capsys):
    out = tmp_path / "out"
    huge = tmp_path / "huge.toml"
    huge.write_text('plugin = "sine"\n' + "".join(f"unknown_{i} = {i}\n" for i in range(150_000)))
    _fails_cleanly(run.main, ["--config", str(huge), "--out", str(out)], "a REML config is a few KB", capsys, out)
    many = tmp_path / "many.yaml"
    many.write_text("plugin: sine\nenv:\n" + "".join(f"  k{i}: {i}\n" for i in range(20_000)))
    _fails_cleanly(run.main, ["--config", str(many), "--out", str(out)], "the limit is 10,000", capsys, out)


def test_many_problems_are_capped_in_the_output(tmp_path, capsys):
    out = tmp_path / "out"
    config = tmp_path / "typos.toml"
    config.write_text('plugin = "sine"\n[env]\n' + "".join(f"typo_{i} = 1\n" for i in range(50)))
    code = run.main(["--config", str(config), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 21
    assert lines[-1] == "... and 30 more problems"
    assert not out.exists()


# -- a broken pipe is not a traceback ---------------------------------------------------------------


def test_a_closed_stdout_is_one_line_not_a_traceback():
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "reml-plugins"), "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "reml-plugins: error: output closed before everything was written (broken pipe)"
    ]


# -- only reml-run folders can be resumed ------------------------------------------------------------


def test_resume_refuses_a_bench_folder_and_folders_reml_did_not_make(tmp_path, capsys):
    from helpers.runs import snapshot

    from reml_core.folders import claim_new_folder, release_all

    bench_folder = tmp_path / "bench"
    claim_new_folder(bench_folder, kind="bench", force=False, entries=("seed-0",))
    release_all()
    (bench_folder / "config.json").write_text(json.dumps({"plugin": "sine"}))
    (bench_folder / "results.json").write_text("{}")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"plugin": "sine"}))
    for folder, expected in (
        (bench_folder, "is a reml-bench folder; reml-run --resume continues only reml-run runs"),
        (plain, "not a REML run directory"),
    ):
        before = snapshot(folder)
        code = run.main(["--resume", str(folder)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
        assert snapshot(folder) == before
