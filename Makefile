# vurs: build, install and uninstall the binaries, their man pages and shell completions,
# and the VUOS modules. See docs/INSTALL.md.
#
#   make                      cargo build --release of the binaries and modules, and the pages
#   make install              into $(DESTDIR)$(PREFIX) (PREFIX=/usr/local by default)
#   make uninstall            removes exactly what install put there
#   make install-user         binaries in ~/.local/bin, modules in ~/.vu/modules
#   make uninstall-user
#
# PROFILE=release (default), or any cargo profile (dev and test build into target/debug).
# CARGO_TARGET_DIR is honoured as cargo honours it.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
BASHDIR ?= $(DATADIR)/bash-completion/completions
ZSHDIR ?= $(DATADIR)/zsh/site-functions
FISHDIR ?= $(DATADIR)/fish/vendor_completions.d
# Where umvu looks for modules: <libdir>/vu/modules (then ~/.vu/modules first of all).
MODULEDIR ?= $(PREFIX)/lib/vu/modules

CARGO ?= cargo
PROFILE ?= release
CARGO_TARGET_DIR ?= target
OUT := $(CARGO_TARGET_DIR)/$(if $(filter dev test,$(PROFILE)),debug,$(PROFILE))
GEN := $(OUT)/vurs-generated

INSTALL ?= install

# The binaries and the packages that build them.
BINS := fusefatfs fuseext2 vudevpartx vudevramdisk vufs vuimg vunbd
# The daemons mount(8) can start as `mount -t fuse.NAME`.
MOUNT_DAEMONS := fusefatfs fuseext2 vudevpartx vudevramdisk vufs
BIN_PACKAGES := vufuse vudev-fuse vufs-fuse vuimg vudev-nbd vurs-manpages
# The VUOS modules: file names (lib<name>.so is installed as <name>.so) and packages.
MODULES := vudevpartx vudevramdisk vudevvdi vufs vufusefatfs vufuseext2
MODULE_PACKAGES := vudevpartx vudevramdisk vudevvdi vufs-module vufusefatfs vufuseext2

.PHONY: all build docs install install-files check-mount-path uninstall install-user uninstall-user clean-docs

all: build

build:
	$(CARGO) build --profile $(PROFILE) $(addprefix -p ,$(BIN_PACKAGES) $(MODULE_PACKAGES))
	$(MAKE) docs

# Man pages and completions, from the binaries' clap definitions.
docs:
	rm -rf $(GEN)
	$(OUT)/vurs-manpages $(GEN) >/dev/null

install: build
	$(MAKE) install-files

# Copies what `build` made; builds nothing.
install-files:
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHDIR) \
		$(DESTDIR)$(ZSHDIR) $(DESTDIR)$(FISHDIR) $(DESTDIR)$(MODULEDIR)
	for b in $(BINS); do \
		$(INSTALL) -m 0755 $(OUT)/$$b $(DESTDIR)$(BINDIR)/$$b || exit 1; \
		$(INSTALL) -m 0644 $(GEN)/man/$$b.1 $(DESTDIR)$(MANDIR)/man1/$$b.1 || exit 1; \
		$(INSTALL) -m 0644 $(GEN)/bash/$$b $(DESTDIR)$(BASHDIR)/$$b || exit 1; \
		$(INSTALL) -m 0644 $(GEN)/zsh/_$$b $(DESTDIR)$(ZSHDIR)/_$$b || exit 1; \
		$(INSTALL) -m 0644 $(GEN)/fish/$$b.fish $(DESTDIR)$(FISHDIR)/$$b.fish || exit 1; \
	done
	for m in $(MODULES); do \
		$(INSTALL) -m 0755 $(OUT)/lib$$m.so $(DESTDIR)$(MODULEDIR)/$$m.so || exit 1; \
	done
	@if [ -z "$(DESTDIR)" ]; then $(MAKE) -s check-mount-path; fi

# mount(8) runs `mount.fuse3`, which starts the daemon through /bin/sh with the shell's
# default PATH: say when that finds no installed daemon, or another program of its name first
# (a C fusefatfs in /usr/local/bin shadows ours in /usr/bin). Only warns.
check-mount-path:
	@for b in $(MOUNT_DAEMONS); do \
		found=$$(env -i /bin/sh -c "command -v $$b" 2>/dev/null); \
		if [ -z "$$found" ]; then \
			echo "warning: mount -t fuse.$$b will not find $(BINDIR)/$$b: mount(8) looks only in /bin/sh's default PATH (docs/INSTALL.md)" >&2; \
		elif ! [ "$$found" -ef "$(BINDIR)/$$b" ]; then \
			echo "warning: mount -t fuse.$$b will run $$found, not $(BINDIR)/$$b: it comes first in /bin/sh's default PATH, which mount(8) uses (docs/INSTALL.md)" >&2; \
		fi; \
	done

# Removes the files install put; then the module directory (ours) if empty, and, under a
# DESTDIR, every directory install made there that is now empty (never DESTDIR itself).
uninstall:
	for b in $(BINS); do \
		rm -f $(DESTDIR)$(BINDIR)/$$b $(DESTDIR)$(MANDIR)/man1/$$b.1 \
			$(DESTDIR)$(BASHDIR)/$$b $(DESTDIR)$(ZSHDIR)/_$$b $(DESTDIR)$(FISHDIR)/$$b.fish; \
	done
	for m in $(MODULES); do rm -f $(DESTDIR)$(MODULEDIR)/$$m.so; done
	rmdir $(DESTDIR)$(MODULEDIR) 2>/dev/null || true
	rmdir "$$(dirname $(DESTDIR)$(MODULEDIR))" 2>/dev/null || true
	if [ -n "$(DESTDIR)" ]; then \
		for d in $(BINDIR) $(MANDIR)/man1 $(BASHDIR) $(ZSHDIR) $(FISHDIR) $(MODULEDIR); do \
			d="$(DESTDIR)$$d"; \
			while [ "$$d" != "$(DESTDIR)" ] && [ "$$d" != "/" ]; do \
				if [ -d "$$d" ]; then rmdir "$$d" 2>/dev/null || break; fi; \
				d=$$(dirname "$$d"); \
			done; \
		done; \
	fi

USER_PREFIX := $(HOME)/.local
USER_MODULEDIR := $(HOME)/.vu/modules

install-user: build
	$(MAKE) install-files DESTDIR= PREFIX=$(USER_PREFIX) MODULEDIR=$(USER_MODULEDIR)

uninstall-user:
	$(MAKE) uninstall DESTDIR= PREFIX=$(USER_PREFIX) MODULEDIR=$(USER_MODULEDIR)

clean-docs:
	rm -rf $(GEN)
