"""Job logs: messages reach the rule's log file and the terminal, and so does a job's fatal error."""

from __future__ import annotations

import os
import subprocess
import sys



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


def run_job(tmp_path, body: str, imports: str = "", **env) -> tuple[subprocess.CompletedProcess, str]:
    """Run a job script that runs ``imports``, sets up its log at ``tmp_path/job.log`` (as the workflow's
    scripts do, after their imports) and then runs ``body``; returns the process and the log's text."""
    log_file = tmp_path / "job.log"
    script = f"{imports}from embedlens.logs import job_logger\nlog = job_logger('job', {str(log_file)!r})\n{body}"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, **env})
    return result, log_file.read_text()


def test_library_warnings_and_stray_stderr_reach_the_log(tmp_path):
    body = ("import logging, sys, warnings\n"
            "warnings.warn('palette images with transparency should be converted')\n"
            "logging.getLogger('timm.models._builder').warning('unexpected keys in the checkpoint')\n"
            "transformers.logging.get_logger('transformers.modeling_utils').warning('some weights were not used')\n"
            "print('a line written straight to stderr', file=sys.stderr)\n"
            "log.info('shard 1-of-2: done')\n")
    # transformers sets up its own handler on stderr when it is imported, before the log exists
    result, text = run_job(tmp_path, body, imports="import transformers\n")
    assert result.returncode == 0, result.stderr
    for line in ("UserWarning: palette images with transparency should be converted",
                 "timm.models._builder WARNING unexpected keys in the checkpoint",
                 "some weights were not used", "a line written straight to stderr",
                 "embedlens.job INFO shard 1-of-2: done"):
        assert line in text, line
        assert text.count(line) == 1 and line in result.stderr, line  # once in the log, and on the terminal


FETCH_FAILURE = ("from embedlens.errors import BackboneLoadError\n"
                 "def load():\n"
                 "    raise OSError('We could not connect to the hub and the model is not in the cache')\n"
                 "try:\n"
                 "    load()\n"
                 "except OSError as error:\n"
                 "    raise BackboneLoadError(\"backbone 'dino': could not fetch the weights; set weights:\") from error\n")


def test_a_fetch_failure_ends_the_job_with_one_paragraph_and_no_traceback(tmp_path):
    result, text = run_job(tmp_path, FETCH_FAILURE)
    assert result.returncode != 0
    for output in (text, result.stderr):
        assert "the job failed: backbone 'dino': could not fetch the weights; set weights:" in output
        assert "Traceback" not in output and "could not connect to the hub" not in output
        assert "EMBEDLENS_DEBUG=1" in output
    assert text.count("the job failed") == 1


def test_embedlens_debug_shows_the_traceback_of_a_fetch_failure(tmp_path):
    result, text = run_job(tmp_path, FETCH_FAILURE, EMBEDLENS_DEBUG="1")
    assert result.returncode != 0
    assert "Traceback" in text and "could not connect to the hub" in text and "set weights:" in text


def test_messages_go_to_the_file_and_to_stderr_and_a_second_logger_takes_a_new_file(tmp_path):
    body = (f"log.info('shard %s: %d images', '1-of-2', 40)\n"
            f"job_logger('job', {str(tmp_path / 'logs' / 'second.log')!r}).info('again')\n")
    result, text = run_job(tmp_path, body)
    assert result.returncode == 0, result.stderr
    assert "shard 1-of-2: 40 images" in text and "shard 1-of-2: 40 images" in result.stderr
    assert "again" not in text
    second = (tmp_path / "logs" / "second.log").read_text()
    assert second.count("again") == 1 and "shard 1-of-2" not in second


def test_per_epoch_lines_go_to_the_log_alone_and_the_terminal_gets_the_job_s_lines(tmp_path):
    body = ("import sys\n"
            "log.info('6 classes, 48 train images, on cpu')\n"
            "for epoch in range(1, 31):\n"
            "    log.debug('epoch %d: val loss %.4f', epoch, 1 / epoch)\n"
            "    print(f'stray line {epoch}', file=sys.stderr, flush=True)\n"
            "log.info('best epoch 30 of 30; test accuracy 0.75')\n"
            f"job_logger('job', {str(tmp_path / 'second.log')!r}).debug('epoch 1 of the second job')\n")
    result, text = run_job(tmp_path, body)
    assert result.returncode == 0, result.stderr
    lines = text.splitlines()
    # every line whole and once, in the file that both the job's stderr and its log-only lines append to
    for epoch in range(1, 31):
        assert lines.count(f"stray line {epoch}") == 1
        assert sum(line.endswith(f"embedlens.job DEBUG epoch {epoch}: val loss {1 / epoch:.4f}") for line in lines) == 1
        assert f"stray line {epoch}" in result.stderr
    assert "epoch 1:" not in result.stderr and "DEBUG" not in result.stderr
    for line in ("6 classes, 48 train images, on cpu", "best epoch 30 of 30; test accuracy 0.75"):
        assert text.count(line) == 1 and result.stderr.count(line) == 1, line
    assert len(lines) == 2 + 30 + 30
    assert (tmp_path / "second.log").read_text().count("epoch 1 of the second job") == 1


def test_what_c_code_and_worker_processes_write_to_stderr_reaches_the_log(tmp_path):
    body = ("import ctypes, multiprocessing, os, subprocess, sys\n"
            "message = b'libpng warning: iCCP: known incorrect sRGB profile\\n'\n"
            "ctypes.CDLL(None).write(2, message, len(message))\n"
            "def worker():\n"
            "    print('a DataLoader worker says so', file=sys.stderr)\n"
            "process = multiprocessing.get_context('fork').Process(target=worker)\n"
            "process.start(); process.join()\n"
            "subprocess.run(['sh', '-c', 'echo a child program says so >&2'])\n"
            "log.info('done')\n")
    result, text = run_job(tmp_path, body)
    assert result.returncode == 0, result.stderr
    for line in ("libpng warning: iCCP: known incorrect sRGB profile", "a DataLoader worker says so",
                 "a child program says so", "embedlens.job INFO done"):
        assert text.count(line) == 1 and line in result.stderr, line


def test_a_killed_job_keeps_what_it_wrote_in_its_log(tmp_path):
    body = "import os, signal\nlog.info('shard 1-of-2: 40 images')\nos.kill(os.getpid(), signal.SIGKILL)\n"
    result, text = run_job(tmp_path, body)
    assert result.returncode == -9
    assert "shard 1-of-2: 40 images" in text


def test_exit_on_turns_a_named_error_into_one_log_line_and_status_1(tmp_path):
    body = ("from embedlens.logs import exit_on\n"
            "try:\n"
            "    with exit_on(log, ValueError):\n"
            "        raise KeyError('x')\n"
            "except KeyError:\n"
            "    log.info('other errors are bugs: they propagate with their trace')\n"
            "with exit_on(log, ValueError):\n"
            "    raise ValueError('novelty.k=40 but the fit part has only 19 images')\n")
    result, text = run_job(tmp_path, body)
    assert result.returncode == 1
    assert "ERROR novelty.k=40 but the fit part has only 19 images" in text and "Traceback" not in text
    assert "other errors are bugs" in text
