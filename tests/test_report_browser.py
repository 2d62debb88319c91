"""Reports in a real headless Chromium: plots render, no JS errors; traces; escaping."""
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parent.parent
LONGCAT = str(ROOT / "workloads" / "longcat-flash-decode-h800.yaml")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _driver():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1800"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


TEXT: dict[str, str] = {}          # the last rendered page's text, by file
AXES: dict[str, list] = {}         # its figures' (x title, y title), as the browser holds them


def _script(path: Path, js: str):
    """What `js` returns on the rendered page at `path`."""
    d = _driver()
    try:
        d.get(path.resolve().as_uri())
        return d.execute_script(js)
    finally:
        d.quit()


def _render(path: Path, shot: Path) -> tuple[int, list]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    d = _driver()
    try:
        d.get(path.resolve().as_uri())
        WebDriverWait(d, 60).until(lambda x: x.find_elements(By.CSS_SELECTOR, ".main-svg"))
        plots = d.execute_script("return document.querySelectorAll('.js-plotly-plot').length")
        bars = d.execute_script("return document.querySelectorAll('.js-plotly-plot .trace').length")
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        TEXT[path.name] = d.execute_script("return document.body.innerText")
        AXES[path.name] = d.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => "
            "[((p.layout.xaxis || {}).title || {}).text || '', "
            "((p.layout.yaxis || {}).title || {}).text || ''])")
        d.save_screenshot(str(shot))
        assert bars > 0
        return plots, errors
    finally:
        d.quit()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_compare_report_renders_in_chromium(tmp_path):
    report = tmp_path / "r.html"
    r = CliRunner().invoke(app, ["compare", LONGCAT, "--report", str(report)])
    assert r.exit_code == 0, r.output
    html = report.read_text()
    assert "<script" in html and '<script src="http' not in html     # plotly.js embedded: offline
    plots, errors = _render(report, tmp_path / "shot.png")
    assert plots == 3 and errors == []
    assert (tmp_path / "shot.png").stat().st_size > 10_000
    text = TEXT["r.html"]
    for headline in ("tokens/GPU/s", "$ per M output tokens", "speedup", "Fidelity",
                     "standalone times"):
        assert headline in text, headline


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_serving_and_training_reports_render(tmp_path):
    serve = tmp_path / "serve.html"
    r = CliRunner().invoke(app, ["serve", LONGCAT.replace("longcat-flash-decode-h800",
                                                          "serving/longcat-flash-h800"),
                                 "--duration", "10", "--report", str(serve)])
    assert r.exit_code == 0, r.output
    plots, errors = _render(serve, tmp_path / "serve.png")
    assert plots == 2 and errors == []
    for headline in ("makespan", "goodput", "per million output tokens", "TTFT p50", "SLO",
                     "Fidelity", "expected error"):
        assert headline in TEXT["serve.html"], headline
    assert all(x and y for x, y in AXES["serve.html"]), AXES["serve.html"]
    train = tmp_path / "train.html"
    r = CliRunner().invoke(app, ["train", str(ROOT / "workloads" / "training" /
                                              "longcat-flash-pretrain-h800.yaml"),
                                 "--report", str(train)])
    assert r.exit_code == 0, r.output
    plots, errors = _render(train, tmp_path / "train.png")
    assert plots == 2 and errors == []          # the step's parts, one pipeline device's step
    assert "Pipeline device 0" in TEXT["train.html"]
    assert "days" in TEXT["train.html"] and "$" in TEXT["train.html"]
    assert "Fidelity" in TEXT["train.html"]


def test_trace_export_one_track_per_rank_and_stream(tmp_path):
    trace = tmp_path / "t.json"
    w = str(ROOT / "workloads" / "paper" / "table7-longcat-flash.yaml")
    r = CliRunner().invoke(app, ["compare", w, "--schedules", "sequential,sbo", "--trace", str(trace)])
    assert r.exit_code == 0, r.output
    data = json.loads(trace.read_text())
    names = [e["args"]["name"] for e in data["traceEvents"] if e.get("name") == "process_name"]
    assert names == ["sequential rank 0", "sbo rank 0"]
    ops = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert ops and all(e["dur"] >= 0 for e in ops)
    sbo_pid = 2
    threads = {e["args"]["name"] for e in data["traceEvents"]
               if e.get("name") == "thread_name" and e["pid"] == sbo_pid}
    assert threads == {"compute", "comm"}


def test_user_strings_are_escaped(tmp_path):
    import yaml
    w = yaml.safe_load(Path(LONGCAT).read_text())
    w["name"] = "<script>alert('x')</script>"
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump(w))
    report = tmp_path / "r.html"
    r = CliRunner().invoke(app, ["simulate", str(p), "--report", str(report)])
    assert r.exit_code == 0, r.output
    html = report.read_text()
    assert "<script>alert('x')</script>" not in html
    assert "&lt;script&gt;alert(" in html


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_plan_report_renders_its_front(tmp_path):
    report = tmp_path / "plan.html"
    r = CliRunner().invoke(app, ["plan", "qwen3-30b-a3b", "--gpus", "8", "--hardware",
                                 "h200-sxm", "--workers", "1", "--report", str(report)])
    assert r.exit_code == 0, r.output
    plots, errors = _render(report, tmp_path / "plan.png")
    assert plots == 3 and errors == []
    assert all(x and y for x, y in AXES["plan.html"]), AXES["plan.html"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_training_plan_report_renders_days_against_gpus(tmp_path, monkeypatch):
    import simulator.outputs.plan_train as pt
    for name, value in (("TP", (1, 2)), ("PP", (1, 2)), ("EP", (8,)), ("MICRO_BATCHES", (4,))):
        monkeypatch.setattr(pt, name, value)        # a small search: the report is the point
    qwen = ROOT / "workloads" / "validation" / "training" / "qwen3-30b-a3b-b200-deepep-16.yaml"
    report = tmp_path / "plan-train.html"
    r = CliRunner().invoke(app, ["plan", "--train", str(qwen), "--gpus", "16,32",
                                 "--workers", "1", "--results", str(tmp_path / "r.sqlite"),
                                 "--report", str(report)])
    assert r.exit_code == 0, r.output
    plots, errors = _render(report, tmp_path / "plan-train.png")
    assert plots == 2 and errors == []
    assert all(x and y for x, y in AXES["plan-train.html"]), AXES["plan-train.html"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_router_bias_and_sweep_figures_have_axis_titles_and_clear_legends(tmp_path):
    plot = tmp_path / "bias.html"
    r = CliRunner().invoke(app, ["router-bias", "--steps", "40", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    _render(plot, tmp_path / "bias.png")
    titles = _script(
        plot, "const l = document.querySelector('.js-plotly-plot').layout; return "
        "[1, 2, 3].map(i => [((l['xaxis' + (i > 1 ? i : '')] || {}).title || {}).text, "
        "((l['yaxis' + (i > 1 ? i : '')] || {}).title || {}).text])")
    assert all(x and y for x, y in titles), titles
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nbase: {LONGCAT}\ngrid:\n  batch_per_device: [16, 32, 64]\n")
    report = tmp_path / "sweep.html"
    r = CliRunner().invoke(app, ["sweep", str(sweep), "--workers", "1", "--report", str(report)])
    assert r.exit_code == 0, r.output
    _render(report, tmp_path / "sweep.png")
    box = _script(
        report, "const p = document.querySelector('.js-plotly-plot');"
        "const leg = p.querySelector('.legend').getBoundingClientRect();"
        "const bar = p.querySelector('.colorbar').getBoundingClientRect();"
        "return [leg.left, leg.right, leg.top, leg.bottom, bar.left, bar.right, bar.top,"
        " bar.bottom]")
    ll, lr, lt, lb, bl, br, bt, bb = box
    overlap = min(lr, br) > max(ll, bl) and min(lb, bb) > max(lt, bt)
    assert not overlap, box
