# Everything runs with the project's virtual environment; `make setup` creates it.
PY ?= .venv/bin/python
PYTEST_ARGS ?=
# Python keeps compiled modules in __pycache__ (git ignores it) even where the environment asks it not to
# (PYTHONDONTWRITEBYTECODE): without them every process compiles each imx module it imports again, ~0.6 s
# of CPU per service start (three services' modules: 1.65 s to import from source, 1.05 s from the cache);
# the whole test suite's time did not change measurably with it (748 and 768 s against 742-759 s before).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup proto lint unit test up stop run bench bench-series profile bench-deid bench-kafka-client bench-audit chaos clean

setup:
	bash infra/setup.sh

proto:
	$(PY) tools/gen_proto.py

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy services tools

unit:
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

# -rfEs lists failures, errors and skips in the closing summary; --durations=25 the slowest tests (the
# next cut starts from data). Any non-zero pytest status fails the target, including 5 (no tests
# collected). TEST_WORKERS processes (pytest-xdist) share the tests a file at a time, so a module's
# fixtures are built once; each process starts its own Kafka, PostgreSQL and FerretDB. Most integration
# tests wait on servers more than they compute, so two processes on two cores nearly halve the wall
# time. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest tests -q -rfEs --durations=25 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Kafka, PostgreSQL + FerretDB, the five services and the central gateways (no demo); returns when
# every one answers.
up: setup
	$(PY) -m tools.services_stack

stop:
	@if [ -x "$(PY)" ]; then $(PY) -m tools.devstack stop; fi

# Infrastructure, the five services and the central gateways, then a demo through the whole pipeline
# with a summary.
run: setup
	$(PY) -m tools.demo

# N instances (default 2,000 CT, IMX_BENCH_INSTANCES) by C-STORE through the pipeline (started when not
# running) and the partner gateway into a storescp; then Orthanc doing the same job on the first 200.
# Before the JSON (the last line) it says which of issue 10's targets the run met.
# BENCH_ARGS=--skip-orthanc for a quick run.
bench: setup
	$(PY) -m tools.bench $(BENCH_ARGS)

# `make bench` SERIES_RUNS times (default 5) back to back without cleaning, Orthanc left out: issue 10's
# check that the last run keeps 90% of the first's rate as var/ fills. `make clean` first for the issue's
# procedure. BENCH_ARGS go to every run. Last line is JSON.
SERIES_RUNS ?= 5
bench-series: setup
	$(PY) -m tools.bench_series --runs $(SERIES_RUNS) -- $(BENCH_ARGS)

# `make bench` with every service (and the bench's gateway) sampled by py-spy for the whole run: flame graphs
# in var/profile/<service>.svg, collapsed stacks beside them (<service>.txt), each process's functions with the
# most samples of their own in var/profile/summary.txt; the Kafka broker's by async-profiler
# (var/profile/kafka.html and kafka.txt). BENCH_ARGS as for bench; PROFILE_ARGS=--gil samples only the thread
# holding the GIL (Python's CPU without the waits in fsync and select that py-spy otherwise counts as work).
profile: setup
	$(PY) -m tools.profile $(PROFILE_ARGS) -- $(BENCH_ARGS)

# De-identification throughput on one core: imx vs dicognito vs pydicom's deid, each tool in its own
# virtual environment under var/bench-venv (never the project's). N = IMX_BENCH_INSTANCES (default
# 2,000). Last line is JSON.
bench-deid: setup
	$(PY) -m tools.bench_deid

# What a stage's Kafka client costs: imx's bus (kafka-python) against librdkafka (confluent-kafka, in its own
# environment under var/bench-venv, never the project's), each as a stage reading and publishing records
# (hop) and as a reader only (read), at the pipeline's pace on a private broker, runs alternating.
# BENCH_ARGS (--records, --rate, --rounds, --modes, --payload-bytes). Last line is JSON.
bench-kafka-client: setup
	$(PY) -m tools.bench_kafka_client $(BENCH_ARGS)

# N audit records (default 1,000,000, IMX_BENCH_AUDIT_RECORDS) from Kafka events through the audit service
# on its own Kafka and FerretDB/PostgreSQL (started in a temporary folder, removed after); then study
# trails, a month of one organisation's daily figures and pages of events, timed. Last line is JSON.
bench-audit: setup
	$(PY) -m tools.bench_audit $(BENCH_ARGS)

# The fault suite against the devstack (started when not running): SIGKILL of each service and of the
# broker during a ledgered run, a 60 s database freeze, a SIGKILL of the database, the partner's PACS
# down 10 min, 10,000 malformed inputs through C-STORE and STOW-RS. ~26 min on the 2-core machine;
# CHAOS_ARGS=--quick for ~3 min. Last line is JSON; exit status 1 when a target is missed.
chaos: setup
	$(PY) -m tools.chaos $(CHAOS_ARGS)

clean: stop
	rm -rf var
