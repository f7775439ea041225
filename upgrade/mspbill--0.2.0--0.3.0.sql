-- mspbill 0.2.0 -> 0.3.0.  Every change to an object of the install script
-- is repeated here; test/sh/upgrade.sh checks that an updated database
-- equals a fresh install, object by object.
\echo Use "ALTER EXTENSION mspbill UPDATE TO '0.3.0'" to load this file. \quit
