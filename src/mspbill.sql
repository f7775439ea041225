-- mspbill: exact per-user billing for managed-service providers.
-- Generated install scripts start with this file; the concepts follow,
-- each from the .sql file beside its C source.

\echo Use "CREATE EXTENSION mspbill" to load this file. \quit
