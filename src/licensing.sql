-- Licences, subscriptions and tickets as MSPs export them: Microsoft Graph
-- JSON (subscribedSkus, users with assignedLicenses), the Microsoft 365
-- admin center's "Active users" CSV, the Microsoft 365 active-user detail
-- report (getOffice365ActiveUserDetail CSV), Pax8 subscriptions (portal
-- CSV or partner-API JSON) and PSA tickets (ConnectWise PSA, Autotask,
-- HaloPSA API JSON).  Same discipline as the logon loaders of
-- src/loaders.sql: COPY into a stage, one set-based, idempotent load per
-- client, bad records to load_rejects with the reason, the stage emptied,
-- SECURITY DEFINER callable only by mspbill_billing and mspbill_admin.
-- Then the reconciliation: seats bought, assigned, needed and billed, per
-- product, with the money in each gap (msp_license_sync, msp_license_gaps).

-- Product names: a licence is called by its SKU id (Graph), its SKU part
-- number (Graph), its display name (admin center, usage report) or its
-- Pax8 name or product id.  Every spelling maps to one product; a name
-- not listed is its own product.  Not per client (no client_id): the
-- names are Microsoft's and Pax8's.
CREATE TABLE @extschema@.license_product_names (
	name text NOT NULL CONSTRAINT license_product_names_name_not_empty CHECK (name <> ''),
	product text NOT NULL CONSTRAINT license_product_names_product_not_empty CHECK (product <> ''),
	builtin boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX license_product_names_key ON @extschema@.license_product_names (lower(name));
COMMENT ON TABLE @extschema@.license_product_names IS
	'every spelling of a licence (SKU id, SKU part number, display name, Pax8 name or product id) and the product it is; unlisted names are their own product';
-- SKU ids and part numbers from Microsoft's "Product names and service
-- plan identifiers for licensing" list
INSERT INTO @extschema@.license_product_names (name, product, builtin) VALUES
	('3b555118-da6a-4418-894f-7df1e2096870', 'Microsoft 365 Business Basic', true),
	('O365_BUSINESS_ESSENTIALS', 'Microsoft 365 Business Basic', true),
	('Microsoft 365 Business Basic', 'Microsoft 365 Business Basic', true),
	('f245ecc8-75af-4f8e-b61f-27d8114de5f3', 'Microsoft 365 Business Standard', true),
	('O365_BUSINESS_PREMIUM', 'Microsoft 365 Business Standard', true),
	('Microsoft 365 Business Standard', 'Microsoft 365 Business Standard', true),
	('cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46', 'Microsoft 365 Business Premium', true),
	('SPB', 'Microsoft 365 Business Premium', true),
	('Microsoft 365 Business Premium', 'Microsoft 365 Business Premium', true),
	('05e9a617-0261-4cee-bb44-138d3ef5d965', 'Microsoft 365 E3', true),
	('SPE_E3', 'Microsoft 365 E3', true),
	('Microsoft 365 E3', 'Microsoft 365 E3', true),
	('6fd2c87f-b296-42f0-b197-1e91e994b900', 'Office 365 E3', true),
	('ENTERPRISEPACK', 'Office 365 E3', true),
	('Office 365 E3', 'Office 365 E3', true),
	('4b9405b0-7788-4568-add1-99614e613b69', 'Exchange Online (Plan 1)', true),
	('EXCHANGESTANDARD', 'Exchange Online (Plan 1)', true),
	('Exchange Online (Plan 1)', 'Exchange Online (Plan 1)', true);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.license_product_names', 'WHERE NOT builtin');

-- The product a licence name stands for.  PL/pgSQL: Citus re-plans a
-- RETURN-style SQL body from its text and fails (the loaders call it once
-- per distinct name, so that it need not inline).
CREATE FUNCTION @extschema@.msp_license_product(licence text) RETURNS text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	RETURN coalesce((SELECT n.product FROM @extschema@.license_product_names n
					  WHERE lower(n.name) = lower(btrim(licence))),
					btrim(licence));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_license_product(text) IS
	'the product a licence name (SKU id, part number, display or Pax8 name) stands for (license_product_names), else the name itself';

-- Which client a vendor's company is (Pax8 company name or id; the PSA's
-- company identifier, name or id).  Once a vendor has any row here, its
-- records must name a company of the client being loaded: another
-- client's are skipped, unknown ones rejected.  A vendor without rows
-- is not checked (each client's export is its own).
CREATE TABLE @extschema@.partner_companies (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	vendor text NOT NULL
		CONSTRAINT partner_companies_vendor_known CHECK (vendor IN ('pax8', 'connectwise', 'autotask', 'halopsa')),
	company text NOT NULL CONSTRAINT partner_companies_company_not_empty CHECK (company <> ''),
	PRIMARY KEY (client_id, vendor, company)
);
CREATE UNIQUE INDEX partner_companies_company_key ON @extschema@.partner_companies (vendor, lower(company));
COMMENT ON TABLE @extschema@.partner_companies IS
	'Pax8 and PSA companies (name or id, as the export writes it) per client; a vendor with rows here has its records checked against them';

-- PSA contacts mapped to people by hand: the contact's id or e-mail as
-- the PSA writes it (a contact e-mail that is a Microsoft 365 UPN of an
-- individual account needs no row here).
CREATE TABLE @extschema@.psa_contacts (
	client_id bigint NOT NULL,
	psa text NOT NULL CONSTRAINT psa_contacts_psa_known CHECK (psa IN ('connectwise', 'autotask', 'halopsa')),
	contact text NOT NULL CONSTRAINT psa_contacts_contact_not_empty CHECK (contact <> ''),
	person_id bigint NOT NULL,
	PRIMARY KEY (client_id, psa, contact),
	FOREIGN KEY (client_id, person_id) REFERENCES @extschema@.people ON DELETE CASCADE
);
COMMENT ON TABLE @extschema@.psa_contacts IS
	'PSA contacts (id, or e-mail in lower case) mapped to people by hand, where the e-mail is not their Microsoft 365 UPN';

-- A contract's licence policy: the product the MSP's rule gives each
-- billable person (NULL: the product with the most seats), and whether
-- each shared room account in use needs a licence of its own.  A table of
-- its own, not columns of contracts: functions use the contracts row type,
-- which an upgrade could then not alter.
CREATE TABLE @extschema@.license_policies (
	client_id bigint NOT NULL,
	contract_id bigint NOT NULL,
	license_product text,
	licensed_rooms boolean NOT NULL DEFAULT false,
	PRIMARY KEY (client_id, contract_id),
	FOREIGN KEY (client_id, contract_id) REFERENCES @extschema@.contracts ON DELETE CASCADE
);
COMMENT ON TABLE @extschema@.license_policies IS
	'per contract: the licence product the rule gives each billable person, and whether shared room accounts in use are licensed too';

-- Seats per SKU as Microsoft 365 reports them (Graph subscribedSkus).
CREATE TABLE @extschema@.m365_sku_counts (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	as_of date NOT NULL,
	sku_id text NOT NULL,
	sku_part_number text,
	product text NOT NULL,
	enabled integer NOT NULL CONSTRAINT m365_sku_counts_enabled_not_negative CHECK (enabled >= 0),
	consumed integer NOT NULL CONSTRAINT m365_sku_counts_consumed_not_negative CHECK (consumed >= 0),
	source text NOT NULL,
	PRIMARY KEY (client_id, as_of, sku_id)
);
COMMENT ON TABLE @extschema@.m365_sku_counts IS
	'Microsoft 365 seats held (prepaidUnits.enabled) and consumed (consumedUnits) per SKU and day, from Graph subscribedSkus';

-- Who holds which licence, per day (a snapshot: several files of one day,
-- such as the pages of a Graph response, add up).
CREATE TABLE @extschema@.m365_license_assignments (
	client_id bigint NOT NULL,
	as_of date NOT NULL,
	account_id bigint NOT NULL,
	product text NOT NULL,
	account_enabled boolean,
	source text NOT NULL,
	PRIMARY KEY (client_id, as_of, account_id, product),
	FOREIGN KEY (client_id, account_id) REFERENCES @extschema@.accounts ON DELETE CASCADE
);
COMMENT ON TABLE @extschema@.m365_license_assignments IS
	'which Microsoft 365 account holds a licence of which product, per day (Graph users'' assignedLicenses or the admin center''s Active users CSV)';

-- Pax8 subscriptions per day, as exported.
CREATE TABLE @extschema@.pax8_subscriptions (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	as_of date NOT NULL,
	subscription_id text NOT NULL,
	company text,
	product text NOT NULL,
	quantity integer NOT NULL CONSTRAINT pax8_subscriptions_quantity_not_negative CHECK (quantity >= 0),
	unit_cost numeric CONSTRAINT pax8_subscriptions_unit_cost_not_negative CHECK (unit_cost >= 0),
	unit_price numeric CONSTRAINT pax8_subscriptions_unit_price_not_negative CHECK (unit_price >= 0),
	billing_term text,
	status text,
	start_date date,
	end_date date,
	source text NOT NULL,
	PRIMARY KEY (client_id, as_of, subscription_id)
);
COMMENT ON TABLE @extschema@.pax8_subscriptions IS
	'Pax8 subscriptions per client and day: product, quantity, partner cost and price per seat, term, status; the Active ones become license_counts';

-- Every PSA ticket loaded, matched to a person or not: an unknown contact
-- stays here (psa_unknown_contacts) until a mapping matches it.
CREATE TABLE @extschema@.psa_tickets (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	psa text NOT NULL,
	ticket_id text NOT NULL,
	at timestamptz NOT NULL,
	company text,
	contact text,
	board text,
	channel text NOT NULL,
	person_id bigint,
	contact_id bigint,
	PRIMARY KEY (client_id, psa, ticket_id),
	FOREIGN KEY (client_id, person_id) REFERENCES @extschema@.people ON DELETE SET NULL (person_id)
);
COMMENT ON TABLE @extschema@.psa_tickets IS
	'PSA tickets per client: when, the contact (e-mail in lower case, else id), board or queue, and the person and support contact they became';

-- Stages: raw lines, as COPY reads them (CSV records are split by their
-- header's names; JSON may be JSON lines or whole saved responses).
CREATE TABLE @extschema@.m365_graph_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	raw text NOT NULL
);
COMMENT ON TABLE @extschema@.m365_graph_staging IS
	'Microsoft Graph JSON (subscribedSkus and users with assignedLicenses; saved responses or JSON lines): then call msp_load_m365_graph()';
CREATE TABLE @extschema@.m365_users_csv_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	raw text NOT NULL
);
COMMENT ON TABLE @extschema@.m365_users_csv_staging IS
	'the Microsoft 365 admin center''s Active users CSV, one line per row: then call msp_load_m365_users_csv()';
CREATE TABLE @extschema@.m365_activity_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	raw text NOT NULL
);
COMMENT ON TABLE @extschema@.m365_activity_staging IS
	'the Microsoft 365 active user detail report (getOffice365ActiveUserDetail CSV), one line per row: then call msp_load_m365_activity()';
CREATE TABLE @extschema@.pax8_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	raw text NOT NULL
);
COMMENT ON TABLE @extschema@.pax8_staging IS
	'Pax8 subscriptions, the portal''s CSV export or the partner API''s JSON, one line per row: then call msp_load_pax8_subscriptions()';
CREATE TABLE @extschema@.psa_ticket_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	raw text NOT NULL
);
COMMENT ON TABLE @extschema@.psa_ticket_staging IS
	'PSA tickets as their API returns them (ConnectWise PSA, Autotask, HaloPSA JSON): then call msp_load_psa_tickets()';
CREATE INDEX m365_graph_staging_line_idx ON @extschema@.m365_graph_staging (client_id, line_no);
CREATE INDEX m365_users_csv_staging_line_idx ON @extschema@.m365_users_csv_staging (client_id, line_no);
CREATE INDEX m365_activity_staging_line_idx ON @extschema@.m365_activity_staging (client_id, line_no);
CREATE INDEX pax8_staging_line_idx ON @extschema@.pax8_staging (client_id, line_no);
CREATE INDEX psa_ticket_staging_line_idx ON @extschema@.psa_ticket_staging (client_id, line_no);
COMMENT ON INDEX @extschema@.m365_graph_staging_line_idx IS 'a client''s staged lines, by line number';
COMMENT ON INDEX @extschema@.m365_users_csv_staging_line_idx IS 'a client''s staged lines, by line number';
COMMENT ON INDEX @extschema@.m365_activity_staging_line_idx IS 'a client''s staged lines, by line number';
COMMENT ON INDEX @extschema@.pax8_staging_line_idx IS 'a client''s staged lines, by line number';
COMMENT ON INDEX @extschema@.psa_ticket_staging_line_idx IS 'a client''s staged lines, by line number';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.license_policies', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.partner_companies', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.psa_contacts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.m365_sku_counts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.m365_license_assignments', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.pax8_subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.psa_tickets', '');

-- The fields of one CSV record (src/csv_fields.c).
CREATE FUNCTION @extschema@.msp_csv_fields(record text) RETURNS text[]
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.msp_csv_fields(text) IS
	'the fields of one CSV record (RFC 4180 quoting, a leading byte-order mark dropped); NULL when it is not well-formed';

-- The records of a CSV export's lines, each split once (src/csv_fields.c).
CREATE FUNCTION @extschema@.msp_csv_records(lines text[], key_column text)
RETURNS TABLE (first_line integer, record text, fields text[], header_no integer, is_header boolean)
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.msp_csv_records(text[], text) IS
	'the records of a CSV export''s lines in order (a quoted field may span lines), each with the line it starts on, its fields (NULL when not well-formed) and the number of the header (a record with a key_column field) it falls under; blank records left out';

-- A client's staged CSV lines as records, into pg_temp.msp_csv (line_no,
-- raw, f, header_no, is_header), and their headers into
-- pg_temp.msp_csv_headers (header_no, header).  The stage is read once, in
-- line order, and each record split once, in C (msp_csv_records): a quoted
-- field may span lines, a header is a record with a field named key_column
-- (any case), and several files staged one after another each bring their
-- header.  Records before any header have header_no 0, which no header
-- has.  Returns the number of data records.
CREATE FUNCTION @extschema@.msp_stage_csv(for_client bigint, stage regclass, key_column text) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	IF to_regclass('pg_temp.msp_csv') IS NOT NULL THEN
		DROP TABLE pg_temp.msp_csv;
	END IF;
	IF to_regclass('pg_temp.msp_csv_headers') IS NOT NULL THEN
		DROP TABLE pg_temp.msp_csv_headers;
	END IF;
	EXECUTE format($q$
		CREATE TEMP TABLE msp_csv ON COMMIT DROP AS
		SELECT l.line_nos[r.first_line] AS line_no, r.record AS raw, r.fields AS f, r.header_no, r.is_header
		  FROM (SELECT array_agg(s.line_no ORDER BY s.line_no) AS line_nos, array_agg(s.raw ORDER BY s.line_no) AS raws
				  FROM %s s WHERE s.client_id = $1) l,
			   LATERAL @extschema@.msp_csv_records(l.raws, $2) r$q$, stage) USING for_client, key_column;
	GET DIAGNOSTICS n = ROW_COUNT;
	CREATE TEMP TABLE msp_csv_headers ON COMMIT DROP AS
	SELECT c.header_no, c.f AS header FROM pg_temp.msp_csv c WHERE c.is_header;
	RETURN n - (SELECT count(*) FROM pg_temp.msp_csv_headers);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_stage_csv(bigint, regclass, text) IS
	'internal: a client''s staged CSV lines as records under their header, into pg_temp.msp_csv and pg_temp.msp_csv_headers';

-- Where a CSV header has a column of one of the names (any case, spaces
-- around aside): the first such position, or NULL.  Asked once per header,
-- so that each record's fields are read by position.
CREATE FUNCTION @extschema@.msp_csv_column(header text[], names text[]) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN (SELECT h.i FROM unnest(header) WITH ORDINALITY h(name, i)
		 WHERE lower(btrim(h.name)) = ANY (ARRAY(SELECT lower(x) FROM unnest(names) x))
		 ORDER BY h.i LIMIT 1)::integer;
COMMENT ON FUNCTION @extschema@.msp_csv_column(text[], text[]) IS
	'internal: the position of a CSV header''s first column with one of the names (any case), or NULL';

-- A client's staged JSON as records, into pg_temp.msp_json (rec, line_no,
-- ord, raw, f, bad): rec numbers the records, line_no is their document's
-- first line, raw is the record's text where it is not that line's (NULL:
-- the staged line itself), f holds the record's values of keys
-- (msp_json_fields), bad says why a record is none (not valid JSON, not a
-- JSON object).  A line that starts with { or [ begins a document, so JSON
-- lines and pretty-printed saved responses both read; a document that is
-- an array, or an object whose value, items, tickets or content member is
-- an array (Graph, Autotask, HaloPSA, Pax8 pages), gives its elements, any
-- other object itself.  A JSON line is a document by itself (never joined
-- to others) and is scanned once, in C, never parsed into jsonb: only
-- arrays, pages and broken documents go through jsonb.  One statement,
-- one table written: the stage is large, temporary buffers are not.
CREATE FUNCTION @extschema@.msp_stage_json(for_client bigint, stage regclass, keys text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	n bigint;
	json_lines boolean;
BEGIN
	IF to_regclass('pg_temp.msp_json') IS NOT NULL THEN
		DROP TABLE pg_temp.msp_json;
	END IF;
	-- JSON lines (every line starts a document) need no joining of lines.
	-- A line is blank when it has no character but spaces, tabs and line
	-- ends (a regular expression: btrim with a set of characters counts
	-- the characters of the whole line first); a byte-order mark is
	-- trimmed only where there is one.
	EXECUTE format($q$
		SELECT NOT EXISTS (SELECT 1 FROM %s s WHERE s.client_id = $1 AND s.raw ~ '[^ \t\r\n]'
							  AND s.raw !~ '^\ufeff?[\[{]')$q$, stage) INTO json_lines USING for_client;
	EXECUTE format($q$
		CREATE TEMP TABLE msp_json ON COMMIT DROP AS
		WITH %3$s,
		-- OFFSET 0: each document scanned once (a flattened subquery would
		-- scan it again for every use of its fields)
		p AS (
			SELECT x.line_no, x.raw, x.joined, y.f,
				   (left(y.f[%2$s + 1], 1) = '[' OR left(y.f[%2$s + 2], 1) = '[' OR left(y.f[%2$s + 3], 1) = '['
					OR left(y.f[%2$s + 4], 1) = '[') IS TRUE AS page
			  FROM x, LATERAL (SELECT @extschema@.msp_json_fields(CASE WHEN left(x.raw, 1) = E'\ufeff' THEN ltrim(x.raw, E'\ufeff') ELSE x.raw END, $2) AS f OFFSET 0) y)
		SELECT row_number() OVER () AS rec, r.line_no, r.ord, r.raw, r.f, r.bad
		  FROM (
			-- an object that is no page: a record, its fields read already
			SELECT p.line_no, 1::bigint AS ord, CASE WHEN p.joined THEN p.raw END AS raw, p.f, NULL::text AS bad
			  FROM p WHERE p.f IS NOT NULL AND NOT p.page
			UNION ALL
			-- pages, arrays and what is no object: their elements through jsonb
			SELECT p.line_no, e.ord, e.raw,
				   CASE WHEN jsonb_typeof(e.rec) = 'object' THEN @extschema@.msp_json_fields(e.raw, $2) END,
				   CASE WHEN e.rec IS NULL THEN 'not valid JSON' WHEN jsonb_typeof(e.rec) <> 'object' THEN 'not a JSON object' END
			  FROM p
			  CROSS JOIN LATERAL (SELECT @extschema@.msp_try_jsonb(ltrim(p.raw, E'\ufeff')) AS doc) j
			  CROSS JOIN LATERAL (SELECT CASE
											 WHEN jsonb_typeof(j.doc) = 'array' THEN j.doc
											 WHEN jsonb_typeof(j.doc -> 'value') = 'array' THEN j.doc -> 'value'
											 WHEN jsonb_typeof(j.doc -> 'items') = 'array' THEN j.doc -> 'items'
											 WHEN jsonb_typeof(j.doc -> 'tickets') = 'array' THEN j.doc -> 'tickets'
											 WHEN jsonb_typeof(j.doc -> 'content') = 'array' THEN j.doc -> 'content'
										 END AS arr) a
			  CROSS JOIN LATERAL (SELECT x.rec, x.ord, x.rec::text AS raw
									FROM jsonb_array_elements(a.arr) WITH ORDINALITY x(rec, ord)
								   WHERE a.arr IS NOT NULL
								  UNION ALL
								  SELECT j.doc, 1, p.raw WHERE a.arr IS NULL) e
			 WHERE p.f IS NULL OR p.page) r$q$, stage, cardinality(keys),
		CASE WHEN json_lines THEN
		format($x$x AS (
			SELECT s.line_no, s.raw, false AS joined
			  FROM %s s WHERE s.client_id = $1 AND s.raw ~ '[^ \t\r\n]')$x$, stage)
		ELSE
		-- a line that starts a document and is followed by another start
		-- (or by nothing) is one; only the other lines are joined
		format($x$l AS (
			SELECT s.line_no, s.raw, s.raw ~ '^\ufeff?[\[{]' AS starts
			  FROM %s s WHERE s.client_id = $1 AND s.raw ~ '[^ \t\r\n]'),
		n AS (
			SELECT l.*, lead(l.starts, 1, true) OVER w AS next_starts, count(*) FILTER (WHERE l.starts) OVER w AS doc_no
			  FROM l WINDOW w AS (ORDER BY l.line_no)),
		x AS (
			SELECT n.line_no, n.raw, false AS joined FROM n WHERE n.starts AND n.next_starts
			UNION ALL
			SELECT min(n.line_no), string_agg(n.raw, E'\n' ORDER BY n.line_no), true
			  FROM n WHERE NOT (n.starts AND n.next_starts) GROUP BY n.doc_no)$x$, stage) END)
	USING for_client, keys || '{value,items,tickets,content}'::text[];
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_stage_json(bigint, regclass, text[]) IS
	'internal: a client''s staged JSON (JSON lines or saved responses, enveloped or not) as records with the values of keys, into pg_temp.msp_json';

-- The day a snapshot is of: the given one, else the client's today.
-- PL/pgSQL, as msp_company_owner: Citus re-plans a RETURN-style body from
-- its text and fails on it (syntax error at or near "RETURN").
CREATE FUNCTION @extschema@.msp_snapshot_day(for_client bigint, as_of date) RETURNS date
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	today date := (SELECT (now() AT TIME ZONE c.time_zone)::date FROM @extschema@.clients c
				   WHERE c.client_id = for_client);
BEGIN
	-- the same bounds as a logon's time: a snapshot of a day that has not
	-- come would be the latest for every period before it
	IF as_of < date '1990-01-01' OR as_of > today + 1 THEN
		RAISE EXCEPTION 'snapshot day % is out of range', as_of
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The day of a snapshot must lie from 1990-01-01 to a day after today (%s).', today),
				  HINT = 'Pass the day the export was taken (as_of), or NULL for today.';
	END IF;
	RETURN coalesce(as_of, today);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_snapshot_day(bigint, date) IS
	'internal: the day a licence snapshot is of (the given day, else today in the client''s time zone)';

-- Licence assignments from pg_temp.msp_assign (line_no, upn, product,
-- enabled): the UPNs' Microsoft 365 accounts (created, kind unknown until
-- mapped, as the Entra loader creates them, where a UPN is none yet), then
-- the day's rows, those already loaded left out (a plain insert costs
-- half of ON CONFLICT's speculative one).  Loads of a client take turns
-- (msp_load_begin), so the check-then-insert cannot race with another
-- load; a row written meanwhile by hand fails the load, whole.  Returns
-- (loaded, duplicate).
CREATE FUNCTION @extschema@.msp_store_assignments(for_client bigint, day date, load_source text,
												  OUT loaded bigint, OUT duplicate bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	-- new ids come from the identity column, moved past hand-chosen ones
	PERFORM setval(pg_get_serial_sequence('@extschema@.accounts', 'account_id'), m.id)
	   FROM (SELECT max(a.account_id) AS id FROM @extschema@.accounts a WHERE a.client_id = for_client) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.accounts', 'account_id')), 0);
	ANALYZE pg_temp.msp_assign;
	-- In steps, each temporary table joined only with the client's rows:
	-- Citus plans no outer join of a temporary and a distributed table nor
	-- a correlated NOT EXISTS.  The UPNs' accounts; the new ones inserted
	-- (in name order: the name index takes them page by page), their ids
	-- read back.
	CREATE TEMP TABLE msp_assign_ids ON COMMIT DROP AS
	SELECT DISTINCT x.upn, NULL::bigint AS account_id FROM pg_temp.msp_assign x;
	UPDATE pg_temp.msp_assign_ids u SET account_id = a.account_id
	  FROM @extschema@.accounts a
	 WHERE a.client_id = for_client AND a.realm = 'm365' AND a.application IS NULL AND lower(a.name) = u.upn;
	INSERT INTO @extschema@.accounts (client_id, realm, name, kind)
	SELECT for_client, 'm365', u.upn, 'unknown' FROM pg_temp.msp_assign_ids u WHERE u.account_id IS NULL ORDER BY u.upn;
	IF FOUND THEN
		UPDATE pg_temp.msp_assign_ids u SET account_id = a.account_id
		  FROM @extschema@.accounts a
		 WHERE u.account_id IS NULL AND a.client_id = for_client AND a.realm = 'm365' AND a.application IS NULL
		   AND lower(a.name) = u.upn;
	END IF;
	-- the day's rows, the first by line of each account and product, less
	-- those loaded
	CREATE TEMP TABLE msp_assign_new ON COMMIT DROP AS
	SELECT DISTINCT ON (i.account_id, x.product) i.account_id, x.product, x.enabled
	  FROM pg_temp.msp_assign x
	  JOIN pg_temp.msp_assign_ids i ON i.upn = x.upn
	 ORDER BY i.account_id, x.product, x.line_no;
	DELETE FROM pg_temp.msp_assign_new n
	 USING @extschema@.m365_license_assignments m
	 WHERE m.client_id = for_client AND m.as_of = day AND m.account_id = n.account_id AND m.product = n.product;
	WITH ins AS (
		INSERT INTO @extschema@.m365_license_assignments (client_id, as_of, account_id, product, account_enabled, source)
		SELECT for_client, day, n.account_id, n.product, n.enabled, load_source
		  FROM pg_temp.msp_assign_new n
		 ORDER BY n.account_id, n.product
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	duplicate := (SELECT count(*) FROM pg_temp.msp_assign) - loaded;
	DROP TABLE pg_temp.msp_assign_ids, pg_temp.msp_assign_new;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_store_assignments(bigint, date, text) IS
	'internal: a load''s licence assignments (pg_temp.msp_assign) as accounts and the day''s m365_license_assignments';

-- Rejected records of a load (pg_temp.msp_rej: line_no, raw, reason) to
-- load_rejects.  Returns how many.
CREATE FUNCTION @extschema@.msp_store_rejects(for_client bigint, load_source text) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
	SELECT for_client, load_source, r.line_no, r.raw, r.reason FROM pg_temp.msp_rej r ORDER BY r.line_no;
	GET DIAGNOSTICS n = ROW_COUNT;
	DROP TABLE pg_temp.msp_rej;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_store_rejects(bigint, text) IS
	'internal: a load''s rejected records (pg_temp.msp_rej) into load_rejects';

-- Graph JSON: subscribedSku objects (skuId, skuPartNumber,
-- prepaidUnits.enabled, consumedUnits) and user objects
-- (userPrincipalName, accountEnabled, assignedLicenses[].skuId), in any
-- mix, as JSON lines or saved responses.  A snapshot of the day as_of.
-- Each record is scanned once for its fields (a member whose value is
-- null counts as absent); only a user's assignedLicenses array is read as
-- jsonb.  jit is off: these one-pass statements over large stages would
-- spend longer compiling than running.
CREATE FUNCTION @extschema@.msp_load_m365_graph(client_id bigint, as_of date DEFAULT NULL, source text DEFAULT 'graph',
												OUT loaded bigint, OUT duplicate bigint,
												OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET jit = off
AS $$
#variable_conflict use_variable
DECLARE
	day date;
	l bigint;
	d bigint;
BEGIN
	source := coalesce(source, 'graph');
	-- the stage holds still while it is read and emptied: a COPY into it
	-- (any client) waits for this load, and this load for COPYs under way,
	-- so that no line committed meanwhile is emptied unread
	LOCK TABLE @extschema@.m365_graph_staging IN SHARE ROW EXCLUSIVE MODE;
	PERFORM @extschema@.msp_load_begin(client_id);
	day := @extschema@.msp_snapshot_day(client_id, as_of);
	-- f: 1 skuId, 2 skuPartNumber, 3 prepaidUnits, 4 consumedUnits,
	-- 5 userPrincipalName, 6 accountEnabled, 7 assignedLicenses
	PERFORM @extschema@.msp_stage_json(client_id, '@extschema@.m365_graph_staging',
									   '{skuId,skuPartNumber,prepaidUnits,consumedUnits,userPrincipalName,accountEnabled,assignedLicenses}');
	CREATE TEMP TABLE msp_graph (rec bigint, line_no bigint, ord bigint, raw text, upn text, enabled boolean, skus text[],
								 class text) ON COMMIT DROP;
	-- a user's skuIds (NULL for a licence without one); an array jsonb
	-- cannot hold (a number out of its range) rejects its record alone.
	-- The raw text is kept for rejects only.
	PERFORM @extschema@.msp_load_guarded($step$
		INSERT INTO pg_temp.msp_graph (rec, line_no, ord, raw, upn, enabled, skus, class)
		SELECT c.rec, c.line_no, c.ord,
			   CASE WHEN c.class LIKE 'reject:%' THEN coalesce(c.raw, (SELECT s.raw FROM @extschema@.m365_graph_staging s
																		 WHERE s.client_id = $1 AND s.line_no = c.line_no)) END,
			   CASE WHEN c.class = 'user' THEN lower(btrim(c.f[5])) END,
			   CASE WHEN c.class = 'user' THEN CASE c.f[6] WHEN 'true' THEN true WHEN 'false' THEN false END END,
			   CASE WHEN c.class = 'user' THEN c.skus END, c.class
		  FROM (SELECT g.*,
					   CASE
						   WHEN g.bad IS NOT NULL THEN 'reject:' || g.bad
						   WHEN g.f[2] IS NOT NULL OR g.f[3] IS NOT NULL THEN
							   CASE
								   WHEN coalesce(g.f[1], '') = '' THEN 'reject:no skuId'
								   WHEN length(g.f[1]) > 255 OR length(g.f[2]) > 255 THEN 'reject:field too long'
								   WHEN coalesce((@extschema@.msp_json_fields(g.f[3], '{enabled}'))[1], '') !~ '^[0-9]{1,9}$'
									   THEN 'reject:invalid prepaidUnits.enabled'
								   WHEN coalesce(g.f[4], '') !~ '^[0-9]{1,9}$' THEN 'reject:invalid consumedUnits'
								   ELSE 'sku'
							   END
						   WHEN g.f[5] IS NOT NULL THEN
							   CASE
								   WHEN btrim(g.f[5]) = '' THEN 'reject:no userPrincipalName'
								   WHEN length(g.f[5]) > 255 THEN 'reject:field too long'
								   WHEN left(g.f[7], 1) <> '[' THEN 'reject:assignedLicenses is not an array'
								   WHEN coalesce(cardinality(g.skus), 0) = 0 THEN 'skip'
								   WHEN array_position(g.skus, NULL) IS NOT NULL THEN 'reject:assignedLicenses without skuId'
								   ELSE 'user'
							   END
						   ELSE 'reject:neither a subscribedSku nor a user'
					   END AS class
				  FROM (SELECT j.*,
							   CASE WHEN j.f[2] IS NULL AND j.f[3] IS NULL AND left(j.f[7], 1) = '['
									THEN ARRAY(SELECT CASE WHEN jsonb_typeof(e -> 'skuId') = 'string' THEN lower(e ->> 'skuId') END
												 FROM jsonb_array_elements(j.f[7]::jsonb) e) END AS skus
						  FROM pg_temp.msp_json j WHERE j.rec BETWEEN $2 AND $3 OFFSET 0) g
				-- OFFSET 0: each record classified once, its licences read once
				OFFSET 0) c
	$step$, $reject$
		INSERT INTO pg_temp.msp_graph (rec, line_no, ord, raw, class)
		SELECT j.rec, j.line_no, j.ord,
			   coalesce(j.raw, (SELECT s.raw FROM @extschema@.m365_graph_staging s WHERE s.client_id = $1 AND s.line_no = j.line_no)),
			   'reject:not valid JSON'
		  FROM pg_temp.msp_json j WHERE j.rec = $2
	$reject$, client_id, (SELECT min(j.rec) FROM pg_temp.msp_json j), (SELECT max(j.rec) FROM pg_temp.msp_json j));

	-- SKUs: the day's counts (a corrected export of the same day replaces them)
	WITH sku AS (
		SELECT DISTINCT ON (lower(j.f[1])) lower(j.f[1]) AS sku_id, j.f[2] AS part,
			   (@extschema@.msp_json_fields(j.f[3], '{enabled}'))[1]::integer AS enabled, j.f[4]::integer AS consumed
		  FROM pg_temp.msp_graph g JOIN pg_temp.msp_json j USING (rec) WHERE g.class = 'sku'
		 ORDER BY lower(j.f[1]), g.line_no DESC, g.ord DESC),
	up AS (
		INSERT INTO @extschema@.m365_sku_counts AS m (client_id, as_of, sku_id, sku_part_number, product, enabled, consumed, source)
		SELECT client_id, day, s.sku_id, s.part, @extschema@.msp_license_product(coalesce(s.part, s.sku_id)),
			   s.enabled, s.consumed, source
		  FROM sku s
		ON CONFLICT ON CONSTRAINT m365_sku_counts_pkey DO UPDATE
		   SET sku_part_number = excluded.sku_part_number, product = excluded.product, enabled = excluded.enabled,
			   consumed = excluded.consumed, source = excluded.source
		 WHERE (m.sku_part_number, m.product, m.enabled, m.consumed)
			   IS DISTINCT FROM (excluded.sku_part_number, excluded.product, excluded.enabled, excluded.consumed)
		RETURNING 1)
	SELECT count(*) INTO loaded FROM up;
	duplicate := (SELECT count(*) FROM pg_temp.msp_graph g WHERE g.class = 'sku') - loaded;

	-- users: one row per licence held; a skuId names its product through
	-- the day's subscribedSkus, else license_product_names (each distinct
	-- skuId looked up once)
	CREATE TEMP TABLE msp_assign ON COMMIT DROP AS
	SELECT g.line_no, g.upn, p.product, g.enabled
	  FROM pg_temp.msp_graph g
	  CROSS JOIN LATERAL unnest(g.skus) s(sku)
	  -- OFFSET 0: each distinct skuId looked up once, not once per licence
	  JOIN (SELECT k.sku,
				   coalesce((SELECT m.product FROM @extschema@.m365_sku_counts m
							  WHERE m.client_id = client_id AND m.as_of = day AND m.sku_id = k.sku),
							@extschema@.msp_license_product(k.sku)) AS product
			  FROM (SELECT DISTINCT x.sku FROM pg_temp.msp_graph y, unnest(y.skus) x(sku) WHERE y.class = 'user') k
			OFFSET 0) p
		ON p.sku = s.sku
	 WHERE g.class = 'user';
	SELECT a.loaded, a.duplicate INTO l, d FROM @extschema@.msp_store_assignments(client_id, day, source) a;
	loaded := loaded + l;
	duplicate := duplicate + d;
	DROP TABLE pg_temp.msp_assign;

	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT g.line_no, g.raw, substr(g.class, 8) AS reason FROM pg_temp.msp_graph g WHERE g.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_graph g WHERE g.class = 'skip';
	DELETE FROM @extschema@.m365_graph_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_graph, pg_temp.msp_json;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_m365_graph(bigint, date, text) IS
	'loads a client''s staged Graph JSON: subscribedSkus become the day''s seat counts, users'' assignedLicenses the day''s licence assignments (loaded counts SKU rows and licences held)';

-- The admin center's Active users CSV: "User principal name", "Licenses"
-- (display names joined by +, or Unlicensed), "Block credential".  Each
-- header's columns are found once, each record's fields read by position.
CREATE FUNCTION @extschema@.msp_load_m365_users_csv(client_id bigint, as_of date DEFAULT NULL,
													source text DEFAULT 'm365_admin',
													OUT loaded bigint, OUT duplicate bigint,
													OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET jit = off
AS $$
#variable_conflict use_variable
DECLARE
	day date;
BEGIN
	source := coalesce(source, 'm365_admin');
	-- the stage holds still while it is read and emptied: a COPY into it
	-- (any client) waits for this load, and this load for COPYs under way,
	-- so that no line committed meanwhile is emptied unread
	LOCK TABLE @extschema@.m365_users_csv_staging IN SHARE ROW EXCLUSIVE MODE;
	PERFORM @extschema@.msp_load_begin(client_id);
	day := @extschema@.msp_snapshot_day(client_id, as_of);
	PERFORM @extschema@.msp_stage_csv(client_id, '@extschema@.m365_users_csv_staging', 'User principal name');
	CREATE TEMP TABLE msp_users_cols ON COMMIT DROP AS
	SELECT h.header_no, @extschema@.msp_csv_column(h.header, '{User principal name}') AS upn,
		   @extschema@.msp_csv_column(h.header, '{Licenses}') AS licenses,
		   @extschema@.msp_csv_column(h.header, '{Block credential,Sign-in blocked}') AS blocked
	  FROM pg_temp.msp_csv_headers h;
	CREATE TEMP TABLE msp_users ON COMMIT DROP AS
	SELECT c.line_no, c.raw, x.upn, x.licenses, x.blocked,
		   CASE
			   WHEN c.f IS NULL THEN 'reject:not valid CSV'
			   WHEN h.header_no IS NULL THEN 'reject:no header with User principal name before it'
			   WHEN coalesce(x.upn, '') = '' THEN 'reject:no User principal name'
			   WHEN length(x.upn) > 255 THEN 'reject:field too long'
			   WHEN x.licenses IS NULL THEN 'reject:no Licenses column'
			   WHEN x.licenses IN ('', 'Unlicensed') THEN 'skip'
			   ELSE 'user'
		   END AS class
	  FROM pg_temp.msp_csv c
	  LEFT JOIN pg_temp.msp_users_cols h ON h.header_no = c.header_no,
		   LATERAL (SELECT lower(btrim(c.f[h.upn])) AS upn, btrim(c.f[h.licenses]) AS licenses,
						   lower(btrim(c.f[h.blocked])) AS blocked) x
	 WHERE NOT c.is_header;
	-- each distinct licence name looked up once
	CREATE TEMP TABLE msp_assign ON COMMIT DROP AS
	WITH held AS (
		SELECT u.line_no, u.upn, btrim(lic) AS lic, CASE u.blocked WHEN 'true' THEN false WHEN 'false' THEN true END AS enabled
		  FROM pg_temp.msp_users u, unnest(string_to_array(u.licenses, '+')) lic
		 WHERE u.class = 'user' AND btrim(lic) <> '')
	SELECT h.line_no, h.upn, p.product, h.enabled
	  FROM held h
	  -- OFFSET 0: each distinct licence name looked up once, not once per licence
	  JOIN (SELECT k.lic, @extschema@.msp_license_product(k.lic) AS product FROM (SELECT DISTINCT x.lic FROM held x) k
			OFFSET 0) p
		USING (lic);
	SELECT a.loaded, a.duplicate INTO loaded, duplicate FROM @extschema@.msp_store_assignments(client_id, day, source) a;
	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT u.line_no, u.raw, substr(u.class, 8) AS reason FROM pg_temp.msp_users u WHERE u.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_users u WHERE u.class = 'skip';
	DELETE FROM @extschema@.m365_users_csv_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_users, pg_temp.msp_users_cols, pg_temp.msp_assign, pg_temp.msp_csv, pg_temp.msp_csv_headers;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_m365_users_csv(bigint, date, text) IS
	'loads a client''s staged admin center Active users CSV as the day''s licence assignments (loaded counts licences held)';

-- The active user detail report: each "<product> Last Activity Date" is a
-- day the person used Microsoft 365, loaded as noon of that day in the
-- client's time zone.  Loaded as logons in the realm m365_activity, which
-- counts only where a contract's count_realms names it; the activity
-- account takes the person of the same UPN's m365 account.  Deleted users
-- are skipped.  Each header's columns are found once, each record's fields
-- read by position.
CREATE FUNCTION @extschema@.msp_load_m365_activity(client_id bigint, source text DEFAULT 'm365_activity',
												   OUT loaded bigint, OUT duplicate bigint,
												   OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET TimeZone = 'UTC'
SET jit = off
AS $$
#variable_conflict use_variable
BEGIN
	source := coalesce(source, 'm365_activity');
	-- the stage holds still while it is read and emptied: a COPY into it
	-- (any client) waits for this load, and this load for COPYs under way,
	-- so that no line committed meanwhile is emptied unread
	LOCK TABLE @extschema@.m365_activity_staging IN SHARE ROW EXCLUSIVE MODE;
	PERFORM @extschema@.msp_load_begin(client_id);
	PERFORM @extschema@.msp_stage_csv(client_id, '@extschema@.m365_activity_staging', 'User Principal Name');
	CREATE TEMP TABLE msp_act_cols ON COMMIT DROP AS
	SELECT h.header_no, @extschema@.msp_csv_column(h.header, '{User Principal Name}') AS upn,
		   @extschema@.msp_csv_column(h.header, '{Is Deleted}') AS deleted,
		   ARRAY(SELECT lower(regexp_replace(btrim(x.name), '\s*Last Activity Date$', '', 'i'))
				   FROM unnest(h.header) WITH ORDINALITY x(name, i)
				  WHERE btrim(x.name) ~* 'Last Activity Date$' ORDER BY x.i) AS products,
		   ARRAY(SELECT x.i::integer FROM unnest(h.header) WITH ORDINALITY x(name, i)
				  WHERE btrim(x.name) ~* 'Last Activity Date$' ORDER BY x.i) AS cols
	  FROM pg_temp.msp_csv_headers h;
	-- every activity date written, at noon in the client's zone (NULL: not
	-- a date); a date that is none (2026-02-30) marks its record alone
	CREATE TEMP TABLE msp_act_days (line_no bigint, product text, day text, at timestamptz) ON COMMIT DROP;
	PERFORM @extschema@.msp_load_guarded($step$
		INSERT INTO pg_temp.msp_act_days (line_no, product, day, at)
		SELECT c.line_no, p.product, p.day,
			   CASE WHEN p.day ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'
					THEN (p.day::date + time '12:00')
						 AT TIME ZONE (SELECT z.time_zone FROM @extschema@.clients z WHERE z.client_id = $1) END
		  FROM pg_temp.msp_csv c
		  JOIN pg_temp.msp_act_cols h ON h.header_no = c.header_no,
			   LATERAL (SELECT u.product, btrim(c.f[u.col]) AS day FROM unnest(h.products, h.cols) u(product, col)) p
		 WHERE NOT c.is_header AND c.line_no BETWEEN $2 AND $3 AND p.day <> ''
	$step$, $reject$
		INSERT INTO pg_temp.msp_act_days (line_no) VALUES ($2)
	$reject$, client_id, (SELECT min(c.line_no) FROM pg_temp.msp_csv c), (SELECT max(c.line_no) FROM pg_temp.msp_csv c));
	CREATE TEMP TABLE msp_act ON COMMIT DROP AS
	SELECT c.line_no, c.raw, x.upn,
		   CASE
			   WHEN c.f IS NULL THEN 'reject:not valid CSV'
			   WHEN h.header_no IS NULL THEN 'reject:no header with User Principal Name before it'
			   WHEN coalesce(x.upn, '') = '' THEN 'reject:no User Principal Name'
			   WHEN length(x.upn) > 255 THEN 'reject:field too long'
			   WHEN lower(coalesce(c.f[h.deleted], '')) = 'true' THEN 'skip'
			   WHEN d.not_a_date THEN 'reject:invalid Last Activity Date'
			   WHEN d.implausible IS NOT NULL THEN 'reject:invalid Last Activity Date: ' || d.implausible
			   WHEN d.line_no IS NULL THEN 'skip'
			   ELSE 'activity'
		   END AS class
	  FROM pg_temp.msp_csv c
	  LEFT JOIN pg_temp.msp_act_cols h ON h.header_no = c.header_no
	  LEFT JOIN (SELECT d.line_no, bool_or(d.at IS NULL) AS not_a_date,
						min(@extschema@.msp_implausible_time(d.day, d.at)) AS implausible
				   FROM pg_temp.msp_act_days d GROUP BY d.line_no) d ON d.line_no = c.line_no,
		   LATERAL (SELECT lower(btrim(c.f[h.upn])) AS upn) x
	 WHERE NOT c.is_header;

	-- activity accounts take the kind and person of the UPN's m365 account;
	-- each UPN's activity account, the new ones' ids read back after their
	-- insert (new ids move past hand-chosen ones first)
	PERFORM setval(pg_get_serial_sequence('@extschema@.accounts', 'account_id'), m.id)
	   FROM (SELECT max(a.account_id) AS id FROM @extschema@.accounts a WHERE a.client_id = client_id) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.accounts', 'account_id')), 0);
	-- In steps, each temporary table joined only with the client's rows:
	-- Citus plans no outer join of a temporary and a distributed table.
	CREATE TEMP TABLE msp_act_accounts ON COMMIT DROP AS
	SELECT DISTINCT a.upn, NULL::bigint AS account_id FROM pg_temp.msp_act a WHERE a.class = 'activity';
	UPDATE pg_temp.msp_act_accounts u SET account_id = x.account_id
	  FROM @extschema@.accounts x
	 WHERE x.client_id = client_id AND x.realm = 'm365_activity' AND x.application IS NULL AND lower(x.name) = u.upn;
	CREATE TEMP TABLE msp_act_m365 ON COMMIT DROP AS
	SELECT u.upn, m.kind, m.person_id
	  FROM pg_temp.msp_act_accounts u
	  JOIN @extschema@.accounts m ON m.client_id = client_id AND m.realm = 'm365' AND m.application IS NULL
								 AND lower(m.name) = u.upn
	 WHERE u.account_id IS NULL;
	INSERT INTO @extschema@.accounts (client_id, realm, name, kind, person_id)
	SELECT client_id, 'm365_activity', u.upn, coalesce(m.kind, 'unknown'), m.person_id
	  FROM pg_temp.msp_act_accounts u LEFT JOIN pg_temp.msp_act_m365 m ON m.upn = u.upn
	 WHERE u.account_id IS NULL
	 ORDER BY u.upn;
	IF FOUND THEN
		UPDATE pg_temp.msp_act_accounts u SET account_id = x.account_id
		  FROM @extschema@.accounts x
		 WHERE u.account_id IS NULL AND x.client_id = client_id AND x.realm = 'm365_activity'
		   AND x.application IS NULL AND lower(x.name) = u.upn;
	END IF;
	DROP TABLE pg_temp.msp_act_m365;

	-- the logons, one per product-day (its event id, the first by line),
	-- those already loaded left out as the shared last step
	-- (msp_load_normalized) leaves them out.  Straight from the records:
	-- the accounts are known and there is no device nor session, so the
	-- shared step's passes over accounts and devices would find nothing
	-- new.  Should a record make the insert fail, the shared guarded step
	-- runs instead, and finds it.
	BEGIN
		-- the product-days into a temporary table, less those loaded
		-- (Citus plans no correlated NOT EXISTS over a CTE), then inserted
		CREATE TEMP TABLE msp_act_logons ON COMMIT DROP AS
		SELECT DISTINCT ON (x.event_id) x.*
		  FROM (SELECT a.line_no, a.upn, d.at, a.upn || '|' || d.product || '|' || d.day AS event_id
				  FROM pg_temp.msp_act a JOIN pg_temp.msp_act_days d USING (line_no)
				 WHERE a.class = 'activity') x
		 ORDER BY x.event_id, x.line_no;
		DELETE FROM pg_temp.msp_act_logons e
		 USING @extschema@.logons l
		 WHERE l.client_id = client_id AND l.source = source AND l.source_event_id = e.event_id;
		WITH ins AS (
			INSERT INTO @extschema@.logons (client_id, account_id, device_id, at, ended, presence, source, source_event_id,
											session_key)
			SELECT client_id, i.account_id, NULL, e.at, NULL, true, source, e.event_id, NULL
			  FROM pg_temp.msp_act_logons e JOIN pg_temp.msp_act_accounts i ON i.upn = e.upn
			RETURNING 1)
		SELECT count(*) INTO loaded FROM ins;
		DROP TABLE pg_temp.msp_act_logons;
		duplicate := (SELECT count(*) FROM pg_temp.msp_act a JOIN pg_temp.msp_act_days d USING (line_no)
					   WHERE a.class = 'activity') - loaded;
	EXCEPTION WHEN data_exception OR program_limit_exceeded OR integrity_constraint_violation THEN
		INSERT INTO pg_temp.msp_load_events (line_no, realm, application, account_name, device_name, create_device, at,
											 ended, source_event_id, session_key)
		SELECT a.line_no, 'm365_activity', NULL, a.upn, NULL, false, d.at, NULL, a.upn || '|' || d.product || '|' || d.day, NULL
		  FROM pg_temp.msp_act a JOIN pg_temp.msp_act_days d USING (line_no)
		 WHERE a.class = 'activity';
		SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized_guarded(client_id, source, $reject$
			UPDATE pg_temp.msp_act SET class = 'reject:unloadable record: ' || $3 WHERE line_no = $2
		$reject$);
	END;

	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT a.line_no, a.raw, substr(a.class, 8) AS reason FROM pg_temp.msp_act a WHERE a.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_act a WHERE a.class = 'skip';
	DELETE FROM @extschema@.m365_activity_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_act, pg_temp.msp_act_days, pg_temp.msp_act_cols, pg_temp.msp_act_accounts, pg_temp.msp_csv,
			   pg_temp.msp_csv_headers;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_m365_activity(bigint, text) IS
	'loads a client''s staged Microsoft 365 active user detail report: each product''s last activity date becomes a logon of realm m365_activity at noon in the client''s zone (counted only where count_realms names it; loaded counts days per product)';

-- Which client a vendor's company belongs to, for a record of a load:
-- 'own' (this client, or the vendor is not mapped at all), 'other' (another
-- client's: skipped), 'unknown' (rejected).
-- PL/pgSQL: Citus re-plans a RETURN-style SQL body from its text and fails.
CREATE FUNCTION @extschema@.msp_company_owner(for_client bigint, for_vendor text, companies text[]) RETURNS text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	RETURN CASE
		WHEN NOT EXISTS (SELECT 1 FROM @extschema@.partner_companies p WHERE p.vendor = for_vendor) THEN 'own'
		WHEN EXISTS (SELECT 1 FROM @extschema@.partner_companies p
					  WHERE p.vendor = for_vendor AND p.client_id = for_client
						AND lower(p.company) = ANY (ARRAY(SELECT lower(btrim(c)) FROM unnest(companies) c))) THEN 'own'
		WHEN EXISTS (SELECT 1 FROM @extschema@.partner_companies p
					  WHERE p.vendor = for_vendor
						AND lower(p.company) = ANY (ARRAY(SELECT lower(btrim(c)) FROM unnest(companies) c))) THEN 'other'
		ELSE 'unknown'
	END;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_company_owner(bigint, text, text[]) IS
	'internal: own, other or unknown: whose a record''s company (any of its names or ids) is, by partner_companies';


-- Pax8 subscriptions: the portal's CSV export or the partner API's
-- subscription JSON (id, companyId, productId, quantity, partnerCost,
-- price, billingTerm, status, startDate, endDate).  A snapshot of the day
-- as_of; the Active subscriptions become the day's license_counts (source
-- pax8): seats the sum of quantities, unit cost their weighted mean.  Each
-- record is read once; each distinct company and product is looked up once.
CREATE FUNCTION @extschema@.msp_load_pax8_subscriptions(client_id bigint, as_of date DEFAULT NULL,
														source text DEFAULT 'pax8',
														OUT loaded bigint, OUT duplicate bigint,
														OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET TimeZone = 'UTC'
SET jit = off
AS $$
#variable_conflict use_variable
DECLARE
	day date;
	json boolean;
	src text;
	lo bigint;
	hi bigint;
BEGIN
	source := coalesce(source, 'pax8');
	-- the stage holds still while it is read and emptied: a COPY into it
	-- (any client) waits for this load, and this load for COPYs under way,
	-- so that no line committed meanwhile is emptied unread
	LOCK TABLE @extschema@.pax8_staging IN SHARE ROW EXCLUSIVE MODE;
	PERFORM @extschema@.msp_load_begin(client_id);
	day := @extschema@.msp_snapshot_day(client_id, as_of);
	-- JSON when the first non-empty line starts an object or array
	json := (SELECT ltrim(s.raw, E' \t\ufeff') ~ '^[\[{]' FROM @extschema@.pax8_staging s
			  WHERE s.client_id = client_id AND btrim(s.raw, E' \t\r\n') <> '' ORDER BY s.line_no LIMIT 1);
	CREATE TEMP TABLE msp_pax8 (rec bigint, line_no bigint, ord bigint, raw text, id text, company text[], product text,
								quantity text, cost text, price text, term text, status text, start_text text,
								end_text text, class text, start_date date, end_date date) ON COMMIT DROP;
	-- the records' fields, by name whatever the format
	IF json THEN
		PERFORM @extschema@.msp_stage_json(client_id, '@extschema@.pax8_staging',
			'{id,companyId,companyName,productName,productId,quantity,partnerCost,price,billingTerm,status,startDate,endDate}');
		src := $src$
			SELECT j.rec, j.line_no, j.ord, j.raw, j.f[1] AS id, ARRAY[j.f[2], j.f[3]] AS company,
				   coalesce(j.f[4], j.f[5]) AS product, j.f[6] AS quantity, j.f[7] AS cost, j.f[8] AS price,
				   j.f[9] AS term, j.f[10] AS status, j.f[11] AS start_text, j.f[12] AS end_text,
				   'reject:' || j.bad AS class
			  FROM pg_temp.msp_json j WHERE j.rec BETWEEN $2 AND $3$src$;
		SELECT min(j.rec), max(j.rec) INTO lo, hi FROM pg_temp.msp_json j;
	ELSIF json IS NOT NULL THEN
		PERFORM @extschema@.msp_stage_csv(client_id, '@extschema@.pax8_staging', 'Quantity');
		CREATE TEMP TABLE msp_pax8_cols ON COMMIT DROP AS
		SELECT h.header_no,
			   @extschema@.msp_csv_column(h.header, '{Subscription Id,Subscription ID,Id}') AS id,
			   @extschema@.msp_csv_column(h.header, '{Company,Company Name}') AS company,
			   @extschema@.msp_csv_column(h.header, '{Company Id,Company ID}') AS company_id,
			   @extschema@.msp_csv_column(h.header, '{Product,Product Name}') AS product,
			   @extschema@.msp_csv_column(h.header, '{Quantity}') AS quantity,
			   @extschema@.msp_csv_column(h.header, '{Partner Cost,Unit Cost,Cost}') AS cost,
			   @extschema@.msp_csv_column(h.header, '{Price,Unit Price}') AS price,
			   @extschema@.msp_csv_column(h.header, '{Billing Term,Term}') AS term,
			   @extschema@.msp_csv_column(h.header, '{Status}') AS status,
			   @extschema@.msp_csv_column(h.header, '{Start Date}') AS start_date,
			   @extschema@.msp_csv_column(h.header, '{End Date}') AS end_date
		  FROM pg_temp.msp_csv_headers h;
		src := $src$
			SELECT c.line_no AS rec, c.line_no, 0::bigint AS ord, c.raw, c.f[h.id] AS id,
				   ARRAY[c.f[h.company], c.f[h.company_id]] AS company, c.f[h.product] AS product,
				   c.f[h.quantity] AS quantity, c.f[h.cost] AS cost, c.f[h.price] AS price, c.f[h.term] AS term,
				   c.f[h.status] AS status, c.f[h.start_date] AS start_text, c.f[h.end_date] AS end_text,
				   CASE WHEN c.f IS NULL THEN 'reject:not valid CSV'
						WHEN h.header_no IS NULL THEN 'reject:no header with Quantity before it' END AS class
			  FROM pg_temp.msp_csv c LEFT JOIN pg_temp.msp_pax8_cols h ON h.header_no = c.header_no
			 WHERE NOT c.is_header AND c.line_no BETWEEN $2 AND $3$src$;
		SELECT min(c.line_no), max(c.line_no) INTO lo, hi FROM pg_temp.msp_csv c;
	END IF;
	-- checked, the company's client found (once per distinct company) and
	-- the dates read: the batch at once, per record only where a date is
	-- none (the reject reads the one record: BETWEEN $2 AND $2)
	IF src IS NOT NULL THEN
		PERFORM @extschema@.msp_load_guarded(format($step$
			INSERT INTO pg_temp.msp_pax8 (rec, line_no, ord, raw, id, company, product, quantity, cost, price, term, status,
										  start_text, end_text, class, start_date, end_date)
			WITH p AS MATERIALIZED (%s),
			-- materialized: a plain CTE would be pulled up into the join, and
			-- the look-up would run once per record instead of once per company
			owner AS MATERIALIZED (
				SELECT c.company, @extschema@.msp_company_owner($1, 'pax8', c.company) AS o
				  FROM (SELECT DISTINCT p.company FROM p WHERE p.class IS NULL) c),
			classed AS (
				SELECT p.rec, p.line_no, p.ord, p.raw, p.id, p.company, p.product, p.quantity, p.cost, p.price, p.term,
					   p.status, p.start_text, p.end_text,
					   coalesce(p.class, CASE
						   WHEN coalesce(btrim(p.product), '') = '' THEN 'reject:no product'
						   WHEN coalesce(btrim(p.quantity), '') !~ '^[0-9]{1,9}(\.0*)?$' THEN 'reject:invalid quantity'
						   WHEN replace(btrim(p.cost), '$', '') !~ '^([0-9]{1,15}(\.[0-9]{1,10})?)?$' THEN 'reject:invalid partner cost'
						   WHEN replace(btrim(p.price), '$', '') !~ '^([0-9]{1,15}(\.[0-9]{1,10})?)?$' THEN 'reject:invalid price'
						   WHEN btrim(p.start_text) !~ '^([0-9]{4}-[0-9]{2}-[0-9]{2}.*)?$'
								OR btrim(p.end_text) !~ '^([0-9]{4}-[0-9]{2}-[0-9]{2}.*)?$' THEN 'reject:invalid start or end date'
						   WHEN length(p.id) > 255 OR length(p.product) > 255 OR length(p.term) > 255 OR length(p.status) > 255
								OR length(p.company[1]) > 255 OR length(p.company[2]) > 255 THEN 'reject:field too long'
						   WHEN o.o = 'own' THEN 'subscription'
						   WHEN o.o = 'other' THEN 'skip'
						   ELSE 'reject:unknown Pax8 company ' || coalesce(p.company[1], p.company[2], '(none)')
					   END) AS class
				  FROM p LEFT JOIN owner o ON o.company = p.company
				 -- OFFSET 0: each record classified once
				 OFFSET 0)
			SELECT c.rec, c.line_no, c.ord,
				   CASE WHEN c.class LIKE 'reject:%%' THEN coalesce(c.raw, (SELECT s.raw FROM @extschema@.pax8_staging s
																		 WHERE s.client_id = $1 AND s.line_no = c.line_no)) END,
				   c.id, c.company, c.product, c.quantity, c.cost, c.price, c.term, c.status, c.start_text, c.end_text,
				   c.class,
				   CASE WHEN c.class = 'subscription' THEN left(nullif(btrim(c.start_text), ''), 10)::date END,
				   CASE WHEN c.class = 'subscription' THEN left(nullif(btrim(c.end_text), ''), 10)::date END
			  FROM classed c
		$step$, src), format($reject$
			INSERT INTO pg_temp.msp_pax8 (rec, line_no, ord, raw, class)
			SELECT p.rec, p.line_no, p.ord,
				   coalesce(p.raw, (SELECT s.raw FROM @extschema@.pax8_staging s WHERE s.client_id = $1 AND s.line_no = p.line_no)),
				   'reject:invalid start or end date'
			  FROM (%s) p
		$reject$, replace(src, 'AND $3', 'AND $2')), client_id, lo, hi);
	END IF;
	IF json THEN
		DROP TABLE pg_temp.msp_json;
	ELSIF json IS NOT NULL THEN
		DROP TABLE pg_temp.msp_csv, pg_temp.msp_csv_headers, pg_temp.msp_pax8_cols;
	END IF;

	WITH sub AS (
		SELECT DISTINCT ON (k.key) k.key, p.*
		  FROM pg_temp.msp_pax8 p,
			   -- without an id (some CSV exports), the record is its own key
			   LATERAL (SELECT coalesce(nullif(btrim(p.id), ''),
										md5(concat_ws('|', p.company[1], p.company[2], p.product, p.term, p.start_text, p.status)))
						AS key) k
		 WHERE p.class = 'subscription'
		 ORDER BY k.key, p.line_no DESC, p.ord DESC),
	prod AS MATERIALIZED (
		SELECT n.product, @extschema@.msp_license_product(n.product) AS name FROM (SELECT DISTINCT s.product FROM sub s) n),
	r AS MATERIALIZED (
		SELECT s.key, coalesce(s.company[1], s.company[2]) AS company, pr.name AS product,
			   btrim(s.quantity)::numeric::integer AS quantity, nullif(replace(btrim(s.cost), '$', ''), '')::numeric AS unit_cost,
			   nullif(replace(btrim(s.price), '$', ''), '')::numeric AS unit_price, s.term, s.status, s.start_date, s.end_date
		  FROM sub s JOIN prod pr USING (product)),
	-- a subscription of the day loaded before takes a corrected export's
	-- values; the others are inserted past an anti-join (both see the
	-- table as it was before the statement).  A plain insert costs half of
	-- ON CONFLICT's speculative one; loads of a client take turns, so no
	-- other load can race it, and a row written meanwhile by hand fails
	-- the load, whole.
	upd AS (
		UPDATE @extschema@.pax8_subscriptions x
		   SET company = r.company, product = r.product, quantity = r.quantity, unit_cost = r.unit_cost,
			   unit_price = r.unit_price, billing_term = r.term, status = r.status, start_date = r.start_date,
			   end_date = r.end_date, source = source
		  FROM r
		 WHERE x.client_id = client_id AND x.as_of = day AND x.subscription_id = r.key
		   AND (x.company, x.product, x.quantity, x.unit_cost, x.unit_price, x.billing_term, x.status, x.start_date, x.end_date)
			   IS DISTINCT FROM (r.company, r.product, r.quantity, r.unit_cost, r.unit_price, r.term, r.status, r.start_date,
								 r.end_date)
		RETURNING 1),
	ins AS (
		INSERT INTO @extschema@.pax8_subscriptions (client_id, as_of, subscription_id, company, product, quantity, unit_cost,
													unit_price, billing_term, status, start_date, end_date, source)
		SELECT client_id, day, r.key, r.company, r.product, r.quantity, r.unit_cost, r.unit_price, r.term, r.status,
			   r.start_date, r.end_date, source
		  FROM r
		 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.pax8_subscriptions x
							WHERE x.client_id = client_id AND x.as_of = day AND x.subscription_id = r.key)
		RETURNING 1)
	SELECT (SELECT count(*) FROM upd) + (SELECT count(*) FROM ins) INTO loaded;
	duplicate := (SELECT count(*) FROM pg_temp.msp_pax8 p WHERE p.class = 'subscription') - loaded;

	-- the day's seats per product, from every Active subscription of the day
	DELETE FROM @extschema@.license_counts lc WHERE lc.client_id = client_id AND lc.source = source AND lc.as_of = day;
	INSERT INTO @extschema@.license_counts (client_id, sku, seats, unit_cost, source, as_of)
	SELECT client_id, x.product, sum(x.quantity),
		   CASE WHEN sum(x.quantity) > 0 AND count(x.unit_cost) = count(*)
				THEN trim_scale(sum(x.quantity * x.unit_cost) / sum(x.quantity)) END,
		   source, day
	  FROM @extschema@.pax8_subscriptions x
	 WHERE x.client_id = client_id AND x.as_of = day AND lower(x.status) = 'active'
	 GROUP BY x.product;

	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT p.line_no, p.raw, substr(p.class, 8) AS reason FROM pg_temp.msp_pax8 p WHERE p.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_pax8 p WHERE p.class = 'skip';
	DELETE FROM @extschema@.pax8_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_pax8;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_pax8_subscriptions(bigint, date, text) IS
	'loads a client''s staged Pax8 subscriptions (portal CSV or partner-API JSON) as the day''s subscriptions; the Active ones become license_counts (source pax8)';

-- Tickets not yet matched to a person: by psa_contacts (id or e-mail),
-- else by e-mail as the UPN of an individual Microsoft 365 account, else
-- by e-mail in person_identities; each matched ticket becomes a support
-- contact.  Each distinct contact is looked up once, and only the tickets
-- it matches are written.  Returns how many tickets were matched.
CREATE FUNCTION @extschema@.msp_match_psa_tickets(client_id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET jit = off
AS $$
#variable_conflict use_variable
DECLARE
	n bigint;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.load'), hashtext(client_id::text));
	UPDATE @extschema@.psa_tickets t
	   SET person_id = m.person_id
	  FROM (SELECT u.psa, u.contact,
				   coalesce((SELECT min(c.person_id) FROM @extschema@.psa_contacts c
							  WHERE c.client_id = client_id AND c.psa = u.psa AND lower(c.contact) = u.contact),
							(SELECT a.person_id FROM @extschema@.accounts a
							  WHERE a.client_id = client_id AND a.realm = 'm365' AND a.kind = 'individual'
								AND lower(a.name) = u.contact),
							(SELECT min(i.person_id) FROM @extschema@.person_identities i
							  WHERE i.client_id = client_id AND lower(i.email) = u.contact)) AS person_id
			  FROM (SELECT DISTINCT x.psa, x.contact FROM @extschema@.psa_tickets x
					 WHERE x.client_id = client_id AND x.person_id IS NULL AND x.contact IS NOT NULL) u
			-- OFFSET 0: each contact looked up once, not once per ticket
			OFFSET 0) m
	 WHERE t.client_id = client_id AND t.person_id IS NULL AND t.psa = m.psa AND t.contact = m.contact
	   AND m.person_id IS NOT NULL;
	PERFORM setval(pg_get_serial_sequence('@extschema@.support_contacts', 'contact_id'), m.id)
	   FROM (SELECT max(s.contact_id) AS id FROM @extschema@.support_contacts s WHERE s.client_id = client_id) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.support_contacts', 'contact_id')), 0);
	-- the new contacts' ids drawn in a temporary table, then written to
	-- the tickets: Citus takes no volatile function in an UPDATE of a
	-- distributed table
	CREATE TEMP TABLE msp_new_contacts ON COMMIT DROP AS
	SELECT t.psa, t.ticket_id, NULL::bigint AS contact_id, t.person_id, t.at, t.channel
	  FROM @extschema@.psa_tickets t
	 WHERE t.client_id = client_id AND t.person_id IS NOT NULL AND t.contact_id IS NULL;
	UPDATE pg_temp.msp_new_contacts c
	   SET contact_id = nextval(pg_get_serial_sequence('@extschema@.support_contacts', 'contact_id'));
	UPDATE @extschema@.psa_tickets t SET contact_id = c.contact_id
	  FROM pg_temp.msp_new_contacts c
	 WHERE t.client_id = client_id AND t.psa = c.psa AND t.ticket_id = c.ticket_id;
	INSERT INTO @extschema@.support_contacts (client_id, contact_id, person_id, at, channel)
	SELECT client_id, c.contact_id, c.person_id, c.at, c.channel FROM pg_temp.msp_new_contacts c;
	GET DIAGNOSTICS n = ROW_COUNT;
	DROP TABLE pg_temp.msp_new_contacts;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_match_psa_tickets(bigint) IS
	'matches a client''s unmatched PSA tickets to people (psa_contacts, Microsoft 365 UPN, person_identities e-mail) and makes each a support contact; run again after adding mappings';

-- PSA tickets, as the PSA's API returns them (a bare array, a page
-- envelope, or JSON lines):
--   connectwise  id, _info.dateEntered, company.identifier/name/id,
--                contactEmailAddress, contact.id, board.name, source.name
--   autotask     id, createDate, companyID, contactID, queueID, source
--   halopsa      id, dateoccurred, client_id/client_name, user_id, team
-- A time without a zone is UTC (the APIs write UTC).  Each record is read
-- once (its nested objects' members by msp_json_fields too), each
-- distinct company looked up once.
CREATE FUNCTION @extschema@.msp_load_psa_tickets(client_id bigint, psa text, source text DEFAULT NULL,
												 OUT loaded bigint, OUT duplicate bigint, OUT skipped bigint,
												 OUT rejected bigint, OUT unmatched bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
SET jit = off
AS $$
#variable_conflict use_variable
BEGIN
	-- one spelling everywhere (psa_mappings, psa_contacts, partner_companies,
	-- psa_tickets): 'halopsa'; 'halo' is taken as an alias
	IF psa = 'halo' THEN
		psa := 'halopsa';
	END IF;
	IF psa IS NULL OR psa NOT IN ('connectwise', 'autotask', 'halopsa') THEN
		RAISE EXCEPTION 'unknown PSA %', coalesce(quote_literal(psa), 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The ticket loader reads the API JSON of ConnectWise PSA, Autotask and HaloPSA.',
				  HINT = 'Pass psa => ''connectwise'', ''autotask'' or ''halopsa''.';
	END IF;
	source := coalesce(source, psa);
	-- the stage holds still while it is read and emptied: a COPY into it
	-- (any client) waits for this load, and this load for COPYs under way,
	-- so that no line committed meanwhile is emptied unread
	LOCK TABLE @extschema@.psa_ticket_staging IN SHARE ROW EXCLUSIVE MODE;
	PERFORM @extschema@.msp_load_begin(client_id);
	-- f: 1 id, 2 _info, 3 dateEntered, 4 company, 5 contactEmailAddress,
	-- 6 contact, 7 board, 8 source (ConnectWise); 9 createDate, 10
	-- companyID, 11 contactID, 12 queueID (Autotask); 13 dateoccurred, 14
	-- client_name, 15 client_id, 16 user_id, 17 team (HaloPSA)
	PERFORM @extschema@.msp_stage_json(client_id, '@extschema@.psa_ticket_staging',
		'{id,_info,dateEntered,company,contactEmailAddress,contact,board,source,createDate,companyID,contactID,queueID,dateoccurred,client_name,client_id,user_id,team}');
	CREATE TEMP TABLE msp_tix (rec bigint, line_no bigint, ord bigint, raw text, id text, at_text text, company text[],
							   contact text, board text, channel text, class text, at timestamptz) ON COMMIT DROP;
	-- checked, the company's client found (once per distinct company) and
	-- the time read: the batch at once, per record only where a time is none
	PERFORM @extschema@.msp_load_guarded(format($step$
		INSERT INTO pg_temp.msp_tix (rec, line_no, ord, raw, id, at_text, company, contact, board, channel, class, at)
		WITH t AS MATERIALIZED (
			SELECT j.rec, j.line_no, j.ord, j.raw, j.bad, j.f[1] AS id,
				   CASE %1$L WHEN 'connectwise' THEN coalesce((@extschema@.msp_json_fields(j.f[2], '{dateEntered}'))[1], j.f[3])
						   WHEN 'autotask' THEN j.f[9]
						   ELSE j.f[13] END AS at_text,
				   CASE %1$L WHEN 'connectwise' THEN @extschema@.msp_json_fields(j.f[4], '{identifier,name,id}')
						   WHEN 'autotask' THEN ARRAY[j.f[10]]
						   ELSE ARRAY[j.f[14], j.f[15]] END AS company,
				   lower(btrim(CASE %1$L WHEN 'connectwise'
									   THEN coalesce(nullif(btrim(j.f[5]), ''), (@extschema@.msp_json_fields(j.f[6], '{id}'))[1])
									   WHEN 'autotask' THEN j.f[11]
									   ELSE j.f[16] END)) AS contact,
				   CASE %1$L WHEN 'connectwise' THEN (@extschema@.msp_json_fields(j.f[7], '{name}'))[1]
						   WHEN 'autotask' THEN j.f[12]
						   ELSE j.f[17] END AS board,
				   coalesce(lower(CASE %1$L WHEN 'connectwise' THEN (@extschema@.msp_json_fields(j.f[8], '{name}'))[1] END),
							'ticket') AS channel
			  FROM pg_temp.msp_json j WHERE j.rec BETWEEN $2 AND $3),
		-- materialized: a plain CTE would be pulled up into the join, and the
		-- look-up would run once per record instead of once per company
		owner AS MATERIALIZED (
			SELECT c.company, @extschema@.msp_company_owner($1, %1$L, c.company) AS o
			  FROM (SELECT DISTINCT t.company FROM t WHERE t.bad IS NULL AND t.company IS NOT NULL) c),
		classed AS (
			SELECT t.rec, t.line_no, t.ord, t.raw, t.id, t.at_text, t.company, t.contact, t.board, t.channel,
				   CASE
					   WHEN t.bad IS NOT NULL THEN 'reject:' || t.bad
					   WHEN coalesce(btrim(t.id), '') = '' THEN 'reject:no id'
					   WHEN coalesce(btrim(t.at_text), '') = '' THEN 'reject:no date entered'
					   WHEN length(t.id) > 255 OR length(t.contact) > 255 OR length(t.board) > 255 OR length(t.channel) > 255
							OR length(t.company[1]) > 255 OR length(t.company[2]) > 255 OR length(t.company[3]) > 255
						   THEN 'reject:field too long'
					   WHEN coalesce(o.o, @extschema@.msp_company_owner($1, %1$L, '{}')) = 'own' THEN 'ticket'
					   WHEN o.o = 'other' THEN 'skip'
					   ELSE 'reject:unknown ' || %1$L || ' company '
							|| coalesce(t.company[1], t.company[2], t.company[3], '(none)')
				   END AS class
			  FROM t LEFT JOIN owner o ON o.company = t.company
			 -- OFFSET 0: each record classified once
			 OFFSET 0),
		-- materialized, so that msp_implausible_time gets columns and
		-- inlines; it is asked once per ticket (OFFSET 0)
		timed AS MATERIALIZED (
			SELECT c.*, CASE WHEN c.class = 'ticket' THEN c.at_text::timestamptz END AS at FROM classed c)
		SELECT x.rec, x.line_no, x.ord,
			   CASE WHEN k.class LIKE 'reject:%%' THEN x.raw END,
			   x.id, x.at_text, x.company, x.contact, x.board, x.channel, k.class, x.at
		  FROM timed x,
			   LATERAL (SELECT CASE WHEN x.class = 'ticket' THEN @extschema@.msp_implausible_time(x.at_text, x.at) END AS why
						OFFSET 0) w,
			   LATERAL (SELECT CASE WHEN w.why IS NOT NULL THEN 'reject:invalid date entered: ' || w.why
									ELSE x.class END AS class) k
	$step$, psa), $reject$
		INSERT INTO pg_temp.msp_tix (rec, line_no, ord, raw, class)
		SELECT j.rec, j.line_no, j.ord, j.raw, 'reject:invalid date entered'
		  FROM pg_temp.msp_json j WHERE j.rec = $2
	$reject$, client_id, (SELECT min(j.rec) FROM pg_temp.msp_json j), (SELECT max(j.rec) FROM pg_temp.msp_json j));
	DROP TABLE pg_temp.msp_json;
	-- a rejected line kept as staged (no raw of its own): its line, from the
	-- stage (afterwards, joined: Citus plans no correlated subquery here)
	UPDATE pg_temp.msp_tix t SET raw = s.raw
	  FROM @extschema@.psa_ticket_staging s
	 WHERE s.client_id = client_id AND s.line_no = t.line_no AND t.raw IS NULL AND t.class LIKE 'reject:%';

	-- a ticket loads once per client and PSA (first record of a load
	-- wins); tickets already loaded are left out by an anti-join (a plain
	-- insert costs half of ON CONFLICT's speculative one; loads of a client
	-- take turns, so no other load can race it, and a row written meanwhile
	-- by hand fails the load, whole)
	-- (in steps, the first of each id into a temporary table less those
	-- loaded: Citus plans no correlated NOT EXISTS over a temporary table)
	CREATE TEMP TABLE msp_tix_new ON COMMIT DROP AS
	SELECT DISTINCT ON (btrim(t.id)) btrim(t.id) AS ticket_id, t.at,
		   coalesce(t.company[1], t.company[2], t.company[3]) AS company, t.contact, t.board, t.channel
	  FROM pg_temp.msp_tix t
	 WHERE t.class = 'ticket'
	 ORDER BY btrim(t.id), t.line_no, t.ord;
	DELETE FROM pg_temp.msp_tix_new n
	 USING @extschema@.psa_tickets x
	 WHERE x.client_id = client_id AND x.psa = psa AND x.ticket_id = n.ticket_id;
	WITH ins AS (
		INSERT INTO @extschema@.psa_tickets (client_id, psa, ticket_id, at, company, contact, board, channel)
		SELECT client_id, psa, n.ticket_id, n.at, n.company, n.contact, n.board, n.channel
		  FROM pg_temp.msp_tix_new n
		 ORDER BY n.ticket_id
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	DROP TABLE pg_temp.msp_tix_new;
	duplicate := (SELECT count(*) FROM pg_temp.msp_tix t WHERE t.class = 'ticket') - loaded;
	PERFORM @extschema@.msp_match_psa_tickets(client_id);
	SELECT count(*) INTO unmatched FROM @extschema@.psa_tickets t
	 WHERE t.client_id = client_id AND t.psa = psa AND t.person_id IS NULL;

	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT t.line_no, t.raw, substr(t.class, 8) AS reason FROM pg_temp.msp_tix t WHERE t.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_tix t WHERE t.class = 'skip';
	DELETE FROM @extschema@.psa_ticket_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_tix;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_psa_tickets(bigint, text, text) IS
	'loads a client''s staged PSA tickets (psa: connectwise, autotask or halopsa, alias halo); matched contacts become support contacts, unknown ones stay in psa_tickets (psa_unknown_contacts); unmatched counts the PSA''s tickets still without a person';

-- Tickets whose contact is nobody yet, per contact: the e-mail or id to
-- members of mspbill_pii, a ticket reference to others.
CREATE VIEW @extschema@.psa_unknown_contacts WITH (security_barrier) AS
SELECT t.client_id, t.psa,
	   CASE WHEN @extschema@.msp_sees_names() THEN coalesce(t.contact, '(no contact)')
			ELSE t.psa || ' contact of ticket ' || min(t.ticket_id) END AS contact,
	   count(*)::integer AS tickets, min(t.at) AS first_ticket, max(t.at) AS last_ticket
  FROM @extschema@.psa_tickets t
 WHERE t.person_id IS NULL AND @extschema@.msp_can_see_client(t.client_id)
 GROUP BY t.client_id, t.psa, t.contact;
COMMENT ON VIEW @extschema@.psa_unknown_contacts IS
	'PSA contacts whose tickets match no person yet, with how many tickets: map them in psa_contacts (or as a Microsoft 365 UPN), then msp_match_psa_tickets()';

-- The product a client's licence rule is about when its contract names
-- none: the most bought (the latest count per SKU before the period ends),
-- else the most assigned in the snapshot, else the first by name.
-- Citus: PL/pgSQL, every table filtered by client_id = $1.
CREATE FUNCTION @extschema@.msp_license_main_product(client_id bigint, period daterange, snap date)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	RETURN (SELECT p.product
			  FROM (SELECT lc.sku AS product, lc.seats AS bought, 0 AS held
					  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
							 WHERE x.client_id = client_id AND x.as_of < upper(period)
							 ORDER BY x.sku, x.as_of DESC, x.source) lc
					UNION ALL
					SELECT x.product, 0, 1 FROM m365_license_assignments x
					 WHERE x.client_id = client_id AND x.as_of = snap) p
			 GROUP BY p.product ORDER BY sum(p.bought) DESC, sum(p.held) DESC, p.product LIMIT 1);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_license_main_product(bigint, daterange, date) IS
	'the product a licence rule is about when the contract names none: the most bought, else the most assigned';

-- The licence gaps of a client in a period, person by person and seat by
-- seat, as of the latest licence snapshot before the period ends (none
-- without one): seats paid but unassigned, seats held by people not
-- active (or accounts of nobody), active people without a seat of the
-- contract's product, and, where the contract licenses rooms, rooms in use
-- without a licence and room licences on rooms no longer used.  A room's
-- licence is the shared Microsoft 365 account named like the room's
-- shared logon account (or1@clinic.example for CLINIC\OR1 or OR1).  Each
-- gap is priced at the product's unit cost (license_counts), rounded to
-- the client's minor unit.
-- Citus: PL/pgSQL, every table filtered by client_id = $1.
CREATE FUNCTION @extschema@.msp_license_gaps(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (category text, sku text, subject text, quantity numeric, amount numeric, note text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	lp license_policies;
	snap date;
	t0 timestamptz;
	t1 timestamptz;
	active_ids bigint[];
	main text;
BEGIN
	period := msp_period(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id AND contracts.effective @> (upper(period) - 1);
	SELECT * INTO lp FROM license_policies x WHERE x.client_id = client_id AND x.contract_id = k.contract_id;
	lp.licensed_rooms := coalesce(lp.licensed_rooms, false);
	snap := (SELECT max(x.as_of) FROM m365_license_assignments x WHERE x.client_id = client_id AND x.as_of < upper(period));
	IF snap IS NULL THEN
		RETURN;
	END IF;
	t0 := lower(period)::timestamp AT TIME ZONE c.time_zone;
	t1 := upper(period)::timestamp AT TIME ZONE c.time_zone;
	active_ids := ARRAY(SELECT DISTINCT u.person_id FROM msp_billable_users(client_id, period) u
						 WHERE u.home_client_id = client_id);
	-- the product the rule licenses: the contract's, else the most bought, else the most assigned
	main := coalesce(lp.license_product,
					 msp_license_main_product(client_id, period, snap));
	RETURN QUERY
	WITH counts AS (
		SELECT DISTINCT ON (x.sku) x.sku AS product, x.seats, x.unit_cost
		  FROM license_counts x
		 WHERE x.client_id = client_id AND x.as_of < upper(period)
		 ORDER BY x.sku, x.as_of DESC, x.source),
	held AS (
		SELECT x.product, x.account_id, a.kind, a.person_id, l.label AS name,
			   coalesce(pe.pseudonym, l.label) AS label
		  FROM m365_license_assignments x
		  JOIN accounts a ON a.client_id = client_id AND a.account_id = x.account_id
		  LEFT JOIN account_labels l ON l.client_id = client_id AND l.account_id = x.account_id
		  LEFT JOIN people pe ON pe.client_id = client_id AND pe.person_id = a.person_id
		 WHERE x.client_id = client_id AND x.as_of = snap),
	rooms AS (
		-- account_labels shows shared accounts' names to every reader
		SELECT DISTINCT lower(regexp_replace(l.label, '^.*\\', '')) AS stem, l.label AS name
		  FROM accounts a JOIN account_labels l ON l.client_id = client_id AND l.account_id = a.account_id
		 WHERE a.client_id = client_id AND a.realm = 'os' AND a.kind = 'shared' AND NOT a.is_machine
		   AND EXISTS (SELECT 1 FROM logons g WHERE g.client_id = client_id AND g.account_id = a.account_id
						  AND g.at >= t0 AND g.at < t1 AND g.presence)),
	room_licences AS (
		SELECT h.*, lower(split_part(h.name, '@', 1)) AS stem,
			   EXISTS (SELECT 1 FROM logons g WHERE g.client_id = client_id AND g.account_id = h.account_id
						  AND g.at >= t0 AND g.at < t1 AND g.presence) AS signed_in
		  FROM held h WHERE h.kind = 'shared' AND h.product = main AND lp.licensed_rooms),
	gaps AS (
		SELECT 1 AS o, 'seats_unassigned' AS category, n.product, NULL::text AS subject,
			   (n.seats - coalesce(h.n, 0))::numeric AS quantity,
			   msp_round((n.seats - coalesce(h.n, 0)) * n.unit_cost, c.minor_unit) AS amount,
			   format('%s seats of %s bought, %s assigned: paid but unassigned.', n.seats, n.product, coalesce(h.n, 0)) AS note
		  FROM counts n
		  LEFT JOIN (SELECT h.product, count(DISTINCT h.account_id) AS n FROM held h GROUP BY h.product) h USING (product)
		 WHERE n.seats > coalesce(h.n, 0)
		UNION ALL
		SELECT 2, 'assigned_inactive', h.product, h.label, 1,
			   msp_round(n.unit_cost, c.minor_unit),
			   CASE WHEN h.kind = 'individual' THEN 'Holds a seat but was not active in the period: reclaim it.'
					WHEN h.kind = 'shared' THEN 'A shared account holds a seat the contract''s rule does not give: reclaim it.'
					ELSE 'Holds a seat but is mapped to nobody: map the account, or reclaim the seat.' END
		  FROM held h LEFT JOIN counts n USING (product)
		 WHERE (h.kind = 'individual' AND NOT h.person_id = ANY (active_ids))
			OR h.kind IN ('unknown', 'service')
			OR (h.kind = 'shared' AND NOT (lp.licensed_rooms AND h.product = main))
		UNION ALL
		SELECT 3, 'active_without_seat', main, pe.pseudonym, 1, msp_round(main_n.unit_cost, c.minor_unit),
			   format('Active in the period but holds no %s seat: assign one.', main)
		  FROM people pe
		  LEFT JOIN counts main_n ON main_n.product = main
		 WHERE pe.client_id = client_id AND pe.person_id = ANY (active_ids)
		   AND NOT EXISTS (SELECT 1 FROM held h WHERE h.person_id = pe.person_id AND h.kind = 'individual'
							  AND h.product = main)
		UNION ALL
		SELECT 4, 'room_unlicensed', main, r.name, 1, msp_round(main_n.unit_cost, c.minor_unit),
			   format('A shared room account in use without a %s licence: the contract licenses rooms.', main)
		  FROM rooms r
		  LEFT JOIN counts main_n ON main_n.product = main
		 WHERE lp.licensed_rooms AND NOT EXISTS (SELECT 1 FROM room_licences rl WHERE rl.stem = r.stem)
		UNION ALL
		SELECT 5, 'room_licence_unused', main, rl.name, 1, msp_round(main_n.unit_cost, c.minor_unit),
			   'A room licence on a room not used in the period: reclaim it.'
		  FROM room_licences rl
		  LEFT JOIN counts main_n ON main_n.product = main
		 WHERE NOT rl.signed_in AND NOT EXISTS (SELECT 1 FROM rooms r WHERE r.stem = rl.stem))
	SELECT g.category, g.product, g.subject, g.quantity, g.amount, g.note
	  FROM gaps g ORDER BY g.o, g.product, g.subject;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_license_gaps(bigint, daterange) IS
	'licence gaps as of the latest snapshot before the period ends, by name and product, each priced at the unit cost: seats_unassigned, assigned_inactive, active_without_seat, room_unlicensed, room_licence_unused';

-- The daily sync's answer per product: seats bought (license_counts,
-- Pax8's when loaded), assigned (the latest snapshot), people active,
-- rooms in use, licences needed, users billed, the count and money of
-- each gap, and what to do, in a sentence.
-- Citus: PL/pgSQL, every table filtered by client_id = $1.
CREATE FUNCTION @extschema@.msp_license_sync(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (product text, seats_bought integer, unit_cost numeric, seats_assigned integer, people_active integer,
			   rooms_in_use integer, licences_needed integer, users_billed integer,
			   unassigned_seats integer, unassigned_cost numeric, assigned_inactive integer,
			   assigned_inactive_cost numeric, active_without_seat integer, active_without_seat_cost numeric,
			   active_not_billed integer, active_not_billed_amount numeric, advice text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	fin invoices;
	snap date;
	t0 timestamptz;
	t1 timestamptz;
	own integer;
	active integer;
	billed integer;
	rooms integer;
	gaps jsonb;
	main text;
	lp license_policies;
BEGIN
	period := msp_period(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id AND contracts.effective @> (upper(period) - 1);
	SELECT * INTO lp FROM license_policies x WHERE x.client_id = client_id AND x.contract_id = k.contract_id;
	lp.licensed_rooms := coalesce(lp.licensed_rooms, false);
	snap := (SELECT max(x.as_of) FROM m365_license_assignments x WHERE x.client_id = client_id AND x.as_of < upper(period));
	t0 := lower(period)::timestamp AT TIME ZONE c.time_zone;
	t1 := upper(period)::timestamp AT TIME ZONE c.time_zone;
	own := (SELECT count(DISTINCT u.person_id) FROM msp_billable_users(client_id, period) u
			 WHERE u.home_client_id = client_id);
	active := (SELECT count(DISTINCT (u.home_client_id, u.person_id)) FROM msp_billable_users(client_id, period) u);
	-- billed as msp_reconcile_licenses counts it: everyone in a preview, the
	-- evidence of the invoice and its adjustments once finalized
	fin := msp_finalized_invoice(client_id, period);
	IF fin.invoice_id IS NULL THEN
		billed := active;
	ELSE
		billed := (SELECT count(*) FROM (
					 SELECT DISTINCT coalesce((e->>'home_client_id')::bigint, i.client_id), (e->>'person_id')::bigint
					   FROM invoices i, jsonb_array_elements(i.evidence) e
					  WHERE i.client_id = client_id
						AND (i.invoice_id = fin.invoice_id OR i.adjusts_invoice_id = fin.invoice_id)
					 INTERSECT
					 SELECT u.home_client_id, u.person_id FROM msp_billable_users(client_id, period) u) b);
	END IF;
	rooms := (SELECT count(*) FROM accounts a
			   WHERE a.client_id = client_id AND a.realm = 'os' AND a.kind = 'shared' AND NOT a.is_machine
				 AND EXISTS (SELECT 1 FROM logons g WHERE g.client_id = client_id AND g.account_id = a.account_id
								AND g.at >= t0 AND g.at < t1 AND g.presence));
	gaps := coalesce((SELECT jsonb_agg(to_jsonb(g)) FROM msp_license_gaps(client_id, period) g), '[]');
	-- the rule's product is the one active_without_seat names, else as msp_license_gaps chooses it
	main := coalesce(lp.license_product,
					 (SELECT e->>'sku' FROM jsonb_array_elements(gaps) e
					   WHERE e->>'category' IN ('active_without_seat', 'room_unlicensed', 'room_licence_unused') LIMIT 1),
					 msp_license_main_product(client_id, period, snap));
	RETURN QUERY
	WITH counts AS (
		SELECT DISTINCT ON (x.sku) x.sku AS product, x.seats, x.unit_cost
		  FROM license_counts x
		 WHERE x.client_id = client_id AND x.as_of < upper(period)
		 ORDER BY x.sku, x.as_of DESC, x.source),
	held AS (
		SELECT x.product, count(DISTINCT x.account_id)::integer AS n
		  FROM m365_license_assignments x
		 WHERE x.client_id = client_id AND x.as_of = snap
		 GROUP BY x.product),
	g AS (
		SELECT e->>'category' AS category, e->>'sku' AS product, (e->>'quantity')::numeric AS quantity,
			   (e->>'amount')::numeric AS amount, e->>'subject' AS subject
		  FROM jsonb_array_elements(gaps) e),
	p AS (
		SELECT coalesce(n.product, h.product) AS product, coalesce(n.seats, 0) AS bought, n.unit_cost,
			   coalesce(h.n, 0) AS assigned, coalesce(n.product, h.product) = main AS is_main
		  FROM counts n FULL JOIN held h USING (product)),
	r AS (
		SELECT p.*,
			   CASE WHEN p.is_main THEN own END AS people,
			   CASE WHEN p.is_main AND lp.licensed_rooms THEN rooms END AS rooms_used,
			   CASE WHEN p.is_main THEN own + CASE WHEN lp.licensed_rooms THEN rooms ELSE 0 END END AS needed,
			   greatest(p.bought - p.assigned, 0) AS unassigned,
			   (SELECT coalesce(sum(g.amount), 0) FROM g WHERE g.product = p.product AND g.category = 'seats_unassigned') AS unassigned_cost,
			   (SELECT count(*)::integer FROM g WHERE g.product = p.product
				   AND g.category IN ('assigned_inactive', 'room_licence_unused')) AS inactive,
			   (SELECT coalesce(sum(g.amount), 0) FROM g WHERE g.product = p.product
				   AND g.category IN ('assigned_inactive', 'room_licence_unused')) AS inactive_cost,
			   (SELECT string_agg(g.subject, ', ' ORDER BY g.subject) FROM g WHERE g.product = p.product
				   AND g.category IN ('assigned_inactive', 'room_licence_unused')) AS inactive_names,
			   CASE WHEN p.is_main THEN (SELECT count(*)::integer FROM g WHERE g.product = p.product
										 AND g.category IN ('active_without_seat', 'room_unlicensed')) END AS without,
			   CASE WHEN p.is_main THEN (SELECT coalesce(sum(g.amount), 0) FROM g WHERE g.product = p.product
										 AND g.category IN ('active_without_seat', 'room_unlicensed')) END AS without_cost,
			   CASE WHEN p.is_main THEN greatest(active - billed, 0) END AS unbilled
		  FROM p)
	SELECT r.product, r.bought, r.unit_cost, r.assigned, r.people, r.rooms_used, r.needed,
		   CASE WHEN r.is_main THEN billed END,
		   r.unassigned, r.unassigned_cost, r.inactive, r.inactive_cost, r.without, r.without_cost, r.unbilled,
		   CASE WHEN r.is_main AND k.model IN ('per_user', 'per_user_plus_support')
				THEN msp_round(r.unbilled * k.price_per_user, c.minor_unit) END,
		   CASE WHEN r.is_main THEN
				format('Pax8 bills you for %s %s seats; %s are assigned; %s people were active%s; %s are billed: %s, %s%s, %s.',
					   r.bought, r.product, r.assigned, r.people,
					   CASE WHEN lp.licensed_rooms THEN format(' and %s rooms in use', r.rooms_used) ELSE '' END, billed,
					   CASE WHEN r.needed > r.bought
							THEN format('buy %s seats (%s %s)', r.needed - r.bought,
										msp_round((r.needed - r.bought) * r.unit_cost, c.minor_unit), c.currency)
							WHEN r.bought > r.needed
							THEN format('cancel %s seats (%s %s)', r.bought - r.needed,
										msp_round((r.bought - r.needed) * r.unit_cost, c.minor_unit), c.currency)
							ELSE 'buy none' END,
					   CASE WHEN r.inactive > 0 THEN format('reclaim %s (%s)', r.inactive, r.inactive_names)
							ELSE 'reclaim none' END,
					   CASE WHEN r.without > 0 THEN format(', assign %s', r.without) ELSE '' END,
					   CASE WHEN r.unbilled > 0 THEN format('bill %s more', r.unbilled) ELSE 'bill as is' END)
				ELSE
				format('Pax8 bills you for %s %s seats; %s are assigned: %s, %s.',
					   r.bought, r.product, r.assigned,
					   CASE WHEN r.unassigned > 0
							THEN format('cancel %s unassigned (%s %s)', r.unassigned, r.unassigned_cost, c.currency)
							ELSE 'cancel none' END,
					   CASE WHEN r.inactive > 0 THEN format('reclaim %s (%s)', r.inactive, r.inactive_names)
							ELSE 'reclaim none' END)
		   END
	  FROM r
	 ORDER BY NOT r.is_main, r.product;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_license_sync(bigint, daterange) IS
	'the daily licence sync per product: seats bought (Pax8), assigned (Microsoft 365), people active, rooms in use, licences needed, users billed, the money in each gap and what to do';
