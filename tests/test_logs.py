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
