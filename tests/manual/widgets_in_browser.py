"""Do the course's widgets render in JupyterLab? A check in a real (headless) browser, run by hand:

    python tests/manual/widgets_in_browser.py PYTHON [PORT]

PYTHON is the interpreter of an environment with JupyterLab and ipywidgets (e.g. .venv/bin/python, or one with
ipywidgets 7.7.1 as Colab ships it). The script starts JupyterLab there on an empty folder holding one notebook
that shows an IntSlider and an `interact` — the two kinds the course uses — runs it from the browser
(headless Chromium driven by Selenium: `apt-get install chromium chromium-driver`, `pip install selenium`), and
prints whether the slider was drawn or the error JupyterLab drew instead. Not part of `make test`: it needs a
browser.

Run on 2026-12-01: ipywidgets 8.1.9 in JupyterLab 4.6.6 (the course's .venv) — both sliders drawn; ipywidgets
7.7.1 in JupyterLab 3.6.8 with its lab extension jupyterlab_widgets 1.1.1 — both drawn; ipywidgets 7.7.1 with
jupyterlab_widgets 3.x (what pip picks for 7.7.1 unless told) — "Click to show javascript error" instead. So
ipywidgets 7.7 renders in a JupyterLab whose widget extension matches it (JupyterLab 3); JupyterLab 4 needs
ipywidgets 8, which `pip install -e .` picks wherever nothing older is already installed.
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By

CELLS = ['import ipywidgets as w\nw.IntSlider(value=7, description="probe")',
         'w.interact(lambda n: n * n, n=w.IntSlider(3, 0, 9, description="interact"));']


def notebook() -> dict:
    cells = [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": s} for s in CELLS]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}


def main(python: str, port: int = 8899) -> int:
    folder = Path(tempfile.mkdtemp())
    (folder / "w.ipynb").write_text(json.dumps(notebook()))
    versions = subprocess.run([python, "-c", "import ipywidgets, jupyterlab; print(ipywidgets.__version__, "
                               "jupyterlab.__version__)"], capture_output=True, text=True).stdout.split()
    lab = subprocess.Popen([python, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--allow-root",
                            "--ServerApp.token=", "--ServerApp.password=", "--LabApp.expose_app_in_browser=True",
                            f"--ServerApp.root_dir={folder}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))    # the system's, offline
    driver = webdriver.Chrome(options=options, service=service)
    try:
        time.sleep(8)
        driver.get(f"http://localhost:{port}/lab/tree/w.ipynb")
        for _ in range(60):
            if driver.execute_script("return !!(window.jupyterapp && document.querySelector('.jp-Notebook'))"):
                break
            time.sleep(1)
        time.sleep(5)                                    # the kernel starts
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        for _ in range(60):
            sliders = driver.find_elements(By.CSS_SELECTOR, ".widget-slider, .jupyter-widgets.widget-hslider")
            if len(sliders) >= 2:
                break
            time.sleep(1)
        outputs = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")]
        drawn = len(driver.find_elements(By.CSS_SELECTOR, ".widget-slider, .jupyter-widgets.widget-hslider"))
        print(f"ipywidgets {versions[0] if versions else '?'}, JupyterLab {versions[1] if len(versions) > 1 else '?'}: "
              f"{drawn} slider(s) drawn; outputs: {outputs}")
        return 0 if drawn >= 2 else 1
    finally:
        driver.quit()
        lab.terminate()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], *(int(a) for a in sys.argv[2:3])))
