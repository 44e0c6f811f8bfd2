# Two commands that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first, pinned: an open range pulls a multi-GB CUDA build (see DESIGN.md).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# tritonserver for `trtformer serve` and its tests: without its declared numpy<2 (it runs with numpy 2).
	$(BIN)/pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trtformer export tiny-gpt2 -o artifacts/tiny-gpt2 --overwrite
	$(BIN)/trtformer info artifacts/tiny-gpt2
	$(BIN)/trtformer parity artifacts/tiny-gpt2 --backend ort-cpu
	$(BIN)/trtformer generate artifacts/tiny-gpt2 --prompt-ids 1,2,3,4 --max-new-tokens 8
	$(BIN)/trtformer generate artifacts/tiny-gpt2 --prompt-ids 1,2,3,4 --max-new-tokens 8 --temperature 0.8 --top-k 40 --top-p 0.95 --seed 0
	$(BIN)/trtformer bench artifacts/tiny-gpt2 --batch 1 4 --prompt-len 16 --new-tokens 16
	$(BIN)/trtformer export tiny-bert -o artifacts/tiny-bert --overwrite --optimize --quantize int8-dynamic
	$(BIN)/trtformer info artifacts/tiny-bert
	$(BIN)/trtformer parity artifacts/tiny-bert --graph optimized
	printf '1,5,6,7,2\n1,8,2\n' > artifacts/tiny-bert-ids.txt
	$(BIN)/trtformer encode artifacts/tiny-bert --input-ids artifacts/tiny-bert-ids.txt

test: $(STAMP)
	$(BIN)/pytest -m "not gpu and not trt" -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/gpt_decode.py

clean:
	rm -rf $(VENV) artifacts
