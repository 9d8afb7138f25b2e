# Self-documenting: `make help` lists every target with its `##` comment.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Heavy, reusable build outputs live outside the repository so fresh clones reuse them.
export SPA_CACHE ?= $(HOME)/.cache/spa
export CARGO_TARGET_DIR ?= $(SPA_CACHE)/cargo-target
# The project's own uv, pinned and installed by scripts/setup.sh under the cache, so every
# recipe finds it whatever the caller's PATH (`make UV=uv ...` uses one from PATH instead).
export UV_VERSION ?= 0.13.9
export UV ?= $(SPA_CACHE)/uv/$(UV_VERSION)/bin/uv
# Trust the platform's certificate store, as pip, cargo, go and git do (a registry behind a
# proxy with its own root works with no SSL_CERT_FILE in the environment).
export UV_SYSTEM_CERTS ?= 1
RUN := $(UV) run --no-sync
# pytest workers in `make test`: the one-node cluster's tests (mostly waiting on pods) run on
# one while the others run on the second.
TEST_WORKERS ?= 2

.PHONY: help setup setup-run tools run test lint test-fast test-rust test-operator test-cluster kube-testenv cluster-env crds bench bench-train images clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install uv, then every dependency (tests included), the embedded model and the native module
	@bash scripts/setup.sh test

setup-run: ## Install uv, then only what `spa run` needs (no test tools, no llama.cpp server)
	@bash scripts/setup.sh run

tools: ## Show the tools the recipes use, found as the recipes find them (fails if one is missing)
	@bash scripts/setup.sh tools

run: setup-run ## Set up, then run the whole SPA loop on the embedded model (examples/local.yaml)
	$(RUN) spa run examples/local.yaml

test: ## Set up, then run every test suite (Rust, Python, operator, the one-node cluster; root)
	@scripts/phase.sh setup $(MAKE) --no-print-directory setup
	@scripts/phase.sh cluster-env $(MAKE) --no-print-directory cluster-env
	@scripts/phase.sh lint $(MAKE) --no-print-directory lint
	@scripts/phase.sh rust-tests bash -c 'cd rust && cargo test --workspace --exclude spa-py --quiet'
	@scripts/phase.sh python-tests env SPA_REQUIRE_KUBE=1 SPA_REQUIRE_CLUSTER=1 SPA_REQUIRE_BROWSER=1 $(RUN) pytest -n $(TEST_WORKERS) --dist loadgroup

lint: ## Rust format and clippy; the native module's stub against the module; the Dockerfile
	cd rust && cargo fmt --all --check && cargo clippy --workspace --all-targets --quiet -- -D warnings
	$(RUN) python -m mypy.stubtest spa_core._native
	$(RUN) hadolint images/Dockerfile

test-fast: ## Python tests without the slow end-to-end and server tests
	$(RUN) pytest -m "not slow and not server and not cluster"

test-rust: ## Rust unit and property tests of the pure crate
	cd rust && cargo test --workspace --exclude spa-py

test-operator: kube-testenv ## Operator tests against a real kube-apiserver + etcd
	SPA_REQUIRE_KUBE=1 $(RUN) pytest tests/operator

test-cluster: setup cluster-env ## The one-node cluster's tests alone (root)
	SPA_REQUIRE_CLUSTER=1 $(RUN) pytest tests/cluster

kube-testenv: ## Build and cache etcd, helm and the Kubernetes commands (slow once)
	scripts/kube-testenv.sh build

cluster-env: ## Install the cluster's Debian packages (root), build and cache its binaries (slow once)
	scripts/kube-cluster.sh install
	scripts/kube-cluster.sh build

crds: ## Regenerate operator/crds and the chart's crds/ from the pydantic specs
	PYTHONPATH=operator $(RUN) python -m spa_operator.crd --write operator/crds
	PYTHONPATH=operator $(RUN) python -m spa_operator.crd --write charts/spa-operator/crds

bench: setup-run ## Pair-selection benchmark: Rust vs NumPy vs pure Python
	$(RUN) python -m spa_core.bench

bench-train: setup-run ## Training throughput: the project's trainer vs TRL's CPOTrainer (GPU shapes on a GPU; ARGS=...)
	$(RUN) python -m spa_core.training.throughput $(ARGS)

images: ## Build the operator, worker and trainer images (needs docker buildx; see images/)
	images/build.sh

clean: ## Remove local run directories and build leftovers in the repo
	rm -rf runs .pytest_cache .hypothesis spa_core/_native*.so
