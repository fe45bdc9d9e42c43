"""Fidelity: the vendor's own Python examples (kept verbatim) run unchanged against the emulator.

Only the ``API_KEY`` and ``BASE_URL`` lines are substituted. The jobs are configured to finish at once, so
the examples' ``time.sleep`` between polls never runs.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .conftest import DEV_KEY

if TYPE_CHECKING:
    from airflow_provider_cerebraform.emulator import CerebraformEmulator

EXAMPLES = Path(__file__).parent / "vendor_examples"
# shared/ sits beside the repository (developers' machines and CI alike).
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "cerebraform-api.md"


def localized(name: str, base_url: str, api_key: str) -> str:
    """Return the example with its two configuration lines pointed at the emulator."""
    lines = (EXAMPLES / name).read_text().splitlines(keepends=True)
    api_lines = [i for i, line in enumerate(lines) if line.startswith("API_KEY = ")]
    url_lines = [i for i, line in enumerate(lines) if line.startswith("BASE_URL = ")]
    assert len(api_lines) == 1 and len(url_lines) == 1
    lines[api_lines[0]] = f"API_KEY = {api_key!r}\n"
    lines[url_lines[0]] = f"BASE_URL = {base_url!r}\n"
    return "".join(lines)


def run_example(source: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / name
    script.write_text(source)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.skipif(not REFERENCE.exists(), reason="the vendor reference is not beside the project")
@pytest.mark.parametrize("name", ["image_example.py", "video_example.py"])
def test_examples_are_verbatim_copies_of_the_reference(name: str) -> None:
    assert (EXAMPLES / name).read_text().rstrip("\n") in REFERENCE.read_text()


def test_vendor_image_example_prints_the_result_url(emu: CerebraformEmulator, tmp_path: Path) -> None:
    emu.state.configure({"image_seconds": 0})
    done = run_example(localized("image_example.py", emu.url, DEV_KEY), tmp_path, "image.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Task submitted with request_id: ")
    assert "Current status: Task completed." in lines
    assert "Task finished! Results:" in lines
    url = lines[-1]
    assert url.startswith(emu.url + "/media/") and url.endswith(".png")
    (task,) = emu.admin.tasks()
    assert task["prompt"] == "a cinematic photo of a cat wearing a wizard hat"
    assert task["aspect_ratio"] == "1:1" and (task["width"], task["height"]) == (512, 512)


def test_vendor_video_example_prints_the_result(emu: CerebraformEmulator, tmp_path: Path) -> None:
    emu.state.configure({"video_seconds": 0})
    done = run_example(localized("video_example.py", emu.url, DEV_KEY), tmp_path, "video.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Video task submitted with ID: ")
    assert "Video ready! Result:" in lines
    result = ast.literal_eval(lines[-1])
    (item,) = result["results"]
    assert item["url"].startswith(emu.url + "/media/") and item["url"].endswith(".mp4")
    assert item["duration"] == 10 and item["content_type"] == "video/mp4"
