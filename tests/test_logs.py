"""REML's progress messages go through the ``reml`` logger: the CLIs show them on stderr, and a
program using REML as a library can leave them off, redirect them or turn them on."""

from __future__ import annotations

import logging

import pytest

from reml_core import logs


@pytest.fixture
def fresh_logger():
    saved = (list(logs.LOGGER.handlers), logs.LOGGER.level, logs.LOGGER.propagate)
    logs.LOGGER.handlers.clear()
    logs.LOGGER.setLevel(logging.NOTSET)
    logs.LOGGER.propagate = True
    yield logs.LOGGER
    logs.LOGGER.handlers[:], logs.LOGGER.level, logs.LOGGER.propagate = saved


def test_a_library_user_sees_nothing_until_they_ask(fresh_logger, capsys):
    logs.log("meta-training maml (seed 0)")
    assert capsys.readouterr().err == ""  # Python's default shows warnings only


def test_configure_shows_what_the_command_line_tools_show_once(fresh_logger, capsys):
    logs.configure()
    logs.configure()  # idempotent: one line per message, not two
    logs.log("evaluating reml on 5 held-out test tasks")
    err = capsys.readouterr().err.splitlines()
    assert (
        len(err) == 1 and err[0].startswith("[reml ") and err[0].endswith("] evaluating reml on 5 held-out test tasks")
    )


def test_a_handler_of_ones_own_redirects_the_messages(fresh_logger, capsys):
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    fresh_logger.addHandler(Collect())
    fresh_logger.setLevel(logging.INFO)
    logs.log("step 1024: validation loss 0.5")
    assert records == ["step 1024: validation loss 0.5"] and capsys.readouterr().err == ""


def test_the_command_line_tools_show_progress_on_stderr(tmp_path):
    from helpers.runs import TINY, cli

    result = cli("reml-run", *TINY, "--out", str(tmp_path / "run"))
    assert result.returncode == 0 and "] evaluating reml on 5 held-out test tasks" in result.stderr, result.stderr[
        -2000:
    ]
