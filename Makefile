# mspbill: PGXS build.  `make demo` and `make test` are the README's two
# commands; `make installcheck` runs pg_regress against an existing server.

EXTENSION = mspbill
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big = mspbill
OBJS = \
	src/userset.o \
	src/idset.o \
	src/userset_agg.o \
	src/peak_concurrency.o \
	src/allocate.o \
	src/json_fields.o

# The install script is generated from one hand-edited .sql per concept,
# kept beside its C source; upgrade scripts are written by hand.
SQL_SOURCES = \
	src/mspbill.sql \
	src/userset.sql \
	src/userset_agg.sql \
	src/peak_concurrency.sql \
	src/allocate.sql \
	src/billing.sql \
	src/finalize.sql \
	src/loaders.sql \
	src/privacy.sql
DATA_built = $(EXTENSION)--$(EXTVERSION).sql
DATA = $(wildcard upgrade/$(EXTENSION)--*--*.sql)

# -Wextra is for our code; server headers are included as system headers
# so their unused parameters do not drown it.
PG_CPPFLAGS = -isystem $(shell $(PG_CONFIG) --includedir-server)
PG_CFLAGS = -Wall -Wextra

TESTS = $(sort $(wildcard sql/*.sql))
REGRESS = $(patsubst sql/%.sql,%,$(TESTS))
REGRESS_OPTS = --inputdir=. --load-extension=pgtap --load-extension=$(EXTENSION)

EXTRA_CLEAN = $(DATA_built) results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every C file sees the set layout and the aggregate helpers
$(OBJS): src/userset.h src/idset.h src/varint.h src/aggregate.h

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_SOURCES)
	cat $^ > $@

.PHONY: demo test bench stop
demo:
	@bash test/bin/demo

test:
	@bash test/bin/run-tests

bench:
	@bash test/bin/bench

stop:
	@bash test/bin/cluster stop
