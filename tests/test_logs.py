"""Job logs: messages reach the rule's log file and the terminal, and so does a job's fatal error."""

from __future__ import annotations

import subprocess
import sys

from embedlens.logs import job_logger


def test_messages_go_to_the_file_and_to_stderr(tmp_path, capsys):
    log = job_logger("unit", tmp_path / "logs" / "job.log")
    log.info("shard %s: %d images", "1-of-2", 40)
    assert "shard 1-of-2: 40 images" in (tmp_path / "logs" / "job.log").read_text()
    assert "shard 1-of-2: 40 images" in capsys.readouterr().err
    job_logger("unit", tmp_path / "logs" / "job.log").info("again")
    assert (tmp_path / "logs" / "job.log").read_text().count("again") == 1


def test_an_exception_that_ends_the_job_is_in_its_log(tmp_path):
    log_file = tmp_path / "job.log"
    script = ("from embedlens.logs import job_logger\n"
              f"job_logger('failing', {str(log_file)!r})\n"
              "raise ValueError('dataset \\'x\\': classes [\\'unicorn\\'] are not in this dataset')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    text = log_file.read_text()
    assert "the job failed" in text and "classes ['unicorn'] are not in this dataset" in text
    assert "Traceback" in text
    assert "unicorn" in result.stderr


def test_exit_on_turns_a_named_error_into_one_log_line_and_status_1(tmp_path):
    import pytest

    from embedlens.logs import exit_on

    log = job_logger("unit", tmp_path / "job.log")
    with pytest.raises(SystemExit) as stopped, exit_on(log, ValueError):
        raise ValueError("novelty.k=40 but the fit part has only 19 images")
    assert stopped.value.code == 1
    text = (tmp_path / "job.log").read_text()
    assert "ERROR novelty.k=40 but the fit part has only 19 images" in text and "Traceback" not in text
    with pytest.raises(KeyError), exit_on(log, ValueError):  # other errors are bugs: they keep their trace
        raise KeyError("x")
