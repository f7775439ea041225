# mspbill: PGXS build.  `make demo` and `make test` are the README's two
# commands; `make installcheck` runs every suite that can run against an
# existing server; `make check-majors` builds against every supported major;
# `make mutate` plants the bugs of test/mutations.txt one at a time.

EXTENSION = mspbill
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big = mspbill
OBJS = \
	src/userset.o \
	src/idset.o \
	src/userset_agg.o \
	src/peak_concurrency.o \
	src/allocate.o \
	src/json_fields.o \
	src/csv_fields.o

# The install script is generated from one hand-edited .sql per concept,
# kept beside its C source (the billing layer, pure SQL, in src/billing/
# by what each part is), concatenated in this order; upgrade scripts are
# written by hand.
SQL_SOURCES = \
	src/mspbill.sql \
	src/userset.sql \
	src/userset_agg.sql \
	src/peak_concurrency.sql \
	src/allocate.sql \
	src/billing/tables.sql \
	src/billing/periods.sql \
	src/billing/billable.sql \
	src/billing/quantities.sql \
	src/billing/pricing.sql \
	src/billing/lines.sql \
	src/billing/invoice.sql \
	src/finalize.sql \
	src/billing/documents.sql \
	src/billing/exports.sql \
	src/billing/psa.sql \
	src/loaders.sql \
	src/licensing.sql \
	src/privacy.sql \
	src/reporting.sql \
	src/citus.sql
DATA_built = $(EXTENSION)--$(EXTVERSION).sql
# earlier releases' generated install scripts (kept so that the upgrade
# test can install them) and the hand-written upgrade scripts
DATA = $(wildcard upgrade/$(EXTENSION)--*.sql)

# -Wextra is for our code; server headers are included as system headers
# so their unused parameters do not drown it.
PG_CPPFLAGS = -isystem $(shell $(PG_CONFIG) --includedir-server)
PG_CFLAGS = -Wall -Wextra

# pg_regress suites (sql/, expected/) and the pgTAP suites of test/sql run
# through test/bin/installcheck (test/bin/suites.sh), which replaces PGXS's
# installcheck; REGRESS stays for `make clean`
TESTS = $(sort $(wildcard sql/*.sql))
REGRESS = $(patsubst sql/%.sql,%,$(TESTS))
NO_INSTALLCHECK = 1

EXTRA_CLEAN = $(DATA_built) results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every C file sees the set layout and the aggregate helpers
$(OBJS): src/userset.h src/idset.h src/varint.h src/aggregate.h

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_SOURCES)
	cat $^ > $@

.PHONY: demo test test-citus bench stop installcheck check-majors mutate
demo:
	@bash test/bin/demo

test:
	@bash test/bin/run-tests

bench:
	@bash test/bin/bench

stop:
	@bash test/bin/cluster stop

installcheck:
	@PG_CONFIG=$(PG_CONFIG) bash test/bin/installcheck

check-majors:
	@bash test/bin/check-majors

mutate:
	@bash test/bin/mutate

# the distributed suites alone (Citus built from ../shared/vendor/citus)
test-citus:
	@CITUS=only bash test/bin/run-tests
