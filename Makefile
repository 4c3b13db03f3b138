# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8080
WORKERS ?= 2

.PHONY: install serve daemon stop test train fast-train evaluate bench fixtures clean fuzz soak \
        fairness hostile test-runs cluster replicas bench-workers bench-protocols bench-replicas accuracy wild

AXE = var/npm/node_modules/axe-core/axe.min.js

install: $(STAMP) $(AXE)

$(AXE):                        # axe-core, which the browser test runs inside each page
	npm install --prefix var/npm --no-audit --no-fund --silent axe-core@4.14.1

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

serve: install                 ## run the service in the foreground on the shipped graphs
	$(PY) -m service serve --config conf/service.conf --port $(PORT)

daemon: install                ## run it in the background; stop with `make stop`
	mkdir -p var
	$(PY) -m service serve --config conf/service.conf --port $(PORT) --daemon --pidfile var/service.pid

stop:
	kill -TERM $$(cat var/service.pid)

cluster: install               ## WORKERS workers (2) behind nginx on PORT, in the foreground; Ctrl-C stops
	$(PY) -m service cluster --config conf/service.conf --port $(PORT) --workers $(WORKERS)

replicas: install              ## PostgreSQL, Redis, S3 and 2 replicas behind nginx on PORT; Ctrl-C stops
	$(PY) -m service replicas --config conf/service.conf --port $(PORT) --replicas 2

test: install                  ## the whole suite (CI runs exactly this)
	$(PY) -m pytest -q

train: install                 ## train both models in full and export new versions to graphs/
	$(PY) -m service train --model digits-cnn --epochs 30 --batch-size 128
	$(PY) -m service train --model digits-rnn --epochs 30 --batch-size 128

fast-train: install            ## one epoch of each into var/graphs (not served: below the QA floor)
	$(PY) -m service train --model digits-cnn --epochs 1 --graphs-dir var/graphs
	$(PY) -m service train --model digits-rnn --epochs 1 --graphs-dir var/graphs

evaluate: install
	$(PY) -m service evaluate --model digits-cnn
	$(PY) -m service evaluate --model digits-rnn

bench: install                 ## measure and rewrite bench/RESULTS.md
	$(PY) bench/run.py

bench-workers: install         ## 1 vs 2 workers vs 2 behind nginx (~5 min) -> bench/RESULTS.md "workers"
	$(PY) bench/workers.py

bench-protocols: install       ## V2 and TF Serving vs the native route (~4 min) -> bench/RESULTS.md "protocols"
	$(PY) bench/protocols.py

bench-replicas: install        ## shared stores vs embedded, 2 processes behind nginx (~5 min) -> "replicas"
	$(PY) bench/replicas.py

fuzz: install                  ## tests/web/test_fuzz.py with many more cases than CI's default
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} $(PY) -m pytest -q tests/web/test_fuzz.py

soak: install                  ## 10-minute soak at 32 clients, then a kill -9 fault run (not in CI)
	status=0; \
	$(PY) bench/soak.py --clients 32 --duration 600 || status=1; \
	$(PY) bench/soak.py --clients 32 --duration 120 --kill-after 60 || status=1; \
	exit $$status

fairness: install              ## a flood from one key vs another key's latency -> bench/RESULTS.md
	$(PY) bench/fairness.py

hostile: install               ## the hostile-input table against a fresh server -> bench/RESULTS.md
	$(PY) bench/hostile.py

accuracy: install              ## the default model on the wild set, MNIST, preprocessing speed -> bench/RESULTS.md
	$(PY) bench/accuracy.py

wild: install                  ## the wild set's figures and pictures only, into var/wild/ (no RESULTS.md)
	$(PY) -m service evaluate --model digits-cnn --wild

test-runs: install             ## the whole suite 5 times on a clean clone -> bench/RESULTS.md
	$(PY) bench/test_runs.py --runs $${RUNS:-5}

fixtures: install
	$(PY) tests/fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) .pytest_cache var
