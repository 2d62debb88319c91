"""A newcomer's hostile inputs: output paths that are not regular files, inputs that are pipes,
devices or endless, absurd numbers and work, duplicate keys, control characters, paths relative
to their file, and the override flags of every command that runs a workload."""
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import with_arrivals

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "workloads" / "tiny-scmoe.yaml"
SERVE = ROOT / "workloads" / "serving" / "deepseek-v3-h800.yaml"


def moesim(*args, cwd=None, timeout=240):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def refused(out, *words):
    assert out.returncode == 2, (out.returncode, out.stderr[-600:])
    assert "Traceback" not in out.stderr
    for w in words:
        assert w in out.stderr, out.stderr


# -- outputs that are not regular files --------------------------------------------------------
def test_a_report_to_a_device_is_written_through_not_replaced():
    out = moesim("simulate", TINY, "--report", "/dev/null")
    assert out.returncode == 0, out.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_trace_to_a_link_to_stdout_reaches_stdout_and_the_link_stays(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to("/dev/stdout")
    out = moesim("simulate", TINY, "--trace", link)
    assert out.returncode == 0, out.stderr
    assert link.is_symlink() and os.readlink(link) == "/dev/stdout"
    assert "traceEvents" in out.stdout


def test_a_link_to_a_regular_file_writes_its_target(tmp_path):
    target = tmp_path / "real.html"
    target.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    assert moesim("simulate", TINY, "--report", link).returncode == 0
    assert link.is_symlink() and "<html" in target.read_text().lower()


def test_a_pipe_nobody_reads_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(moesim("simulate", TINY, "--report", fifo, timeout=60), "no process is reading it")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_pipe_with_a_reader_gets_the_report(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []

    def read():                   # blocks in open() as a reader until the writer comes
        with open(fifo, "rb") as f:
            got.append(f.read())
    t = threading.Thread(target=read, daemon=True)
    t.start()
    time.sleep(0.5)
    out = moesim("simulate", TINY, "--report", fifo, timeout=120)
    t.join(60)
    assert out.returncode == 0, out.stderr
    assert b"<html" in got[0].lower()


def as_normal_user(check) -> None:
    """Run `check()` as an unprivileged user: in a forked child demoted to nobody when the
    suite runs as root (the interpreter is already in memory, so no file of it need be
    readable by nobody), in this process otherwise. Fails with the child's assertion."""
    if os.geteuid() != 0:
        check()
        return
    pid = os.fork()
    if pid == 0:                                    # the child: nobody, then the checks
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            check()
            code = 0
        except BaseException as exc:                # report, then leave without pytest's exit
            sys.stderr.write(f"as nobody: {exc!r}\n")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the checks failed as an unprivileged user"


def test_outputs_that_are_not_regular_files_as_a_normal_user():
    # the same rules without root's rights: a device is written through, a link writes its
    # target and stays, a pipe with a reader gets the text, a folder nobody may write is a
    # clear error naming the option
    import tempfile
    from simulator.atomic import write_text_atomic
    from simulator.errors import MoesimError
    with tempfile.TemporaryDirectory(dir="/tmp") as d:     # reachable by nobody
        tmp_path = Path(d)
        os.chmod(tmp_path, 0o777)
        _normal_user_outputs(tmp_path, write_text_atomic, MoesimError)


def _normal_user_outputs(tmp_path, write_text_atomic, MoesimError) -> None:
    target = tmp_path / "real.html"
    target.write_text("old")
    os.chmod(target, 0o666)
    link = tmp_path / "link.html"
    link.symlink_to(target)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)                     # mkfifo's mode passes through the umask
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)

    def check():
        write_text_atomic(Path("/dev/null"), "x" * 100, "--report")
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
        write_text_atomic(link, "<html>new</html>", "--report")
        assert link.is_symlink() and target.read_text() == "<html>new</html>"
        got = []
        reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()),
                                  daemon=True)
        reader.start()
        time.sleep(0.3)
        write_text_atomic(fifo, "through the pipe", "--trace")
        reader.join(10)
        assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
        if os.geteuid() != 0:                       # root may write anywhere
            with pytest.raises(MoesimError, match="--report"):
                write_text_atomic(locked / "r.html", "x", "--report")
            assert not list(locked.iterdir())
    as_normal_user(check)


# -- inputs ---------------------------------------------------------------------------------------
def test_a_pipe_as_the_workload_is_refused_at_once(tmp_path):
    fifo = tmp_path / "w.yaml"
    os.mkfifo(fifo)
    refused(moesim("simulate", fifo, timeout=60), "not a regular file")


def test_a_profile_linked_to_an_endless_device_is_refused(tmp_path):
    (tmp_path / "p.yaml").symlink_to("/dev/zero")
    w = TINY.read_text().replace("hardware: cpu-2core-example", f"hardware: {tmp_path / 'p.yaml'}")
    (tmp_path / "w.yaml").write_text(w)
    refused(moesim("simulate", tmp_path / "w.yaml", timeout=60), "not a regular file")


def test_an_oversized_file_is_refused_with_the_limit(tmp_path):
    big = tmp_path / "w.yaml"
    with open(big, "wb") as f:
        f.truncate((64 << 20) + 10)
    refused(moesim("simulate", big), "64 MiB")


def test_a_400_digit_number_names_its_field(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text(TINY.read_text().replace("context_length: 128", "context_length: " + "9" * 400))
    refused(moesim("simulate", w), "context_length", "400-digit")


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text(TINY.read_text() + "\nseed: 3\n")
    refused(moesim("simulate", w), "'seed' is given twice", "lines")


def test_control_characters_in_a_name_do_not_reach_the_terminal(tmp_path):
    w = tmp_path / "w.yaml"
    text = "\n".join('name: "evil\\e[31mred"' if line.startswith("name:") else line
                     for line in TINY.read_text().splitlines())
    w.write_text(text)
    out = moesim("simulate", w)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "evil\\x1b[31mred" in out.stdout


def test_paths_in_a_workload_resolve_from_its_own_folder(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "models" / "m.yaml").write_text(
        (ROOT / "workloads" / "models" / "tiny-scmoe.yaml").read_text())
    w = TINY.read_text().replace("model: tiny-scmoe", "model: ../models/m.yaml")
    (tmp_path / "runs" / "w.yaml").write_text(w)
    out = moesim("simulate", "runs/w.yaml", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = moesim("simulate", tmp_path / "runs" / "w.yaml", "--json", cwd="/")
    assert out.returncode == 0, out.stderr


def test_a_trace_saved_with_a_byte_order_mark_reads(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbfarrival_s,input_tokens,output_tokens\n"
                                     b"0.0,100,10\n0.5,120,12\n")
    (tmp_path / "s.yaml").write_text(with_arrivals(SERVE, "process: trace, trace: t.csv"))
    out = moesim("serve", tmp_path / "s.yaml", "--json", cwd="/")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["requests"]["arrived"] == 2


# -- serving with nothing to serve ------------------------------------------------------------
def test_serve_with_no_arrival_in_the_window_answers_without_a_traceback(tmp_path):
    out = moesim("serve", SERVE, "--duration", "0.0001", "--json",
                 "--report", tmp_path / "r.html")
    assert out.returncode == 0, out.stderr
    assert "NaN" not in out.stdout and json.loads(out.stdout)["requests"]["arrived"] == 0
    assert (tmp_path / "r.html").is_file()


# -- messages in the user's words, limits up front ---------------------------------------------
def test_model_import_errors_name_the_configs_own_keys(tmp_path):
    cfg = json.loads((ROOT / "tests" / "data" / "hf" / "qwen3_moe.json").read_text())
    cfg["num_key_value_heads"] = 5
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    refused(moesim("model", "import", tmp_path / "config.json"), "num_key_value_heads")


def test_router_bias_names_its_own_flags_and_refuses_absurd_work():
    refused(moesim("router-bias", "--ffn-experts", "0"), "--ffn-experts")
    refused(moesim("router-bias", "--steps", "1000000000", timeout=30), "--steps", "1e+12")


def test_calibrate_refuses_a_nan_price():
    refused(moesim("calibrate", "--from-measurements",
                   ROOT / "hardware_profiles" / "measurements" / "gpu-kernels", "--device",
                   "h800", "--price", "nan"), "--price")


def test_a_sweep_says_what_it_runs_and_refuses_a_million_points(tmp_path):
    grid = ",".join(str(i) for i in range(1, 101))
    (tmp_path / "big.yaml").write_text(
        f"name: big\nbase: {TINY}\ngrid:\n  batch_per_device: [{grid}]\n"
        f"  context_length: [{grid}]\n  seed: [{grid}]\n")
    refused(moesim("sweep", tmp_path / "big.yaml", timeout=60), "1,000,000 points", "100,000")
    assert not (tmp_path / "big.sqlite").exists()
    (tmp_path / "s.yaml").write_text(
        f"name: s\nbase: {TINY}\ngrid:\n  batch_per_device: [1, 2]\n"
        f"points:\n  - {{batch_per_device: 4}}\n")
    out = moesim("sweep", tmp_path / "s.yaml", "--workers", "1")
    assert out.returncode == 0, out.stderr
    assert "3 distinct points: grid 2 batch_per_device = 2 plus 1 listed points (their union)" \
        in " ".join(out.stderr.split())


@pytest.mark.parametrize("args", [["--backend", "nope"],
                                  ["--backend", "ray", "--address", "127.0.0.1:1"]])
def test_a_failed_sweep_leaves_no_results_file(tmp_path, args):
    (tmp_path / "s.yaml").write_text(f"name: s\nbase: {TINY}\ngrid:\n  seed: [1, 2]\n")
    out = moesim("sweep", tmp_path / "s.yaml", *args, timeout=180)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert not (tmp_path / "s.sqlite").exists()


# -- one command per question -----------------------------------------------------------------
def test_train_takes_gpus_and_hardware_and_says_so_in_its_title():
    w = ROOT / "workloads" / "training" / "longcat-flash-pretrain-h800.yaml"
    a = json.loads(moesim("train", w, "--tokens", "20T", "--gpus", "2048", "--json").stdout)
    b = json.loads(moesim("train", w, "--tokens", "20T", "--gpus", "2048", "--hardware",
                          "h100-sxm", "--json").stdout)
    assert a["gpus"] == 2048 and b["gpus"] == 2048
    assert "2048 GPUs" in a["workload"] and "h100-sxm" in b["workload"]
    assert b["hardware"] == "h100-sxm" and a["days_to_train"] != b["days_to_train"]


def test_compare_runs_every_schedule_at_every_batch():
    out = moesim("compare", ROOT / "workloads" / "deployments" /
                 "scmoe-paper-scmoe-a800.yaml", "--schedules", "sequential,scmoe",
                 "--batch", "2,8", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["batch_per_device"], r["schedule"]) for r in rows] == \
        [(2, "sequential"), (2, "scmoe"), (8, "sequential"), (8, "scmoe")]
    assert rows[0]["speedup"] == 1.0 and rows[2]["speedup"] == 1.0
    assert rows[1]["tokens_per_gpu_s"] != rows[3]["tokens_per_gpu_s"]
