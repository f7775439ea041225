-- Loaders for real logon sources: Windows Security events (NXLog or
-- Winlogbeat JSON lines), Microsoft Entra ID sign-ins (Graph JSON lines)
-- and EMR/EHR access audits (CSV).  Each source is COPYed into its staging
-- table; its loader turns the client's staged rows into accounts, devices
-- and logons in one set-based pass, sends what it cannot use to
-- load_rejects with the reason and the raw record, and empties the stage.
-- Loading the same export twice adds nothing (source event ids are unique).
-- Staged rows take their client_id from the setting mspbill.client_id, so
-- that a plain COPY works:  SET mspbill.client_id = 7; COPY ... (raw) ...
-- Staged records are raw personal data and COPY FROM cannot write a table
-- with row-level security: so the loading roles (mspbill_billing,
-- mspbill_admin) may only INSERT into the stage, nobody else may touch it,
-- and the loaders read it as the extension's owner (SECURITY DEFINER, a
-- pinned search_path, callable only by those two roles), taking only the
-- rows of the client they were asked to load.

-- The client staged rows belong to: the mspbill.client_id setting.
CREATE FUNCTION @extschema@.msp_staging_client() RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v text := current_setting('mspbill.client_id', true);
BEGIN
	IF coalesce(v, '') = '' THEN
		RAISE EXCEPTION 'no client for staged rows'
			USING ERRCODE = 'not_null_violation',
				  HINT = 'SET mspbill.client_id = <client id> before COPY, or give client_id explicitly.';
	END IF;
	RETURN v::bigint;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_staging_client() IS
	'the client_id that staged rows default to: the setting mspbill.client_id';

CREATE TABLE @extschema@.windows_event_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	raw text NOT NULL
);
COMMENT ON TABLE @extschema@.windows_event_staging IS
	'one Windows event per row, as JSON text: COPY a JSON-lines export here, then call msp_load_windows_events()';

CREATE TABLE @extschema@.entra_signin_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	raw text NOT NULL
);
COMMENT ON TABLE @extschema@.entra_signin_staging IS
	'one Entra ID sign-in per row, as JSON text (Graph signIn objects): then call msp_load_entra_signins()';

CREATE TABLE @extschema@.emr_audit_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	user_name text,
	workstation text,
	event_time text,
	action text,
	event_id text,
	application text NOT NULL DEFAULT 'EMR'
);
COMMENT ON TABLE @extschema@.emr_audit_staging IS
	'EMR/EHR access audit rows (user, workstation, time, action, event id): COPY a CSV here, then call msp_load_emr_audit()';

-- the loaders read and the retries of msp_load_guarded look up lines by client
CREATE INDEX windows_event_staging_line_idx ON @extschema@.windows_event_staging (client_id, line_no);
CREATE INDEX entra_signin_staging_line_idx ON @extschema@.entra_signin_staging (client_id, line_no);
CREATE INDEX emr_audit_staging_line_idx ON @extschema@.emr_audit_staging (client_id, line_no);
COMMENT ON INDEX @extschema@.windows_event_staging_line_idx IS 'a client''s staged lines, by line number';
COMMENT ON INDEX @extschema@.entra_signin_staging_line_idx IS 'a client''s staged lines, by line number';
COMMENT ON INDEX @extschema@.emr_audit_staging_line_idx IS 'a client''s staged lines, by line number';

CREATE TABLE @extschema@.load_rejects (
	client_id bigint NOT NULL,
	source text NOT NULL,
	line_no bigint,
	raw text,
	reason text NOT NULL,
	rejected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX load_rejects_client_idx ON @extschema@.load_rejects (client_id, rejected_at);
COMMENT ON TABLE @extschema@.load_rejects IS 'records a loader could not use, with the reason and the raw record';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.load_rejects', '');

-- The wanted top-level fields of a JSON object in one pass (src/json_fields.c).
CREATE FUNCTION @extschema@.msp_json_fields(doc text, keys text[]) RETURNS text[]
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.msp_json_fields(text, text[]) IS
	'the values of the given top-level keys of a JSON object (strings unescaped, nested values as JSON text); NULL when the text is not a JSON object';

-- The text parsed as jsonb, or NULL when it is not JSON.
-- PARALLEL RESTRICTED: its EXCEPTION block is a subtransaction, which a
-- parallel worker cannot start.
CREATE FUNCTION @extschema@.msp_try_jsonb(raw text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN raw::jsonb;
EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
	-- not JSON, a number jsonb cannot hold, nesting too deep for the stack
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_try_jsonb(text) IS
	'the text as jsonb, or NULL when it is not valid JSON (or holds a number jsonb cannot)';

-- The text read as timestamptz with the session zone at UTC+14 (no
-- daylight saving).  A loader running in UTC compares this with its own
-- reading: the two are the same instant exactly when the text names its
-- own zone (any offset, Z, a zone name or abbreviation, in every form
-- PostgreSQL reads), and 14 hours apart when it names none.  So PostgreSQL
-- itself decides whether a time has a zone; nothing is dropped silently.
CREATE FUNCTION @extschema@.msp_timestamptz_plus14(raw text) RETURNS timestamptz
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'Etc/GMT-14'
RETURN raw::timestamptz;
COMMENT ON FUNCTION @extschema@.msp_timestamptz_plus14(text) IS
	'internal: the text as timestamptz read with the session zone UTC+14 (equal to the UTC reading exactly when the text has its own zone)';

-- A parsed time a logon can have: the input is a date and time (not one of
-- the special words now, today, tomorrow, yesterday, epoch, allballs or
-- infinity, which PostgreSQL reads as times), and the instant lies from
-- 1990-01-01 UTC up to one day after now() (a clock slightly ahead is
-- tolerated).  Anything else is no logon an MSP bills, and would only
-- overflow later date arithmetic (the client's local day of 4714 BC).
-- Returns NULL when the time is plausible, else why not.
CREATE FUNCTION @extschema@.msp_implausible_time(raw text, at timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
	WHEN raw OPERATOR(pg_catalog.~*) '\m(now|today|tomorrow|yesterday|epoch|allballs|infinity)\M'
		 OR NOT pg_catalog.isfinite(at) THEN 'not a time'
	WHEN at OPERATOR(pg_catalog.<) '1990-01-01 00:00:00+00'::timestamptz
		 OR at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.+) '1 day'::interval)
		THEN 'outside 1990-01-01 to a day after now'
END;
COMMENT ON FUNCTION @extschema@.msp_implausible_time(text, timestamptz) IS
	'internal: why a parsed logon time is not plausible (a special word such as now or infinity, before 1990-01-01 UTC, more than a day after now()), or NULL';

-- One account name for the forms Windows and Entra write: DOMAIN\user,
-- domain.tld\user and user@domain.tld all become DOMAIN\user.
-- (No SET clause, so that it inlines; every name in it is qualified.)
CREATE FUNCTION @extschema@.msp_canonical_account(domain text, username text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
	WHEN username IS NULL OR username OPERATOR(pg_catalog.=) ANY ('{"",-}'::text[]) THEN NULL
	WHEN pg_catalog.strpos(username, '@') OPERATOR(pg_catalog.>) 0
		THEN pg_catalog.upper(pg_catalog.split_part(pg_catalog.split_part(username, '@', 2), '.', 1))
			 OPERATOR(pg_catalog.||) '\' OPERATOR(pg_catalog.||) pg_catalog.lower(pg_catalog.split_part(username, '@', 1))
	WHEN pg_catalog.strpos(username, '\') OPERATOR(pg_catalog.>) 0
		THEN pg_catalog.upper(pg_catalog.split_part(pg_catalog.split_part(username, '\', 1), '.', 1))
			 OPERATOR(pg_catalog.||) '\' OPERATOR(pg_catalog.||) pg_catalog.lower(pg_catalog.split_part(username, '\', 2))
	WHEN domain IS NULL OR domain OPERATOR(pg_catalog.=) ANY ('{"",-}'::text[]) THEN pg_catalog.lower(username)
	ELSE pg_catalog.upper(pg_catalog.split_part(domain, '.', 1)) OPERATOR(pg_catalog.||) '\'
		 OPERATOR(pg_catalog.||) pg_catalog.lower(username)
END;
COMMENT ON FUNCTION @extschema@.msp_canonical_account(text, text) IS
	'DOMAIN\user for the domain\user, domain.tld\user and UPN forms of one account';

-- Shared last step of every loader: the normalized events of one load, in
-- pg_temp.msp_load_events, become accounts (kind unknown until mapped),
-- devices and logons.  Returns (loaded, duplicate).
-- The source's event id is unique per client, whatever the time: of the
-- events of one load with the same id the first by line loads, and an
-- event whose id is already in logons (this client, this source; found
-- through the hash of logons_source_event_key, then compared as text) is
-- a duplicate, even with another time.  No unique index can say so:
-- logons is partitioned by time, so its key would have to include at.
-- Loads of a client take turns (msp_load_begin), so this
-- check-then-insert cannot race.
CREATE FUNCTION @extschema@.msp_load_normalized(for_client bigint, load_source text,
												OUT loaded bigint, OUT duplicate bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	-- New accounts and devices take their ids from the identity columns, so
	-- that ids are unique across clients.  Ids chosen by hand for this
	-- client may lie ahead of the sequence: move it past them first (the
	-- load holds the client's lock; the sequence only moves forward).
	PERFORM setval(pg_get_serial_sequence('@extschema@.accounts', 'account_id'), m.id)
	   FROM (SELECT max(a.account_id) AS id FROM @extschema@.accounts a WHERE a.client_id = for_client) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.accounts', 'account_id')), 0);
	PERFORM setval(pg_get_serial_sequence('@extschema@.devices', 'device_id'), m.id)
	   FROM (SELECT max(d.device_id) AS id FROM @extschema@.devices d WHERE d.client_id = for_client) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.devices', 'device_id')), 0);

	-- The new accounts and devices: the load's names into a temporary
	-- table, less those the client has, then inserted.  In steps, because
	-- Citus plans neither a correlated NOT EXISTS over a subquery nor one
	-- over a temporary table; a DELETE ... USING the client's rows it plans.
	CREATE TEMP TABLE msp_load_new_accounts ON COMMIT DROP AS
	SELECT DISTINCT e.realm, e.account_name, e.application FROM pg_temp.msp_load_events e;
	DELETE FROM pg_temp.msp_load_new_accounts n
	 USING @extschema@.accounts a
	 WHERE a.client_id = for_client AND a.realm = n.realm
	   AND lower(a.name) = lower(n.account_name)
	   AND coalesce(a.application, '') = coalesce(n.application, '');
	INSERT INTO @extschema@.accounts (client_id, realm, name, kind, application)
	SELECT for_client, n.realm, n.account_name, 'unknown', n.application
	  FROM pg_temp.msp_load_new_accounts n
	 ORDER BY n.realm, n.account_name;
	DROP TABLE pg_temp.msp_load_new_accounts;

	-- a device found in an export is billable from the day it was first seen
	CREATE TEMP TABLE msp_load_new_devices ON COMMIT DROP AS
	SELECT e.device_name, min(e.at) AS first_at FROM pg_temp.msp_load_events e
	 WHERE e.device_name IS NOT NULL AND e.create_device GROUP BY e.device_name;
	DELETE FROM pg_temp.msp_load_new_devices n
	 USING @extschema@.devices d
	 WHERE d.client_id = for_client AND upper(d.name) = upper(n.device_name);
	INSERT INTO @extschema@.devices (client_id, name, kind, active)
	SELECT for_client, n.device_name, 'other',
		   daterange((n.first_at AT TIME ZONE (SELECT c.time_zone FROM @extschema@.clients c WHERE c.client_id = for_client))::date, NULL)
	  FROM pg_temp.msp_load_new_devices n
	 ORDER BY n.device_name;
	DROP TABLE pg_temp.msp_load_new_devices;

	-- small maps from names to ids, so the big insert joins on plain keys
	ANALYZE pg_temp.msp_load_events;
	CREATE TEMP TABLE msp_account_map ON COMMIT DROP AS
	SELECT n.realm, n.account_name, n.app, a.account_id
	  FROM (SELECT DISTINCT e.realm, e.account_name, coalesce(e.application, '') AS app
			  FROM pg_temp.msp_load_events e) n
	  JOIN @extschema@.accounts a ON a.client_id = for_client AND a.realm = n.realm
					 AND lower(a.name) = lower(n.account_name) AND coalesce(a.application, '') = n.app;
	CREATE TEMP TABLE msp_device_map ON COMMIT DROP AS
	SELECT n.device_name, d.device_id
	  FROM (SELECT DISTINCT e.device_name FROM pg_temp.msp_load_events e WHERE e.device_name IS NOT NULL) n
	  JOIN @extschema@.devices d ON d.client_id = for_client AND upper(d.name) = upper(n.device_name);
	ANALYZE pg_temp.msp_account_map;
	ANALYZE pg_temp.msp_device_map;

	-- Events already in logons are duplicates: taken out by a statement of
	-- their own, planned afresh (EXECUTE) for the partitions as they are
	-- now.  Checked inside the insert, a probe of the partition the insert
	-- itself fills, planned while that partition was empty, read it whole
	-- for every event: the first load of a month took 110 s for 100k logons.
	-- A DELETE ... USING, not a correlated EXISTS, which Citus refuses.
	duplicate := (SELECT count(*) FROM pg_temp.msp_load_events);
	EXECUTE $dup$
		DELETE FROM pg_temp.msp_load_events e
		 USING @extschema@.logons l
		 WHERE l.client_id = $1
		   AND hashtextextended(l.source || ':' || l.source_event_id, l.client_id)
			   = hashtextextended($2 || ':' || e.source_event_id, $1)
		   AND l.source = $2 AND l.source_event_id = e.source_event_id
	$dup$ USING for_client, load_source;

	WITH ins AS (
		INSERT INTO @extschema@.logons (client_id, account_id, device_id, at, ended, presence, source,
							source_event_id, session_key)
		SELECT for_client, m.account_id, dm.device_id, e.at, e.ended, true, load_source, e.source_event_id,
			   e.session_key
		  FROM (SELECT DISTINCT ON (f.source_event_id) f.*
				  FROM pg_temp.msp_load_events f
				 ORDER BY f.source_event_id, f.line_no) e
		  JOIN pg_temp.msp_account_map m ON m.realm = e.realm AND m.account_name = e.account_name
										AND m.app = coalesce(e.application, '')
		  LEFT JOIN pg_temp.msp_device_map dm ON dm.device_name = e.device_name
		 -- in time order, as the partitions and the time indexes grow
		 -- (in the order of the event ids, an Entra load's random ids put
		 -- every row on a random index page)
		 ORDER BY e.at
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	DROP TABLE pg_temp.msp_account_map, pg_temp.msp_device_map;
	duplicate := duplicate - loaded;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_normalized(bigint, text) IS
	'internal: accounts, devices and logons from the normalized events of one load';

-- The last step of a load, guarded like the others: one statement for the
-- whole load; should it fail on some record's data (a data exception, a
-- limit, a constraint, raised by the step or by a trigger) it is retried
-- on each half of the events' lines, down to single lines, which reject
-- marks (EXECUTE reject USING client, line, message, sqlstate).  So no
-- record can fail a load and leave its stage behind.
CREATE FUNCTION @extschema@.msp_load_normalized_guarded(for_client bigint, load_source text, reject text,
														OUT loaded bigint, OUT duplicate bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	todo bigint[];
	a bigint;
	b bigint;
	l bigint;
	d bigint;
	msg text;
	state text;
BEGIN
	BEGIN
		SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized(for_client, load_source);
		RETURN;
	EXCEPTION WHEN data_exception OR program_limit_exceeded OR integrity_constraint_violation THEN
		NULL;
	END;
	loaded := 0;
	duplicate := 0;
	CREATE TEMP TABLE msp_load_all ON COMMIT DROP AS SELECT * FROM pg_temp.msp_load_events;
	todo := ARRAY[(SELECT min(e.line_no) FROM pg_temp.msp_load_all e), (SELECT max(e.line_no) FROM pg_temp.msp_load_all e)];
	WHILE cardinality(todo) > 0 LOOP
		a := todo[cardinality(todo) - 1];
		b := todo[cardinality(todo)];
		todo := todo[1:cardinality(todo) - 2];
		BEGIN
			DELETE FROM pg_temp.msp_load_events;
			INSERT INTO pg_temp.msp_load_events SELECT * FROM pg_temp.msp_load_all e WHERE e.line_no BETWEEN a AND b;
			IF FOUND THEN
				SELECT n.loaded, n.duplicate INTO l, d FROM @extschema@.msp_load_normalized(for_client, load_source) n;
				loaded := loaded + l;
				duplicate := duplicate + d;
			END IF;
		EXCEPTION WHEN data_exception OR program_limit_exceeded OR integrity_constraint_violation THEN
			IF a = b THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
				EXECUTE reject USING for_client, a, msg, state;
			ELSE
				todo := todo || ARRAY[a + (b - a) / 2 + 1, b, a, a + (b - a) / 2];
			END IF;
		END;
	END LOOP;
	DROP TABLE pg_temp.msp_load_all;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_normalized_guarded(bigint, text, text) IS
	'internal: msp_load_normalized for the whole load, and per record only where a record makes it fail';

-- Every load starts here: the client must exist, loads of one client take
-- turns (new accounts and devices must not race for the same names, and a
-- second load of the same stage must find it consumed), and the
-- load gets a fresh scratch table for its normalized events.
CREATE FUNCTION @extschema@.msp_load_begin(for_client bigint) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM @extschema@.clients c WHERE c.client_id = for_client) THEN
		RAISE EXCEPTION 'unknown client %', for_client
			USING ERRCODE = 'no_data_found',
				  HINT = 'Add the client to mspbill.clients first.';
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.load'), hashtext(for_client::text));
	IF to_regclass('pg_temp.msp_load_events') IS NOT NULL THEN
		DROP TABLE pg_temp.msp_load_events;
	END IF;
	CREATE TEMP TABLE msp_load_events (
		line_no bigint NOT NULL,
		realm text NOT NULL,
		application text,
		account_name text NOT NULL,
		device_name text,
		create_device boolean NOT NULL,
		at timestamptz NOT NULL,
		ended timestamptz,
		source_event_id text NOT NULL,
		session_key text
	) ON COMMIT DROP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_begin(bigint) IS 'internal: checks the client and gives a load its scratch table';

-- One step of a load, run over the staged lines lo..hi of a client
-- (EXECUTE step USING client, lo, hi).  When the step fails on some
-- record's data (any data exception, nesting too deep, a value too large
-- for an index) it is retried on each half of its lines, down to single
-- lines, which reject then marks (EXECUTE reject USING client, line,
-- message, sqlstate).  A clean batch costs one set-based statement; a bad
-- record costs a few more (about two per halving), never the load.
CREATE FUNCTION @extschema@.msp_load_guarded(step text, reject text, for_client bigint, lo bigint, hi bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	todo bigint[] := ARRAY[lo, hi];
	a bigint;
	b bigint;
	n bigint := 0;
	msg text;
	state text;
BEGIN
	IF lo IS NULL OR hi IS NULL THEN
		RETURN 0;
	END IF;
	WHILE cardinality(todo) > 0 LOOP
		a := todo[cardinality(todo) - 1];
		b := todo[cardinality(todo)];
		todo := todo[1:cardinality(todo) - 2];
		BEGIN
			EXECUTE step USING for_client, a, b;
		EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
			IF a = b THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
				EXECUTE reject USING for_client, a, msg, state;
				n := n + 1;
			ELSE
				todo := todo || ARRAY[a + (b - a) / 2 + 1, b, a, a + (b - a) / 2];
			END IF;
		END;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_guarded(text, text, bigint, bigint, bigint) IS
	'internal: runs a load step set-based, and per record only where a record''s data makes it fail';

-- Logoffs (4634, 4647) that found no logon: the two halves of one export
-- may be loaded in either order, so a logoff waits here and closes its
-- session when the logon arrives.  A logoff that still finds none once the
-- client's loads have moved a month past it is dropped (the other half of
-- a linked logon, or a logon never exported).
CREATE TABLE @extschema@.pending_logoffs (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	session_key text NOT NULL,
	at timestamptz NOT NULL,
	PRIMARY KEY (client_id, session_key, at)
);
COMMENT ON TABLE @extschema@.pending_logoffs IS
	'Windows logoffs loaded before their logon (host:logon id and time); the logon takes its end from here when it loads';
ALTER TABLE @extschema@.pending_logoffs ENABLE ROW LEVEL SECURITY;
CREATE POLICY client_rows ON @extschema@.pending_logoffs USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])));
COMMENT ON POLICY client_rows ON @extschema@.pending_logoffs IS
	'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.pending_logoffs', '');

-- Windows Security events, NXLog (top-level fields) or Winlogbeat
-- (winlog.*).  The event's own time wins, in UTC whatever the shipper:
-- NXLog's EventTime (the host's local time: the client's zone unless it
-- names its own), else TimeCreated (UTC unless it names a zone), else
-- @timestamp (Logstash's, when it received the event: only a fallback);
-- Winlogbeat's winlog.time_created, else its @timestamp (which Beats set
-- to the event's creation time).  One logon is one session: of two linked
-- 4624s (TargetLinkedLogonId, the elevated and the limited token of one
-- sign-in) only the one with the smaller logon id is loaded, and an unlock
-- or reconnect (type 7) is presence for an instant (it ends where it
-- begins), never a second concurrent session.  Logoffs close the session
-- whatever the order of the loads: one that finds no logon is held in
-- pending_logoffs for the logon to come.
CREATE FUNCTION @extschema@.msp_load_windows_events(client_id bigint, source text DEFAULT 'windows',
													OUT loaded bigint, OUT duplicate bigint,
													OUT paired bigint, OUT skipped bigint, OUT rejected bigint,
													OUT held bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
-- a load's sorts and hashes of its own scratch rows stay in memory
SET work_mem = '64MB'
AS $$
#variable_conflict use_variable
DECLARE
	lo bigint;
	hi bigint;
	zone text;
	fields text;
	logoffs bigint;
	newest timestamptz;
BEGIN
	-- a NULL source would make every event id unique (NULLs are distinct)
	source := coalesce(source, 'windows');
	-- the stage holds still while it is read and emptied: a COPY into it
	-- (any client) waits for this load, and this load for COPYs under way,
	-- so that no line committed meanwhile is emptied unread
	LOCK TABLE @extschema@.windows_event_staging IN SHARE ROW EXCLUSIVE MODE;
	PERFORM @extschema@.msp_load_begin(client_id);
	SELECT c.time_zone INTO zone FROM @extschema@.clients c WHERE c.client_id = client_id;
	-- the first and last line by the index (an aggregate would read every line)
	lo := (SELECT s.line_no FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id ORDER BY s.line_no LIMIT 1);
	hi := (SELECT s.line_no FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id ORDER BY s.line_no DESC LIMIT 1);
	-- (no primary key: every read of it is a whole-table join, and keeping
	-- an index on 200k scratch rows cost a tenth of the load)
	CREATE TEMP TABLE msp_win_class (
		line_no bigint NOT NULL,
		event_id text,
		at_field text,
		at_text text,
		host text,
		username text,
		domain text,
		logon_type text,
		logon_id text,
		linked_id text,
		record text,
		class text NOT NULL,
		at timestamptz
	) ON COMMIT DROP;
	-- One statement per batch reads each staged record once: msp_json_fields
	-- keeps only the fields a logon needs, NXLog's top-level ones or
	-- Winlogbeat's (winlog.*), without building a jsonb of every (mostly
	-- irrelevant, often large) record; the same row is classified and, when
	-- it is a logon or logoff, its time read and checked.  (Reading the
	-- times in a second pass rewrote every scratch row: a second of a
	-- 200k-event load.)  Times: an EventTime without a zone is the client's
	-- local time, any other field's is UTC.  Plain ISO date and time has no
	-- zone, one ending in Z or an offset has its own (both decided without
	-- a call per row); any other is read in UTC and in UTC+14
	-- (msp_timestamptz_plus14), which agree exactly when PostgreSQL finds a
	-- zone in it.
	fields := $fields$
		SELECT s.line_no, f IS NULL AND r.raw !~ '^\s*$' AS bad_json, f IS NULL AND r.raw ~ '^\s*$' AS blank,
			   coalesce(f[1], wl.winlog->>'event_id') AS event_id,
			   CASE WHEN f[12] IS NULL THEN coalesce(f[2], f[3], f[4])
					ELSE coalesce(wl.winlog->>'time_created', f[4]) END AS at_text,
			   CASE WHEN f[12] IS NULL
					THEN CASE WHEN f[2] IS NOT NULL THEN 'EventTime' WHEN f[3] IS NOT NULL THEN 'TimeCreated'
					  ELSE '@timestamp' END
					ELSE CASE WHEN wl.winlog->>'time_created' IS NOT NULL THEN 'winlog.time_created'
					  ELSE '@timestamp' END END AS at_field,
			   coalesce(f[5], wl.winlog->>'computer_name') AS host,
			   coalesce(f[6], wl.winlog->'event_data'->>'TargetUserName') AS username,
			   coalesce(f[7], wl.winlog->'event_data'->>'TargetDomainName') AS domain,
			   coalesce(f[8], wl.winlog->'event_data'->>'LogonType') AS logon_type,
			   coalesce(f[9], wl.winlog->'event_data'->>'TargetLogonId') AS logon_id,
			   coalesce(f[10], wl.winlog->'event_data'->>'TargetLinkedLogonId') AS linked_id,
			   coalesce(f[11], wl.winlog->>'record_id', md5(r.raw)) AS record
		  FROM @extschema@.windows_event_staging s,
			   -- a file's byte-order mark is not part of its first record
			   LATERAL (SELECT CASE WHEN left(s.raw, 1) = E'\ufeff' THEN substr(s.raw, 2) ELSE s.raw END AS raw) r,
			   LATERAL @extschema@.msp_json_fields(r.raw, '{EventID,EventTime,TimeCreated,@timestamp,Hostname,TargetUserName,TargetDomainName,LogonType,TargetLogonId,TargetLinkedLogonId,RecordNumber,winlog}') AS f,
			   -- a function in FROM runs once per row (a subquery would be pulled up)
			   LATERAL unnest(ARRAY[f[12]::jsonb]) AS wl(winlog)
		 WHERE s.client_id = $1 AND s.line_no BETWEEN $2 AND $3
	$fields$;
	PERFORM @extschema@.msp_load_guarded(format($step$
		INSERT INTO pg_temp.msp_win_class (line_no, event_id, at_field, at_text, host, username, domain, logon_type,
										   logon_id, linked_id, record, class, at)
		SELECT k.line_no, k.event_id, k.at_field, k.at_text, k.host, k.username, k.domain, k.logon_type, k.logon_id,
			   k.linked_id, k.record,
			   CASE WHEN k.at IS NOT NULL AND @extschema@.msp_implausible_time(k.at_text, k.at) IS NOT NULL
					THEN 'reject:invalid ' || k.at_field || ': ' || @extschema@.msp_implausible_time(k.at_text, k.at)
					ELSE k.class END,
			   k.at
		  FROM (SELECT c.*,
					   CASE WHEN class NOT IN ('logon', 'logoff', 'linked') THEN NULL
							WHEN at_field <> 'EventTime' THEN at_text::timestamptz
							WHEN at_text ~ '^\s*\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?\s*$'
							THEN at_text::timestamp AT TIME ZONE %1$L
							WHEN at_text ~ '\d:\d\d(:\d\d(\.\d+)?)?\s*(Z|[+-]\d\d(:?\d\d)?)$'
								 OR at_text::timestamptz = @extschema@.msp_timestamptz_plus14(at_text)
							THEN at_text::timestamptz
							ELSE at_text::timestamp AT TIME ZONE %1$L END AS at
				  FROM (SELECT e.*,
							   CASE
								   -- a blank line (COPY with FORCE_NOT_NULL) is no record
								   WHEN e.blank THEN 'skip'
								   WHEN e.bad_json THEN 'reject:not valid JSON'
								   WHEN e.event_id IS NULL THEN 'reject:no EventID'
								   WHEN e.event_id NOT IN ('4624', '4634', '4647') THEN 'skip'
								   WHEN e.at_text IS NULL THEN 'reject:no event time'
								   WHEN e.host IS NULL OR e.host IN ('', '-') THEN 'reject:no Hostname'
								   WHEN e.username IS NULL OR btrim(e.username, E' \t\r\n') IN ('', '-') THEN 'reject:no TargetUserName'
								   -- names and keys go into btree indexes, which cap a row's size
								   WHEN length(e.host) > 255 OR length(e.username) > 255 OR length(e.domain) > 255
										OR length(e.record) > 255 OR length(e.logon_id) > 255 OR length(e.linked_id) > 255
										THEN 'reject:field too long'
								   WHEN @extschema@.msp_is_machine_account(e.username) THEN 'skip'
								   WHEN e.event_id = '4624' AND e.logon_type IS NULL THEN 'reject:no LogonType'
								   WHEN e.logon_type NOT IN ('2', '7', '10', '11') THEN 'skip'
								   -- the other half of a linked logon: the half with the
								   -- smaller logon id (as a hexadecimal number) is the session
								   WHEN e.event_id = '4624' AND e.logon_id IS NOT NULL AND coalesce(lower(e.linked_id), '0x0') <> '0x0'
										AND (length(e.linked_id), lower(e.linked_id)) < (length(e.logon_id), lower(e.logon_id)) THEN 'linked'
								   WHEN e.event_id = '4624' THEN 'logon'
								   -- a logoff without a logon id closes nothing
								   WHEN e.logon_id IS NULL THEN 'skip'
								   ELSE 'logoff'
							   END AS class
						  FROM (%2$s) e
						 -- kept apart, so that the time is read once and only when
						 -- the class needs it
						OFFSET 0) c
				OFFSET 0) k
	$step$, zone, fields),
	-- A record whose time cannot be read is rejected by its field's name;
	-- any other failure (its JSON) with the error's message.
	format($reject$
		INSERT INTO pg_temp.msp_win_class (line_no, class)
		SELECT $2, 'reject:unreadable record: ' || $3
		 WHERE $4 NOT IN ('22007', '22008', '22009', '22023')
		UNION ALL
		SELECT e.line_no, 'reject:invalid ' || e.at_field
		  FROM (%s) e
		 WHERE $4 IN ('22007', '22008', '22009', '22023')
	$reject$, replace(fields, '$2 AND $3', '$2 AND $2')), client_id, lo, hi);

	-- Sessions within the load, and with the logoffs held from earlier
	-- loads: per host and logon id in time order, a logon ends at the first
	-- logoff at or after it; a logoff is consumed when a logon (or the
	-- linked half of one) precedes it.
	CREATE TEMP TABLE msp_win_session ON COMMIT DROP AS
	SELECT x.line_no, x.kind, x.session_key, x.at,
		   min(x.at) FILTER (WHERE x.kind = 'logoff') OVER w_after AS ended,
		   bool_or(x.kind <> 'logoff') OVER w_before AS consumed
	  FROM (SELECT c.line_no, c.class AS kind, upper(split_part(c.host, '.', 1)) || ':' || lower(c.logon_id) AS session_key,
				   c.at, c.logon_type
			  FROM pg_temp.msp_win_class c
			 WHERE c.class IN ('logon', 'logoff', 'linked') AND c.logon_id IS NOT NULL
			UNION ALL
			SELECT NULL, 'logoff', p.session_key, p.at, NULL
			  FROM @extschema@.pending_logoffs p
			 WHERE p.client_id = client_id
			   AND p.session_key IN (SELECT upper(split_part(c.host, '.', 1)) || ':' || lower(c.logon_id)
									   FROM pg_temp.msp_win_class c WHERE c.class IN ('logon', 'linked'))) x
	WINDOW w_after AS (PARTITION BY x.session_key ORDER BY x.at, x.kind = 'logoff', x.line_no
					   ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING),
		   w_before AS (PARTITION BY x.session_key ORDER BY x.at, x.kind = 'logoff', x.line_no
						ROWS UNBOUNDED PRECEDING);

	INSERT INTO pg_temp.msp_load_events (line_no, realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT c.line_no, 'os', NULL, @extschema@.msp_canonical_account(c.domain, c.username), upper(split_part(c.host, '.', 1)), true,
		   c.at,
		   -- an unlock or reconnect is an instant of presence inside a session
		   CASE WHEN c.logon_type = '7' THEN c.at ELSE s.ended END,
		   upper(split_part(c.host, '.', 1)) || ':' || c.record, s.session_key
	  FROM pg_temp.msp_win_class c LEFT JOIN pg_temp.msp_win_session s ON s.line_no = c.line_no
	 WHERE c.class = 'logon';
	SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized_guarded(client_id, source, $reject$
		UPDATE pg_temp.msp_win_class SET class = 'reject:unloadable record: ' || $3 WHERE line_no = $2
	$reject$);

	-- Logoffs this load did not pair close sessions loaded earlier (so do
	-- all of them when some logon of the load was already loaded: its
	-- stored row may still be open); the rest wait in pending_logoffs.
	UPDATE @extschema@.logons l SET ended = o.at
	  FROM (SELECT s.session_key, min(s.at) AS at
			  FROM pg_temp.msp_win_session s
			 WHERE s.kind = 'logoff' AND s.line_no IS NOT NULL AND (NOT s.consumed OR duplicate > 0)
			 GROUP BY 1) o
	 WHERE l.client_id = client_id AND l.session_key = o.session_key AND l.at <= o.at
	   AND (l.ended IS NULL OR l.ended > o.at);
	-- held: this load's logoffs that wait, whether they wait from now on or
	-- (loaded again) were waiting already.  In steps: Citus plans no
	-- correlated NOT EXISTS over a temporary table.
	CREATE TEMP TABLE msp_win_hold ON COMMIT DROP AS
	SELECT s.session_key, s.at
	  FROM pg_temp.msp_win_session s
	 WHERE s.kind = 'logoff' AND s.line_no IS NOT NULL AND NOT s.consumed;
	DELETE FROM pg_temp.msp_win_hold h
	 USING @extschema@.logons l
	 WHERE l.client_id = client_id AND l.session_key = h.session_key AND l.at <= h.at;
	SELECT count(*) INTO held FROM pg_temp.msp_win_hold;
	INSERT INTO @extschema@.pending_logoffs AS p (client_id, session_key, at)
	SELECT DISTINCT client_id, h.session_key, h.at FROM pg_temp.msp_win_hold h
	ON CONFLICT DO NOTHING;
	DROP TABLE pg_temp.msp_win_hold;
	-- paired: the logoffs of this load that found their session (in this
	-- load or an earlier one), and the held ones that found it now
	WITH used AS (
		DELETE FROM @extschema@.pending_logoffs p
		 USING pg_temp.msp_win_session s
		 WHERE p.client_id = client_id AND s.line_no IS NULL AND s.consumed
		   AND p.session_key = s.session_key AND p.at = s.at
		RETURNING 1)
	SELECT count(*) INTO paired FROM used;
	-- the scratch table's counts in one pass
	SELECT count(*) FILTER (WHERE c.class = 'logoff'), count(*) FILTER (WHERE c.class IN ('skip', 'linked')),
		   max(c.at) FILTER (WHERE c.class IN ('logon', 'logoff', 'linked'))
	  INTO logoffs, skipped, newest
	  FROM pg_temp.msp_win_class c;
	paired := paired + logoffs - held;
	-- a logoff a month older than the newest event loaded finds no logon any more
	DELETE FROM @extschema@.pending_logoffs p
	 WHERE p.client_id = client_id AND p.at < newest - interval '1 month';

	INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, c.line_no, s.raw, substr(c.class, 8)
	  FROM pg_temp.msp_win_class c JOIN @extschema@.windows_event_staging s ON s.client_id = client_id AND s.line_no = c.line_no
	 WHERE c.class LIKE 'reject:%';
	GET DIAGNOSTICS rejected = ROW_COUNT;
	DELETE FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_win_class, pg_temp.msp_win_session;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_windows_events(bigint, text) IS
	'loads a client''s staged Windows Security events: interactive (2), unlock (7, an instant), remote interactive (10) and cached (11) logons count, linked pairs once; logoffs close sessions in any load order (held until their logon comes); the rest is skipped or rejected';

-- The records of a JSON export whatever its layout (src/json_fields.c).
CREATE FUNCTION @extschema@.msp_json_records(lines text[])
RETURNS TABLE (first_line integer, record text, is_json boolean)
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.msp_json_records(text[]) IS
	'the records of an export''s lines in order: JSON lines, saved Graph responses ({"value": [...]}, pretty-printed, paged) or an array; each with the line it starts on, and each broken document as one record that is not JSON';

-- Entra ID sign-ins as JSON lines or as saved Graph responses: the stage
-- is read as one text in line order, so that a pretty-printed page, pages
-- one after the other and a response on one line all give their signIn
-- objects (each with the line it starts on).
CREATE FUNCTION @extschema@.msp_load_entra_signins(client_id bigint, source text DEFAULT 'entra',
												   OUT loaded bigint, OUT duplicate bigint,
												   OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
-- a load's sorts and hashes of its own scratch rows stay in memory
SET work_mem = '64MB'
AS $$
#variable_conflict use_variable
DECLARE
	n bigint;
BEGIN
	source := coalesce(source, 'entra');
	-- the stage holds still while it is read and emptied: a COPY into it
	-- (any client) waits for this load, and this load for COPYs under way,
	-- so that no line committed meanwhile is emptied unread
	LOCK TABLE @extschema@.entra_signin_staging IN SHARE ROW EXCLUSIVE MODE;
	PERFORM @extschema@.msp_load_begin(client_id);
	CREATE TEMP TABLE msp_entra_rec ON COMMIT DROP AS
	SELECT r.rec, l.line_nos[r.first_line] AS line_no, r.record, r.is_json
	  FROM (SELECT array_agg(s.line_no ORDER BY s.line_no) AS line_nos, array_agg(CASE WHEN left(s.raw, 1) = E'\ufeff' THEN substr(s.raw, 2) ELSE s.raw END ORDER BY s.line_no) AS raws
			  FROM @extschema@.entra_signin_staging s WHERE s.client_id = client_id) l,
		   LATERAL @extschema@.msp_json_records(l.raws) WITH ORDINALITY AS r(first_line, record, is_json, rec);
	ALTER TABLE pg_temp.msp_entra_rec ADD PRIMARY KEY (rec);
	n := (SELECT max(r.rec) FROM pg_temp.msp_entra_rec r);
	CREATE TEMP TABLE msp_entra_class (
		line_no bigint PRIMARY KEY,		-- the record's number (msp_entra_rec.rec)
		id text,
		upn text,
		created text,
		device text,
		class text NOT NULL,
		at timestamptz
	) ON COMMIT DROP;
	INSERT INTO pg_temp.msp_entra_class (line_no, class)
	SELECT r.rec, 'reject:not valid JSON' FROM pg_temp.msp_entra_rec r WHERE NOT r.is_json;
	-- One statement per batch reads each record once: msp_json_fields
	-- copies out the six fields a sign-in needs without building a jsonb
	-- of the record (that was most of a load's time); only a record it
	-- cannot read as an object is parsed as jsonb, to say why (or to read
	-- nesting deeper than it scans).  A number too large for jsonb in a
	-- field nobody reads is no reason to reject, as for Windows.  The
	-- sign-in's time is read and checked in the same pass.
	PERFORM @extschema@.msp_load_guarded($step$
		INSERT INTO pg_temp.msp_entra_class (line_no, id, upn, created, device, class, at)
		SELECT k.rec, k.id, k.upn, k.created, k.device,
			   CASE WHEN k.at IS NOT NULL AND @extschema@.msp_implausible_time(k.created, k.at) IS NOT NULL
					THEN 'reject:no valid createdDateTime: ' || @extschema@.msp_implausible_time(k.created, k.at)
					ELSE k.class END,
			   k.at
		  FROM (SELECT c.*, CASE WHEN c.class NOT LIKE 'reject:%' THEN c.created::timestamptz END AS at
				  FROM (SELECT e.rec, e.id, e.upn, e.created, e.device,
							   CASE
								   WHEN e.f IS NULL AND jsonb_typeof(e.doc) <> 'object' THEN 'reject:not a signIn object'
								   WHEN e.id IS NULL THEN 'reject:no id'
								   WHEN coalesce(btrim(e.upn, E' \t\r\n'), '') = '' THEN 'reject:no userPrincipalName'
								   WHEN e.created IS NULL THEN 'reject:no valid createdDateTime'
								   -- names and keys go into btree indexes, which cap a row's size
								   WHEN length(e.id) > 255 OR length(e.upn) > 255 OR length(e.device) > 255 THEN 'reject:field too long'
								   WHEN coalesce(e.error_code, '0') <> '0' THEN 'skip'
								   WHEN e.interactive = 'false' THEN 'skip'
								   ELSE 'signin'
							   END AS class
						  FROM (SELECT r.rec, f, wl.doc,
									   coalesce(f[1], wl.doc->>'id') AS id,
									   coalesce(f[2], wl.doc->>'userPrincipalName') AS upn,
									   coalesce(f[3], wl.doc->>'createdDateTime') AS created,
									   coalesce((@extschema@.msp_json_fields(f[4], '{displayName}'))[1],
												wl.doc->'deviceDetail'->>'displayName') AS device,
									   coalesce((@extschema@.msp_json_fields(f[5], '{errorCode}'))[1],
												wl.doc->'status'->>'errorCode') AS error_code,
									   coalesce(f[6], wl.doc->>'isInteractive') AS interactive
								  FROM pg_temp.msp_entra_rec r,
									   LATERAL @extschema@.msp_json_fields(r.record, '{id,userPrincipalName,createdDateTime,deviceDetail,status,isInteractive}') AS f,
									   -- a function in FROM runs once per row (a subquery would be pulled up)
									   LATERAL unnest(ARRAY[CASE WHEN f IS NULL THEN r.record::jsonb END]) AS wl(doc)
								 WHERE r.is_json AND r.rec BETWEEN $2 AND $3) e
						-- kept apart, so that the time is read once
						OFFSET 0) c
				OFFSET 0) k
	$step$, $reject$
		INSERT INTO pg_temp.msp_entra_class (line_no, class)
		VALUES ($2, CASE WHEN $4 = '22P02' THEN 'reject:not valid JSON'
						 WHEN $4 IN ('22007', '22008', '22009', '22023') THEN 'reject:no valid createdDateTime'
						 ELSE 'reject:unreadable record: ' || $3 END)
	$reject$, client_id, 1, n);

	INSERT INTO pg_temp.msp_load_events (line_no, realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT c.line_no, 'm365', NULL, lower(c.upn), upper(nullif(c.device, '')), false, c.at, NULL, c.id, NULL
	  FROM pg_temp.msp_entra_class c WHERE c.class = 'signin';
	SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized_guarded(client_id, source, $reject$
		UPDATE pg_temp.msp_entra_class SET class = 'reject:unloadable record: ' || $3 WHERE line_no = $2
	$reject$);
	INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, r.line_no, r.record, substr(c.class, 8)
	  FROM pg_temp.msp_entra_class c JOIN pg_temp.msp_entra_rec r ON r.rec = c.line_no
	 WHERE c.class LIKE 'reject:%'
	 ORDER BY r.rec;
	GET DIAGNOSTICS rejected = ROW_COUNT;
	SELECT count(*) INTO skipped FROM pg_temp.msp_entra_class c WHERE c.class = 'skip';
	DELETE FROM @extschema@.entra_signin_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_entra_class, pg_temp.msp_entra_rec;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_entra_signins(bigint, text) IS
	'loads a client''s staged Entra ID sign-ins (JSON lines or saved Graph responses): successful interactive sign-ins count as Microsoft 365 presence';

CREATE FUNCTION @extschema@.msp_load_emr_audit(client_id bigint, source text DEFAULT 'emr',
											   OUT loaded bigint, OUT duplicate bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
-- a load's sorts and hashes of its own scratch rows stay in memory
SET work_mem = '64MB'
AS $$
#variable_conflict use_variable
DECLARE
	lo bigint;
	hi bigint;
	zone text;
	rows text;
BEGIN
	source := coalesce(source, 'emr');
	-- the stage holds still while it is read and emptied: a COPY into it
	-- (any client) waits for this load, and this load for COPYs under way,
	-- so that no line committed meanwhile is emptied unread
	LOCK TABLE @extschema@.emr_audit_staging IN SHARE ROW EXCLUSIVE MODE;
	PERFORM @extschema@.msp_load_begin(client_id);
	-- the first and last line by the index (an aggregate would read every line)
	lo := (SELECT s.line_no FROM @extschema@.emr_audit_staging s WHERE s.client_id = client_id ORDER BY s.line_no LIMIT 1);
	hi := (SELECT s.line_no FROM @extschema@.emr_audit_staging s WHERE s.client_id = client_id ORDER BY s.line_no DESC LIMIT 1);
	SELECT c.time_zone INTO zone FROM @extschema@.clients c WHERE c.client_id = client_id;
	-- (no primary key: every read of it is a whole-table join)
	CREATE TEMP TABLE msp_emr (
		line_no bigint NOT NULL,
		user_name text,
		workstation text,
		event_time text,
		action text,
		event_id text,
		application text,
		reason text,
		at timestamptz
	) ON COMMIT DROP;
	rows := $rows$
		SELECT s.line_no, s.user_name, s.workstation, s.event_time, s.action, s.event_id, s.application,
			   CASE
				   WHEN coalesce(btrim(s.user_name, E' \t\r\n'), '') = '' THEN 'no user'
				   WHEN coalesce(s.event_time, '') = '' THEN 'no time'
				   -- names and keys go into btree indexes, which cap a row's size
				   WHEN length(s.user_name) > 255 OR length(s.workstation) > 255 OR length(s.event_id) > 255
						OR length(s.application) > 255 THEN 'field too long'
			   END AS reason
		  FROM @extschema@.emr_audit_staging s
		 WHERE s.client_id = $1 AND s.line_no BETWEEN $2 AND $3
	$rows$;
	-- One pass over the stage reads each row and its time.  A time with a
	-- zone (an offset, Z or z, a zone name or abbreviation) is that
	-- instant; a time without one is the client's local time.  Whether it
	-- has one is PostgreSQL's reading, not a pattern: read in UTC (this
	-- function's zone) and in UTC+14, a time with its own zone is the same
	-- instant.  A zone PostgreSQL cannot read is an invalid time.  Plain
	-- ISO date and time (no zone) and ISO ending in Z or an offset are
	-- decided by their form, without that call per row.  Only the time can
	-- fail here, so a row that fails is an invalid time.
	PERFORM @extschema@.msp_load_guarded(format($step$
		INSERT INTO pg_temp.msp_emr (line_no, user_name, workstation, event_time, action, event_id, application, reason, at)
		SELECT k.line_no, k.user_name, k.workstation, k.event_time, k.action, k.event_id, k.application,
			   CASE WHEN k.at IS NOT NULL AND @extschema@.msp_implausible_time(k.event_time, k.at) IS NOT NULL
					THEN 'invalid time: ' || @extschema@.msp_implausible_time(k.event_time, k.at)
					ELSE k.reason END,
			   k.at
		  FROM (SELECT r.*,
					   CASE WHEN r.reason IS NOT NULL THEN NULL
							WHEN event_time ~ '^\s*\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?\s*$'
							THEN event_time::timestamp AT TIME ZONE %1$L
							WHEN event_time ~ '\d:\d\d(:\d\d(\.\d+)?)?\s*(Z|[+-]\d\d(:?\d\d)?)$'
								 OR event_time::timestamptz = @extschema@.msp_timestamptz_plus14(event_time)
							THEN event_time::timestamptz
							ELSE event_time::timestamp AT TIME ZONE %1$L END AS at
				  FROM (%2$s) r
				-- kept apart, so that the time is read once
				OFFSET 0) k
	$step$, zone, rows), format($reject$
		INSERT INTO pg_temp.msp_emr (line_no, user_name, workstation, event_time, action, event_id, application, reason)
		SELECT r.line_no, r.user_name, r.workstation, r.event_time, r.action, r.event_id, r.application, 'invalid time'
		  FROM (%s) r
	$reject$, replace(rows, '$2 AND $3', '$2 AND $2')), client_id, lo, hi);

	INSERT INTO pg_temp.msp_load_events (line_no, realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT e.line_no, 'app', e.application, lower(e.user_name), upper(nullif(e.workstation, '')), true, e.at,
		   NULL, coalesce(e.event_id, md5(concat_ws('|', e.user_name, e.workstation, e.event_time, e.action))), NULL
	  FROM pg_temp.msp_emr e WHERE e.reason IS NULL;
	SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized_guarded(client_id, source, $reject$
		UPDATE pg_temp.msp_emr SET reason = 'unloadable record: ' || $3 WHERE line_no = $2
	$reject$);
	INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, e.line_no,
		   concat_ws(',', e.user_name, e.workstation, e.event_time, e.action, e.event_id), e.reason
	  FROM pg_temp.msp_emr e WHERE e.reason IS NOT NULL;
	GET DIAGNOSTICS rejected = ROW_COUNT;
	DELETE FROM @extschema@.emr_audit_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_emr;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_emr_audit(bigint, text) IS
	'loads a client''s staged EMR access audit rows as application logons (a time with an offset, Z or a zone name is that instant; one without is the client''s local time)';

-- The loading roles may only INSERT into the stage, so without this only
-- the owner could empty it.  A loader rejects each bad record and empties
-- the stage, so a load that fails should not happen; if one ever does (a
-- bug, a constraint added later), the stage stays as it was and every
-- later load of the client fails the same way: this sets the client's
-- staged rows aside in load_rejects (reason 'discarded', with the raw
-- record, as who discarded them) so the next export can load.
CREATE FUNCTION @extschema@.msp_discard_staged(client_id bigint, OUT windows bigint, OUT entra bigint, OUT emr bigint)
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	why text := 'discarded by ' || session_user;
BEGIN
	-- a load of the same client in progress finishes first
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.load'), hashtext(client_id::text));
	WITH gone AS (DELETE FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id RETURNING s.line_no, s.raw),
	ins AS (INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
			SELECT client_id, 'windows', g.line_no, g.raw, why FROM gone g RETURNING 1)
	SELECT count(*) INTO windows FROM ins;
	WITH gone AS (DELETE FROM @extschema@.entra_signin_staging s WHERE s.client_id = client_id RETURNING s.line_no, s.raw),
	ins AS (INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
			SELECT client_id, 'entra', g.line_no, g.raw, why FROM gone g RETURNING 1)
	SELECT count(*) INTO entra FROM ins;
	WITH gone AS (DELETE FROM @extschema@.emr_audit_staging s WHERE s.client_id = client_id
				  RETURNING s.line_no, concat_ws(',', s.user_name, s.workstation, s.event_time, s.action, s.event_id) AS raw),
	ins AS (INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
			SELECT client_id, 'emr', g.line_no, g.raw, why FROM gone g RETURNING 1)
	SELECT count(*) INTO emr FROM ins;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_discard_staged(bigint) IS
	'sets a client''s staged rows aside in load_rejects (reason discarded) when a load cannot consume them; for mspbill_admin and mspbill_billing';
