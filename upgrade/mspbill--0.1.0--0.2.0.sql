-- mspbill 0.1.0 -> 0.2.0.  Only what changed between the two releases'
-- install scripts belongs here; test/sh/upgrade.sh compares an updated
-- 0.1.0 with a fresh 0.2.0 install object by object and prints every
-- difference left.

\echo Use "ALTER EXTENSION mspbill UPDATE TO '0.2.0'" to load this file. \quit
