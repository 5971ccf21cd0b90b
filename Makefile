# The verbs a user types. Each target sets up what it needs (the venvs are built from the requirement files).
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov
LAMBDA_VENV := .venv-lambda
DYNALITE := devtools/dynalite
PY := $(VENV)/bin/python
SAM := $(SAM_VENV)/bin/sam
# SAM builds the python3.13 layer with pyenv's 3.13 next to the machine's 3.11.
export PYENV_VERSION ?= 3.11.7:3.13.0
export SAM_CLI_TELEMETRY := 0

.PHONY: venv sam-venv checkov-venv dynalite lambda-venv demo demo-lambda up test lint security validate build deploy emulator service-models clean

$(VENV)/.installed: requirements-dev.txt layers/shared/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(SAM_VENV)/.installed: requirements-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements-sam.txt
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $@

# dynalite, the second DynamoDB the data layer's integration tests run on, at the version package-lock.json
# pins. --ignore-scripts: the one install script, classic-level's, compiles a native binding only where
# none of the prebuilds it ships fits (Linux and macOS on x64 and arm64 do), and npm 11 warns about it.
$(DYNALITE)/node_modules/.installed: $(DYNALITE)/package.json $(DYNALITE)/package-lock.json
	cd $(DYNALITE) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

# Lambda's Python runtime client (awslambdaric) on python3.13, alone: what the functions from `sam build` run
# under, beside aws-lambda-rie from the SAM CLI package (xasync up/demo --runtime lambda).
$(LAMBDA_VENV)/.installed: requirements-lambda-runtime.txt
	python3.13 -m venv --clear --without-pip $(LAMBDA_VENV)
	python3.13 -m pip --python $(LAMBDA_VENV)/bin/python install --quiet --root-user-action=ignore --only-binary=:all: -r requirements-lambda-runtime.txt
	touch $@

venv: $(VENV)/.installed
sam-venv: $(SAM_VENV)/.installed
checkov-venv: $(CHECKOV_VENV)/.installed
dynalite: $(DYNALITE)/node_modules/.installed
lambda-venv: $(LAMBDA_VENV)/.installed

demo: venv  ## the pipeline on the embedded local stack: sample images in, results table out
	$(VENV)/bin/xasync demo

demo-lambda: venv build lambda-venv  ## the demo, each function from the sam build output under Lambda's runtime
	$(VENV)/bin/xasync demo --runtime lambda

up: venv  ## the embedded local stack in the foreground (Ctrl-C stops it)
	$(VENV)/bin/xasync up

test: venv dynalite build lambda-venv  ## the whole test suite: it starts moto, dynalite, the emulator and Lambda's runtime itself
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/cfn-lint template.yaml

# Any failed check fails the target; a check skipped on purpose carries its reason in the resource's
# Metadata (checkov: skip:). --skip-download: no Prisma Cloud guideline lookups (CI has no internet).
security: checkov-venv  ## checkov on template.yaml (AWS::Serverless resources included)
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation --compact --quiet --skip-download

validate: sam-venv
	$(SAM) validate --lint --region us-east-1

build: sam-venv  ## sam build: each resource's Makefile (layers/shared, functions/*), with python3.13 (PYTHON313=...)
	$(SAM) build

deploy: build
	$(SAM) deploy --guided

emulator: venv  ## the Ximilar emulator in the foreground: make emulator ARGS="--port 8900"
	$(PY) -m ximilar_emulator --token $${XIMILAR_TOKEN:-local-token} --access-log $(ARGS)

service-models: venv  ## the layer's AWS service models, written again from the installed botocore
	$(PY) -m xasync.service_models

clean:
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache
