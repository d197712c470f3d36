# Two entry points (README): `make demo` installs and plans the bundled model,
# `make test` installs and runs the tests (all of them: the default set, then -m slow).
# torch==2.13.0 goes first so that pip takes the local CPU build instead of pulling CUDA
# packages for the range in pyproject.
PY ?= python3

.PHONY: install demo test

install:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'

demo: install
	$(PY) -m planner plan examples/resnet50.onnx --budget M_H -o plan.json

# The default set first (a few minutes), then the zoo-wide and end-to-end cases marked slow.
test: install
	$(PY) -m pytest
	$(PY) -m pytest -m slow
