# minivisor: the two set-up commands (see README.md) and a few helpers.
#   make run    - install missing packages, build, boot the built-in demo guest
#   make test   - install missing packages, build the guests, run every test
#   make bench  - benchmarks (ratios against a minimal C KVM loop in the same run)
#   make linux  - build the small Linux kernel and the busybox initramfs (Guests/linux, cached in ~/.cache/minivisor/linux)
#   make linux-test - make linux, then boot them (LinuxBootIntegrationTests)
#   make fuzz   - libFuzzer targets (Fuzz/), FUZZ_SECONDS each (default 60); see scripts/fuzz.sh
SWIFT ?= swift

.PHONY: run test bench guests deps clean fuzz linux linux-test

deps:
	@./scripts/install-deps.sh

guests: deps
	@$(MAKE) -s -C Guests

run: deps
	$(SWIFT) build -c release --static-swift-stdlib --product minivisor
	$$($(SWIFT) build -c release --show-bin-path)/minivisor run

test: guests
	$(SWIFT) test

bench: guests
	$(SWIFT) build -c release --static-swift-stdlib --product minivisor
	$$($(SWIFT) build -c release --show-bin-path)/minivisor bench

linux: deps
	@Guests/linux/install-deps.sh
	@Guests/linux/build-kernel.sh >/dev/null
	@Guests/linux/build-initramfs.sh >/dev/null

linux-test: linux
	MINIVISOR_LINUX_KERNEL=$$(Guests/linux/build-kernel.sh) MINIVISOR_LINUX_INITRD=$$(Guests/linux/build-initramfs.sh) \
		$(SWIFT) test --filter LinuxBootIntegrationTests

fuzz: guests
	SWIFT=$(SWIFT) ./scripts/fuzz.sh

clean:
	$(MAKE) -s -C Guests clean
	rm -rf .build .build-fuzz
