"""The console scripts as a user meets them: exit codes, one-line errors, help text, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reml_core.cli import bench, plugins, run

BIN = Path(sys.executable).parent


def _script(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_unknown_task_plugin_is_one_line_and_exit_2():
    result = _script("reml-run", "--plugin", "nosuch")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "'nosuch'" in lines[0] and "available:" in lines[0]
    assert "Traceback" not in result.stderr


def test_reml_plugins_json_has_all_six_kinds():
    result = _script("reml-plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert sorted(listing) == sorted(["task_sampler", "state_encoder", "layer_pool", "reward", "policy", "baseline"])
    for items in listing.values():
        for item in items:
            assert set(item) == {"name", "plugin", "entry_point", "description"}


@pytest.mark.parametrize(
    ("module", "flags"),
    [
        (
            run,
            [
                "--plugin",
                "--policy",
                "--encoder",
                "--pool",
                "--reward",
                "--preset",
                "--config",
                "--seed",
                "--set",
                "--out",
                "--force",
                "--resume",
            ],
        ),
        (
            bench,
            [
                "--plugin",
                "--methods",
                "--policy",
                "--encoder",
                "--shots",
                "--steps",
                "--test-tasks",
                "--preset",
                "--seeds",
                "--from",
                "--out",
                "--config",
                "--seed",
                "--set",
                "--force",
            ],
        ),
    ],
)
def test_help_documents_every_option(module, flags, capsys):
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text, f"{flag} missing from --help"
    parser = module.build_parser()
    documented = {option for action in parser._actions for option in action.option_strings if action.help}
    assert documented >= set(flags)


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--seed", "-3"], "argument --seed: must be >= 0, got -3"),
        (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exited:
        run.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and complaint in err[0]


def test_bench_list_flags_are_checked(capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(["--shots", "5,ten"])
    assert exited.value.code == 2
    assert "expected comma-separated integers, got '5,ten'" in capsys.readouterr().err


def test_plugins_text_listing(capsys):
    assert plugins.main([]) == 0
    out = capsys.readouterr().out
    for heading in (
        "task plugins",
        "state encoders",
        "layer pools",
        "reward functions",
        "policy backends",
        "baselines",
    ):
        assert heading in out


def test_builtin_components_are_listed_as_provided_by_reml():
    listing = json.loads(_script("reml-plugins", "--json").stdout)
    names = {kind: {item["name"]: item["plugin"] for item in items} for kind, items in listing.items()}
    expected = {
        "task_sampler": ["sine"],
        "state_encoder": ["oracle", "support-set"],
        "layer_pool": ["dense"],
        "reward": ["neg-mse", "neg-mse-minmax"],
    }
    for kind, wanted in expected.items():
        for name in wanted:
            assert names[kind].get(name) == "reml", f"{kind} {name!r} missing"


# -- output that cannot be written --------------------------------------------------------------


def _with_full_stdout(tool: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``tool`` with standard output a file that cannot grow (RLIMIT_FSIZE 0: every write fails
    with EFBIG, as a full disk fails with ENOSPC), standard error captured."""
    import resource

    def no_room() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

    with open(tmp_path / "stdout", "w") as stdout:
        return subprocess.run(
            [str(BIN / tool), *args], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300, preexec_fn=no_room
        )


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("reml-plugins", []),
        ("reml-plugins", ["--json"]),
        ("reml-plugins", ["--show", "core"]),
        ("reml-plugins", ["--help"]),
        ("reml-run", ["--help"]),
        ("reml-bench", ["--help"]),
        ("reml-sweep", ["--help"]),
    ],
)
def test_standard_output_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, tool, args):
    result = _with_full_stdout(tool, *args, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr  # never a silent exit 0 (argparse's --help swallows the error)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"{tool}: error: cannot write standard output: file too large; the output is incomplete"
    ]


def test_a_failed_write_is_one_line_whether_raised_swallowed_or_buffered(capsys, monkeypatch):
    """ENOSPC/EIO on stdout, whether the write raises, library code swallows it, or it only
    surfaces when the command's buffered output is flushed at its end."""
    import errno
    import io

    from reml_core.cli.common import run_main

    class Full(io.StringIO):
        def __init__(self, fail_on: str) -> None:
            super().__init__()
            self.fail_on = fail_on

        def write(self, text: str) -> int:
            if self.fail_on == "write":
                raise OSError(errno.EIO, "Input/output error")
            return super().write(text)

        def flush(self) -> None:
            if self.fail_on == "flush":
                raise OSError(errno.ENOSPC, "No space left on device")

    def loud(argv):
        print("a table")
        return 0

    def swallowing(argv):
        try:
            print("a table")
        except Exception:
            pass
        return 0

    for body, fail_on, reason in (
        (loud, "write", "input/output error"),
        (swallowing, "write", "input/output error"),
        (loud, "flush", "no space left on device"),
    ):
        stream = Full(fail_on)
        monkeypatch.setattr(sys, "stdout", stream)
        assert run_main("reml-test", body, []) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"reml-test: error: cannot write standard output: {reason}; the output is incomplete"
        ]
        assert sys.stdout is stream  # the caller's own stream is back in place
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert run_main("reml-test", loud, []) == 0 and sys.stdout.getvalue() == "a table\n"
