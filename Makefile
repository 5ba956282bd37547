# tartan — build, install and test the managed Docker plugin.
#   make plugin    build the binary and rootfs, (re)create and enable the plugin
#   make test      everything CI runs: deps, Consul, unit, data-plane, fuzz, e2e, chaos
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PLUGIN   ?= tartan:latest
SETTINGS ?=
REGISTRY ?=
TAG      ?= latest
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The plugin's architecture (GOARCH): amd64 or arm64; its iptables comes
# from Debian's packages of the same architecture.
ARCH     ?= $(shell $(GO) env GOARCH)
BUILD    := build
GO       ?= go
CONSUL_VERSION := 1.20.1
CONSUL_BIN ?= $(HOME)/.cache/tartan/consul-$(CONSUL_VERSION)/consul
DOCKER26_DIR ?= $(HOME)/.cache/tartan/docker26
DOCKER28_DIR ?= $(HOME)/.cache/tartan/docker28
DOCKER29_DIR ?= $(HOME)/.cache/tartan/docker29
# Docker 29 is built from moby's module (Debian packages no 29 yet).
MOBY_VERSION := v2.0.0-beta.24
RUNC_VERSION := v1.4.4
# A count, not a duration: Go's fuzz coordinator can fail a duration-bounded
# run with "context deadline exceeded" on a loaded machine (golang/go#75804).
FUZZTIME ?= 20000x
E2E_TIMEOUT ?= 40m
# Debian's docker compose v2 CLI plugin (forky's 2.40), for the compose test.
COMPOSE_DIR ?= $(HOME)/.cache/tartan/compose
COMPOSE_BIN ?= $(COMPOSE_DIR)/docker-compose
export CONSUL_BIN COMPOSE_BIN

.PHONY: install check-arm64 release clean-testbed preflight bpf check-bpf all build plugin-dir plugin push deps consul docker26 docker28 docker29 compose test unit fuzz e2e e2e26 e2e28 e2e29 e2e29nft e2e-legacy test-engines chaos bench scale lint clean

all: build

build:
	CGO_ENABLED=0 GOARCH=$(ARCH) $(GO) build -trimpath -ldflags "-s -w -X github.com/tartan-net/tartan/plugin/api.Version=$(VERSION)" -o $(BUILD)/tartan ./plugin/tartan

plugin-dir: build
	ROOTFS_ARCH=$(ARCH) plugin/rootfs.sh $(BUILD)/tartan config.json $(BUILD)/plugin
	plugin/record.sh $(BUILD)/plugin $(VERSION) $(ARCH)

# Checks the machine first (Go, apt, a running Docker Engine 20.10+), then
# replaces an older plugin of the same name. SETTINGS="STORE=consul://...
# ADVERTISE=eth1" are applied before it is enabled.
preflight:
	@plugin/preflight.sh $(GO)

plugin: preflight plugin-dir
	@$(MAKE) --no-print-directory install

# Installs the plugin make plugin built in $(BUILD)/plugin, as make plugin
# does after building (the tests build once and install on every host).
install: preflight
	-docker plugin disable -f $(PLUGIN) >/dev/null 2>&1
	-docker plugin rm -f $(PLUGIN) >/dev/null 2>&1
	docker plugin create $(PLUGIN) $(BUILD)/plugin
	$(if $(strip $(SETTINGS)),docker plugin set $(PLUGIN) $(SETTINGS))
	docker plugin enable $(PLUGIN)

# Publishes the plugin: make push REGISTRY=registry.example:5000 [TAG=v1]
push: plugin-dir
	@test -n "$(REGISTRY)" || { echo "make push needs REGISTRY=host:port" >&2; exit 1; }
	-docker plugin rm -f $(REGISTRY)/tartan:$(TAG) >/dev/null 2>&1
	docker plugin create $(REGISTRY)/tartan:$(TAG) $(BUILD)/plugin
	docker plugin push $(REGISTRY)/tartan:$(TAG)
	docker plugin rm -f $(REGISTRY)/tartan:$(TAG)

# A release: make release VERSION=v1.2.3 REGISTRY=host:port pushes
# REGISTRY/tartan:v1.2.3 (amd64) and REGISTRY/tartan:v1.2.3-arm64 (one tag
# per architecture: docker plugin install reads no manifest list), each with
# its record (version, commit, Debian packages, BPF objects) in
# build/release/v1.2.3/ and in the plugin as /release.json.
RELEASE_ARCHS ?= amd64 arm64
release: preflight
	plugin/release.sh "$(VERSION)" "$(REGISTRY)" $(RELEASE_ARCHS)

deps:
	e2e/deps.sh

# A real Consul server for the tests, built once from the Go module proxy.
consul: $(CONSUL_BIN)
$(CONSUL_BIN):
	@mkdir -p $(dir $(CONSUL_BIN))
	@echo "building consul $(CONSUL_VERSION) (once; several minutes on 2 cores)"
	cd e2e/consulbuild && $(GO) build -o $(CONSUL_BIN) github.com/hashicorp/consul

# A current engine (Docker 26, Debian trixie's) beside the system's 20.10.
docker26:
	e2e/engine.sh $(DOCKER26_DIR) trixie trixie

docker28:
	e2e/engine.sh $(DOCKER28_DIR) forky trixie

compose: $(COMPOSE_BIN)
$(COMPOSE_BIN):
	rm -rf $(COMPOSE_DIR).tmp && mkdir -p $(COMPOSE_DIR).tmp
	plugin/debs.sh forky $(COMPOSE_DIR).tmp docker-compose
	dpkg-deb -x $(COMPOSE_DIR).tmp/docker-compose_*.deb $(COMPOSE_DIR).tmp/root
	install -m 0755 $(COMPOSE_DIR).tmp/root/usr/libexec/docker/cli-plugins/docker-compose $(COMPOSE_DIR).tmp/docker-compose
	rm -rf $(COMPOSE_DIR).tmp/root $(COMPOSE_DIR).tmp/*.deb $(COMPOSE_DIR) && mv $(COMPOSE_DIR).tmp $(COMPOSE_DIR)
	$(COMPOSE_BIN) version

docker29: docker28
	e2e/moby.sh $(DOCKER29_DIR) $(MOBY_VERSION) $(RUNC_VERSION) $(DOCKER28_DIR)

# Each step in turn, with the time it took (also in build/test-times). A
# make test that is stopped (kill, Ctrl-C) stops every step's processes with
# it (their process group): the test binaries remove what they made, and the
# next make test's clean-testbed removes whatever is left.
TEST_STEPS := clean-testbed deps consul docker28 compose unit check-arm64 fuzz e2e e2e28 chaos
test:
	@mkdir -p $(BUILD); rm -f $(BUILD)/test-times; begin=$$(date +%s); \
	trap 'trap "" TERM INT HUP; echo "make test: stopped: stopping every step"; kill -TERM 0; wait; exit 143' TERM INT HUP; \
	for step in $(TEST_STEPS); do start=$$(date +%s); \
	  $(MAKE) --no-print-directory $$step CHAOS_PER_HOST=$(TEST_CHAOS_PER_HOST) TRUST_PER_HOST=$(TEST_TRUST_PER_HOST) ROTATION_ROUNDS=$(TEST_ROTATION_ROUNDS) & \
	  if ! wait $$!; then \
	    echo "make test: $$step FAILED after $$(( $$(date +%s) - start )) s ($$(( $$(date +%s) - begin )) s in all)" | tee -a $(BUILD)/test-times; exit 1; fi; \
	  echo "make test: $$step took $$(( $$(date +%s) - start )) s" | tee -a $(BUILD)/test-times; done; \
	echo "make test: passed in $$(( $$(date +%s) - begin )) s" | tee -a $(BUILD)/test-times

# Removes what an earlier test run left running or in place (a killed make
# test, a go test -timeout): found by the records each run keeps under
# /run/tartan-testbed, nothing else is touched. make test runs it first.
clean-testbed:
	$(GO) run ./e2e/cleanup

# The scale harness's smoke (10 simulated hosts) runs here, under the race
# detector; make scale runs its table.
unit: lint consul
	$(GO) test -race -count=1 ./errdefs/... ./kv/... ./ipam/... ./policy/... ./driver/... ./plugin/... ./internal/... ./e2e/scale/

# The arm64 plugin, checked on this amd64 machine under qemu-user (Debian's
# qemu-user-static, which make deps installs): its binary and its iptables
# run (plugin/check-arm64.sh says what qemu-user cannot do), the unit tests
# that need no kernel pass, and the fast path object the binary embeds is
# byte for byte the one the amd64 load test loads (qemu-user has no bpf(2),
# so that the tests that load it are the ones left out here). -trimpath, as the plugin's
# binary is built: the test binaries reuse the packages it compiled.
ARM64_UNIT := ./errdefs/ ./kv/... ./ipam/ ./plugin/... ./driver/routing/... ./driver/backend/... ./driver/hostgw/ \
	./driver/vxlan/ ./driver/routed/ ./driver/macvlan/ ./driver/kernel/ ./driver/fastpath/ ./driver/wireguard/
check-arm64: consul
	$(MAKE) --no-print-directory plugin-dir ARCH=arm64 BUILD=$(BUILD)/arm64
	plugin/check-arm64.sh $(BUILD)/arm64/plugin
	CGO_ENABLED=0 GOARCH=arm64 TARTAN_TEST_EMULATOR=qemu-aarch64-static $(GO) test -trimpath -count=1 -exec qemu-aarch64-static \
	  -skip '^(TestLoadsWithThePluginsCapabilities|TestFastPathDrift)$$' $(ARM64_UNIT)

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzLayout -fuzztime=$(FUZZTIME) ./ipam
	$(GO) test -run='^$$' -fuzz=FuzzRequestDecoding -fuzztime=$(FUZZTIME) ./plugin
	$(GO) test -run='^$$' -fuzz=FuzzIPAMRequests -fuzztime=$(FUZZTIME) ./plugin
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./policy

# Each test host builds and installs the plugin with make plugin (BUILD in
# its own folder). Every e2e test runs in namespaces of its own and is
# marked parallel: E2E_PARALLEL of them at a time (they are mostly waiting
# on Docker and the network).
E2E_PARALLEL ?= 4
e2e: compose
	$(GO) test -count=1 -tags e2e -timeout $(E2E_TIMEOUT) -parallel $(E2E_PARALLEL) -v -skip 'TestSwarmGlobalScope|TestGatewayPriority' ./e2e/

# What runs again on a newer engine: what talks to Docker (installs,
# upgrades, restarts, swarm, compose, gateways, the firewall beside
# Docker's own chains) and one of each data path; what tartan does alone
# with the store and the kernel runs on 20.10 (make e2e).
ENGINE_SUITE := TestSingleHostEmbedded|TestDualStack|TestWireGuard|TestRestart|TestMultiHost$$|TestSwarmGlobalScope|TestLifecycleSafety|TestIsolation|TestUpgrade|TestUpgradeFromRelease|TestClusterNetworks|TestLegacyFirewallAfterReboot|TestGatewayAllocation|TestCompose|TestInstallFromRegistry|TestPluginIndex
# 28 and later: gw-priority too.
ENGINE_SUITE28 := $(ENGINE_SUITE)|TestGatewayPriority
# nftables mode: no swarm (Docker refuses it) and no iptables-legacy reboot.
NFT_SUITE := TestSingleHostEmbedded|TestDualStack|TestWireGuard|TestRestart|TestMultiHost$$|TestLifecycleSafety|TestIsolation|TestUpgrade|TestClusterNetworks|TestGatewayAllocation|TestCompose|TestGatewayPriority

# engine_run <engine dir>,<prefix>,<firewall backend>,<tests>: a newer
# engine's run; its namespaces have their own prefix.
define engine_run
DOCKERD=$(1)/bin/dockerd DOCKERD_PATH=$(1)/bin:$$PATH TARTAN_E2E_PREFIX=$(2) DOCKERD_FIREWALL=$(3) \
	  $(GO) test -count=1 -tags e2e -timeout $(E2E_TIMEOUT) -parallel $(E2E_PARALLEL) -v -run '$(4)' ./e2e/
endef

e2e26: docker26 compose
	$(call engine_run,$(DOCKER26_DIR),t6-,iptables,$(ENGINE_SUITE))

e2e28: docker28 compose
	$(call engine_run,$(DOCKER28_DIR),t8-,iptables,$(ENGINE_SUITE28))

e2e29: docker29 compose
	$(call engine_run,$(DOCKER29_DIR),t9-,iptables,$(ENGINE_SUITE28))

# Docker 29 with its nftables firewall backend.
e2e29nft: docker29 compose
	$(call engine_run,$(DOCKER29_DIR),tn-,nftables,$(NFT_SUITE))

# Docker 20.10 on a host whose iptables is the legacy one: tartan follows
# Docker into the legacy tables.
LEGACY_SUITE := TestSingleHostEmbedded|TestDualStack|TestMultiHost$$|TestLifecycleSafety|TestIsolation|TestRestart
e2e-legacy:
	TARTAN_E2E_PREFIX=tl- DOCKERD_FIREWALL=iptables-legacy \
	  $(GO) test -count=1 -tags e2e -timeout $(E2E_TIMEOUT) -parallel $(E2E_PARALLEL) -v -run '$(LEGACY_SUITE)' ./e2e/

# The whole engine matrix, one engine after another (each run's tests side
# by side); make test runs Docker 20.10 (make e2e) and 28 (make e2e28).
ENGINE_RUNS := e2e26 e2e29 e2e29nft e2e-legacy
test-engines: docker26 docker28 docker29 compose
	@for r in $(ENGINE_RUNS); do $(MAKE) --no-print-directory $$r || exit 1; done

# The fault suite: 3 hosts, a 3-server Consul, 3 x 100 concurrent docker runs
# per scenario while the plugin is killed, the Consul leader is killed, a host
# is cut off from Consul; four numbers per scenario, all must be 0. Then the
# key rotation soak: 3 hosts on a wireguard network, every host's key rotated
# in turn 5 s apart for 10 rounds under pings and a TCP stream.
# CHAOS_PER_HOST: containers each host starts per scenario of issue 9's
# faults, TRUST_PER_HOST per scenario of issue 24's; ROTATION_ROUNDS: rounds
# of the key rotation soak. make test runs the suite lighter
# (TEST_CHAOS_PER_HOST, TEST_TRUST_PER_HOST, TEST_ROTATION_ROUNDS) to keep
# within its time; make chaos runs it whole.
CHAOS_PER_HOST ?= 100
ROTATION_ROUNDS ?= 10
TRUST_PER_HOST ?= 30
TEST_CHAOS_PER_HOST ?= 24
TEST_TRUST_PER_HOST ?= 18
TEST_ROTATION_ROUNDS ?= 3
chaos: deps consul
	CHAOS_PER_HOST=$(CHAOS_PER_HOST) TRUST_PER_HOST=$(TRUST_PER_HOST) ROTATION_ROUNDS=$(ROTATION_ROUNDS) $(GO) test -count=1 -tags 'e2e chaos' -timeout 45m -v -run 'TestChaos|TestRotationSoak' ./e2e/

# Throughput, latency and control-plane figures against the host's network and
# Docker's own drivers, side by side; the table lands in build/bench.md.
bench: plugin-dir
	$(GO) test -count=1 -tags bench -timeout 60m -v -run TestBench ./e2e/ 2>&1 | grep -v 'level=' 

# The control plane at 10 to 1,000 simulated hosts over one real Consul
# (hosts run tartan's IPAM, registration and routing in one process); the
# table lands in build/scale.md. About an hour on 2 cores.
scale: consul
	@mkdir -p $(BUILD)
	TARTAN_SCALE=full TARTAN_SCALE_OUT=$(abspath $(BUILD)) $(GO) test -count=1 -timeout 4h -v -run 'TestScale|TestNetworksPerHost' ./e2e/scale/

# The fast path's BPF objects, compiled from driver/fastpath/bpf/fastpath.c
# with Debian's clang and libbpf headers (make deps installs them) and
# committed, so that a plain go build needs no C compiler.
BPF_ARCH_INCLUDE ?= /usr/include/$(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
bpf:
	BPF_ARCH_INCLUDE=$(BPF_ARCH_INCLUDE) $(GO) generate ./driver/fastpath

# Fails when the committed objects are not what the source compiles to.
check-bpf: bpf
	@git diff --quiet -- driver/fastpath && test -z "$$(git status --porcelain -- driver/fastpath)" || \
		{ git status --short -- driver/fastpath; echo "driver/fastpath: the BPF objects differ from bpf/fastpath.c: commit what make bpf made"; exit 1; }

lint: check-bpf
	$(GO) vet ./...
	$(GO) vet -tags 'e2e chaos bench' ./e2e/...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	@! git grep -nE 'netlink\.[A-Za-z]*List[A-Za-z]*\(' -- '*.go' ':!driver/kernel/netlinksafe.go' ':!*_test.go' || \
		{ echo "netlink dumps go through driver/kernel/netlinksafe.go (they may be interrupted)"; exit 1; }
	@! git grep -nE 'strings\.Contains\(err\.Error\(\)' -- '*.go' ':!*_test.go' || \
		{ echo "classify errors by type (errors.Is/As), not by their text"; exit 1; }

clean:
	rm -rf $(BUILD)
