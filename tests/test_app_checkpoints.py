"""app.checkpoints: the embedded family by default (members in order), a clear exit when it is absent, spec checks.

``export_tiny_family`` (used by the other app tests) ships a tiny random family in the zoo format: four SparseCut
members with different patterns and high-res settings, sharing one vision tower, and a LLaVA baseline.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import make_model, make_processor, randomise_gates
from PIL import Image

from app.examples import load_examples
from app.checkpoints import (
    DEFAULT_BASELINE,
    DEFAULT_MODEL,
    FamilyNotShipped,
    check_spec,
    default_family,
    display_name,
)
from training.tiny.export import export_family

MEMBERS = {  # name -> SparseCutConfig overrides (conftest: ViT 6 layers, LLM 8 layers, hidden 32, 16-px views)
    DEFAULT_MODEL: {},  # sparse-uniform, 3 shortcuts, 2x2 high-res crops
    "sparsecut-tiny-lowres": {"high_res": False},
    "sparsecut-tiny-dense-bottom": {"pattern": "dense-bottom", "num_shortcuts": None, "high_res": False},
    "sparsecut-tiny-sparse-top": {"pattern": "sparse-top", "num_shortcuts": 2},
    DEFAULT_BASELINE: {"pattern": "llava", "num_shortcuts": None, "high_res": False, "adapter_attention": False},
}


def export_tiny_family(assets: str) -> None:
    """Write the family into ``assets/tiny/`` (random weights; every shortcut's gate open)."""
    models = {}
    for seed, (name, overrides) in enumerate(MEMBERS.items()):
        model = make_model(seed=seed + 1, **overrides)
        if models:
            model.model.vision_tower.load_state_dict(next(iter(models.values())).model.vision_tower.state_dict())
        randomise_gates(model, seed=seed + 1)
        models[name] = model
    export_family(models, make_processor(models[DEFAULT_MODEL].config), os.path.join(assets, "tiny"))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def family_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECUT_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("SPARSECUT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_the_default_family_lists_sparsecut_tiny_first_and_llava_tiny_as_baseline(family_env):
    export_tiny_family(str(family_env / "assets"))
    models, baseline = default_family()
    assert models == [DEFAULT_MODEL, "sparsecut-tiny-lowres", "sparsecut-tiny-dense-bottom", "sparsecut-tiny-sparse-top"]
    assert baseline == DEFAULT_BASELINE


def test_without_the_family_python_m_app_exits_saying_how_to_run(family_env):
    with pytest.raises(FamilyNotShipped, match="not shipped in this checkout yet"):
        default_family()
    env = {**os.environ, "SPARSECUT_ASSETS": str(family_env / "empty")}
    done = subprocess.run([sys.executable, "-m", "app", "--port", "1"], check=False, capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 1
    assert "not shipped in this checkout yet" in done.stderr and "python -m app --model PATH_OR_HUB_ID" in done.stderr
    assert "Traceback" not in done.stderr


def test_specs_are_checked_before_loading(family_env, tmp_path):
    export_tiny_family(str(family_env / "assets"))
    folder = tmp_path / "runs" / "stage2"
    folder.mkdir(parents=True)
    with pytest.raises(ValueError, match="has no config.json: it is not a checkpoint folder"):
        check_spec(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "sparsecut"}))
    assert check_spec(DEFAULT_MODEL) == DEFAULT_MODEL and check_spec(str(folder)) == str(folder)
    assert check_spec("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    assert display_name(str(folder)) == "stage2" and display_name("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(ValueError, match="neither a folder, a hub id"):
        check_spec("no such model")
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; pass the checkpoint's folder"):
        check_spec(str(folder / "model.safetensors"))


def test_the_app_runs_one_torch_thread_per_computation_unless_told_and_refuses_fewer_than_one():
    from app.__main__ import main, parse_args

    assert parse_args([]).threads == 1 and parse_args(["--threads", "2"]).threads == 2
    with pytest.raises(SystemExit, match="--threads must be at least 1; got 0"):
        main(["--threads", "0"])


def test_python_m_app_serves_the_family_on_localhost(family_env):
    client_module = pytest.importorskip("gradio_client")
    export_tiny_family(str(family_env / "assets"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "SPARSECUT_ASSETS": str(family_env / "assets"), "SPARSECUT_CACHE": str(family_env / "cache"),
           "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--max-image-mb", "0.2"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                config = json.loads(urllib.request.urlopen(url + "config", timeout=5).read())
                break
            except OSError:
                assert server.poll() is None, f"python -m app exited: {server.stderr.read()[-2000:]}"
                assert time.time() < deadline, "python -m app did not serve within 90 s"
                time.sleep(0.5)
        assert config["title"] == "SparseCut demo"
        case = load_examples()[0]
        client = client_module.Client(url, verbose=False, analytics_enabled=False)
        ours, _, theirs, their_stats, _ = client.predict(client_module.handle_file(case.path), case.question,
                                                      DEFAULT_MODEL, "", True, False, 1.0, 1.0, 4, True, api_name="/ask")
        assert ours and theirs and their_stats["model"] == DEFAULT_BASELINE
        noise = np.random.default_rng(0).integers(0, 256, (350, 350, 3), dtype=np.uint8)
        Image.fromarray(noise).save(family_env / "large.png")  # ~0.35 MB
        with pytest.raises(client_module.exceptions.AppError, match=r"accepts images up to 0.2 MB \(--max-image-mb\)"):
            client.predict(client_module.handle_file(str(family_env / "large.png")), case.question, DEFAULT_MODEL, "",
                           True, False, 1.0, 1.0, 4, False, api_name="/ask")
    finally:
        server.terminate()
        server.wait(timeout=30)
