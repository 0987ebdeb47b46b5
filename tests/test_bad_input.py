"""Bad input from a user: one line on stderr naming the problem, exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reml_core.cli import bench, run

BAD_FILES = {
    "malformed.toml": ('plugin = "sine\n', "invalid TOML"),
    "malformed.yaml": ("plugin: sine\nenv: {depth: 5\n", "invalid YAML"),
    "unknown-key.toml": ('plugin = "sine"\nlearning_rate = 0.1\n', "learning_rate: Extra inputs are not permitted"),
    "unknown-nested.yaml": ("plugin: sine\npolicy:\n  name: ppo-mlp\n  learning_rat: 0.1\n", "policy.learning_rat: Extra inputs are not permitted"),
    "wrong-type.toml": ('plugin = "sine"\nseed = "zero"\n', "seed: Input should be a valid integer"),
    "wrong-type-nested.yaml": ("plugin: sine\neval:\n  shots: five\n", "eval.shots: Input should be a valid list"),
    "top-level-list.yaml": ("- plugin\n- sine\n", "the top level must be a table of settings"),
    "not-utf8.toml": (b"plugin = \"\xff\xfe\"\n", "cannot read"),
    "bad-quantiles.toml": ('plugin = "sine"\n[reward]\nname = "neg-mse-minmax"\nlow_quantile = 0.9\nhigh_quantile = 0.1\n',
                           "reward: Value error, low_quantile must be below high_quantile"),
}

BAD_FLAGS = [
    (["--plugin", "nosuch"], "plugin: unknown task plugin 'nosuch' (available: sine)"),
    (["--plugin", "sine", "--policy", "ppo-gpt"], "policy.name: unknown policy backend 'ppo-gpt'"),
    (["--plugin", "sine", "--encoder", "telepathy"], "encoder.name: unknown state encoder 'telepathy'"),
    (["--plugin", "sine", "--pool", "conv"], "pool.name: unknown layer pool 'conv'"),
    (["--plugin", "sine", "--reward", "pos-mse"], "reward.name: unknown reward function 'pos-mse'"),
    (["--plugin", "sine", "--set", "pool.hidden_layers=-3"], "pool.hidden_layers: Input should be greater than 0 (got -3)"),
    (["--plugin", "sine", "--set", "pool.width=0"], "pool.width: Input should be greater than 0 (got 0)"),
    (["--plugin", "sine", "--set", "task.train_points=0"], "task.train_points: Input should be greater than 0 (got 0)"),
    (["--plugin", "sine", "--set", "eval.test_tasks=0"], "eval.test_tasks: Input should be greater than 0 (got 0)"),
    (["--plugin", "sine", "--set", "env.depth=1"], "env.depth: Input should be greater than or equal to 2 (got 1)"),
    (["--plugin", "sine", "--set", "env.depth=40"], "env.depth: a depth-40 network needs 38 distinct hidden layer(s) but the pool has 30"),
    (["--plugin", "sine", "--set", "eval.shots=[5, 50]"], "eval.shots: K = 50 is more than the 10 support points a 'sine' task holds"),
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
    _fails_cleanly(run.main, ["--config", str(tmp_path / "nope.toml"), "--out", str(out)], "--config: file not found", capsys, out)
    _fails_cleanly(run.main, ["--config", str(tmp_path), "--out", str(out)], "unsupported file type", capsys, out)
    (tmp_path / "dir.yaml").mkdir()
    _fails_cleanly(run.main, ["--config", str(tmp_path / "dir.yaml"), "--out", str(out)], "is a directory, not a config file", capsys, out)


@pytest.mark.parametrize("target", ["/sys/reml-test-run", "file/run"])
def test_unwritable_out(target, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a directory")
    out = Path(target) if target.startswith("/") else tmp_path / target
    _fails_cleanly(run.main, ["--plugin", "sine", "--preset", "smoke", "--out", str(out)], "is not writable", capsys, out)


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
    _fails_cleanly(bench.main, ["--plugin", "sine", "--methods", "reml,mamI", "--out", str(out)],
                   "--methods: unknown method 'mamI' (available: reml, maml, scratch)", capsys, out)
    _fails_cleanly(bench.main, ["--plugin", "sine", "--shots", "5,ten", "--out", str(out)], "expected comma-separated integers", capsys, out)
    _fails_cleanly(bench.main, ["--plugin", "sine", "--seeds", "0", "--out", str(out)], "argument --seeds: must be > 0", capsys, out)
    _fails_cleanly(bench.main, ["--plugin", "sine", "--shots", "5,11", "--out", str(out)], "eval.shots: K = 11 is more than the 10 support points", capsys, out)
    _fails_cleanly(bench.main, ["--plugin", "sine", "--encoder", "oracle,esp", "--out", str(out)], "encoder.name: unknown state encoder 'esp'", capsys, out)
    _fails_cleanly(bench.main, ["--plugin", "sine", "--from", str(tmp_path / "missing"), "--out", str(out)], "--from", capsys, out)

