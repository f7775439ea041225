-- mspbill 0.2.0 -> 0.3.0.  Every change to an object of the install script
-- is repeated here; test/sh/upgrade.sh checks that an updated database
-- equals a fresh install, object by object.
\echo Use "ALTER EXTENSION mspbill UPDATE TO '0.3.0'" to load this file. \quit

-- Invoice documents, exports to accounting and the PSA, plain-language
-- explanations (issue 20, items 2-4).  New tables beside invoices and
-- invoice_items, so that every row 0.1.0 and 0.2.0 stored stays as it is:
-- invoices finalized before 0.3.0 have no document and stay unnumbered
-- (they were sent under whatever number the MSP's accounting gave them).

-- Invoice documents: a number from the MSP's gap-free series, invoice date,
-- payment terms and due date, the client's PO reference, tax lines, and a
-- plain-language explanation of each line with the evidence behind it.
-- Everything here reads invoice lines as they come (msp_price_lines() for
-- a preview, invoice_items once finalized), whatever priced them.
-- msp_finalize_invoice (src/finalize.sql) stores what these functions
-- compute, so a finalized document never changes with later data.

-- The MSP's invoice number series: one row, locked by each finalization
-- from the moment it takes a number until it commits, so that numbers have
-- no gaps (a rolled-back finalization gives its number back) and no
-- duplicates.  Insert the row before the first finalization to choose the
-- prefix or to continue another system's numbering (last_number).
CREATE TABLE @extschema@.invoice_numbering (
	series text PRIMARY KEY CONSTRAINT invoice_numbering_series_known CHECK (series = 'invoice'),
	prefix text NOT NULL DEFAULT 'INV-',
	digits integer NOT NULL DEFAULT 6 CONSTRAINT invoice_numbering_digits_range CHECK (digits BETWEEN 1 AND 18),
	last_number bigint NOT NULL DEFAULT 0 CONSTRAINT invoice_numbering_last_number_not_negative CHECK (last_number >= 0)
);
COMMENT ON TABLE @extschema@.invoice_numbering IS
	'the invoice number series: prefix, zero-padded digits and the last number given; finalization takes the next one';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.invoice_numbering', '');

-- What a client's invoices say besides their lines: payment terms, the
-- PO reference, the tax rate and name, and whether tax is rounded per line
-- or per invoice.  A client without a row gets the defaults below
-- (msp_invoice_terms).  Copied onto each invoice when it is finalized, so
-- that later changes do not rewrite invoices already sent.
CREATE TABLE @extschema@.invoice_terms (
	client_id bigint PRIMARY KEY REFERENCES @extschema@.clients ON DELETE CASCADE,
	payment_terms_days integer NOT NULL DEFAULT 30
		CONSTRAINT invoice_terms_payment_terms_days_range CHECK (payment_terms_days BETWEEN 0 AND 365),
	po_reference text CONSTRAINT invoice_terms_po_reference_not_empty CHECK (po_reference <> ''),
	tax_rate numeric NOT NULL DEFAULT 0 CONSTRAINT invoice_terms_tax_rate_range CHECK (tax_rate >= 0 AND tax_rate <= 1),
	tax_name text NOT NULL DEFAULT 'Tax Exempt' CONSTRAINT invoice_terms_tax_name_not_empty CHECK (tax_name <> ''),
	tax_rounding text NOT NULL DEFAULT 'invoice'
		CONSTRAINT invoice_terms_tax_rounding_known CHECK (tax_rounding IN ('line', 'invoice'))
);
COMMENT ON TABLE @extschema@.invoice_terms IS
	'per client: payment terms (days), PO reference, tax rate and name, tax rounded per line or per invoice';

-- Tax rates for kinds of lines (invoice_line.basis: user, seat, device,
-- license, cost, minimum, adjustment, and kinds added later) that differ
-- from the client's own rate (invoice_terms.tax_rate).
CREATE TABLE @extschema@.tax_rates (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	basis text NOT NULL CONSTRAINT tax_rates_basis_not_empty CHECK (basis <> ''),
	tax_rate numeric NOT NULL CONSTRAINT tax_rates_tax_rate_range CHECK (tax_rate >= 0 AND tax_rate <= 1),
	tax_name text NOT NULL CONSTRAINT tax_rates_tax_name_not_empty CHECK (tax_name <> ''),
	PRIMARY KEY (client_id, basis)
);
COMMENT ON TABLE @extschema@.tax_rates IS
	'a client''s tax rate and name for one kind of invoice line (basis), instead of the client''s own';

-- The document of a finalized invoice: its number, dates, terms and PO
-- reference as they were when it was finalized, and its tax.  Written
-- only by msp_finalize_invoice.  Invoices finalized before 0.3.0 have none:
-- they were sent unnumbered.  (A table beside invoices, not columns of it:
-- functions take the invoices row type, so 0.2.0's rows stay as stored.)
CREATE TABLE @extschema@.invoice_documents (
	client_id bigint NOT NULL,
	invoice_id bigint NOT NULL,
	invoice_number text NOT NULL,
	invoice_date date NOT NULL,
	due_date date NOT NULL,
	payment_terms_days integer NOT NULL,
	po_reference text,
	tax numeric NOT NULL,
	PRIMARY KEY (client_id, invoice_id),
	FOREIGN KEY (client_id, invoice_id) REFERENCES @extschema@.invoices,
	CONSTRAINT invoice_documents_due_date_not_before_invoice_date CHECK (due_date >= invoice_date)
);
-- numbers come from one counter, so they are unique across clients by
-- construction; this index (with client_id, so that Citus can keep it per
-- shard) catches a counter set back by hand
CREATE UNIQUE INDEX invoice_documents_number_key ON @extschema@.invoice_documents (client_id, invoice_number);
COMMENT ON TABLE @extschema@.invoice_documents IS
	'number, invoice date, due date, payment terms, PO reference and tax of each invoice finalized since 0.3.0';

-- Each line's tax and plain-language explanation, as finalized.
CREATE TABLE @extschema@.invoice_line_documents (
	client_id bigint NOT NULL,
	invoice_id bigint NOT NULL,
	line_no integer NOT NULL,
	tax_name text NOT NULL,
	tax_rate numeric NOT NULL,
	tax numeric NOT NULL,
	explanation text NOT NULL,
	evidence jsonb,
	PRIMARY KEY (client_id, invoice_id, line_no),
	FOREIGN KEY (client_id, invoice_id, line_no) REFERENCES @extschema@.invoice_items,
	FOREIGN KEY (client_id, invoice_id) REFERENCES @extschema@.invoice_documents
);
COMMENT ON TABLE @extschema@.invoice_line_documents IS
	'the tax, explanation and evidence of each line of an invoice finalized since 0.3.0';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.invoice_terms', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tax_rates', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.invoice_documents', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.invoice_line_documents', '');

DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['invoice_terms', 'tax_rates', 'invoice_documents', 'invoice_line_documents'] LOOP
		EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])))', t);
		EXECUTE format('COMMENT ON POLICY client_rows ON @extschema@.%I IS %L', t,
					   'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)');
	END LOOP;
END
$$;

-- finalized documents are facts, like the invoices they belong to
CREATE TRIGGER refuse_change BEFORE UPDATE OR DELETE ON @extschema@.invoice_documents
	FOR EACH ROW EXECUTE FUNCTION @extschema@.msp_refuse_change();
CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON @extschema@.invoice_documents
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_refuse_change();
CREATE TRIGGER refuse_change BEFORE UPDATE OR DELETE ON @extschema@.invoice_line_documents
	FOR EACH ROW EXECUTE FUNCTION @extschema@.msp_refuse_change();
CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON @extschema@.invoice_line_documents
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_refuse_change();

-- A client's invoice terms: its row, or the defaults of a row (one read,
-- client_id = $1, so that Citus routes it).
CREATE FUNCTION @extschema@.msp_invoice_terms(client_id bigint) RETURNS @extschema@.invoice_terms
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	t invoice_terms;
BEGIN
	SELECT * INTO t FROM invoice_terms it WHERE it.client_id = client_id;
	IF NOT FOUND THEN
		-- the column defaults of invoice_terms (test/sql/documents.sql
		-- checks that they agree)
		t := ROW(client_id, 30, NULL, 0, 'Tax Exempt', 'invoice')::invoice_terms;
	END IF;
	RETURN t;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoice_terms(bigint) IS
	'a client''s invoice terms: its invoice_terms row, or the defaults when it has none';

-- An invoice number as printed: prefix and the number, zero-padded to the
-- digits (never cut: a longer number is printed whole).
CREATE FUNCTION @extschema@.msp_invoice_number_text(prefix text, number bigint, digits integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN prefix || CASE WHEN length(number::text) >= digits THEN number::text ELSE lpad(number::text, digits, '0') END;
COMMENT ON FUNCTION @extschema@.msp_invoice_number_text(text, bigint, integer) IS
	'an invoice number as printed: the prefix and the number zero-padded to the digits';

-- Payment terms as accounting tools name them.
CREATE FUNCTION @extschema@.msp_payment_terms_text(days integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN days = 0 THEN 'Due on receipt' ELSE 'Net ' || days END;
COMMENT ON FUNCTION @extschema@.msp_payment_terms_text(integer) IS
	'payment terms in words: Net 30, or Due on receipt for 0 days';

-- The tax of each line: the rate of the line's kind (tax_rates) or the
-- client's.  Rounded per line, each line's tax is rounded to the minor
-- unit.  Rounded per invoice, each rate's tax is rounded once, on the sum
-- of its lines, and each line carries the difference its running total
-- makes (so line taxes still add up to the rounded tax exactly, each
-- within one minor unit of its own exact tax, credits included).
CREATE FUNCTION @extschema@.msp_tax_lines(client_id bigint, lines @extschema@.invoice_line[])
RETURNS TABLE (line_no integer, tax_name text, tax_rate numeric, tax numeric)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	t invoice_terms := msp_invoice_terms(client_id);
	minor numeric := (SELECT c.minor_unit FROM clients c WHERE c.client_id = client_id);
BEGIN
	RETURN QUERY
	WITH l AS (
		SELECT x.line_no AS n, x.amount, coalesce(r.tax_name, t.tax_name) AS name,
			   coalesce(r.tax_rate, t.tax_rate) AS rate
		  FROM unnest(lines) x
		  LEFT JOIN tax_rates r ON r.client_id = client_id AND r.basis = x.basis),
	run AS (
		SELECT l.*, sum(l.amount) OVER (PARTITION BY l.name, l.rate ORDER BY l.n) AS upto FROM l)
	SELECT run.n, run.name, run.rate,
		   CASE WHEN t.tax_rounding = 'line' THEN msp_round(run.amount * run.rate, minor)
				ELSE msp_round(run.upto * run.rate, minor) - msp_round((run.upto - run.amount) * run.rate, minor) END
	  FROM run
	 ORDER BY run.n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_tax_lines(bigint, @extschema@.invoice_line[]) IS
	'the tax name, rate and amount of each invoice line, rounded per line or per invoice as the client''s invoice terms say';

-- "1 technician", "3 service accounts".
CREATE FUNCTION @extschema@.msp_count_noun(n numeric, one text, many text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN n || ' ' || CASE WHEN n = 1 THEN one ELSE many END;
COMMENT ON FUNCTION @extschema@.msp_count_noun(numeric, text, text) IS
	'a count and its noun, singular for 1: 1 technician, 3 service accounts';

-- Names listed briefly: three or more that differ only by a consecutive
-- number become a range (OR1, OR2, OR3, OR4 -> OR1-OR4); others are
-- listed.  A leading zero belongs to the stem, so OR01 and OR1 differ.
CREATE FUNCTION @extschema@.msp_name_ranges(names text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	WITH n AS (
		SELECT DISTINCT x, substring(x FROM '^(.*?)[1-9][0-9]*$') AS stem,
			   substring(x FROM '([1-9][0-9]*)$')::numeric AS num
		  FROM unnest(names) x
		 WHERE x IS NOT NULL),
	g AS (
		SELECT n.*, n.num - row_number() OVER (PARTITION BY n.stem ORDER BY n.num) AS grp
		  FROM n WHERE n.stem IS NOT NULL),
	runs AS (
		SELECT g.stem, g.grp, min(g.num) AS lo, count(*) AS cnt,
			   (array_agg(g.x ORDER BY g.num))[1] AS first_name,
			   (array_agg(g.x ORDER BY g.num DESC))[1] AS last_name
		  FROM g GROUP BY g.stem, g.grp),
	parts AS (
		SELECT r.stem AS k1, r.lo AS k2, r.first_name || '-' || r.last_name AS part FROM runs r WHERE r.cnt >= 3
		UNION ALL
		SELECT g.stem, g.num, g.x FROM g JOIN runs r ON r.stem = g.stem AND r.grp = g.grp WHERE r.cnt < 3
		UNION ALL
		SELECT n.x, NULL, n.x FROM n WHERE n.stem IS NULL)
	SELECT string_agg(parts.part, ', ' ORDER BY parts.k1, parts.k2) FROM parts;
END;
COMMENT ON FUNCTION @extschema@.msp_name_ranges(text[]) IS
	'names listed briefly: runs of three or more consecutive numbers as a range (OR1-OR4)';

-- For each line, a sentence a client can read of how its quantity was
-- reached, and the evidence behind it (people by pseudonym, shared
-- accounts and devices by name).  billed_people is the evidence of the
-- invoice (msp_billable_users as JSON: stored with a finalized invoice).
-- Kinds of lines this does not know are explained by their description.
CREATE FUNCTION @extschema@.msp_explain_lines(client_id bigint, period daterange,
											   lines @extschema@.invoice_line[], billed_people jsonb)
RETURNS TABLE (line_no integer, explanation text, evidence jsonb)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	l invoice_line;
	seg daterange;
	t0 timestamptz;
	t1 timestamptz;
	txt text;
	ev jsonb;
	n integer;
	n_support integer;
	n_sister integer;
	n_tech integer;
	n_nobill integer;
	n_service integer;
	not_billed text[];
	details text[];
	names text[];
	rooms boolean;
	sister_names text;
BEGIN
	period := msp_period(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	t0 := lower(period)::timestamp AT TIME ZONE c.time_zone;
	t1 := upper(period)::timestamp AT TIME ZONE c.time_zone;
	-- who logged on in the period but is never billed, the same for every line
	SELECT count(DISTINCT p.person_id) FILTER (WHERE p.is_technician),
		   count(DISTINCT p.person_id) FILTER (WHERE p.do_not_bill AND NOT p.is_technician)
	  INTO n_tech, n_nobill
	  FROM logons lg
	  JOIN accounts a ON a.client_id = lg.client_id AND a.account_id = lg.account_id
	  JOIN people p ON p.client_id = a.client_id AND p.person_id = a.person_id
	 WHERE lg.client_id = client_id AND a.client_id = client_id AND p.client_id = client_id
	   AND lg.at >= t0 AND lg.at < t1;
	SELECT count(DISTINCT a.account_id) INTO n_service
	  FROM logons lg
	  JOIN accounts a ON a.client_id = lg.client_id AND a.account_id = lg.account_id
	 WHERE lg.client_id = client_id AND a.client_id = client_id AND lg.at >= t0 AND lg.at < t1
	   AND (a.kind = 'service' OR a.is_machine);
	not_billed := ARRAY(SELECT x FROM unnest(ARRAY[
						  CASE WHEN n_tech > 0 THEN msp_count_noun(n_tech, 'technician', 'technicians') END,
						  CASE WHEN n_nobill > 0 THEN msp_count_noun(n_nobill, 'person marked do-not-bill', 'people marked do-not-bill') END,
						  CASE WHEN n_service > 0 THEN msp_count_noun(n_service, 'service account', 'service accounts') END]) x
						WHERE x IS NOT NULL);

	FOR l IN SELECT * FROM unnest(lines) x ORDER BY x.line_no LOOP
		k := NULL;
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id AND contracts.contract_id = l.contract_id;
		seg := coalesce(k.effective * period, period);
		txt := NULL;
		ev := NULL;
		IF l.basis = 'user' AND k.contract_id IS NOT NULL THEN
			WITH e AS (
				SELECT DISTINCT ON (coalesce((x->>'home_client_id')::bigint, client_id), (x->>'person_id')::bigint)
					   x->>'pseudonym' AS pseudonym, x->>'rule' AS rule,
					   coalesce((x->>'home_client_id')::bigint, client_id) AS home,
					   (x->>'days_active')::integer AS days_active, (x->>'support_contacts')::integer AS contacts
				  FROM jsonb_array_elements(billed_people) x
				 WHERE x->>'contract_id' IS NULL OR (x->>'contract_id')::bigint = l.contract_id
				 ORDER BY coalesce((x->>'home_client_id')::bigint, client_id), (x->>'person_id')::bigint)
			SELECT count(*), count(*) FILTER (WHERE e.rule = 'support'), count(*) FILTER (WHERE e.home <> client_id),
				   coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
						'pseudonym', e.pseudonym, 'rule', e.rule, 'days_active', e.days_active,
						'support_contacts', e.contacts,
						'paid_for_client_id', CASE WHEN e.home <> client_id THEN e.home END))
						ORDER BY e.pseudonym, e.home), '[]')
			  INTO n, n_support, n_sister, ev
			  FROM e;
			-- the sister clients by name, where the reader may see them
			sister_names := (SELECT string_agg(sc.name, ', ' ORDER BY sc.name) FROM clients sc
							  WHERE sc.client_id IN (SELECT (x->>'home_client_id')::bigint
													   FROM jsonb_array_elements(billed_people) x
													  WHERE (x->>'home_client_id')::bigint <> client_id));
			details := ARRAY(SELECT x FROM unnest(ARRAY[
						 CASE WHEN n_support > 0 THEN format('%s only called support', n_support) END,
						 CASE WHEN n_sister > 0 THEN format('%s of %s, paid for by this client',
															 msp_count_noun(n_sister, 'is a person', 'are people'),
															 coalesce(sister_names, 'another client')) END]) x
						WHERE x IS NOT NULL);
			txt := msp_count_noun(n, 'person', 'people') || ' logged on at least '
				   || msp_count_noun(k.min_active_days, 'day', 'days')
				   || CASE k.support_rule WHEN 'sufficient' THEN ' or called support'
										  WHEN 'required' THEN ' and called support' ELSE '' END
				   || CASE WHEN cardinality(details) > 0 THEN ' (' || array_to_string(details, '; ') || ')' ELSE '' END
				   || CASE WHEN cardinality(not_billed) > 0
						   THEN '; ' || CASE WHEN cardinality(not_billed) = 1 THEN not_billed[1]
											 ELSE array_to_string(not_billed[1:cardinality(not_billed) - 1], ', ')
												  || ' and ' || not_billed[cardinality(not_billed)] END
								|| CASE WHEN cardinality(not_billed) = 1 AND not_billed[1] ~ '^1 ' THEN ' is' ELSE ' are' END
								|| ' not billed'
						   ELSE '' END;
		ELSIF l.basis = 'seat' AND k.contract_id IS NOT NULL THEN
			SELECT array_agg(DISTINCT al.label ORDER BY al.label),
				   coalesce(bool_and(d.kind = 'room'), false)
			  INTO names, rooms
			  FROM logons lg
			  JOIN accounts a ON a.client_id = lg.client_id AND a.account_id = lg.account_id
			  JOIN account_labels al ON al.client_id = a.client_id AND al.account_id = a.account_id
			  LEFT JOIN devices d ON d.client_id = lg.client_id AND d.device_id = lg.device_id
			 WHERE lg.client_id = client_id AND a.client_id = client_id AND al.client_id = client_id
			   AND (d.client_id IS NULL OR d.client_id = client_id)
			   AND lg.at >= lower(seg)::timestamp AT TIME ZONE c.time_zone
			   AND lg.at < upper(seg)::timestamp AT TIME ZONE c.time_zone
			   AND lg.presence AND a.kind = 'shared' AND NOT a.is_machine AND a.realm = ANY (k.count_realms);
			names := coalesce(names, '{}');
			txt := CASE WHEN rooms THEN 'rooms ' ELSE 'shared accounts ' END
				   || coalesce(msp_name_ranges(names), 'none')
				   || CASE WHEN k.shared_billing = 'peak'
						   THEN ' are billed by the most sessions open at once on each'
						   ELSE ' are billed as ' || msp_count_noun(cardinality(names), 'shared seat', 'shared seats')
								|| ', one each however many people used it' END;
			ev := to_jsonb(names);
		ELSIF l.basis = 'device' THEN
			SELECT string_agg(msp_count_noun(x.cnt, x.kind, x.kind || 's'), ', ' ORDER BY x.cnt DESC, x.kind),
				   sum(x.cnt), jsonb_agg(x.names ORDER BY x.cnt DESC, x.kind)
			  INTO txt, n, ev
			  FROM (SELECT d.kind, count(*) AS cnt, jsonb_agg(d.name ORDER BY d.name) AS names
					  FROM devices d
					 WHERE d.client_id = client_id AND (d.active IS NULL OR d.active && seg)
					 GROUP BY d.kind) x;
			txt := msp_count_noun(coalesce(n, 0), 'device', 'devices') || ' under management in the month'
				   || coalesce(': ' || txt, '');
			ev := (SELECT coalesce(jsonb_agg(v ORDER BY v), '[]') FROM jsonb_array_elements(coalesce(ev, '[]')) a,
						  jsonb_array_elements(a) v);
		ELSIF l.basis = 'license' THEN
			SELECT string_agg(format('%s %s (as of %s)', lc.seats, lc.sku, lc.as_of), ', ' ORDER BY lc.sku),
				   sum(lc.seats), jsonb_agg(jsonb_build_object('sku', lc.sku, 'seats', lc.seats, 'as_of', lc.as_of) ORDER BY lc.sku)
			  INTO txt, n, ev
			  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
					 WHERE x.client_id = client_id AND x.as_of < upper(seg)
					 ORDER BY x.sku, x.as_of DESC, x.source) lc;
			txt := msp_count_noun(coalesce(n, 0), 'licence seat', 'licence seats') || ' held' || coalesce(': ' || txt, '');
		ELSIF l.basis = 'cost' AND k.contract_id IS NOT NULL THEN
			txt := CASE WHEN k.model = 'per_user_plus_support'
						THEN 'The support desk''s cost of the month'
						ELSE 'What this cost us for the days of the month it covers' END
				   || CASE WHEN k.markup > 0 THEN format(', plus the agreed markup of %s%%', trim_scale(k.markup * 100))
						   ELSE ', at cost' END
				   || CASE WHEN k.model = 'per_user_plus_support' THEN ', shared by the billable users' ELSE '' END;
		ELSIF l.basis = 'minimum' AND k.contract_id IS NOT NULL THEN
			txt := format('The agreement''s minimum is %s a month; the lines above come to less, so this line makes up the difference',
						  k.minimum_fee);
		ELSIF l.basis = 'adjustment' THEN
			txt := 'A correction to an earlier invoice, carried by this one: ' || l.description;
		END IF;
		line_no := l.line_no;
		explanation := coalesce(txt, l.description);
		evidence := ev;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_explain_lines(bigint, daterange, @extschema@.invoice_line[], jsonb) IS
	'for each invoice line, a plain-language sentence of how its quantity was reached and the evidence (pseudonyms, shared accounts, devices)';

-- The lines of the invoice document: as stored once finalized (with the
-- tax and explanation they were finalized with), else as today's data
-- prices them.  Invoices finalized before 0.3.0 were sent without tax:
-- their lines show none, and are explained from their stored evidence.
CREATE FUNCTION @extschema@.msp_document_lines(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (line_no integer, contract_id bigint, description text, quantity numeric, unit_price numeric,
			   amount numeric, basis text, tax_name text, tax_rate numeric, tax numeric, explanation text,
			   evidence jsonb)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	fin invoices;
	lines invoice_line[];
	billed jsonb;
BEGIN
	period := msp_period(client_id, period);
	fin := msp_finalized_invoice(client_id, period);
	IF EXISTS (SELECT 1 FROM invoice_documents d WHERE d.client_id = client_id AND d.invoice_id = fin.invoice_id) THEN
		RETURN QUERY
		SELECT it.line_no, it.contract_id, it.description, it.quantity, it.unit_price, it.amount, it.basis,
			   ld.tax_name, ld.tax_rate, ld.tax, ld.explanation, ld.evidence
		  FROM invoice_items it
		  JOIN invoice_line_documents ld ON ld.client_id = it.client_id AND ld.invoice_id = it.invoice_id
										AND ld.line_no = it.line_no
		 WHERE it.client_id = client_id AND ld.client_id = client_id AND it.invoice_id = fin.invoice_id
		 ORDER BY it.line_no;
		RETURN;
	END IF;
	IF fin.invoice_id IS NOT NULL THEN
		lines := ARRAY(SELECT (it.line_no, it.contract_id, it.description, it.quantity, it.unit_price, it.amount,
							   it.basis)::invoice_line
						 FROM invoice_items it
						WHERE it.client_id = client_id AND it.invoice_id = fin.invoice_id
						ORDER BY it.line_no);
		RETURN QUERY
		SELECT l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis,
			   NULL::text, 0::numeric, 0::numeric, x.explanation, x.evidence
		  FROM unnest(lines) l JOIN msp_explain_lines(client_id, period, lines, fin.evidence) x ON x.line_no = l.line_no
		 ORDER BY l.line_no;
		RETURN;
	END IF;
	lines := ARRAY(SELECT l FROM msp_invoice_lines(client_id, period) l);
	billed := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	RETURN QUERY
	SELECT l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis,
		   t.tax_name, t.tax_rate, t.tax, x.explanation, x.evidence
	  FROM unnest(lines) l
	  JOIN msp_tax_lines(client_id, lines) t ON t.line_no = l.line_no
	  JOIN msp_explain_lines(client_id, period, lines, billed) x ON x.line_no = l.line_no
	 ORDER BY l.line_no;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_document_lines(bigint, daterange) IS
	'the lines of an invoice document with their tax, explanation and evidence: as finalized, else a preview';

-- The tax lines of an invoice: one per tax name and rate.
CREATE FUNCTION @extschema@.msp_invoice_taxes(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (tax_name text, tax_rate numeric, taxable numeric, tax numeric)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	RETURN QUERY
	SELECT l.tax_name, l.tax_rate, sum(l.amount), sum(l.tax)
	  FROM msp_document_lines(client_id, period) l
	 WHERE l.tax_name IS NOT NULL
	 GROUP BY l.tax_name, l.tax_rate
	 ORDER BY l.tax_name, l.tax_rate;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoice_taxes(bigint, daterange) IS
	'the tax lines of an invoice: per tax name and rate, the amount taxed and the tax';

-- The head of the invoice document.  status: finalized (numbered),
-- finalized unnumbered (before 0.3.0) or preview (dated today, no number).
-- net_amount is the sum of the lines (msp_invoice's total), amount_due
-- adds the tax.
CREATE FUNCTION @extschema@.msp_invoice_document(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (client_name text, status text, invoice_number text,
			   invoice_date date, due_date date, payment_terms text, po_reference text, currency char(3),
			   net_amount numeric, tax numeric, amount_due numeric)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	terms invoice_terms;
	fin invoices;
	doc invoice_documents;
	today date;
	lines_net numeric;
	lines_tax numeric;
BEGIN
	period := msp_period(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	fin := msp_finalized_invoice(client_id, period);
	client_name := c.name;
	currency := c.currency;
	IF fin.invoice_id IS NOT NULL THEN
		SELECT * INTO doc FROM invoice_documents d WHERE d.client_id = client_id AND d.invoice_id = fin.invoice_id;
		status := CASE WHEN doc.invoice_id IS NULL THEN 'finalized unnumbered' ELSE 'finalized' END;
		invoice_number := doc.invoice_number;
		invoice_date := doc.invoice_date;
		due_date := doc.due_date;
		payment_terms := msp_payment_terms_text(doc.payment_terms_days);
		po_reference := doc.po_reference;
		currency := fin.currency;
		net_amount := fin.total;
		tax := coalesce(doc.tax, 0);
	ELSE
		terms := msp_invoice_terms(client_id);
		SELECT sum(l.amount), sum(l.tax) INTO lines_net, lines_tax FROM msp_document_lines(client_id, period) l;
		today := (now() AT TIME ZONE c.time_zone)::date;
		status := 'preview';
		invoice_date := today;
		due_date := today + terms.payment_terms_days;
		payment_terms := msp_payment_terms_text(terms.payment_terms_days);
		po_reference := terms.po_reference;
		net_amount := coalesce(lines_net, 0);
		tax := coalesce(lines_tax, 0);
	END IF;
	amount_due := net_amount + tax;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoice_document(bigint, daterange) IS
	'the head of an invoice document: number, dates, terms, PO reference, net amount, tax and amount due (finalized, else a preview)';

-- Exports: finalized invoices as accounting tools import them (Xero's and
-- QuickBooks Online's invoice import CSV, one row per line), and one JSON
-- document per invoice for anything else.  Functions returning rows, so
-- that psql writes the file:
--   \copy (SELECT * FROM mspbill.msp_export_xero('[2026-10-01,2026-11-01)')) TO 'xero.csv' WITH (FORMAT csv, HEADER)
-- They read as the caller, so row-level security decides whose invoices
-- a reader exports (billing and admin roles: every client's; a BI role:
-- its clients').  Only numbered invoices are exported: those finalized
-- before 0.3.0 were sent without a number.

-- What each kind of line is booked to: the account code (Xero) and the
-- product or service (QuickBooks Online) of the MSP's books.  Kinds not
-- listed go to account 200 (Xero's Sales account) as "Managed services".
CREATE TABLE @extschema@.export_codes (
	basis text PRIMARY KEY CONSTRAINT export_codes_basis_not_empty CHECK (basis <> ''),
	account_code text NOT NULL CONSTRAINT export_codes_account_code_not_empty CHECK (account_code <> ''),
	item_name text NOT NULL CONSTRAINT export_codes_item_name_not_empty CHECK (item_name <> '')
);
COMMENT ON TABLE @extschema@.export_codes IS
	'per kind of invoice line (basis): the account code and product/service name the accounting exports book it to';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.export_codes', '');

-- The document of the finalized, numbered invoice of a client and period;
-- an error that says why when there is none.
CREATE FUNCTION @extschema@.msp_require_numbered(client_id bigint, period daterange)
RETURNS @extschema@.invoice_documents
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	fin invoices := msp_require_finalized(client_id, period);
	doc invoice_documents;
BEGIN
	SELECT * INTO doc FROM invoice_documents d WHERE d.client_id = client_id AND d.invoice_id = fin.invoice_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'invoice % of client % for % has no number', fin.invoice_id, client_id, period
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'It was finalized before mspbill 0.3.0, which numbered no invoice.',
				  HINT = 'It was sent under whatever number your accounting gave it; enter it there by hand.';
	END IF;
	RETURN doc;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_require_numbered(bigint, daterange) IS
	'the document of the finalized, numbered invoice of a client and period; an error when there is none';

-- A line as an importer recomputes it, quantity times unit price: kept
-- when that gives the stored amount to the minor unit, else one unit at
-- the amount, with the quantity and price in the description (prorated
-- quantities), so that every imported total equals the invoice's.
CREATE FUNCTION @extschema@.msp_export_line(quantity numeric, unit_price numeric, amount numeric,
											 description text, minor_unit numeric,
											 OUT quantity_out numeric, OUT unit_price_out numeric,
											 OUT description_out text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT CASE WHEN exact THEN quantity ELSE 1 END,
		   CASE WHEN exact THEN unit_price ELSE amount END,
		   CASE WHEN exact THEN description
				ELSE description || coalesce(format(' (%s x %s)', trim_scale(quantity), unit_price), '') END
	  FROM (SELECT coalesce(msp_round(quantity * unit_price, minor_unit) = amount, false) AS exact) x;
END;
COMMENT ON FUNCTION @extschema@.msp_export_line(numeric, numeric, numeric, text, numeric) IS
	'quantity, unit price and description of a line for an importer that multiplies them: one unit at the amount when the product would not give it';

-- Xero: the sales invoice import CSV, one row per line; dates DD/MM/YYYY
-- as its template asks; amounts tax exclusive, with each line's tax.
CREATE FUNCTION @extschema@.msp_export_xero(client_id bigint, period daterange)
RETURNS TABLE ("ContactName" text, "InvoiceNumber" text, "Reference" text, "InvoiceDate" text,
			   "DueDate" text, "InventoryItemCode" text, "Description" text, "Quantity" text,
			   "UnitAmount" text, "LineAmount" text, "AccountCode" text, "TaxType" text, "TaxAmount" text,
			   "Currency" text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	doc invoice_documents;
BEGIN
	period := msp_period(client_id, period);
	doc := msp_require_numbered(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	RETURN QUERY
	SELECT c.name, doc.invoice_number, doc.po_reference, to_char(doc.invoice_date, 'DD/MM/YYYY'),
		   to_char(doc.due_date, 'DD/MM/YYYY'), e.item_name, x.description_out, trim_scale(x.quantity_out)::text,
		   x.unit_price_out::text, it.amount::text, coalesce(e.account_code, '200'), ld.tax_name, ld.tax::text,
		   c.currency::text
	  FROM invoice_items it
	  JOIN invoice_line_documents ld ON ld.client_id = it.client_id AND ld.invoice_id = it.invoice_id
									AND ld.line_no = it.line_no
	  LEFT JOIN export_codes e ON e.basis = it.basis
	  CROSS JOIN LATERAL msp_export_line(it.quantity, it.unit_price, it.amount, it.description, c.minor_unit) x
	 WHERE it.client_id = client_id AND ld.client_id = client_id AND it.invoice_id = doc.invoice_id
	 ORDER BY it.line_no;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_xero(bigint, daterange) IS
	'a client''s finalized invoice of a period as rows of Xero''s sales invoice import CSV';

CREATE FUNCTION @extschema@.msp_export_xero(period daterange)
RETURNS TABLE ("ContactName" text, "InvoiceNumber" text, "Reference" text, "InvoiceDate" text,
			   "DueDate" text, "InventoryItemCode" text, "Description" text, "Quantity" text,
			   "UnitAmount" text, "LineAmount" text, "AccountCode" text, "TaxType" text, "TaxAmount" text,
			   "Currency" text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	id bigint;
BEGIN
	FOR id IN SELECT i.client_id FROM invoices i
			   JOIN invoice_documents d ON d.client_id = i.client_id AND d.invoice_id = i.invoice_id
			   WHERE i.kind = 'invoice' AND i.period = msp_export_xero.period
			   ORDER BY d.invoice_number LOOP
		RETURN QUERY SELECT * FROM msp_export_xero(id, msp_export_xero.period);
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_xero(daterange) IS
	'every numbered invoice of a period the caller may read, as Xero''s sales invoice import CSV';

-- QuickBooks Online: the invoice import CSV, one row per line; dates
-- MM/DD/YYYY (the importer asks for the format); the PO reference in the
-- memo, which QuickBooks prints on the invoice.
CREATE FUNCTION @extschema@.msp_export_quickbooks(client_id bigint, period daterange)
RETURNS TABLE ("InvoiceNo" text, "Customer" text, "InvoiceDate" text, "DueDate" text, "Terms" text,
			   "Memo" text, "Item(Product/Service)" text, "ItemDescription" text, "ItemQuantity" text,
			   "ItemRate" text, "ItemAmount" text, "ItemTaxCode" text, "ItemTaxAmount" text, "Currency" text,
			   "Service Date" text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	doc invoice_documents;
BEGIN
	period := msp_period(client_id, period);
	doc := msp_require_numbered(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	RETURN QUERY
	SELECT doc.invoice_number, c.name, to_char(doc.invoice_date, 'MM/DD/YYYY'), to_char(doc.due_date, 'MM/DD/YYYY'),
		   msp_payment_terms_text(doc.payment_terms_days), 'PO ' || doc.po_reference,
		   coalesce(e.item_name, 'Managed services'), x.description_out, trim_scale(x.quantity_out)::text,
		   x.unit_price_out::text, it.amount::text, ld.tax_name, ld.tax::text, c.currency::text,
		   to_char(lower(period), 'MM/DD/YYYY')
	  FROM invoice_items it
	  JOIN invoice_line_documents ld ON ld.client_id = it.client_id AND ld.invoice_id = it.invoice_id
									AND ld.line_no = it.line_no
	  LEFT JOIN export_codes e ON e.basis = it.basis
	  CROSS JOIN LATERAL msp_export_line(it.quantity, it.unit_price, it.amount, it.description, c.minor_unit) x
	 WHERE it.client_id = client_id AND ld.client_id = client_id AND it.invoice_id = doc.invoice_id
	 ORDER BY it.line_no;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_quickbooks(bigint, daterange) IS
	'a client''s finalized invoice of a period as rows of QuickBooks Online''s invoice import CSV';

CREATE FUNCTION @extschema@.msp_export_quickbooks(period daterange)
RETURNS TABLE ("InvoiceNo" text, "Customer" text, "InvoiceDate" text, "DueDate" text, "Terms" text,
			   "Memo" text, "Item(Product/Service)" text, "ItemDescription" text, "ItemQuantity" text,
			   "ItemRate" text, "ItemAmount" text, "ItemTaxCode" text, "ItemTaxAmount" text, "Currency" text,
			   "Service Date" text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	id bigint;
BEGIN
	FOR id IN SELECT i.client_id FROM invoices i
			   JOIN invoice_documents d ON d.client_id = i.client_id AND d.invoice_id = i.invoice_id
			   WHERE i.kind = 'invoice' AND i.period = msp_export_quickbooks.period
			   ORDER BY d.invoice_number LOOP
		RETURN QUERY SELECT * FROM msp_export_quickbooks(id, msp_export_quickbooks.period);
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_quickbooks(daterange) IS
	'every numbered invoice of a period the caller may read, as QuickBooks Online''s invoice import CSV';

-- One invoice as a JSON document: head, lines (with tax, explanation and
-- evidence), tax lines, totals and a summary of the evidence.  Amounts
-- are JSON numbers written exactly as stored (read them as decimals).
-- A preview when the period is not finalized.
CREATE FUNCTION @extschema@.msp_invoice_json(client_id bigint, period daterange DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	d record;
	fin invoices;
	billed jsonb;
BEGIN
	period := msp_period(client_id, period);
	SELECT * INTO d FROM msp_invoice_document(client_id, period);
	fin := msp_finalized_invoice(client_id, period);
	billed := CASE WHEN fin.invoice_id IS NOT NULL THEN fin.evidence
				   ELSE coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]') END;
	RETURN jsonb_build_object(
		'invoice_number', d.invoice_number,
		'status', d.status,
		'client', jsonb_build_object('client_id', client_id, 'name', d.client_name),
		'period', jsonb_build_object('first_day', lower(period), 'last_day', upper(period) - 1),
		'invoice_date', d.invoice_date,
		'due_date', d.due_date,
		'payment_terms', d.payment_terms,
		'po_reference', d.po_reference,
		'currency', d.currency,
		'lines', (SELECT coalesce(jsonb_agg(jsonb_build_object(
						'line_no', l.line_no, 'description', l.description, 'kind', l.basis,
						'contract_id', l.contract_id, 'quantity', l.quantity, 'unit_price', l.unit_price,
						'amount', l.amount,
						'tax', jsonb_build_object('name', l.tax_name, 'rate', l.tax_rate, 'amount', l.tax),
						'explanation', l.explanation, 'evidence', l.evidence) ORDER BY l.line_no), '[]')
					FROM msp_document_lines(client_id, period) l),
		'taxes', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', t.tax_name, 'rate', t.tax_rate,
															   'taxable', t.taxable, 'tax', t.tax)
											ORDER BY t.tax_name, t.tax_rate), '[]')
					FROM msp_invoice_taxes(client_id, period) t),
		'net_amount', d.net_amount,
		'tax', d.tax,
		'amount_due', d.amount_due,
		'evidence_summary', jsonb_build_object(
			'people_billed', (SELECT count(DISTINCT (coalesce(e->>'home_client_id', client_id::text), e->>'person_id'))
								FROM jsonb_array_elements(billed) e),
			'by_rule', (SELECT coalesce(jsonb_object_agg(r.rule, r.n), '{}')
						  FROM (SELECT e->>'rule' AS rule, count(*) AS n FROM jsonb_array_elements(billed) e
								 GROUP BY 1) r),
			'pseudonyms', (SELECT coalesce(jsonb_agg(DISTINCT e->>'pseudonym'), '[]')
							 FROM jsonb_array_elements(billed) e)));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoice_json(bigint, daterange) IS
	'an invoice as one JSON document: head, lines with tax, explanation and evidence, tax lines, totals, evidence summary';

CREATE FUNCTION @extschema@.msp_export_json(period daterange)
RETURNS TABLE (client_id bigint, invoice_number text, document jsonb)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	FOR r IN SELECT i.client_id, d.invoice_number FROM invoices i
			  JOIN invoice_documents d ON d.client_id = i.client_id AND d.invoice_id = i.invoice_id
			  WHERE i.kind = 'invoice' AND i.period = msp_export_json.period
			  ORDER BY d.invoice_number LOOP
		client_id := r.client_id;
		invoice_number := r.invoice_number;
		document := msp_invoice_json(r.client_id, msp_export_json.period);
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_json(daterange) IS
	'every numbered invoice of a period the caller may read, one JSON document each';

-- PSA quantities: many MSPs keep invoicing in their PSA and only want its
-- counts right.  A mapping ties a kind of invoice line (basis, of one
-- contract or of any) to the PSA object that bills it: a ConnectWise PSA
-- agreement addition, an Autotask contract service or a HaloPSA recurring
-- invoice line.  A sync records, per mapping, the quantity the object
-- should now have, and reports the change from the quantity it had (the
-- last one synced), so that only differences need to be entered.

CREATE TABLE @extschema@.psa_mappings (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	mapping_id bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,
	psa text NOT NULL CONSTRAINT psa_mappings_psa_known CHECK (psa IN ('connectwise', 'autotask', 'halopsa')),
	-- the kind of invoice line whose quantity the PSA object carries, of
	-- one contract (or, NULL, of whichever contract is in effect)
	basis text NOT NULL CONSTRAINT psa_mappings_basis_not_empty CHECK (basis <> ''),
	contract_id bigint,
	-- ConnectWise: agreement id and addition (product) id; Autotask:
	-- contract id and service id; HaloPSA: recurring invoice id and line
	-- (item) id
	psa_agreement text NOT NULL CONSTRAINT psa_mappings_psa_agreement_not_empty CHECK (psa_agreement <> ''),
	psa_item text NOT NULL CONSTRAINT psa_mappings_psa_item_not_empty CHECK (psa_item <> ''),
	PRIMARY KEY (client_id, mapping_id),
	FOREIGN KEY (client_id, contract_id) REFERENCES @extschema@.contracts ON DELETE CASCADE,
	CONSTRAINT psa_mappings_one_per_object UNIQUE (client_id, psa, psa_agreement, psa_item)
);
COMMENT ON TABLE @extschema@.psa_mappings IS
	'which PSA object (ConnectWise agreement addition, Autotask contract service, HaloPSA recurring invoice line) carries the quantity of a kind of invoice line';

CREATE TABLE @extschema@.psa_syncs (
	client_id bigint NOT NULL,
	sync_id bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,
	mapping_id bigint NOT NULL,
	period daterange NOT NULL,
	quantity numeric NOT NULL,
	previous_quantity numeric,
	synced_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	synced_by name NOT NULL DEFAULT session_user,
	PRIMARY KEY (client_id, sync_id),
	-- a mapping once synced stays, with its history
	FOREIGN KEY (client_id, mapping_id) REFERENCES @extschema@.psa_mappings
);
CREATE INDEX psa_syncs_mapping_idx ON @extschema@.psa_syncs (client_id, mapping_id, sync_id);
COMMENT ON TABLE @extschema@.psa_syncs IS
	'what each PSA sync set: per mapping, the quantity and the one it replaced; append-only, written by msp_psa_sync()';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.psa_mappings', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.psa_syncs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.psa_mappings_mapping_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.psa_syncs_sync_id_seq', '');

ALTER TABLE @extschema@.psa_mappings ENABLE ROW LEVEL SECURITY;
CREATE POLICY client_rows ON @extschema@.psa_mappings USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])));
COMMENT ON POLICY client_rows ON @extschema@.psa_mappings IS
	'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)';
ALTER TABLE @extschema@.psa_syncs ENABLE ROW LEVEL SECURITY;
CREATE POLICY client_rows ON @extschema@.psa_syncs USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])));
COMMENT ON POLICY client_rows ON @extschema@.psa_syncs IS
	'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)';

-- what was synced is a fact, like an invoice
CREATE TRIGGER refuse_change BEFORE UPDATE OR DELETE ON @extschema@.psa_syncs
	FOR EACH ROW EXECUTE FUNCTION @extschema@.msp_refuse_change();
CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON @extschema@.psa_syncs
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_refuse_change();

-- The quantity each of a client's PSA objects should have for a period
-- (the sum of its lines' quantities on the invoice: as finalized, else a
-- preview; 0 when no line of its kind is billed), the quantity it was
-- last synced to, and the change.
CREATE FUNCTION @extschema@.msp_psa_quantities(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (mapping_id bigint, psa text, psa_object text, psa_agreement text, psa_item text, basis text,
			   quantity numeric, previous_quantity numeric, change numeric)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	lines invoice_line[];
BEGIN
	period := msp_period(client_id, period);
	lines := ARRAY(SELECT l FROM msp_invoice_lines(client_id, period) l);
	RETURN QUERY
	SELECT m.mapping_id, m.psa,
		   CASE m.psa WHEN 'connectwise' THEN 'agreement addition' WHEN 'autotask' THEN 'contract service'
					  ELSE 'recurring invoice line' END,
		   m.psa_agreement, m.psa_item, m.basis, q.quantity, s.quantity, q.quantity - coalesce(s.quantity, 0)
	  FROM psa_mappings m
	  CROSS JOIN LATERAL (
		SELECT coalesce(sum(l.quantity), 0) AS quantity FROM unnest(lines) l
		 WHERE l.basis = m.basis AND (m.contract_id IS NULL OR l.contract_id = m.contract_id)) q
	  LEFT JOIN LATERAL (
		SELECT x.quantity FROM psa_syncs x
		 WHERE x.client_id = client_id AND x.mapping_id = m.mapping_id
		 ORDER BY x.sync_id DESC LIMIT 1) s ON true
	 WHERE m.client_id = client_id
	 ORDER BY m.psa, m.psa_agreement, m.psa_item;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_psa_quantities(bigint, daterange) IS
	'per PSA mapping of a client: the quantity the PSA object should have for a period, the one last synced and the change';

-- Records a sync: the quantities msp_psa_quantities() reports become the
-- ones the PSA objects have.  A definer, so that the history is written
-- only here (server-stamped); one sync per client at a time, so that the
-- change each reports is from the sync before it.
CREATE FUNCTION @extschema@.msp_psa_sync(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (mapping_id bigint, psa text, psa_object text, psa_agreement text, psa_item text, basis text,
			   quantity numeric, previous_quantity numeric, change numeric)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	r record;
BEGIN
	period := msp_period(client_id, period);
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.psa_sync'), hashtext(client_id::text));
	FOR r IN SELECT * FROM msp_psa_quantities(client_id, period) LOOP
		INSERT INTO @extschema@.psa_syncs (client_id, mapping_id, period, quantity, previous_quantity)
		VALUES (client_id, r.mapping_id, period, r.quantity, r.previous_quantity);
		mapping_id := r.mapping_id;
		psa := r.psa;
		psa_object := r.psa_object;
		psa_agreement := r.psa_agreement;
		psa_item := r.psa_item;
		basis := r.basis;
		quantity := r.quantity;
		previous_quantity := r.previous_quantity;
		change := r.change;
		RETURN NEXT;
	END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_psa_sync(bigint, daterange) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_psa_sync(bigint, daterange) IS
	'records the quantities each PSA object of a client should now have for a period and returns them with the change from the last sync';

-- finalization writes the document (src/finalize.sql)
CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	unknown text[];
	today date;
	stamp timestamptz;
	c clients;
	terms record;
	lines invoice_line[];
	evidence jsonb;
	number text;
	invoice_day date;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	-- an unfinished month is not a data-quality question: its logons are
	-- still coming, so no override finalizes it
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	IF EXISTS (SELECT 1 FROM msp_data_quality(client_id, period) q WHERE q.gate = 'period_not_over') THEN
		today := (now() AT TIME ZONE (SELECT c.time_zone FROM clients c WHERE c.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q.gate FROM msp_data_quality(client_id, period) q
					  WHERE NOT q.gate = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period, failing);
	END IF;

	inv := msp_compute_invoice(client_id, period);
	lines := ARRAY(SELECT l FROM msp_price_lines(client_id, period, NULL) l);
	evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	SELECT * INTO terms FROM msp_invoice_terms(client_id);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	-- the number last: its counter row stays locked until this transaction
	-- ends, so other finalizations wait here (not through the pricing), and
	-- a rollback gives the number back: no gaps, no duplicates
	INSERT INTO @extschema@.invoice_numbering AS n (series, last_number) VALUES ('invoice', 1)
	ON CONFLICT (series) DO UPDATE SET last_number = n.last_number + 1
	RETURNING msp_invoice_number_text(n.prefix, n.last_number, n.digits) INTO number;
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	invoice_day := (stamp AT TIME ZONE c.time_zone)::date;
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM unnest(lines) l;
	-- the document: number, dates, terms and PO as the client has them
	-- today, and each line's tax and explanation (src/billing/documents.sql)
	INSERT INTO @extschema@.invoice_documents (client_id, invoice_id, invoice_number, invoice_date, due_date,
							   payment_terms_days, po_reference, tax)
	VALUES (client_id, id, number, invoice_day, invoice_day + terms.payment_terms_days, terms.payment_terms_days,
			terms.po_reference, (SELECT coalesce(sum(t.tax), 0) FROM msp_tax_lines(client_id, lines) t));
	INSERT INTO @extschema@.invoice_line_documents (client_id, invoice_id, line_no, tax_name, tax_rate, tax,
									explanation, evidence)
	SELECT client_id, id, t.line_no, t.tax_name, t.tax_rate, t.tax, x.explanation, x.evidence
	  FROM msp_tax_lines(client_id, lines) t
	  JOIN msp_explain_lines(client_id, period, lines, evidence) x ON x.line_no = t.line_no;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override,
				'findings', (SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q
							  WHERE q.gate = ANY (override))));
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines, evidence, number, dates, terms and tax and returns its id; finalizing again returns the same id';

-- grants of the new tables and of msp_psa_sync: run msp_install_roles()
-- after the update, as for every release
CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications, '
						'@extschema@.invoice_terms, @extschema@.tax_rates, @extschema@.psa_mappings, @extschema@.export_codes';
	-- read by every role that reads invoices, written only by the definers
	-- (the number series: see below)
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items, @extschema@.invoice_documents, '
						  '@extschema@.invoice_line_documents, @extschema@.psa_syncs';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_psa_sync(bigint, daterange)';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s, @extschema@.logons_logon_id_seq TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);

	-- the number series: chosen before the first invoice (prefix, digits,
	-- the number another system stopped at), never set back afterwards
	EXECUTE 'GRANT SELECT, INSERT (series, prefix, digits, last_number), UPDATE (prefix, digits) '
			'ON @extschema@.invoice_numbering TO mspbill_admin, mspbill_billing';

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
-- for DBAs only: it creates roles and grants
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';

-- lines: contract lines (issue 20 item 1).  A contract of model 'lines' is
-- priced by its lines (src/billing/lines.sql, repeated whole below); the
-- hook in msp_segment_lines; the loading roles' grants on the new tables.
ALTER TABLE @extschema@.contracts DROP CONSTRAINT contracts_model_known,
	ADD CONSTRAINT contracts_model_known
		CHECK (model IN ('per_user', 'per_device', 'per_seat', 'cost_plus', 'per_user_plus_support', 'lines'));

-- Contract lines: an agreement as MSPs write it, several priced lines
-- ("42.00 per user + 95.00 per server + backup at 0.10 per GB + 150.00 a
-- month, 10% off the first year"), each with its own quantity source,
-- price or tiers, minimum, proration and discount.  A contract of model
-- 'lines' is priced by its lines; every other model is a preset of lines
-- (msp_effective_lines shows it) priced as before.

CREATE TABLE @extschema@.contract_lines (
	client_id bigint NOT NULL,
	contract_id bigint NOT NULL,
	line_no integer NOT NULL CONSTRAINT contract_lines_line_no_positive CHECK (line_no >= 1),
	description text NOT NULL CONSTRAINT contract_lines_description_not_empty CHECK (description <> ''),
	source text NOT NULL
		CONSTRAINT contract_lines_source_known
		CHECK (source IN ('users', 'seats', 'devices', 'licenses', 'cost_pool', 'fixed', 'meter')),
	-- what is counted, narrowed
	device_kind text
		CONSTRAINT contract_lines_device_kind_known
		CHECK (device_kind IN ('desktop', 'laptop', 'server', 'room', 'other')),
	sku text CONSTRAINT contract_lines_sku_not_empty CHECK (sku <> ''),
	pool_category text
		CONSTRAINT contract_lines_pool_category_known
		CHECK (pool_category IN ('licensing', 'backup', 'server', 'hardware', 'support', 'other')),
	meter text CONSTRAINT contract_lines_meter_not_empty CHECK (meter <> ''),
	meter_rule text NOT NULL DEFAULT 'peak'
		CONSTRAINT contract_lines_meter_rule_known CHECK (meter_rule IN ('peak', 'last', 'sum')),
	-- the price
	unit_price numeric CONSTRAINT contract_lines_unit_price_not_negative CHECK (unit_price >= 0),
	markup numeric NOT NULL DEFAULT 0 CONSTRAINT contract_lines_markup_not_negative CHECK (markup >= 0),
	tier_mode text NOT NULL DEFAULT 'volume'
		CONSTRAINT contract_lines_tier_mode_known CHECK (tier_mode IN ('volume', 'graduated')),
	minimum_quantity numeric NOT NULL DEFAULT 0
		CONSTRAINT contract_lines_minimum_quantity_not_negative CHECK (minimum_quantity >= 0),
	minimum_fee numeric NOT NULL DEFAULT 0
		CONSTRAINT contract_lines_minimum_fee_not_negative CHECK (minimum_fee >= 0),
	prorate boolean NOT NULL DEFAULT true,
	-- a discount, percent or amount (a month's), for a date range (NULL: always)
	discount_percent numeric
		CONSTRAINT contract_lines_discount_percent_range CHECK (discount_percent > 0 AND discount_percent <= 100),
	discount_amount numeric CONSTRAINT contract_lines_discount_amount_positive CHECK (discount_amount > 0),
	discount_period daterange
		CONSTRAINT contract_lines_discount_period_has_start
		CHECK (NOT isempty(discount_period) AND NOT lower_inf(discount_period)),
	PRIMARY KEY (client_id, contract_id, line_no),
	FOREIGN KEY (client_id, contract_id) REFERENCES @extschema@.contracts ON DELETE CASCADE,
	-- combinations, each named for what it refuses, so that the error says it
	CONSTRAINT contract_lines_unit_price_required CHECK (source = 'cost_pool' OR unit_price IS NOT NULL),
	CONSTRAINT contract_lines_cost_pool_has_markup_not_price CHECK (source <> 'cost_pool' OR unit_price IS NULL),
	CONSTRAINT contract_lines_markup_only_for_cost_pool CHECK (source = 'cost_pool' OR markup = 0),
	CONSTRAINT contract_lines_device_kind_only_for_devices CHECK (device_kind IS NULL OR source = 'devices'),
	CONSTRAINT contract_lines_sku_only_for_licenses CHECK (sku IS NULL OR source = 'licenses'),
	CONSTRAINT contract_lines_pool_category_only_for_cost_pool CHECK (pool_category IS NULL OR source = 'cost_pool'),
	CONSTRAINT contract_lines_meter_required CHECK ((source = 'meter') = (meter IS NOT NULL)),
	CONSTRAINT contract_lines_minimum_quantity_needs_units
		CHECK (minimum_quantity = 0 OR source NOT IN ('fixed', 'cost_pool')),
	CONSTRAINT contract_lines_one_discount CHECK (discount_percent IS NULL OR discount_amount IS NULL),
	CONSTRAINT contract_lines_discount_period_needs_discount
		CHECK (discount_period IS NULL OR discount_percent IS NOT NULL OR discount_amount IS NOT NULL)
);
COMMENT ON TABLE @extschema@.contract_lines IS
	'the priced lines of a contract of model ''lines'': quantity source, price or tiers, minimums, proration and discount';

CREATE TABLE @extschema@.contract_line_tiers (
	client_id bigint NOT NULL,
	contract_id bigint NOT NULL,
	line_no integer NOT NULL,
	from_quantity numeric NOT NULL CONSTRAINT contract_line_tiers_from_quantity_not_negative CHECK (from_quantity >= 0),
	unit_price numeric NOT NULL CONSTRAINT contract_line_tiers_unit_price_not_negative CHECK (unit_price >= 0),
	PRIMARY KEY (client_id, contract_id, line_no, from_quantity),
	FOREIGN KEY (client_id, contract_id, line_no) REFERENCES @extschema@.contract_lines ON DELETE CASCADE
);
COMMENT ON TABLE @extschema@.contract_line_tiers IS
	'volume or graduated unit prices of one contract line, from a quantity up';

CREATE TABLE @extschema@.meter_readings (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	meter text NOT NULL CONSTRAINT meter_readings_meter_not_empty CHECK (meter <> ''),
	day date NOT NULL,
	quantity numeric NOT NULL CONSTRAINT meter_readings_quantity_not_negative CHECK (quantity >= 0),
	source text NOT NULL DEFAULT 'manual',
	PRIMARY KEY (client_id, meter, day)
);
COMMENT ON TABLE @extschema@.meter_readings IS
	'a metered quantity per client, meter and day (e.g. backup GB stored), as loaded from a file; one reading a day';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.contract_lines', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.contract_line_tiers', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.meter_readings', '');

-- as every client-keyed table (src/privacy.sql): a reader sees the rows of
-- the clients they may see
ALTER TABLE @extschema@.contract_lines ENABLE ROW LEVEL SECURITY;
CREATE POLICY client_rows ON @extschema@.contract_lines
	USING ((SELECT @extschema@.msp_sees_all_clients())
		   OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])));
COMMENT ON POLICY client_rows ON @extschema@.contract_lines IS
	'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)';
ALTER TABLE @extschema@.contract_line_tiers ENABLE ROW LEVEL SECURITY;
CREATE POLICY client_rows ON @extschema@.contract_line_tiers
	USING ((SELECT @extschema@.msp_sees_all_clients())
		   OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])));
COMMENT ON POLICY client_rows ON @extschema@.contract_line_tiers IS
	'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)';
ALTER TABLE @extschema@.meter_readings ENABLE ROW LEVEL SECURITY;
CREATE POLICY client_rows ON @extschema@.meter_readings
	USING ((SELECT @extschema@.msp_sees_all_clients())
		   OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])));
COMMENT ON POLICY client_rows ON @extschema@.meter_readings IS
	'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)';

-- Lines belong to contracts priced by lines, and tiers to lines that count
-- units: refused otherwise, rather than kept and silently never priced.
CREATE FUNCTION @extschema@.msp_check_contract_line() RETURNS trigger
LANGUAGE plpgsql
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	model text;
	source text;
BEGIN
	IF TG_TABLE_NAME = 'contract_lines' THEN
		SELECT k.model INTO model FROM contracts k
		 WHERE k.client_id = NEW.client_id AND k.contract_id = NEW.contract_id;
		IF FOUND AND model <> 'lines' THEN
			RAISE EXCEPTION 'contract % of client % is priced by model %, not by lines', NEW.contract_id, NEW.client_id, model
				USING ERRCODE = 'check_violation',
					  DETAIL = 'Only a contract of model ''lines'' is priced by its contract lines.',
					  HINT = format('Set the model first: UPDATE mspbill.contracts SET model = ''lines'' WHERE client_id = %s AND contract_id = %s;',
									NEW.client_id, NEW.contract_id);
		END IF;
	ELSE
		SELECT l.source INTO source FROM contract_lines l
		 WHERE l.client_id = NEW.client_id AND l.contract_id = NEW.contract_id AND l.line_no = NEW.line_no;
		IF source IN ('cost_pool', 'fixed') THEN
			RAISE EXCEPTION 'line % of contract % of client % has no units to tier', NEW.line_no, NEW.contract_id, NEW.client_id
				USING ERRCODE = 'check_violation',
					  DETAIL = format('A %s line is priced as a whole, not by a count of units.', source),
					  HINT = 'Tier a line that counts units (users, seats, devices, licenses, meter).';
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_check_contract_line() IS
	'trigger: refuses lines on a contract not priced by lines, and tiers on a fixed-fee or cost-pool line';

CREATE TRIGGER check_contract_line BEFORE INSERT OR UPDATE ON @extschema@.contract_lines
	FOR EACH ROW EXECUTE FUNCTION @extschema@.msp_check_contract_line();
CREATE TRIGGER check_contract_line BEFORE INSERT OR UPDATE ON @extschema@.contract_line_tiers
	FOR EACH ROW EXECUTE FUNCTION @extschema@.msp_check_contract_line();

-- One line's terms as the pricing reads them: a contract line with its
-- tiers, a preset line of a model, or a proposed line (msp_compare_lines).
CREATE TYPE @extschema@.line_terms AS (
	line_no integer,
	description text,
	source text,
	device_kind text,
	sku text,
	pool_category text,
	meter text,
	meter_rule text,
	unit_price numeric,
	markup numeric,
	tier_mode text,
	tier_from numeric[],
	tier_price numeric[],
	minimum_quantity numeric,
	minimum_fee numeric,
	prorate boolean,
	discount_percent numeric,
	discount_amount numeric,
	discount_period daterange
);
COMMENT ON TYPE @extschema@.line_terms IS
	'the terms of one priced line (contract_lines with its tiers as arrays); what msp_effective_lines returns and msp_compare_lines takes';

-- The terms a contract is priced by: its own lines (model 'lines'), or the
-- preset lines its model stands for.  A preset is priced by its model's
-- own code (msp_segment_lines); the lines say the same in one vocabulary.
CREATE FUNCTION @extschema@.msp_effective_lines(client_id bigint, contract_id bigint)
RETURNS SETOF @extschema@.line_terms
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	k contracts;
	tf numeric[];
	tp numeric[];
BEGIN
	SELECT * INTO k FROM contracts
	 WHERE contracts.client_id = client_id AND contracts.contract_id = contract_id;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	IF k.model = 'lines' THEN
		RETURN QUERY
		SELECT l.line_no, l.description, l.source, l.device_kind, l.sku, l.pool_category, l.meter, l.meter_rule,
			   l.unit_price, l.markup, l.tier_mode,
			   ARRAY(SELECT t.from_quantity FROM contract_line_tiers t
					  WHERE t.client_id = client_id AND t.contract_id = contract_id AND t.line_no = l.line_no
					  ORDER BY t.from_quantity),
			   ARRAY(SELECT t.unit_price FROM contract_line_tiers t
					  WHERE t.client_id = client_id AND t.contract_id = contract_id AND t.line_no = l.line_no
					  ORDER BY t.from_quantity),
			   l.minimum_quantity, l.minimum_fee, l.prorate, l.discount_percent, l.discount_amount,
			   l.discount_period
		  FROM contract_lines l
		 WHERE l.client_id = client_id AND l.contract_id = contract_id
		 ORDER BY l.line_no;
		RETURN;
	END IF;
	-- the model's tiers price its main line
	SELECT coalesce(array_agg(t.from_quantity ORDER BY t.from_quantity), '{}'),
		   coalesce(array_agg(t.unit_price ORDER BY t.from_quantity), '{}')
	  INTO tf, tp
	  FROM contract_tiers t WHERE t.client_id = client_id AND t.contract_id = contract_id;
	IF k.model IN ('per_user', 'per_user_plus_support') THEN
		RETURN NEXT (1, 'Users', 'users', NULL, NULL, NULL, NULL, 'peak', k.price_per_user, 0, k.tier_mode, tf, tp,
					 k.minimum_quantity, 0, k.prorate, NULL, NULL, NULL)::line_terms;
		IF k.shared_billing IN ('seat', 'peak') THEN
			RETURN NEXT (2, 'Shared seats', 'seats', NULL, NULL, NULL, NULL, 'peak',
						 coalesce(k.price_per_seat, k.price_per_user), 0, 'volume', '{}', '{}', 0, 0, k.prorate,
						 NULL, NULL, NULL)::line_terms;
		END IF;
		IF k.model = 'per_user_plus_support' THEN
			RETURN NEXT (3, 'Support costs', 'cost_pool', NULL, NULL, 'support', NULL, 'peak', NULL, k.markup,
						 'volume', '{}', '{}', 0, 0, k.prorate, NULL, NULL, NULL)::line_terms;
		END IF;
	ELSIF k.model = 'per_device' THEN
		RETURN NEXT (1, 'Devices', 'devices', NULL, NULL, NULL, NULL, 'peak', k.price_per_device, 0, k.tier_mode,
					 tf, tp, k.minimum_quantity, 0, k.prorate, NULL, NULL, NULL)::line_terms;
	ELSIF k.model = 'per_seat' THEN
		RETURN NEXT (1, 'License seats held', 'licenses', NULL, NULL, NULL, NULL, 'peak', k.price_per_seat, 0,
					 k.tier_mode, tf, tp, k.minimum_quantity, 0, k.prorate, NULL, NULL, NULL)::line_terms;
	ELSIF k.model = 'cost_plus' THEN
		RETURN NEXT (1, 'Costs', 'cost_pool', NULL, NULL, NULL, NULL, 'peak', NULL, k.markup, 'volume', '{}', '{}',
					 0, 0, k.prorate, NULL, NULL, NULL)::line_terms;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_effective_lines(bigint, bigint) IS
	'the lines a contract is priced by: its own (model lines) or the preset its model stands for (minimum_fee stays the contract''s)';

-- Proposed lines (jsonb, an array of line_terms objects) with the
-- defaults of contract_lines filled in and the table's rules checked, each
-- refusal naming the constraint the table would name.  (STABLE, not
-- IMMUTABLE: it reads no table, but names 'devices' as a source, which the
-- catalog check cannot tell from reading the table.)
CREATE FUNCTION @extschema@.msp_proposed_lines(proposed jsonb)
RETURNS @extschema@.line_terms[]
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	t line_terms;
	out line_terms[] := '{}';
	seen integer[] := '{}';
	rule text;
BEGIN
	IF jsonb_typeof(proposed) <> 'array' OR jsonb_array_length(proposed) = 0 THEN
		RAISE EXCEPTION 'proposed lines must be a non-empty JSON array'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('Got a JSON %s%s.', jsonb_typeof(proposed),
								  CASE WHEN jsonb_typeof(proposed) = 'array' THEN ' without elements' ELSE '' END),
				  HINT = 'Pass e.g. ''[{"line_no": 1, "description": "Users", "source": "users", "unit_price": 42}]''.';
	END IF;
	FOR t IN SELECT * FROM jsonb_populate_recordset(NULL::line_terms, proposed) LOOP
		t.meter_rule := coalesce(t.meter_rule, 'peak');
		t.markup := coalesce(t.markup, 0);
		t.tier_mode := coalesce(t.tier_mode, 'volume');
		t.tier_from := coalesce(t.tier_from, '{}');
		t.tier_price := coalesce(t.tier_price, '{}');
		t.minimum_quantity := coalesce(t.minimum_quantity, 0);
		t.minimum_fee := coalesce(t.minimum_fee, 0);
		t.prorate := coalesce(t.prorate, true);
		-- the table's constraints, in its order (a NULL check passes, as in a CHECK)
		rule := CASE
			WHEN t.line_no IS NULL THEN 'line_no_required'
			WHEN t.line_no < 1 THEN 'line_no_positive'
			WHEN t.line_no = ANY (seen) THEN 'line_no_unique'
			WHEN t.description IS NULL OR t.description = '' THEN 'description_not_empty'
			WHEN t.source IS NULL
				 OR t.source NOT IN ('users', 'seats', 'devices', 'licenses', 'cost_pool', 'fixed', 'meter')
				THEN 'source_known'
			WHEN t.device_kind NOT IN ('desktop', 'laptop', 'server', 'room', 'other') THEN 'device_kind_known'
			WHEN t.sku = '' THEN 'sku_not_empty'
			WHEN t.pool_category NOT IN ('licensing', 'backup', 'server', 'hardware', 'support', 'other')
				THEN 'pool_category_known'
			WHEN t.meter = '' THEN 'meter_not_empty'
			WHEN t.meter_rule NOT IN ('peak', 'last', 'sum') THEN 'meter_rule_known'
			WHEN t.unit_price < 0 THEN 'unit_price_not_negative'
			WHEN t.markup < 0 THEN 'markup_not_negative'
			WHEN t.tier_mode NOT IN ('volume', 'graduated') THEN 'tier_mode_known'
			WHEN t.minimum_quantity < 0 THEN 'minimum_quantity_not_negative'
			WHEN t.minimum_fee < 0 THEN 'minimum_fee_not_negative'
			WHEN NOT (t.discount_percent > 0 AND t.discount_percent <= 100) THEN 'discount_percent_range'
			WHEN NOT (t.discount_amount > 0) THEN 'discount_amount_positive'
			WHEN isempty(t.discount_period) OR lower_inf(t.discount_period) THEN 'discount_period_has_start'
			WHEN NOT (t.source = 'cost_pool' OR t.unit_price IS NOT NULL) THEN 'unit_price_required'
			WHEN NOT (t.source <> 'cost_pool' OR t.unit_price IS NULL) THEN 'cost_pool_has_markup_not_price'
			WHEN NOT (t.source = 'cost_pool' OR t.markup = 0) THEN 'markup_only_for_cost_pool'
			WHEN NOT (t.device_kind IS NULL OR t.source = 'devices') THEN 'device_kind_only_for_devices'
			WHEN NOT (t.sku IS NULL OR t.source = 'licenses') THEN 'sku_only_for_licenses'
			WHEN NOT (t.pool_category IS NULL OR t.source = 'cost_pool') THEN 'pool_category_only_for_cost_pool'
			WHEN NOT ((t.source = 'meter') = (t.meter IS NOT NULL)) THEN 'meter_required'
			WHEN NOT (t.minimum_quantity = 0 OR t.source NOT IN ('fixed', 'cost_pool'))
				THEN 'minimum_quantity_needs_units'
			WHEN NOT (t.discount_percent IS NULL OR t.discount_amount IS NULL) THEN 'one_discount'
			WHEN NOT (t.discount_period IS NULL OR t.discount_percent IS NOT NULL OR t.discount_amount IS NOT NULL)
				THEN 'discount_period_needs_discount'
			-- the rules of tiers, and of the trigger
			WHEN cardinality(t.tier_from) <> cardinality(t.tier_price) THEN 'tiers_paired'
			WHEN cardinality(t.tier_from) > 0 AND t.source IN ('cost_pool', 'fixed') THEN 'tiers_need_units'
			WHEN EXISTS (SELECT 1 FROM unnest(t.tier_from) f WHERE f < 0 OR f IS NULL)
				THEN 'tiers_from_quantity_not_negative'
			WHEN EXISTS (SELECT 1 FROM unnest(t.tier_price) p WHERE p < 0 OR p IS NULL)
				THEN 'tiers_unit_price_not_negative'
			WHEN (SELECT count(DISTINCT f) FROM unnest(t.tier_from) f) <> cardinality(t.tier_from)
				THEN 'tiers_from_quantity_unique'
		END;
		IF rule IS NOT NULL THEN
			RAISE EXCEPTION 'proposed line % violates "contract_lines_%"', coalesce(t.line_no::text, 'NULL'), rule
				USING ERRCODE = 'check_violation',
					  DETAIL = format('The line is %s.', to_jsonb(t)),
					  HINT = 'A proposed line follows the rules a line of a contract follows (the constraints named contract_lines_...).';
		END IF;
		seen := seen || t.line_no;
		out := out || t;
	END LOOP;
	RETURN ARRAY(SELECT x FROM unnest(out) x ORDER BY x.line_no);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_proposed_lines(jsonb) IS
	'proposed lines (a JSON array of line_terms objects) with contract_lines'' defaults, checked by its rules';

-- How a quantity is priced under a line's tiers, by the rule of
-- msp_tier_bands (volume: one band at the price of the last unit's tier;
-- graduated: each band reached), with the tiers given as arrays.
CREATE FUNCTION @extschema@.msp_line_bands(quantity numeric, flat_price numeric, tier_mode text,
											tier_from numeric[], tier_price numeric[])
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH t AS (
		SELECT greatest(x.f - 1, 0) AS lo, x.p AS unit_price
		  FROM unnest(tier_from, tier_price) x(f, p)),
	bands AS (
		SELECT 0::numeric AS lo, (SELECT min(t.lo) FROM t) AS hi, flat_price AS unit_price
		UNION ALL
		SELECT t.lo, lead(t.lo) OVER (ORDER BY t.lo), t.unit_price FROM t),
	nonempty AS (SELECT * FROM bands b WHERE b.hi IS NULL OR b.hi > b.lo),
	last_unit AS (
		SELECT n.* FROM nonempty n
		 WHERE greatest(ceil(quantity), 1) > n.lo AND (n.hi IS NULL OR greatest(ceil(quantity), 1) <= n.hi)
		 ORDER BY n.lo DESC LIMIT 1)
	SELECT l.lo + 1, quantity, l.unit_price
	  FROM last_unit l
	 WHERE tier_mode = 'volume' OR quantity <= 0
	UNION ALL
	SELECT n.lo + 1, least(quantity, coalesce(n.hi, quantity)) - n.lo, n.unit_price
	  FROM nonempty n
	 WHERE tier_mode = 'graduated' AND quantity > n.lo
	 ORDER BY 1;
END;
COMMENT ON FUNCTION @extschema@.msp_line_bands(numeric, numeric, text, numeric[], numeric[]) IS
	'the price bands a quantity fills under one line''s tiers (volume: one band; graduated: each band reached)';

-- The invoice lines that a set of line terms bills in one contract
-- segment, numbered from 1.  Per line: a count of units (it picks the tier)
-- and the days they cover (prorated: the days of the segment each unit is
-- active; else the whole month), raised to the minimum; each band's amount
-- is rounded once from the exact days; then the line's minimum fee top-up;
-- then its discount, for the days of the segment inside the discount's
-- range, never more than the line.  The people, seats and billing policy
-- are the contract's (k, q).
CREATE FUNCTION @extschema@.msp_line_items(c @extschema@.clients, k @extschema@.contracts,
											segment daterange, period daterange,
											q @extschema@.segment_quantities, lines @extschema@.line_terms[])
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	t line_terms;
	b record;
	cp record;
	n integer := 0;
	seg_days integer := upper(segment) - lower(segment);
	period_days integer := upper(period) - lower(period);
	prorate boolean;
	covered integer;
	units numeric;
	unit_days numeric;
	m numeric;
	md numeric;
	bands integer;
	line_total numeric;
	amount numeric;
	floor_fee numeric;
	discounted daterange;
	dd integer;
	users_loaded boolean := false;
	user_count integer;
	user_segment_days numeric;
	label text := CASE WHEN segment = period THEN ''
					   ELSE format(' (%s to %s)', lower(segment), upper(segment) - 1) END;
BEGIN
	FOR t IN SELECT * FROM unnest(lines) x ORDER BY x.line_no LOOP
		-- a preset whose model price is missing bills nothing, as the model does
		CONTINUE WHEN t.source <> 'cost_pool' AND t.unit_price IS NULL;
		-- a sum of readings is already the segment's: never prorated again
		prorate := t.prorate AND NOT (t.source = 'meter' AND t.meter_rule = 'sum');
		covered := CASE WHEN prorate THEN seg_days ELSE period_days END;
		line_total := 0;

		IF t.source = 'cost_pool' THEN
			-- one line per pool, rounded per line (as cost-plus bills)
			FOR cp IN
				SELECT x.pool_id, x.description, x.category,
					   msp_pool_share(c.client_id, x.pool_id, period, segment) AS cost
				  FROM cost_pools x
				 WHERE x.client_id = c.client_id AND x.period && segment
				   AND (t.pool_category IS NULL OR x.category = t.pool_category)
				 ORDER BY x.pool_id
			LOOP
				amount := msp_round(cp.cost * (1 + t.markup), c.minor_unit);
				n := n + 1;
				RETURN NEXT (n, k.contract_id,
							 format('%s: %s (cost %s, markup %s%%)%s', t.description, cp.description, cp.cost,
									trim_scale(round(t.markup * 100, 2)), label),
							 1::numeric, amount, amount, 'cost')::invoice_line;
				line_total := line_total + amount;
			END LOOP;
		ELSE
			IF t.source = 'users' THEN
				IF NOT users_loaded THEN
					-- the people the contract's policy counts, and the days
					-- of the segment each is active
					SELECT count(*)::integer,
						   coalesce(sum(upper(coalesce(p.active, segment) * segment)
										- lower(coalesce(p.active, segment) * segment)), 0)
					  INTO user_count, user_segment_days
					  FROM msp_segment_users(c.client_id, k.contract_id, segment, false) u
					  JOIN people p ON p.client_id = u.home_client_id AND p.person_id = u.person_id;
					users_loaded := true;
				END IF;
				units := user_count;
				unit_days := CASE WHEN prorate THEN user_segment_days ELSE user_count * period_days END;
			ELSIF t.source = 'seats' THEN
				units := q.seat_count;
				unit_days := q.seat_count * covered;
			ELSIF t.source = 'devices' THEN
				SELECT count(*),
					   coalesce(sum(CASE WHEN prorate
										 THEN upper(coalesce(dv.active, segment) * segment)
											  - lower(coalesce(dv.active, segment) * segment)
										 ELSE period_days END), 0)
				  INTO units, unit_days
				  FROM devices dv
				 WHERE dv.client_id = c.client_id AND (dv.active IS NULL OR dv.active && segment)
				   AND (t.device_kind IS NULL OR dv.kind = t.device_kind);
			ELSIF t.source = 'licenses' THEN
				-- each SKU's latest count on or before the segment's last day
				SELECT coalesce(sum(x.seats), 0) INTO units
				  FROM (SELECT DISTINCT ON (lc.sku) lc.seats
						  FROM license_counts lc
						 WHERE lc.client_id = c.client_id AND lc.as_of < upper(segment)
						   AND (t.sku IS NULL OR lc.sku = t.sku)
						 ORDER BY lc.sku, lc.as_of DESC, lc.source) x;
				unit_days := units * covered;
			ELSIF t.source = 'meter' THEN
				IF t.meter_rule = 'last' THEN
					SELECT r.quantity INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter AND r.day < upper(segment)
					 ORDER BY r.day DESC LIMIT 1;
				ELSIF t.meter_rule = 'peak' THEN
					SELECT max(r.quantity) INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter
					   AND r.day >= lower(segment) AND r.day < upper(segment);
				ELSE
					SELECT sum(r.quantity) INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter
					   AND r.day >= lower(segment) AND r.day < upper(segment);
				END IF;
				units := coalesce(units, 0);
				unit_days := units * covered;
			ELSE
				-- fixed: one unit for the days covered
				units := 1;
				unit_days := covered;
			END IF;

			-- the minimum raises the count (for the tier) and the days
			m := greatest(units, t.minimum_quantity);
			md := greatest(unit_days, t.minimum_quantity * covered);
			-- no seat at all is no seats line, as the per-user models bill it
			m := CASE WHEN t.source = 'seats' AND m = 0 THEN NULL ELSE m END;
			SELECT count(*) INTO bands
			  FROM msp_line_bands(m, t.unit_price, t.tier_mode, t.tier_from, t.tier_price);
			FOR b IN
				SELECT x.first_unit, x.units, x.unit_price, x.first_unit + x.units - 1 AS last_unit,
					   CASE WHEN m > 0 THEN x.units * md ELSE 0 END AS num,
					   CASE WHEN m > 0 THEN m * period_days ELSE 1 END AS den
				  FROM msp_line_bands(m, t.unit_price, t.tier_mode, t.tier_from, t.tier_price) x
				 ORDER BY x.first_unit
			LOOP
				amount := msp_round(b.num * b.unit_price / b.den, c.minor_unit);
				n := n + 1;
				RETURN NEXT (n, k.contract_id,
							 CASE WHEN t.source = 'fixed' THEN t.description
								  ELSE format('%s: %s', t.description, trim_scale(round(units, 4))) END
							 || CASE WHEN m > units THEN format(', minimum %s', trim_scale(t.minimum_quantity)) ELSE '' END
							 || CASE WHEN bands > 1 THEN format(', units %s to %s', trim_scale(b.first_unit),
															   trim_scale(ceil(b.last_unit))) ELSE '' END
							 || label,
							 b.num / b.den, b.unit_price, amount,
							 CASE t.source WHEN 'users' THEN 'user' WHEN 'seats' THEN 'seat' WHEN 'devices' THEN 'device'
										   WHEN 'licenses' THEN 'license' ELSE t.source END)::invoice_line;
				line_total := line_total + amount;
			END LOOP;
		END IF;

		-- the line's own minimum fee, for the days it covers
		floor_fee := msp_round(t.minimum_fee * covered / period_days, c.minor_unit);
		IF line_total < floor_fee THEN
			amount := floor_fee - line_total;
			n := n + 1;
			RETURN NEXT (n, k.contract_id, format('%s: minimum fee top-up%s', t.description, label),
						 1::numeric, amount, amount, 'minimum')::invoice_line;
			line_total := floor_fee;
		END IF;

		-- the discount, for the days of the segment inside its range
		IF t.discount_percent IS NOT NULL OR t.discount_amount IS NOT NULL THEN
			discounted := segment * coalesce(t.discount_period, segment);
			dd := upper(discounted) - lower(discounted);
			IF dd > 0 AND line_total > 0 THEN
				IF t.discount_percent IS NOT NULL THEN
					amount := msp_round(line_total * t.discount_percent * dd / (100 * seg_days), c.minor_unit);
				ELSE
					-- a month's amount: the days discounted of the month, or
					-- whole without proration
					amount := msp_round(CASE WHEN prorate THEN t.discount_amount * dd / period_days
											 ELSE t.discount_amount END, c.minor_unit);
				END IF;
				amount := least(amount, line_total);
				IF amount > 0 THEN
					n := n + 1;
					RETURN NEXT (n, k.contract_id,
								 format('%s: %s off%s', t.description,
										CASE WHEN t.discount_percent IS NOT NULL
											 THEN trim_scale(t.discount_percent) || '%'
											 ELSE trim_scale(t.discount_amount)::text END,
										CASE WHEN discounted = segment THEN label
											 ELSE format(' (%s to %s)', lower(discounted), upper(discounted) - 1) END),
								 1::numeric, -amount, -amount, 'discount')::invoice_line;
				END IF;
			END IF;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_line_items(@extschema@.clients, @extschema@.contracts, daterange, daterange, @extschema@.segment_quantities, @extschema@.line_terms[]) IS
	'the invoice lines a set of line terms bills in one contract segment: per line its bands, minimum fee top-up and discount';

-- What the client's month costs under proposed lines against what it
-- costs today, on the same data: each segment is priced by the proposed
-- lines under its own contract's billable-user policy and minimum fee.
CREATE FUNCTION @extschema@.msp_compare_lines(client_id bigint, proposed jsonb, period daterange DEFAULT NULL)
RETURNS TABLE (pricing text, line_no integer, contract_id bigint, description text, quantity numeric,
			   unit_price numeric, amount numeric, basis text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	seg record;
	q segment_quantities;
	terms line_terms[];
	line invoice_line;
	n integer := 0;
	total numeric;
	floor_fee numeric;
BEGIN
	period := msp_period(client_id, period);
	terms := msp_proposed_lines(proposed);
	PERFORM msp_check_currency(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	-- today's lines, adjustments of earlier invoices aside
	FOR line IN SELECT * FROM msp_price_lines(client_id, period, NULL) l WHERE l.basis <> 'adjustment' LOOP
		n := n + 1;
		RETURN QUERY SELECT 'current'::text, n, line.contract_id, line.description, line.quantity,
							line.unit_price, line.amount, line.basis;
	END LOOP;
	n := 0;
	FOR seg IN SELECT * FROM msp_contract_segments(client_id, period) LOOP
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id
			AND contracts.contract_id = seg.contract_id;
		q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period);
		total := 0;
		FOR line IN SELECT * FROM msp_line_items(c, k, seg.segment, period, q, terms) LOOP
			n := n + 1;
			total := total + line.amount;
			RETURN QUERY SELECT 'proposed'::text, n, line.contract_id, line.description,
								trim_scale(round(line.quantity, 4)), line.unit_price, line.amount, line.basis;
		END LOOP;
		-- the contract's minimum fee, as msp_segment_lines tops up
		floor_fee := msp_round(k.minimum_fee * q.covered_days / q.period_days, c.minor_unit);
		IF total < floor_fee THEN
			n := n + 1;
			RETURN QUERY SELECT 'proposed'::text, n, k.contract_id,
								format('Minimum monthly fee top-up%s',
									   CASE WHEN seg.segment = period THEN ''
											ELSE format(' (%s to %s)', lower(seg.segment), upper(seg.segment) - 1) END),
								1::numeric, floor_fee - total, floor_fee - total, 'minimum'::text;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_compare_lines(bigint, jsonb, daterange) IS
	'a period''s lines as priced today (pricing current) and under proposed contract lines (pricing proposed), on the same data';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_lines(c @extschema@.clients, k @extschema@.contracts,
											   segment daterange, period daterange,
											   q @extschema@.segment_quantities, model text)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	line invoice_line;
	n integer := 0;
	total numeric := 0;
	amount numeric;
	floor_fee numeric;
	label text := CASE WHEN segment = period THEN ''
					   ELSE format(' (%s to %s)', lower(segment), upper(segment) - 1) END;
BEGIN
	IF model IN ('per_user', 'per_user_plus_support') THEN
		IF k.price_per_user IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.user_count, q.user_days, q, k.price_per_user,
										 format('Users: %s billable', q.user_count), 'user', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
		IF q.seat_count > 0 THEN
			amount := msp_round(q.seat_days * coalesce(k.price_per_seat, k.price_per_user) / q.period_days,
								c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id, format('Shared seats: %s%s', q.seat_count, label),
						 q.seat_days / q.period_days, coalesce(k.price_per_seat, k.price_per_user), amount,
						 'seat')::invoice_line;
			total := total + amount;
		END IF;
		IF model = 'per_user_plus_support' AND q.support_cost > 0 THEN
			amount := msp_round(q.support_cost * (1 + k.markup), c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id,
						 format('Support costs spread over %s users (%s per user)%s', q.user_count,
								CASE WHEN q.user_count > 0 THEN msp_round(amount / q.user_count, c.minor_unit)::text
									 ELSE 'n/a' END, label),
						 1::numeric, amount, amount, 'cost')::invoice_line;
			total := total + amount;
		END IF;
	ELSIF model = 'per_device' THEN
		IF k.price_per_device IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.device_count, q.device_days, q, k.price_per_device,
										 format('Devices: %s managed', q.device_count), 'device', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	ELSIF model = 'per_seat' THEN
		IF k.price_per_seat IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.license_count, q.license_days, q, k.price_per_seat,
										 format('License seats held: %s', q.license_count), 'license', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	ELSIF model = 'cost_plus' THEN
		FOR line IN
			SELECT 0, k.contract_id,
				   format('%s: %s (cost %s, markup %s%%)%s', initcap(cp.category), cp.description,
						  cp.cost, round(k.markup * 100, 2), label),
				   1::numeric, cp.billed, cp.billed, 'cost'
			  FROM (SELECT p.*, msp_round(p.cost * (1 + k.markup), c.minor_unit) AS billed
					  FROM (SELECT x.*, msp_pool_share(c.client_id, x.pool_id, period, segment) AS cost
							  FROM cost_pools x
							 WHERE x.client_id = c.client_id AND x.period && segment) p) cp
			 ORDER BY cp.pool_id
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	ELSIF model = 'lines' THEN
		-- priced by lines (src/billing/lines.sql): the contract's own, or
		-- the preset its model stands for
		FOR line IN
			SELECT * FROM msp_line_items(c, k, segment, period, q,
										 ARRAY(SELECT e FROM msp_effective_lines(c.client_id, k.contract_id) e))
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	END IF;

	floor_fee := msp_round(k.minimum_fee * q.covered_days / q.period_days, c.minor_unit);
	IF total < floor_fee THEN
		amount := floor_fee - total;
		n := n + 1;
		RETURN NEXT (n, k.contract_id, format('Minimum monthly fee top-up%s', label),
					 1::numeric, amount, amount, 'minimum')::invoice_line;
	END IF;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications, '
						'@extschema@.contract_lines, @extschema@.contract_line_tiers, @extschema@.meter_readings';
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint)';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s, @extschema@.logons_logon_id_seq TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;


-- issue 17 (Citus): the per-client functions in PL/pgSQL with every table
-- filtered by client_id (Citus plans no parameters of SQL functions), nested
-- calls hoisted, msp_valid_time_zone without a subtransaction for zone names,
-- new partitions policy in the distributed form on Citus, and msp_distribute().

CREATE OR REPLACE FUNCTION @extschema@.msp_valid_time_zone(zone text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_timezone_names n WHERE n.name = zone) THEN
		RETURN true;
	END IF;
	BEGIN
		PERFORM now() AT TIME ZONE zone;
		RETURN true;
	EXCEPTION WHEN invalid_parameter_value THEN
		RETURN false;
	END;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_valid_time_zone(text) IS
	'true when PostgreSQL knows the time zone name';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_users(client_id bigint, contract_id bigint, segment daterange,
											   with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	payer bigint := client_id;
	k record;
	t0 timestamptz;
	t1 timestamptz;
	home bigint;
	-- decided here, by this session: on Citus a sister client's labels are
	-- read on another node, whose session does not carry the caller's
	-- mspbill.pseudonymous (set by the finalizing functions)
	names boolean := msp_sees_names();
BEGIN
	SELECT x.count_realms, x.min_active_days, x.support_rule, x.shared_billing, x.attribution_window,
		   x.default_session, c.time_zone
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = payer AND c.client_id = payer AND x.contract_id = msp_segment_users.contract_id;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;
	-- the payer first, then the sister clients whose people it pays for
	FOREACH home IN ARRAY ARRAY[payer] || ARRAY(SELECT DISTINCT p.client_id FROM people p
												 WHERE p.bill_to_client_id = payer AND p.client_id <> payer
												 ORDER BY 1)
	LOOP
		RETURN QUERY
		WITH eligible AS (
			SELECT p.* FROM people p
			 WHERE p.client_id = home
			   AND ((home = payer AND p.bill_to_client_id IS NULL) OR p.bill_to_client_id = payer)
			   AND NOT p.is_technician AND NOT p.do_not_bill
			   AND (p.active IS NULL OR p.active && segment)),
		-- presence logons in the counted realms, and application logons
		-- attributed through a shared session on the same device
		evidence AS (
			SELECT e.person_id, l.at, a.account_id, true AS by_logon
			  FROM eligible e
			  JOIN accounts a ON a.client_id = home AND a.person_id = e.person_id
							 AND a.kind = 'individual' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
			  JOIN logons l ON l.client_id = home AND l.account_id = a.account_id
						   AND l.at >= t0 AND l.at < t1 AND l.presence
			 WHERE e.active IS NULL OR e.active @> (l.at AT TIME ZONE k.time_zone)::date
			UNION ALL
			SELECT e.person_id, il.at, ia.account_id, false
			  FROM eligible e
			  JOIN accounts ia ON ia.client_id = home AND ia.person_id = e.person_id
							  AND ia.kind = 'individual' AND NOT ia.is_machine AND ia.realm = 'app'
			  JOIN logons il ON il.client_id = home AND il.account_id = ia.account_id
							AND il.at >= t0 AND il.at < t1 AND il.presence
			 WHERE k.shared_billing = 'attribute'
			   AND (e.active IS NULL OR e.active @> (il.at AT TIME ZONE k.time_zone)::date)
			   AND EXISTS (SELECT 1
							 FROM logons sl
							 JOIN accounts sa ON sa.client_id = home AND sa.account_id = sl.account_id
											 AND sa.kind = 'shared' AND NOT sa.is_machine
											 AND sa.realm = ANY (k.count_realms)
							WHERE sl.client_id = home AND sl.device_id = il.device_id
							  AND sl.at >= t0 AND sl.at < t1 AND sl.presence
							  AND il.at >= sl.at - k.attribution_window
							  AND il.at <= coalesce(sl.ended, sl.at + k.default_session) + k.attribution_window)),
		seen AS (
			SELECT ev.person_id, min(ev.at) AS first_seen, max(ev.at) AS last_seen,
				   count(DISTINCT (ev.at AT TIME ZONE k.time_zone)::date)::integer AS days_active,
				   bool_or(ev.by_logon) AS by_logon, array_agg(DISTINCT ev.account_id) AS account_ids
			  FROM evidence ev
			 GROUP BY ev.person_id),
		support AS (
			SELECT e.person_id, count(*)::integer AS contacts, min(s.at) AS first_at, max(s.at) AS last_at
			  FROM eligible e
			  JOIN support_contacts s ON s.client_id = home AND s.person_id = e.person_id
									 AND s.at >= t0 AND s.at < t1
			 WHERE e.active IS NULL OR e.active @> (s.at AT TIME ZONE k.time_zone)::date
			 GROUP BY e.person_id)
		SELECT e.person_id, e.pseudonym,
			   CASE
				   WHEN s.days_active >= k.min_active_days AND sp.contacts > 0 AND k.support_rule <> 'none'
					   THEN CASE WHEN s.by_logon THEN 'logon+support' ELSE 'shared-attributed+support' END
				   WHEN s.days_active >= k.min_active_days
					   THEN CASE WHEN s.by_logon THEN 'logon' ELSE 'shared-attributed' END
				   ELSE 'support'
			   END,
			   least(s.first_seen, sp.first_at), greatest(s.last_seen, sp.last_at),
			   coalesce(s.days_active, 0), coalesce(sp.contacts, 0),
			   CASE WHEN with_evidence
					THEN ARRAY(SELECT x.label FROM (
								SELECT CASE WHEN l.kind IN ('shared', 'service') OR names THEN l.label
											ELSE l.realm || ' account ' || l.account_id END AS label
								  FROM account_labels l
								 WHERE l.client_id = home AND l.account_id = ANY (s.account_ids)) x
								ORDER BY x.label) END,
			   home
		  FROM eligible e
		  LEFT JOIN seen s ON s.person_id = e.person_id
		  LEFT JOIN support sp ON sp.person_id = e.person_id
		 WHERE CASE k.support_rule
				   WHEN 'none' THEN coalesce(s.days_active, 0) >= k.min_active_days
				   WHEN 'sufficient' THEN coalesce(s.days_active, 0) >= k.min_active_days OR sp.contacts > 0
				   ELSE coalesce(s.days_active, 0) >= k.min_active_days AND sp.contacts > 0
			   END
		 ORDER BY e.pseudonym;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_users(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment of a period (sister clients'' people it pays for included), with the rule and evidence';

CREATE OR REPLACE FUNCTION @extschema@.msp_billable_users(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (contract_id bigint, person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	period := msp_period(client_id, period);
	RETURN QUERY
	SELECT s.contract_id, u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen, u.days_active,
		   u.support_contacts, u.accounts, u.home_client_id
	  FROM msp_contract_segments(client_id, period) s,
		   LATERAL msp_segment_users(client_id, s.contract_id, s.segment) u
	 ORDER BY lower(s.segment), u.pseudonym, u.home_client_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_billable_users(bigint, daterange) IS
	'every person counted on the invoice (home_client_id: the client whose person it is), with the rule that counted them, first/last seen and days active';

CREATE OR REPLACE FUNCTION @extschema@.msp_pool_share(client_id bigint, pool_id bigint, period daterange, covered daterange)
RETURNS numeric
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	p record;
	segs daterange[];
BEGIN
	SELECT msp_round(cp.amount, c.minor_unit) AS amount, cp.period AS pp, c.minor_unit INTO p
	  FROM cost_pools cp JOIN clients c ON c.client_id = cp.client_id
	 WHERE cp.client_id = msp_pool_share.client_id AND c.client_id = msp_pool_share.client_id
	   AND cp.pool_id = msp_pool_share.pool_id;
	-- no share at all (NULL) for a pool that does not exist or that the
	-- caller may not see, rather than a 0 that would answer for it
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	segs := ARRAY(SELECT s.segment FROM msp_contract_segments(client_id, period) s WHERE s.segment && p.pp);
	RETURN (
		WITH months AS (
			SELECT x.m0, x.share
			  FROM (SELECT m::date AS m0,
						   allocate(p.amount,
									upper(daterange(m::date, (m + interval '1 month')::date) * p.pp)
									- lower(daterange(m::date, (m + interval '1 month')::date) * p.pp),
									p.minor_unit) OVER (ORDER BY m) AS share
					  FROM generate_series(date_trunc('month', lower(p.pp)), upper(p.pp) - 1, interval '1 month') m) x
			 WHERE x.m0 = lower(period)),
		parts AS (
			SELECT s * p.pp AS part, upper(s * p.pp) - lower(s * p.pp) AS days
			  FROM unnest(segs) s
			UNION ALL
			-- the days of the month no contract covers
			SELECT NULL, (upper(period * p.pp) - lower(period * p.pp))
						 - coalesce((SELECT sum(upper(s * p.pp) - lower(s * p.pp)) FROM unnest(segs) s), 0)),
		shares AS (
			SELECT parts.part, allocate(months.share, parts.days, p.minor_unit)
								   OVER (ORDER BY lower(parts.part) NULLS LAST) AS share
			  FROM parts, months)
		SELECT coalesce((SELECT shares.share FROM shares WHERE shares.part = covered * p.pp), 0));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_pool_share(bigint, bigint, daterange, daterange) IS
	'the part of a cost pool billed in one contract segment of a month, so that all parts sum to the pool to the cent';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange)
RETURNS @extschema@.segment_quantities
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	k record;
	q segment_quantities;
	t0 timestamptz;
	t1 timestamptz;
	home bigint;
	ids bigint[];
	homes bigint[];
	days numeric;
	n integer;
	pool record;
	share numeric;
BEGIN
	SELECT x.prorate, x.shared_billing, x.count_realms, x.default_session, c.time_zone,
		   upper(period) - lower(period) AS period_days,
		   CASE WHEN x.prorate THEN upper(segment) - lower(segment)
				ELSE upper(period) - lower(period) END AS covered_days
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = msp_segment_quantities.client_id AND c.client_id = msp_segment_quantities.client_id
	   AND x.contract_id = msp_segment_quantities.contract_id;
	-- no quantities for a contract that does not exist or that the caller
	-- may not see
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;

	-- people: the days each billed person's active range covers, read in
	-- the person's own client
	q.user_days := 0;
	q.user_count := 0;
	SELECT array_agg(b.home_client_id), array_agg(b.person_id) INTO homes, ids
	  FROM msp_segment_users(client_id, contract_id, segment, false) b;
	FOREACH home IN ARRAY ARRAY(SELECT DISTINCT h FROM unnest(homes) h ORDER BY 1) LOOP
		SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN k.period_days
								 ELSE upper(coalesce(p.active, segment) * segment)
									  - lower(coalesce(p.active, segment) * segment) END), 0),
			   count(*)::integer
		  INTO days, n
		  FROM people p
		 WHERE p.client_id = home
		   AND p.person_id = ANY (ARRAY(SELECT x.id FROM unnest(homes, ids) x(h, id) WHERE x.h = home));
		q.user_days := q.user_days + days;
		q.user_count := q.user_count + n;
	END LOOP;

	-- shared seats: one per shared account with presence logons, or its
	-- peak of concurrent sessions
	IF k.shared_billing IN ('seat', 'peak') THEN
		SELECT coalesce(sum(CASE WHEN k.shared_billing = 'peak' THEN greatest(sh.peak, 1) ELSE 1 END), 0)::integer
		  INTO q.seat_count
		  FROM (SELECT a.account_id,
					   peak_concurrency(tstzrange(l.at, coalesce(l.ended, l.at + k.default_session))) AS peak
				  FROM logons l
				  JOIN accounts a ON a.client_id = msp_segment_quantities.client_id AND a.account_id = l.account_id
								 AND a.kind = 'shared' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
				 WHERE l.client_id = msp_segment_quantities.client_id AND l.at >= t0 AND l.at < t1 AND l.presence
				 GROUP BY a.account_id) sh;
	ELSE
		q.seat_count := 0;
	END IF;

	SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN k.period_days
							 ELSE upper(coalesce(dv.active, segment) * segment)
								  - lower(coalesce(dv.active, segment) * segment) END), 0),
		   count(*)::integer
	  INTO q.device_days, q.device_count
	  FROM devices dv
	 WHERE dv.client_id = msp_segment_quantities.client_id AND (dv.active IS NULL OR dv.active && segment);

	SELECT coalesce(sum(lc.seats), 0)::integer INTO q.license_count
	  FROM (SELECT DISTINCT ON (x.sku) x.seats
			  FROM license_counts x
			 WHERE x.client_id = msp_segment_quantities.client_id AND x.as_of < upper(segment)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc;

	-- each pool's share, computed outside the query that lists the pools
	q.cost := 0;
	q.support_cost := 0;
	FOR pool IN
		SELECT cp.pool_id, cp.category FROM cost_pools cp
		 WHERE cp.client_id = msp_segment_quantities.client_id AND cp.period && segment
		 ORDER BY cp.pool_id
	LOOP
		share := msp_pool_share(client_id, pool.pool_id, period, segment);
		q.cost := q.cost + share;
		IF pool.category = 'support' THEN
			q.support_cost := q.support_cost + share;
		END IF;
	END LOOP;

	q.seat_days := q.seat_count * k.covered_days;
	q.license_days := q.license_count * k.covered_days;
	q.covered_days := k.covered_days;
	q.period_days := k.period_days;
	RETURN q;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange) IS
	'billable counts and prorated quantities of one contract segment';

CREATE OR REPLACE FUNCTION @extschema@.msp_tier_bands(client_id bigint, contract_id bigint,
											quantity numeric, flat_price numeric)
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	mode text;
	los numeric[];
	prices numeric[];
BEGIN
	SELECT coalesce(k.tier_mode, 'volume') INTO mode FROM contracts k
	 WHERE k.client_id = msp_tier_bands.client_id AND k.contract_id = msp_tier_bands.contract_id;
	-- no bands for a contract that does not exist or that the caller may
	-- not see (row-level security): nothing is priced for it
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT array_agg(greatest(x.from_quantity - 1, 0)), array_agg(x.unit_price) INTO los, prices
	  FROM contract_tiers x
	 WHERE x.client_id = msp_tier_bands.client_id AND x.contract_id = msp_tier_bands.contract_id;
	RETURN QUERY
	WITH t AS (SELECT * FROM unnest(los, prices) u(lo, unit_price)),
	-- bands (lo, hi]: units below the lowest tier, then each tier to the next
	bands AS (
		SELECT 0::numeric AS lo, (SELECT min(t.lo) FROM t) AS hi, flat_price AS unit_price
		UNION ALL
		SELECT t.lo, lead(t.lo) OVER (ORDER BY t.lo), t.unit_price FROM t),
	nonempty AS (SELECT * FROM bands b WHERE b.hi IS NULL OR b.hi > b.lo),
	last_unit AS (
		SELECT n.* FROM nonempty n
		 WHERE greatest(ceil(quantity), 1) > n.lo AND (n.hi IS NULL OR greatest(ceil(quantity), 1) <= n.hi)
		 ORDER BY n.lo DESC LIMIT 1)
	SELECT l.lo + 1, quantity, l.unit_price
	  FROM last_unit l
	 WHERE mode = 'volume' OR quantity <= 0
	UNION ALL
	SELECT n.lo + 1, least(quantity, coalesce(n.hi, quantity)) - n.lo, n.unit_price
	  FROM nonempty n
	 WHERE mode = 'graduated' AND quantity > n.lo
	 ORDER BY 1;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_tier_bands(bigint, bigint, numeric, numeric) IS
	'the price bands a count of units fills under the contract''s tiers (volume: one band; graduated: each band reached)';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_lines(c @extschema@.clients, k @extschema@.contracts,
											   segment daterange, period daterange,
											   q @extschema@.segment_quantities, model text)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	line invoice_line;
	n integer := 0;
	total numeric := 0;
	amount numeric;
	floor_fee numeric;
	pool record;
	cost numeric;
	label text := CASE WHEN segment = period THEN ''
					   ELSE format(' (%s to %s)', lower(segment), upper(segment) - 1) END;
BEGIN
	IF model IN ('per_user', 'per_user_plus_support') THEN
		IF k.price_per_user IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.user_count, q.user_days, q, k.price_per_user,
										 format('Users: %s billable', q.user_count), 'user', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
		IF q.seat_count > 0 THEN
			amount := msp_round(q.seat_days * coalesce(k.price_per_seat, k.price_per_user) / q.period_days,
								c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id, format('Shared seats: %s%s', q.seat_count, label),
						 q.seat_days / q.period_days, coalesce(k.price_per_seat, k.price_per_user), amount,
						 'seat')::invoice_line;
			total := total + amount;
		END IF;
		IF model = 'per_user_plus_support' AND q.support_cost > 0 THEN
			amount := msp_round(q.support_cost * (1 + k.markup), c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id,
						 format('Support costs spread over %s users (%s per user)%s', q.user_count,
								CASE WHEN q.user_count > 0 THEN msp_round(amount / q.user_count, c.minor_unit)::text
									 ELSE 'n/a' END, label),
						 1::numeric, amount, amount, 'cost')::invoice_line;
			total := total + amount;
		END IF;
	ELSIF model = 'per_device' THEN
		IF k.price_per_device IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.device_count, q.device_days, q, k.price_per_device,
										 format('Devices: %s managed', q.device_count), 'device', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	ELSIF model = 'per_seat' THEN
		IF k.price_per_seat IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.license_count, q.license_days, q, k.price_per_seat,
										 format('License seats held: %s', q.license_count), 'license', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	ELSIF model = 'cost_plus' THEN
		-- each pool's share computed outside the query that lists the pools
		-- (Citus runs no query on a table from within one)
		FOR pool IN
			SELECT x.pool_id, x.category, x.description FROM cost_pools x
			 WHERE x.client_id = c.client_id AND x.period && segment
			 ORDER BY x.pool_id
		LOOP
			cost := msp_pool_share(c.client_id, pool.pool_id, period, segment);
			amount := msp_round(cost * (1 + k.markup), c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id,
						 format('%s: %s (cost %s, markup %s%%)%s', initcap(pool.category), pool.description,
								cost, round(k.markup * 100, 2), label),
						 1::numeric, amount, amount, 'cost')::invoice_line;
			total := total + amount;
		END LOOP;
	END IF;

	floor_fee := msp_round(k.minimum_fee * q.covered_days / q.period_days, c.minor_unit);
	IF total < floor_fee THEN
		amount := floor_fee - total;
		n := n + 1;
		RETURN NEXT (n, k.contract_id, format('Minimum monthly fee top-up%s', label),
					 1::numeric, amount, amount, 'minimum')::invoice_line;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_lines(@extschema@.clients, @extschema@.contracts, daterange, daterange, @extschema@.segment_quantities, text) IS
	'the priced lines of one contract segment under a model, from its quantities';

CREATE OR REPLACE FUNCTION @extschema@.msp_period_people(client_id bigint, period daterange) RETURNS integer
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- msp_period: unknown client for one the caller may not see
	period := msp_period(client_id, period);
	RETURN (SELECT count(DISTINCT (u.home_client_id, u.person_id))::integer
			  FROM msp_contract_segments(client_id, period) s,
				   LATERAL msp_segment_users(client_id, s.contract_id, s.segment, false) u);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period_people(bigint, daterange) IS
	'how many distinct people the contracts of a period bill';

CREATE OR REPLACE FUNCTION @extschema@.msp_period_devices(client_id bigint, period daterange) RETURNS integer
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- msp_period: unknown client for one the caller may not see (a count of
	-- 0 would answer for it)
	period := msp_period(client_id, period);
	RETURN (SELECT count(*)::integer FROM devices d
			 WHERE d.client_id = client_id AND (d.active IS NULL OR d.active && period));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period_devices(bigint, daterange) IS
	'how many devices are under management (billable range overlapping) in a period';

CREATE OR REPLACE FUNCTION @extschema@.msp_cost_allocation(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (pool_id bigint, category text, basis text, unit text, share numeric)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	minor numeric;
	segs daterange[];
	pool record;
	amount numeric;
	p_ids bigint[] := '{}';
	p_categories text[] := '{}';
	p_bases text[] := '{}';
	p_amounts numeric[] := '{}';
	u_bases text[];
	u_units text[];
BEGIN
	period := msp_period(client_id, period);
	SELECT c.minor_unit INTO minor FROM clients c WHERE c.client_id = msp_cost_allocation.client_id;
	FOR pool IN
		SELECT cp.pool_id, cp.category, cp.basis, cp.period FROM cost_pools cp
		 WHERE cp.client_id = msp_cost_allocation.client_id AND cp.period && msp_cost_allocation.period
		 ORDER BY cp.pool_id
	LOOP
		IF segs IS NULL THEN
			segs := ARRAY(SELECT s.segment FROM msp_contract_segments(client_id, period) s);
		END IF;
		amount := 0;
		FOR i IN 1..coalesce(cardinality(segs), 0) LOOP
			IF segs[i] && pool.period THEN
				amount := amount + msp_pool_share(client_id, pool.pool_id, period, segs[i]);
			END IF;
		END LOOP;
		p_ids := p_ids || pool.pool_id;
		p_categories := p_categories || pool.category;
		p_bases := p_bases || pool.basis;
		p_amounts := p_amounts || amount;
	END LOOP;
	SELECT array_agg(x.basis), array_agg(x.unit) INTO u_bases, u_units
	  FROM (SELECT DISTINCT y.basis, y.unit FROM (
			SELECT 'device' AS basis, d.name AS unit FROM devices d
			 WHERE d.client_id = msp_cost_allocation.client_id AND (d.active IS NULL OR d.active && period)
			UNION ALL
			SELECT 'seat', a.label FROM account_labels a
			 WHERE a.client_id = msp_cost_allocation.client_id AND a.kind = 'shared') y) x;
	SELECT coalesce(u_bases, '{}') || array_agg('user'::text), coalesce(u_units, '{}') || array_agg(x.unit)
	  INTO u_bases, u_units
	  FROM (SELECT DISTINCT CASE WHEN u.home_client_id = client_id THEN u.pseudonym
								 ELSE format('%s (client %s)', u.pseudonym, u.home_client_id) END AS unit
			  FROM msp_billable_users(client_id, period) u) x;
	RETURN QUERY
	WITH pools AS (SELECT * FROM unnest(p_ids, p_categories, p_bases, p_amounts) p(pool_id, category, basis, amount)),
	units AS (SELECT DISTINCT * FROM unnest(u_bases, u_units) u(basis, unit))
	SELECT pools.pool_id, pools.category, pools.basis, units.unit,
		   allocate(pools.amount, 1, minor) OVER (PARTITION BY pools.pool_id ORDER BY units.unit)
	  FROM pools LEFT JOIN units ON units.basis = pools.basis
	 ORDER BY pools.pool_id, units.unit;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_cost_allocation(bigint, daterange) IS
	'every cost pool billed in the period spread over its basis (devices, seats or users) to the cent with allocate(); unit NULL when nothing carries it';

CREATE OR REPLACE FUNCTION @extschema@.msp_adjustment_lines(client_id bigint, period daterange)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- PL/pgSQL, so that Citus plans the read on the client's shard
	RETURN QUERY
	SELECT (row_number() OVER (ORDER BY a.invoice_id))::integer, NULL::bigint,
		   format('Adjustment %s to invoice %s for %s to %s: %s', a.invoice_id, a.adjusts_invoice_id,
				  lower(a.period), upper(a.period) - 1, a.reason),
		   1::numeric, a.total, a.total, 'adjustment'::text
	  FROM invoices a
	 WHERE a.client_id = client_id AND a.kind = 'adjustment' AND a.apply_period = period
	 ORDER BY a.invoice_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_adjustment_lines(bigint, daterange) IS
	'adjustment notes carried by the invoice of a period, one line each';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalized_invoice(client_id bigint, period daterange)
RETURNS @extschema@.invoices
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	fin invoices;
BEGIN
	-- PL/pgSQL, so that Citus plans the read on the client's shard
	SELECT * INTO fin FROM invoices i
	 WHERE i.client_id = client_id AND i.period = period AND i.kind = 'invoice';
	RETURN fin;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalized_invoice(bigint, daterange) IS
	'the finalized invoice of a client and period, or NULL';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	unknown text[];
	today date;
	stamp timestamptz;
	evidence jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	-- an unfinished month is not a data-quality question: its logons are
	-- still coming, so no override finalizes it
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	IF EXISTS (SELECT 1 FROM msp_data_quality(client_id, period) q WHERE q.gate = 'period_not_over') THEN
		today := (now() AT TIME ZONE (SELECT c.time_zone FROM clients c WHERE c.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q.gate FROM msp_data_quality(client_id, period) q
					  WHERE NOT q.gate = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period, failing);
	END IF;

	inv := msp_compute_invoice(client_id, period);
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM msp_price_lines(client_id, period, NULL) l;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		evidence := (SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q
					  WHERE q.gate = ANY (override));
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override, 'findings', evidence));
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines and evidence and returns its id; finalizing again returns the same id';

CREATE OR REPLACE FUNCTION @extschema@.msp_invoice_drift(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (contract_id bigint, basis text, description text, billed_quantity numeric,
			   current_quantity numeric, billed numeric, current numeric, difference numeric)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	b_contract bigint[];
	b_basis text[];
	b_description text[];
	b_quantity numeric[];
	b_amount numeric[];
	n_contract bigint[];
	n_basis text[];
	n_description text[];
	n_quantity numeric[];
	n_amount numeric[];
BEGIN
	period := msp_period(client_id, period);
	id := (msp_require_finalized(client_id, period)).invoice_id;
	-- billed and current lines are read first, each on its own: Citus runs
	-- no query on a table from within one (msp_price_lines), and plans the
	-- billed lines on the client's shard
	SELECT array_agg(x.contract_id), array_agg(x.basis), array_agg(x.description), array_agg(x.quantity),
		   array_agg(x.amount)
	  INTO b_contract, b_basis, b_description, b_quantity, b_amount
	  FROM (SELECT it.contract_id, it.basis, min(it.description) FILTER (WHERE i.kind = 'invoice') AS description,
				   sum(it.quantity) FILTER (WHERE i.kind = 'invoice') AS quantity, sum(it.amount) AS amount
			  FROM invoices i JOIN invoice_items it ON it.client_id = client_id AND it.invoice_id = i.invoice_id
			 WHERE i.client_id = client_id AND (i.invoice_id = id OR i.adjusts_invoice_id = id)
			   AND it.basis <> 'adjustment'
			 GROUP BY it.contract_id, it.basis) x;
	SELECT array_agg(x.contract_id), array_agg(x.basis), array_agg(x.description), array_agg(x.quantity),
		   array_agg(x.amount)
	  INTO n_contract, n_basis, n_description, n_quantity, n_amount
	  FROM (SELECT l.contract_id, l.basis, min(l.description) AS description, sum(l.quantity) AS quantity,
				   sum(l.amount) AS amount
			  FROM msp_price_lines(client_id, period, NULL) l
			 WHERE l.basis <> 'adjustment'
			 GROUP BY l.contract_id, l.basis) x;
	RETURN QUERY
	WITH billed AS (SELECT * FROM unnest(b_contract, b_basis, b_description, b_quantity, b_amount)
						 b(contract_id, basis, description, quantity, amount)),
	now_ AS (SELECT * FROM unnest(n_contract, n_basis, n_description, n_quantity, n_amount)
					 n(contract_id, basis, description, quantity, amount))
	SELECT coalesce(n.contract_id, b.contract_id), coalesce(n.basis, b.basis),
		   coalesce(n.description, b.description),
		   b.quantity, trim_scale(round(n.quantity, 4)), coalesce(b.amount, 0), coalesce(n.amount, 0),
		   coalesce(n.amount, 0) - coalesce(b.amount, 0)
	  FROM billed b FULL JOIN now_ n ON n.contract_id IS NOT DISTINCT FROM b.contract_id AND n.basis = b.basis
	 ORDER BY 1, 2;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoice_drift(bigint, daterange) IS
	'for a finalized period: what was billed (with adjustments) against what today''s data prices, line by line';

CREATE OR REPLACE FUNCTION @extschema@.msp_issue_adjustment(client_id bigint, period daterange, reason text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	original invoices;
	carrier daterange;
	total numeric;
	stamp timestamptz;
	evidence jsonb;
BEGIN
	IF reason IS NULL OR reason = '' THEN
		RAISE EXCEPTION 'an adjustment needs a reason'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Say why, e.g. ''late logons from the EMR export''; it is printed on the invoice.';
	END IF;
	period := msp_period(client_id, period);
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	original := msp_require_finalized(client_id, period);
	SELECT sum(d.difference) INTO total FROM msp_invoice_drift(client_id, period) d WHERE d.difference <> 0;
	IF total IS NULL THEN
		RAISE EXCEPTION 'invoice % has no drift to adjust', original.invoice_id
			USING ERRCODE = 'no_data_found';
	END IF;
	-- the next invoice not finalized yet carries the note
	SELECT daterange(m::date, (m + interval '1 month')::date) INTO carrier
	  FROM generate_series(date_trunc('month', upper(period)), date_trunc('month', upper(period)) + interval '10 years',
						   interval '1 month') m
	 WHERE NOT EXISTS (SELECT 1 FROM invoices i WHERE i.client_id = client_id AND i.kind = 'invoice'
						  AND i.period && daterange(m::date, (m + interval '1 month')::date))
	 ORDER BY m LIMIT 1;
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM @extschema@.msp_billable_users(client_id, period) u), '[]');
	stamp := clock_timestamp();
	INSERT INTO @extschema@.invoices (client_id, kind, period, adjusts_invoice_id, apply_period, reason, total, currency,
						  evidence, finalized_at)
	VALUES (client_id, 'adjustment', period, original.invoice_id, carrier, reason, total, original.currency,
			evidence, stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, row_number() OVER (ORDER BY d.contract_id, d.basis), d.contract_id,
		   format('%s (billed %s, now %s)', d.description, d.billed, d.current),
		   d.current_quantity, NULL, d.difference, d.basis
	  FROM msp_invoice_drift(client_id, period) d WHERE d.difference <> 0;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'adjust', id, jsonb_build_object('adjusts', original.invoice_id, 'total', total,
														'reason', reason, 'carried_by', carrier::text), stamp);
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_issue_adjustment(bigint, daterange, text) IS
	'turns the drift of a finalized invoice into a credit or debit note that references it; the next invoice carries it';

CREATE OR REPLACE FUNCTION @extschema@.msp_pii_audit(client_id bigint, period daterange DEFAULT NULL,
										  window_size interval DEFAULT '15 minutes')
RETURNS TABLE (device text, account text, application text, session_start timestamptz,
			   session_end timestamptz, uses integer, sessions bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	z record;
	sess interval;
BEGIN
	-- nothing, rather than an error, for a client the reader may not see
	IF NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = msp_pii_audit.client_id) THEN
		RETURN;
	END IF;
	period := msp_period(client_id, period);
	SELECT c.time_zone, (lower(period)::timestamp AT TIME ZONE c.time_zone) AS t0,
		   (upper(period)::timestamp AT TIME ZONE c.time_zone) AS t1
	  INTO z FROM clients c WHERE c.client_id = msp_pii_audit.client_id;
	SELECT k.default_session INTO sess FROM contracts k
	 WHERE k.client_id = msp_pii_audit.client_id AND k.effective @> (upper(period) - 1);
	sess := coalesce(sess, interval '1 hour');
	RETURN QUERY
	WITH shared_sessions AS (
		SELECT l.logon_id, l.device_id, l.account_id, l.at AS s0,
			   coalesce(l.ended, l.at + sess) AS s1
		  FROM logons l
		  JOIN accounts a ON a.client_id = msp_pii_audit.client_id AND a.account_id = l.account_id
		 WHERE l.client_id = msp_pii_audit.client_id AND l.at >= z.t0 AND l.at < z.t1
		   AND a.kind = 'shared' AND a.realm = 'os' AND l.presence AND l.device_id IS NOT NULL),
	uses AS (
		SELECT s.logon_id, ua.application, count(*)::integer AS uses,
			   bool_or(ua.kind = 'individual') AS individual_login
		  FROM shared_sessions s
		  JOIN logons u ON u.client_id = msp_pii_audit.client_id AND u.device_id = s.device_id
					   AND u.at >= s.s0 - window_size AND u.at <= s.s1 + window_size
		  JOIN accounts ua ON ua.client_id = msp_pii_audit.client_id AND ua.account_id = u.account_id AND ua.realm = 'app'
		  JOIN applications ap ON ap.client_id = msp_pii_audit.client_id AND ap.name = ua.application AND ap.holds_pii
		 GROUP BY s.logon_id, ua.application)
	SELECT d.name, al.label, x.application, s.s0, s.s1, x.uses,
		   count(*) OVER (PARTITION BY d.name, al.label, x.application)
	  FROM uses x
	  JOIN shared_sessions s USING (logon_id)
	  JOIN devices d ON d.client_id = msp_pii_audit.client_id AND d.device_id = s.device_id
	  JOIN account_labels al ON al.client_id = msp_pii_audit.client_id AND al.account_id = s.account_id
	 WHERE NOT x.individual_login
	 ORDER BY d.name, s.s0;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_pii_audit(bigint, daterange, interval) IS
	'HIPAA check: shared-account sessions in which a PII application was used without an individual application login';

CREATE OR REPLACE FUNCTION @extschema@.msp_pii_audit_figures(client_id bigint, period daterange)
RETURNS TABLE (shared_sessions bigint, violating_sessions bigint, devices bigint, applications text[])
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	zone text;
BEGIN
	SELECT cl.time_zone INTO zone FROM clients cl WHERE cl.client_id = msp_pii_audit_figures.client_id;
	-- no row for a client the reader may not see
	IF NOT FOUND THEN
		RETURN;
	END IF;
	period := msp_period(client_id, period);
	SELECT count(*) INTO shared_sessions
	  FROM logons l JOIN accounts a ON a.client_id = msp_pii_audit_figures.client_id AND a.account_id = l.account_id
	 WHERE l.client_id = msp_pii_audit_figures.client_id AND a.kind = 'shared' AND a.realm = 'os' AND l.presence
	   AND l.at >= (lower(period)::timestamp AT TIME ZONE zone)
	   AND l.at < (upper(period)::timestamp AT TIME ZONE zone);
	SELECT count(*), count(DISTINCT v.device), coalesce(array_agg(DISTINCT v.application ORDER BY v.application), '{}')
	  INTO violating_sessions, devices, applications
	  FROM msp_pii_audit(client_id, period) v;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_pii_audit_figures(bigint, daterange) IS
	'the figures of msp_pii_audit_summary(): shared sessions, violating sessions, devices and applications; no row for a client the reader may not see';

CREATE OR REPLACE FUNCTION @extschema@.msp_pii_audit_summary(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (client_id bigint, shared_sessions bigint, violating_sessions bigint, devices bigint,
			   applications text[])
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT msp_pii_audit_summary.client_id, f.shared_sessions, f.violating_sessions, f.devices, f.applications
	  FROM msp_pii_audit_figures(msp_pii_audit_summary.client_id, period) f;
END;
COMMENT ON FUNCTION @extschema@.msp_pii_audit_summary(bigint, daterange) IS
	'per client: shared sessions, those that broke the individual-login rule, devices and applications involved';

-- The row-level security expression of a client-keyed table.  On one node
-- the checks are initplans (run once per query); Citus refuses subqueries
-- in policies of distributed tables, so there the policy calls
-- msp_can_see_client per row instead.
CREATE OR REPLACE FUNCTION @extschema@.msp_client_policy(distributed boolean) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN distributed
			THEN '@extschema@.msp_can_see_client(client_id)'
			ELSE '(SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[]))' END;
COMMENT ON FUNCTION @extschema@.msp_client_policy(boolean) IS
	'the USING expression of the client_rows policies: initplans on one node, a function call on Citus';

-- Is this table distributed by Citus?  false without Citus.
CREATE OR REPLACE FUNCTION @extschema@.msp_is_distributed(rel regclass) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	yes boolean;
BEGIN
	IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
		RETURN false;
	END IF;
	EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1)' INTO yes USING rel;
	RETURN yes;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_is_distributed(regclass) IS
	'true when Citus manages the table (distributed or reference); false without Citus';

-- The per-client functions the coordinator delegates to the worker that
-- holds the client (first argument), and whether a call inside a
-- transaction block is delegated too (force_delegation: only for functions
-- that read the client's own shards, never a sister client's).
CREATE OR REPLACE FUNCTION @extschema@.msp_distributed_functions()
RETURNS TABLE (fn regprocedure, force_delegation boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT x.fn::regprocedure, x.force
	  FROM (VALUES
		('@extschema@.msp_invoice(bigint, daterange)', false),
		('@extschema@.msp_compute_invoice(bigint, daterange)', false),
		('@extschema@.msp_invoice_lines(bigint, daterange)', false),
		('@extschema@.msp_billable_users(bigint, daterange)', false),
		('@extschema@.msp_compare_models(bigint, daterange)', false),
		('@extschema@.msp_cost_allocation(bigint, daterange)', false),
		('@extschema@.msp_invoice_drift(bigint, daterange)', false),
		('@extschema@.msp_finalize_invoice(bigint, daterange, text[])', false),
		('@extschema@.msp_issue_adjustment(bigint, daterange, text)', false),
		('@extschema@.msp_data_quality(bigint, daterange, integer)', true),
		('@extschema@.msp_pii_audit(bigint, daterange, interval)', true),
		('@extschema@.msp_pii_audit_summary(bigint, daterange)', true)) x(fn, force);
END;
COMMENT ON FUNCTION @extschema@.msp_distributed_functions() IS
	'the per-client functions msp_distribute() registers with Citus, and whether calls in a transaction block are delegated too';

-- Run a statement on this node and every worker: msp_distribute() changes
-- the extension's tables before Citus manages them, and each worker holds
-- the extension's own copy of them (the shell tables Citus then plans
-- with), which must change alike.
CREATE OR REPLACE FUNCTION @extschema@.msp_on_all_nodes(command text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	EXECUTE command;
	FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)' USING command LOOP
		IF NOT r.success THEN
			RAISE EXCEPTION 'worker %:% refused: %', r.nodename, r.nodeport, r.result
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = format('The statement was: %s', command),
					  HINT = 'Every worker needs the same mspbill version as the coordinator (CREATE EXTENSION mspbill on the coordinator after citus_add_node() creates it there).';
		END IF;
	END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_on_all_nodes(text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_on_all_nodes(text) IS
	'runs a statement on this node and on every Citus worker; an error names the worker that refused';

-- Distribute the schema on a Citus coordinator.  Idempotent: what is
-- distributed already is left as it is.
CREATE OR REPLACE FUNCTION @extschema@.msp_distribute(shard_count integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ref_tables text[] := '{clients,bi_client_access}';
	-- the first distributed table names the co-location group of all
	anchor regclass := '@extschema@.contracts'::regclass;
	todo regclass[];
	t regclass;
	progress boolean;
	n_ref integer := 0;
	n_dist integer := 0;
	n_fn integer := 0;
	f record;
	s record;
	is_coord boolean;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'Citus is not installed in this database'
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() distributes mspbill''s tables on a Citus cluster; on one server there is nothing to do.',
				  HINT = 'On the coordinator (citus in shared_preload_libraries): CREATE EXTENSION citus; add the workers with citus_add_node(); then SELECT mspbill.msp_distribute();';
	END IF;
	EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO is_coord;
	IF NOT is_coord THEN
		RAISE EXCEPTION 'msp_distribute() runs on the Citus coordinator only'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'This node is not the coordinator of its cluster.',
				  HINT = 'Connect to the coordinator (or register it with citus_set_coordinator_host()) and call it there.';
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'msp_distribute() must be run by a superuser'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'It distributes tables and sets the sequences of every node.',
				  HINT = 'Connect as the superuser that created the extension.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gist') THEN
		RAISE EXCEPTION 'msp_distribute() needs the extension btree_gist'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'On Citus, the one-contract-per-day and one-invoice-per-period exclusion constraints must name client_id itself, which needs btree_gist''s equality for bigint.',
				  HINT = 'CREATE EXTENSION btree_gist; on the coordinator (Citus creates it on the workers), then call msp_distribute() again.';
	END IF;

	-- 1. Policies: a function call instead of the initplans
	FOR s IN
		SELECT p.polrelid::regclass AS rel, p.polname
		  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace
		   AND p.polname IN ('client_rows', 'own_rows')
		   AND NOT @extschema@.msp_is_distributed(p.polrelid)
	LOOP
		IF s.polname = 'own_rows' THEN
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY own_rows ON %s USING (@extschema@.msp_sees_all_clients() OR @extschema@.msp_has_role(role_name))', s.rel));
		ELSE
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY client_rows ON %s USING (%s)', s.rel, @extschema@.msp_client_policy(true)));
		END IF;
	END LOOP;

	-- 2. Exclusion constraints that name client_id itself (btree_gist)
	IF NOT @extschema@.msp_is_distributed('@extschema@.contracts') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.contracts DROP CONSTRAINT contracts_no_overlap, '
								 'ADD CONSTRAINT contracts_no_overlap EXCLUDE USING gist (client_id WITH =, effective WITH &&)');
	END IF;
	IF NOT @extschema@.msp_is_distributed('@extschema@.invoices') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.invoices DROP CONSTRAINT invoices_no_overlap, '
								 'ADD CONSTRAINT invoices_no_overlap EXCLUDE USING gist (client_id WITH =, period WITH &&) WHERE (kind = ''invoice'')');
	END IF;

	-- 3. Triggers: Citus distributes no table that has any.  Finalized rows
	-- stay facts through privileges (only the owner may write them) and,
	-- for the owner itself, restrictive policies that refuse UPDATE and
	-- DELETE to everyone but a superuser (who bypasses row-level security,
	-- as the triggers let a superuser through).
	FOR s IN
		SELECT tg.tgrelid::regclass AS rel, tg.tgname
		  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND NOT tg.tgisinternal
		   AND tg.tgparentid = 0
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('DROP TRIGGER %I ON %s', s.tgname, s.rel));
	END LOOP;
	FOREACH t IN ARRAY ARRAY['@extschema@.invoices', '@extschema@.invoice_items', '@extschema@.audit_log']::regclass[] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = t AND polname = 'finalized_no_update') THEN
			PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_update ON %s AS RESTRICTIVE FOR UPDATE USING (false)', t));
			PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_delete ON %s AS RESTRICTIVE FOR DELETE USING (false)', t));
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t));
		END IF;
	END LOOP;

	-- 4. The small shared tables on every node (the client-keyed tables
	-- that reference clients are distributed next: Citus must not turn
	-- them into local tables of its metadata meanwhile)
	PERFORM set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
	FOREACH t IN ARRAY (SELECT array_agg(format('@extschema@.%I', x)::regclass) FROM unnest(ref_tables) x) LOOP
		IF NOT @extschema@.msp_is_distributed(t) THEN
			-- Citus copies the rows to every node in one COPY per node; the
			-- time zone check's exception block (a subtransaction) would
			-- interrupt it on the coordinator's own copy.  The rows passed
			-- the check already; it is put back once the table is copied.
			IF t = '@extschema@.clients'::regclass THEN
				PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.clients DROP CONSTRAINT clients_time_zone_known');
			END IF;
			EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING t;
			IF t = '@extschema@.clients'::regclass THEN
				ALTER TABLE @extschema@.clients ADD CONSTRAINT clients_time_zone_known
					CHECK (@extschema@.msp_valid_time_zone(time_zone));
			END IF;
			n_ref := n_ref + 1;
		END IF;
	END LOOP;

	-- 5. Every other table of the schema by client_id, co-located, each
	-- after the tables its foreign keys name
	todo := ARRAY(SELECT c.oid::regclass FROM pg_class c
				   WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
					 AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
				   ORDER BY c.oid <> anchor, c.relname);
	FOREACH t IN ARRAY todo LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t AND a.attname = 'client_id' AND NOT a.attisdropped) THEN
			RAISE EXCEPTION 'table % has no client_id to distribute it by', t
				USING ERRCODE = 'feature_not_supported',
					  HINT = 'Every mspbill table is keyed by client_id; a table added by hand must be distributed by hand.';
		END IF;
	END LOOP;
	LOOP
		progress := false;
		FOREACH t IN ARRAY todo LOOP
			CONTINUE WHEN @extschema@.msp_is_distributed(t);
			CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint k
								   WHERE k.conrelid = t AND k.contype = 'f' AND k.confrelid <> t
									 AND NOT @extschema@.msp_is_distributed(k.confrelid));
			IF t = anchor THEN
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => ''none'', shard_count => $2)'
					USING t, coalesce(shard_count, current_setting('citus.shard_count')::integer);
			ELSE
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => $2)'
					USING t, anchor::text;
			END IF;
			n_dist := n_dist + 1;
			progress := true;
		END LOOP;
		EXIT WHEN NOT progress;
	END LOOP;

	-- 6. Sequences: each node numbers from its own range (its group id in
	-- the top bits, as Citus does for the sequences it owns), so that ids
	-- written on workers (delegated finalizations, loads) never collide
	FOR s IN
		SELECT c.oid::regclass AS seq FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind = 'S'
	LOOP
		EXECUTE format($cmd$SELECT pg_catalog.run_command_on_workers(%L)$cmd$,
					   format($w$SELECT pg_catalog.setval(%L, greatest(last_value, (SELECT groupid::bigint << 48 FROM pg_catalog.pg_dist_local_group)), true) FROM %s$w$,
							  s.seq, s.seq));
	END LOOP;

	-- 7. Per-client functions run on the worker that holds the client
	FOR f IN SELECT * FROM @extschema@.msp_distributed_functions() LOOP
		EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''$1''::text, colocate_with => $2, force_delegation => $3)'
			USING f.fn, anchor::text, f.force_delegation;
		n_fn := n_fn + 1;
	END LOOP;

	RETURN format('%s reference tables, %s distributed tables, %s delegated functions', n_ref, n_dist, n_fn);
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_distribute(integer) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_distribute(integer) IS
	'on a Citus coordinator: makes clients and bi_client_access reference tables, distributes every other table by client_id (co-located), and delegates the per-client functions to the worker that holds the client';

CREATE OR REPLACE FUNCTION @extschema@.msp_add_logon_partitions(first_month date, months integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	m date := date_trunc('month', first_month);
	created integer := 0;
	part text;
BEGIN
	IF months < 1 THEN
		RAISE EXCEPTION 'months must be at least 1'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR i IN 1..months LOOP
		part := format('logons_%s', to_char(m, 'YYYY_MM'));
		IF to_regclass(format('@extschema@.%I', part)) IS NULL THEN
			EXECUTE format('CREATE TABLE @extschema@.%I PARTITION OF @extschema@.logons FOR VALUES FROM (%L) TO (%L)',
						   part, m::timestamptz, (m + interval '1 month')::timestamptz);
			-- read directly, a partition would bypass the parent's policy
			EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', part);
			-- (on Citus, the distributed form: a partition of a distributed
			-- table is distributed as it is created)
			EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING (%s)', part,
						   @extschema@.msp_client_policy(@extschema@.msp_is_distributed('@extschema@.logons')));
			created := created + 1;
		END IF;
		m := m + interval '1 month';
	END LOOP;
	RETURN created;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_add_logon_partitions(date, integer) IS
	'creates monthly logon partitions (UTC month bounds) that do not exist yet; returns how many it created';


-- issue 19 (licensing): Microsoft 365, Pax8 and PSA loaders, the licence
-- reconciliation with money, licensed rooms, the m365_activity realm.
ALTER TABLE @extschema@.contracts DROP CONSTRAINT contracts_count_realms_known,
	ADD CONSTRAINT contracts_count_realms_known
		CHECK (count_realms <@ '{os,app,m365,m365_activity}' AND cardinality(count_realms) > 0);
ALTER TABLE @extschema@.accounts DROP CONSTRAINT accounts_realm_known,
	ADD CONSTRAINT accounts_realm_known CHECK (realm IN ('os', 'app', 'm365', 'm365_activity'));
COMMENT ON TABLE @extschema@.accounts IS
	'logon identities per realm (os, app, m365, m365_activity: Microsoft 365 usage-report activity): individual (owned by a person), shared (a room or PC) or service';

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

-- The product a licence name stands for.  (No SET clause, so that it
-- inlines; every name in it is qualified.)
CREATE FUNCTION @extschema@.msp_license_product(licence text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
RETURN coalesce((SELECT n.product FROM @extschema@.license_product_names n
				  WHERE pg_catalog.lower(n.name) OPERATOR(pg_catalog.=) pg_catalog.lower(pg_catalog.btrim(licence))),
				pg_catalog.btrim(licence));
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
		CONSTRAINT partner_companies_vendor_known CHECK (vendor IN ('pax8', 'connectwise', 'autotask', 'halo')),
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
	psa text NOT NULL CONSTRAINT psa_contacts_psa_known CHECK (psa IN ('connectwise', 'autotask', 'halo')),
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

-- A client's staged CSV lines as records, each with the header it falls
-- under, into pg_temp.msp_csv (line_no, raw, f, header): a quoted field
-- may span lines (the record is joined back), a header is a record with a
-- field named key_column (any case), and several files staged one after
-- another each bring their header.  Records before any header get a NULL
-- header.  Returns the number of data records.
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
	EXECUTE format($q$
		CREATE TEMP TABLE msp_csv ON COMMIT DROP AS
		WITH lines AS (
			SELECT s.line_no, s.raw,
				   -- an odd number of quotes opens (or closes) a multi-line field
				   (length(s.raw) - length(replace(s.raw, '"', ''))) %% 2 AS odd
			  FROM %s s WHERE s.client_id = $1),
		opened AS (
			SELECT l.*, coalesce(sum(l.odd) OVER (ORDER BY l.line_no ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) %% 2 AS inside
			  FROM lines l),
		numbered AS (
			SELECT o.*, sum((o.inside = 0)::int) OVER (ORDER BY o.line_no) AS rec FROM opened o),
		records AS (
			SELECT min(x.line_no) AS line_no, string_agg(x.raw, E'\n' ORDER BY x.line_no) AS raw
			  FROM numbered x GROUP BY x.rec),
		split AS (
			SELECT r.line_no, r.raw, @extschema@.msp_csv_fields(r.raw) AS f FROM records r),
		marked AS (
			SELECT s.*, lower(btrim($2)) = ANY (ARRAY(SELECT lower(btrim(h)) FROM unnest(s.f) h)) AS is_header FROM split s),
		-- each record under the last header before it
		grouped AS (
			SELECT m.*, count(*) FILTER (WHERE m.is_header) OVER (ORDER BY m.line_no) AS header_no FROM marked m),
		headers AS (
			SELECT g.header_no, g.f FROM grouped g WHERE g.is_header)
		SELECT g.line_no, g.raw, g.f, g.is_header, h.f AS header
		  FROM grouped g LEFT JOIN headers h USING (header_no)
		 WHERE btrim(g.raw, E' \t\r\n') <> ''$q$, stage) USING for_client, key_column;
	DELETE FROM pg_temp.msp_csv WHERE is_header;
	SELECT count(*) INTO n FROM pg_temp.msp_csv;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_stage_csv(bigint, regclass, text) IS
	'internal: a client''s staged CSV lines as records under their header, into pg_temp.msp_csv';

-- A field of a CSV record by its header's name (any case, any of the
-- names given), or NULL when the header has none of them.
CREATE FUNCTION @extschema@.msp_csv_field(f text[], header text[], names text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN f[(SELECT h.i FROM unnest(header) WITH ORDINALITY h(name, i)
		   WHERE pg_catalog.lower(pg_catalog.btrim(h.name)) OPERATOR(pg_catalog.=)
				 ANY (ARRAY(SELECT pg_catalog.lower(x) FROM unnest(names) x))
		   ORDER BY h.i LIMIT 1)];
COMMENT ON FUNCTION @extschema@.msp_csv_field(text[], text[], text[]) IS
	'internal: the field of a CSV record under the first header column with one of the names (any case)';

-- A client's staged JSON as records, into pg_temp.msp_json (rec, line_no,
-- ord, raw, doc; rec numbers the records, line_no is their document's first line): a line that starts with { or [ begins a document, so JSON
-- lines and pretty-printed saved responses both read; a document that is
-- an array, or an object whose value, items, tickets or content member is
-- an array (Graph, Autotask, HaloPSA, Pax8 pages), gives its elements,
-- any other object itself.  A document that is not JSON gets a NULL doc.
CREATE FUNCTION @extschema@.msp_stage_json(for_client bigint, stage regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	lo bigint;
	hi bigint;
	n bigint;
BEGIN
	IF to_regclass('pg_temp.msp_json_docs') IS NOT NULL THEN
		DROP TABLE pg_temp.msp_json_docs;
	END IF;
	IF to_regclass('pg_temp.msp_json') IS NOT NULL THEN
		DROP TABLE pg_temp.msp_json;
	END IF;
	EXECUTE format($q$
		CREATE TEMP TABLE msp_json_docs ON COMMIT DROP AS
		SELECT min(d.line_no) AS line_no, string_agg(d.raw, E'\n' ORDER BY d.line_no) AS raw, NULL::jsonb AS doc,
			   false AS parsed
		  FROM (SELECT s.line_no, s.raw,
					   count(*) FILTER (WHERE s.raw ~ '^\ufeff?[\[{]') OVER (ORDER BY s.line_no) AS doc_no
				  FROM %s s WHERE s.client_id = $1 AND btrim(s.raw, E' \t\r\n') <> '') d
		 GROUP BY d.doc_no$q$, stage) USING for_client;
	ALTER TABLE pg_temp.msp_json_docs ADD PRIMARY KEY (line_no);
	SELECT min(d.line_no), max(d.line_no) INTO lo, hi FROM pg_temp.msp_json_docs d;
	-- parse the batch at once, per document only where one is malformed
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_json_docs SET doc = ltrim(raw, E'\ufeff')::jsonb, parsed = true
		 WHERE line_no BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_json_docs SET parsed = true WHERE line_no = $2
	$reject$, for_client, lo, hi);
	CREATE TEMP TABLE msp_json ON COMMIT DROP AS
	SELECT row_number() OVER (ORDER BY r.line_no, r.ord) AS rec, r.* FROM (
	SELECT d.line_no, 0::bigint AS ord, d.raw, NULL::jsonb AS doc FROM pg_temp.msp_json_docs d WHERE d.doc IS NULL
	UNION ALL
	SELECT d.line_no, e.ord, e.rec::text, e.rec
	  FROM pg_temp.msp_json_docs d
	  CROSS JOIN LATERAL (SELECT CASE
									 WHEN jsonb_typeof(d.doc) = 'array' THEN d.doc
									 WHEN jsonb_typeof(d.doc -> 'value') = 'array' THEN d.doc -> 'value'
									 WHEN jsonb_typeof(d.doc -> 'items') = 'array' THEN d.doc -> 'items'
									 WHEN jsonb_typeof(d.doc -> 'tickets') = 'array' THEN d.doc -> 'tickets'
									 WHEN jsonb_typeof(d.doc -> 'content') = 'array' THEN d.doc -> 'content'
								 END AS arr) a
	  CROSS JOIN LATERAL (SELECT x.rec, x.ord FROM jsonb_array_elements(a.arr) WITH ORDINALITY x(rec, ord)
						   WHERE a.arr IS NOT NULL
						  UNION ALL
						  SELECT d.doc, 1 WHERE a.arr IS NULL) e
	 WHERE d.doc IS NOT NULL) r;
	DROP TABLE pg_temp.msp_json_docs;
	SELECT count(*) INTO n FROM pg_temp.msp_json;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_stage_json(bigint, regclass) IS
	'internal: a client''s staged JSON (JSON lines or saved responses, enveloped or not) as records, into pg_temp.msp_json';

-- The day a snapshot is of: the given one, else the client's today.
CREATE FUNCTION @extschema@.msp_snapshot_day(for_client bigint, as_of date) RETURNS date
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, @extschema@, pg_temp
RETURN coalesce(as_of, (SELECT (now() AT TIME ZONE c.time_zone)::date FROM @extschema@.clients c
						  WHERE c.client_id = for_client));
COMMENT ON FUNCTION @extschema@.msp_snapshot_day(bigint, date) IS
	'internal: the day a licence snapshot is of (the given day, else today in the client''s time zone)';

-- Microsoft 365 accounts for the UPNs of a load that are not accounts yet
-- (kind unknown until mapped, as the Entra loader creates them), with
-- ids from the identity column moved past hand-chosen ones.
CREATE FUNCTION @extschema@.msp_ensure_m365_accounts(for_client bigint, upns text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	PERFORM setval(pg_get_serial_sequence('@extschema@.accounts', 'account_id'), m.id)
	   FROM (SELECT max(a.account_id) AS id FROM @extschema@.accounts a WHERE a.client_id = for_client) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.accounts', 'account_id')), 0);
	INSERT INTO @extschema@.accounts (client_id, realm, name, kind)
	SELECT DISTINCT for_client, 'm365', lower(u), 'unknown' FROM unnest(upns) u
	 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.accounts a WHERE a.client_id = for_client AND a.realm = 'm365'
						  AND lower(a.name) = lower(u) AND a.application IS NULL);
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_ensure_m365_accounts(bigint, text[]) IS
	'internal: creates the Microsoft 365 accounts (kind unknown) of UPNs not yet known';

-- Licence assignments from pg_temp.msp_assign (line_no, upn, product,
-- enabled): accounts first, then the day's rows.  Returns (loaded, duplicate).
CREATE FUNCTION @extschema@.msp_store_assignments(for_client bigint, day date, load_source text,
												  OUT loaded bigint, OUT duplicate bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	PERFORM @extschema@.msp_ensure_m365_accounts(for_client, ARRAY(SELECT DISTINCT x.upn FROM pg_temp.msp_assign x));
	WITH ins AS (
		INSERT INTO @extschema@.m365_license_assignments (client_id, as_of, account_id, product, account_enabled, source)
		SELECT DISTINCT ON (a.account_id, x.product) for_client, day, a.account_id, x.product, x.enabled, load_source
		  FROM pg_temp.msp_assign x
		  JOIN @extschema@.accounts a ON a.client_id = for_client AND a.realm = 'm365' AND a.application IS NULL
									 AND lower(a.name) = lower(x.upn)
		 ORDER BY a.account_id, x.product, x.line_no
		ON CONFLICT ON CONSTRAINT m365_license_assignments_pkey DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	duplicate := (SELECT count(*) FROM pg_temp.msp_assign) - loaded;
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
CREATE FUNCTION @extschema@.msp_load_m365_graph(client_id bigint, as_of date DEFAULT NULL, source text DEFAULT 'graph',
												OUT loaded bigint, OUT duplicate bigint,
												OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	day date;
	l bigint;
	d bigint;
BEGIN
	source := coalesce(source, 'graph');
	PERFORM @extschema@.msp_load_begin(client_id);
	day := @extschema@.msp_snapshot_day(client_id, as_of);
	PERFORM @extschema@.msp_stage_json(client_id, '@extschema@.m365_graph_staging');
	CREATE TEMP TABLE msp_graph ON COMMIT DROP AS
	SELECT j.line_no, j.ord, j.raw, j.doc,
		   CASE
			   WHEN j.doc IS NULL THEN 'reject:not valid JSON'
			   WHEN jsonb_typeof(j.doc) <> 'object' THEN 'reject:not a JSON object'
			   WHEN j.doc ? 'skuPartNumber' OR j.doc ? 'prepaidUnits' THEN
				   CASE
					   WHEN coalesce(j.doc->>'skuId', '') = '' THEN 'reject:no skuId'
					   WHEN length(j.doc->>'skuId') > 255 OR length(j.doc->>'skuPartNumber') > 255 THEN 'reject:field too long'
					   WHEN coalesce(j.doc->'prepaidUnits'->>'enabled', '') !~ '^[0-9]{1,9}$' THEN 'reject:invalid prepaidUnits.enabled'
					   WHEN coalesce(j.doc->>'consumedUnits', '') !~ '^[0-9]{1,9}$' THEN 'reject:invalid consumedUnits'
					   ELSE 'sku'
				   END
			   WHEN j.doc ? 'userPrincipalName' THEN
				   CASE
					   WHEN coalesce(btrim(j.doc->>'userPrincipalName'), '') = '' THEN 'reject:no userPrincipalName'
					   WHEN length(j.doc->>'userPrincipalName') > 255 THEN 'reject:field too long'
					   WHEN j.doc ? 'assignedLicenses' AND jsonb_typeof(j.doc->'assignedLicenses') <> 'array'
						   THEN 'reject:assignedLicenses is not an array'
					   WHEN jsonb_array_length(coalesce(j.doc->'assignedLicenses', '[]')) = 0 THEN 'skip'
					   WHEN jsonb_path_exists(j.doc, '$.assignedLicenses[*] ? (!exists(@.skuId) || @.skuId.type() != "string")')
						   THEN 'reject:assignedLicenses without skuId'
					   ELSE 'user'
				   END
			   ELSE 'reject:neither a subscribedSku nor a user'
		   END AS class
	  FROM pg_temp.msp_json j;

	-- SKUs: the day's counts (a corrected export of the same day replaces them)
	WITH sku AS (
		SELECT DISTINCT ON (lower(g.doc->>'skuId')) lower(g.doc->>'skuId') AS sku_id, g.doc->>'skuPartNumber' AS part,
			   (g.doc->'prepaidUnits'->>'enabled')::integer AS enabled, (g.doc->>'consumedUnits')::integer AS consumed
		  FROM pg_temp.msp_graph g WHERE g.class = 'sku'
		 ORDER BY lower(g.doc->>'skuId'), g.line_no DESC, g.ord DESC),
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
	-- the day's subscribedSkus, else license_product_names
	CREATE TEMP TABLE msp_assign ON COMMIT DROP AS
	SELECT g.line_no, lower(btrim(g.doc->>'userPrincipalName')) AS upn,
		   coalesce((SELECT m.product FROM @extschema@.m365_sku_counts m
					  WHERE m.client_id = client_id AND m.as_of = day AND m.sku_id = lower(lic->>'skuId')),
					@extschema@.msp_license_product(lower(lic->>'skuId'))) AS product,
		   CASE g.doc->>'accountEnabled' WHEN 'true' THEN true WHEN 'false' THEN false END AS enabled
	  FROM pg_temp.msp_graph g, jsonb_array_elements(g.doc->'assignedLicenses') lic
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
-- (display names joined by +, or Unlicensed), "Block credential".
CREATE FUNCTION @extschema@.msp_load_m365_users_csv(client_id bigint, as_of date DEFAULT NULL,
													source text DEFAULT 'm365_admin',
													OUT loaded bigint, OUT duplicate bigint,
													OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	day date;
BEGIN
	source := coalesce(source, 'm365_admin');
	PERFORM @extschema@.msp_load_begin(client_id);
	day := @extschema@.msp_snapshot_day(client_id, as_of);
	PERFORM @extschema@.msp_stage_csv(client_id, '@extschema@.m365_users_csv_staging', 'User principal name');
	CREATE TEMP TABLE msp_users ON COMMIT DROP AS
	SELECT c.line_no, c.raw, x.upn, x.licenses, x.blocked,
		   CASE
			   WHEN c.f IS NULL THEN 'reject:not valid CSV'
			   WHEN c.header IS NULL THEN 'reject:no header with User principal name before it'
			   WHEN coalesce(x.upn, '') = '' THEN 'reject:no User principal name'
			   WHEN length(x.upn) > 255 THEN 'reject:field too long'
			   WHEN x.licenses IS NULL THEN 'reject:no Licenses column'
			   WHEN x.licenses IN ('', 'Unlicensed') THEN 'skip'
			   ELSE 'user'
		   END AS class
	  FROM pg_temp.msp_csv c,
		   LATERAL (SELECT lower(btrim(@extschema@.msp_csv_field(c.f, c.header, '{User principal name}'))) AS upn,
						   btrim(@extschema@.msp_csv_field(c.f, c.header, '{Licenses}')) AS licenses,
						   lower(btrim(@extschema@.msp_csv_field(c.f, c.header, '{Block credential,Sign-in blocked}'))) AS blocked) x;
	CREATE TEMP TABLE msp_assign ON COMMIT DROP AS
	SELECT u.line_no, u.upn, @extschema@.msp_license_product(lic) AS product,
		   CASE u.blocked WHEN 'true' THEN false WHEN 'false' THEN true END AS enabled
	  FROM pg_temp.msp_users u, unnest(string_to_array(u.licenses, '+')) lic
	 WHERE u.class = 'user' AND btrim(lic) <> '';
	SELECT a.loaded, a.duplicate INTO loaded, duplicate FROM @extschema@.msp_store_assignments(client_id, day, source) a;
	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT u.line_no, u.raw, substr(u.class, 8) AS reason FROM pg_temp.msp_users u WHERE u.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_users u WHERE u.class = 'skip';
	DELETE FROM @extschema@.m365_users_csv_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_users, pg_temp.msp_assign, pg_temp.msp_csv;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_m365_users_csv(bigint, date, text) IS
	'loads a client''s staged admin center Active users CSV as the day''s licence assignments (loaded counts licences held)';

-- The active user detail report: each "<product> Last Activity Date" is a
-- day the person used Microsoft 365.  Loaded as logons in the realm
-- m365_activity, which counts only where a contract's count_realms names
-- it; the activity account takes the person of the same UPN's m365
-- account.  Deleted users are skipped.
CREATE FUNCTION @extschema@.msp_load_m365_activity(client_id bigint, source text DEFAULT 'm365_activity',
												   OUT loaded bigint, OUT duplicate bigint,
												   OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_variable
DECLARE
	zone text;
BEGIN
	source := coalesce(source, 'm365_activity');
	PERFORM @extschema@.msp_load_begin(client_id);
	SELECT c.time_zone INTO zone FROM @extschema@.clients c WHERE c.client_id = client_id;
	PERFORM @extschema@.msp_stage_csv(client_id, '@extschema@.m365_activity_staging', 'User Principal Name');
	CREATE TEMP TABLE msp_act ON COMMIT DROP AS
	SELECT c.line_no, c.raw, x.upn,
		   CASE
			   WHEN c.f IS NULL THEN 'reject:not valid CSV'
			   WHEN c.header IS NULL THEN 'reject:no header with User Principal Name before it'
			   WHEN coalesce(x.upn, '') = '' THEN 'reject:no User Principal Name'
			   WHEN length(x.upn) > 255 THEN 'reject:field too long'
			   WHEN lower(coalesce(x.deleted, '')) = 'true' THEN 'skip'
			   WHEN EXISTS (SELECT 1 FROM unnest(x.dates) t(v) WHERE btrim(v) !~ '^([0-9]{4}-[0-9]{2}-[0-9]{2})?$')
				   THEN 'reject:invalid Last Activity Date'
			   WHEN NOT EXISTS (SELECT 1 FROM unnest(x.dates) t(v) WHERE btrim(v) <> '') THEN 'skip'
			   ELSE 'activity'
		   END AS class,
		   x.products, x.dates
	  FROM pg_temp.msp_csv c,
		   LATERAL (SELECT lower(btrim(@extschema@.msp_csv_field(c.f, c.header, '{User Principal Name}'))) AS upn,
						   @extschema@.msp_csv_field(c.f, c.header, '{Is Deleted}') AS deleted,
						   ARRAY(SELECT lower(regexp_replace(btrim(h.name), '\s*Last Activity Date$', '', 'i'))
								   FROM unnest(c.header) WITH ORDINALITY h(name, i)
								  WHERE btrim(h.name) ~* 'Last Activity Date$' ORDER BY h.i) AS products,
						   ARRAY(SELECT coalesce(c.f[h.i], '') FROM unnest(c.header) WITH ORDINALITY h(name, i)
								  WHERE btrim(h.name) ~* 'Last Activity Date$' ORDER BY h.i) AS dates) x;
	-- a date that is not one (2026-02-30) rejects its record, the rest load
	CREATE TEMP TABLE msp_act_days (line_no bigint, product text, day text, at timestamptz) ON COMMIT DROP;
	INSERT INTO pg_temp.msp_act_days (line_no, product, day)
	SELECT a.line_no, p.product, btrim(p.day)
	  FROM pg_temp.msp_act a, unnest(a.products, a.dates) p(product, day)
	 WHERE a.class = 'activity' AND btrim(p.day) <> '';
	CREATE INDEX ON pg_temp.msp_act_days (line_no);
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_act_days SET at = (day::date + time '12:00') AT TIME ZONE $1::text
		 WHERE line_no BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_act SET class = 'reject:invalid Last Activity Date' WHERE line_no = $2
	$reject$, client_id, (SELECT min(line_no) FROM pg_temp.msp_act_days), (SELECT max(line_no) FROM pg_temp.msp_act_days));
	-- the guard passes the client as $1: the zone is read from it again
	UPDATE pg_temp.msp_act SET class = 'reject:invalid Last Activity Date: ' || @extschema@.msp_implausible_time(d.day, d.at)
	  FROM pg_temp.msp_act_days d
	 WHERE d.line_no = msp_act.line_no AND msp_act.class = 'activity' AND @extschema@.msp_implausible_time(d.day, d.at) IS NOT NULL;

	-- activity accounts take the kind and person of the UPN's m365 account
	INSERT INTO @extschema@.accounts (client_id, realm, name, kind, person_id)
	SELECT DISTINCT ON (a.upn) client_id, 'm365_activity', a.upn, coalesce(m.kind, 'unknown'), m.person_id
	  FROM pg_temp.msp_act a
	  LEFT JOIN @extschema@.accounts m ON m.client_id = client_id AND m.realm = 'm365' AND lower(m.name) = a.upn
	 WHERE a.class = 'activity'
	   AND NOT EXISTS (SELECT 1 FROM @extschema@.accounts x WHERE x.client_id = client_id AND x.realm = 'm365_activity'
						  AND lower(x.name) = a.upn)
	 ORDER BY a.upn;

	INSERT INTO pg_temp.msp_load_events (line_no, realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT a.line_no, 'm365_activity', NULL, a.upn, NULL, false, d.at, NULL, a.upn || '|' || d.product || '|' || d.day, NULL
	  FROM pg_temp.msp_act a JOIN pg_temp.msp_act_days d USING (line_no)
	 WHERE a.class = 'activity';
	SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized_guarded(client_id, source, $reject$
		UPDATE pg_temp.msp_act SET class = 'reject:unloadable record: ' || $3 WHERE line_no = $2
	$reject$);

	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT a.line_no, a.raw, substr(a.class, 8) AS reason FROM pg_temp.msp_act a WHERE a.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_act a WHERE a.class = 'skip';
	DELETE FROM @extschema@.m365_activity_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_act, pg_temp.msp_act_days, pg_temp.msp_csv;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_m365_activity(bigint, text) IS
	'loads a client''s staged Microsoft 365 active user detail report: each product''s last activity date becomes a logon of realm m365_activity (counted only where count_realms names it; loaded counts days per product)';

-- Which client a vendor's company belongs to, for a record of a load:
-- 'own' (this client, or the vendor is not mapped at all), 'other' (another
-- client's: skipped), 'unknown' (rejected).
CREATE FUNCTION @extschema@.msp_company_owner(for_client bigint, for_vendor text, companies text[]) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, @extschema@, pg_temp
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
COMMENT ON FUNCTION @extschema@.msp_company_owner(bigint, text, text[]) IS
	'internal: own, other or unknown: whose a record''s company (any of its names or ids) is, by partner_companies';

-- Pax8 subscriptions: the portal's CSV export or the partner API's
-- subscription JSON (id, companyId, productId, quantity, partnerCost,
-- price, billingTerm, status, startDate, endDate).  A snapshot of the day
-- as_of; the Active subscriptions become the day's license_counts (source
-- pax8): seats the sum of quantities, unit cost their weighted mean.
CREATE FUNCTION @extschema@.msp_load_pax8_subscriptions(client_id bigint, as_of date DEFAULT NULL,
														source text DEFAULT 'pax8',
														OUT loaded bigint, OUT duplicate bigint,
														OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_variable
DECLARE
	day date;
	json boolean;
BEGIN
	source := coalesce(source, 'pax8');
	PERFORM @extschema@.msp_load_begin(client_id);
	day := @extschema@.msp_snapshot_day(client_id, as_of);
	-- JSON when the first non-empty line starts an object or array
	json := (SELECT ltrim(s.raw, E' \t\ufeff') ~ '^[\[{]' FROM @extschema@.pax8_staging s
			  WHERE s.client_id = client_id AND btrim(s.raw, E' \t\r\n') <> '' ORDER BY s.line_no LIMIT 1);
	CREATE TEMP TABLE msp_pax8 (rec bigint, line_no bigint, ord bigint, raw text, id text, company text[], product text,
								quantity text, cost text, price text, term text, status text, start_text text,
								end_text text, class text, start_date date, end_date date) ON COMMIT DROP;
	IF json THEN
		PERFORM @extschema@.msp_stage_json(client_id, '@extschema@.pax8_staging');
		INSERT INTO pg_temp.msp_pax8 (rec, line_no, ord, raw, id, company, product, quantity, cost, price, term, status,
									  start_text, end_text, class)
		SELECT j.rec, j.line_no, j.ord, j.raw, j.doc->>'id', ARRAY[j.doc->>'companyId', j.doc->>'companyName'],
			   coalesce(j.doc->>'productName', j.doc->>'productId'), j.doc->>'quantity', j.doc->>'partnerCost',
			   j.doc->>'price', j.doc->>'billingTerm', j.doc->>'status', j.doc->>'startDate', j.doc->>'endDate',
			   CASE WHEN j.doc IS NULL THEN 'reject:not valid JSON'
					WHEN jsonb_typeof(j.doc) <> 'object' THEN 'reject:not a JSON object' END
		  FROM pg_temp.msp_json j;
		DROP TABLE pg_temp.msp_json;
	ELSIF json IS NOT NULL THEN
		PERFORM @extschema@.msp_stage_csv(client_id, '@extschema@.pax8_staging', 'Quantity');
		INSERT INTO pg_temp.msp_pax8 (rec, line_no, ord, raw, id, company, product, quantity, cost, price, term, status,
									  start_text, end_text, class)
		SELECT c.line_no, c.line_no, 0, c.raw,
			   @extschema@.msp_csv_field(c.f, c.header, '{Subscription Id,Subscription ID,Id}'),
			   ARRAY[@extschema@.msp_csv_field(c.f, c.header, '{Company,Company Name}'),
					 @extschema@.msp_csv_field(c.f, c.header, '{Company Id,Company ID}')],
			   @extschema@.msp_csv_field(c.f, c.header, '{Product,Product Name}'),
			   @extschema@.msp_csv_field(c.f, c.header, '{Quantity}'),
			   @extschema@.msp_csv_field(c.f, c.header, '{Partner Cost,Unit Cost,Cost}'),
			   @extschema@.msp_csv_field(c.f, c.header, '{Price,Unit Price}'),
			   @extschema@.msp_csv_field(c.f, c.header, '{Billing Term,Term}'),
			   @extschema@.msp_csv_field(c.f, c.header, '{Status}'),
			   @extschema@.msp_csv_field(c.f, c.header, '{Start Date}'),
			   @extschema@.msp_csv_field(c.f, c.header, '{End Date}'),
			   CASE WHEN c.f IS NULL THEN 'reject:not valid CSV'
					WHEN c.header IS NULL THEN 'reject:no header with Quantity before it' END
		  FROM pg_temp.msp_csv c;
		DROP TABLE pg_temp.msp_csv;
	END IF;
	UPDATE pg_temp.msp_pax8 p
	   SET class = CASE
			   WHEN coalesce(btrim(p.product), '') = '' THEN 'reject:no product'
			   WHEN btrim(p.quantity) !~ '^[0-9]{1,9}(\.0*)?$' THEN 'reject:invalid quantity'
			   WHEN replace(btrim(p.cost), '$', '') !~ '^([0-9]{1,15}(\.[0-9]{1,10})?)?$' THEN 'reject:invalid partner cost'
			   WHEN replace(btrim(p.price), '$', '') !~ '^([0-9]{1,15}(\.[0-9]{1,10})?)?$' THEN 'reject:invalid price'
			   WHEN btrim(p.start_text) !~ '^([0-9]{4}-[0-9]{2}-[0-9]{2}.*)?$'
					OR btrim(p.end_text) !~ '^([0-9]{4}-[0-9]{2}-[0-9]{2}.*)?$' THEN 'reject:invalid start or end date'
			   WHEN length(p.id) > 255 OR length(p.product) > 255 OR length(p.term) > 255 OR length(p.status) > 255
					OR EXISTS (SELECT 1 FROM unnest(p.company) c WHERE length(c) > 255) THEN 'reject:field too long'
			   ELSE (SELECT CASE o WHEN 'own' THEN 'subscription' WHEN 'other' THEN 'skip'
							  ELSE 'reject:unknown Pax8 company ' || coalesce(p.company[1], p.company[2], '(none)') END
					   FROM @extschema@.msp_company_owner(client_id, 'pax8', p.company) o)
		   END
	 WHERE p.class IS NULL;
	-- dates: the batch at once, per record only where one is not a date
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_pax8 SET start_date = left(nullif(btrim(start_text), ''), 10)::date,
									end_date = left(nullif(btrim(end_text), ''), 10)::date
		 WHERE class = 'subscription' AND rec BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_pax8 SET class = 'reject:invalid start or end date' WHERE rec = $2
	$reject$, client_id, (SELECT min(rec) FROM pg_temp.msp_pax8), (SELECT max(rec) FROM pg_temp.msp_pax8));

	WITH sub AS (
		SELECT DISTINCT ON (k.key) k.key, p.*
		  FROM pg_temp.msp_pax8 p,
			   -- without an id (some CSV exports), the record is its own key
			   LATERAL (SELECT coalesce(nullif(btrim(p.id), ''),
										md5(concat_ws('|', p.company[1], p.company[2], p.product, p.term, p.start_text, p.status)))
						AS key) k
		 WHERE p.class = 'subscription'
		 ORDER BY k.key, p.line_no DESC, p.ord DESC),
	up AS (
		INSERT INTO @extschema@.pax8_subscriptions AS x (client_id, as_of, subscription_id, company, product, quantity,
														 unit_cost, unit_price, billing_term, status, start_date,
														 end_date, source)
		SELECT client_id, day, s.key, coalesce(s.company[1], s.company[2]), @extschema@.msp_license_product(s.product),
			   btrim(s.quantity)::numeric::integer, nullif(replace(btrim(s.cost), '$', ''), '')::numeric,
			   nullif(replace(btrim(s.price), '$', ''), '')::numeric, s.term, s.status, s.start_date, s.end_date, source
		  FROM sub s
		ON CONFLICT ON CONSTRAINT pax8_subscriptions_pkey DO UPDATE
		   SET company = excluded.company, product = excluded.product, quantity = excluded.quantity,
			   unit_cost = excluded.unit_cost, unit_price = excluded.unit_price, billing_term = excluded.billing_term,
			   status = excluded.status, start_date = excluded.start_date, end_date = excluded.end_date,
			   source = excluded.source
		 WHERE (x.company, x.product, x.quantity, x.unit_cost, x.unit_price, x.billing_term, x.status, x.start_date, x.end_date)
			   IS DISTINCT FROM (excluded.company, excluded.product, excluded.quantity, excluded.unit_cost,
								 excluded.unit_price, excluded.billing_term, excluded.status, excluded.start_date,
								 excluded.end_date)
		RETURNING 1)
	SELECT count(*) INTO loaded FROM up;
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
-- contact.  Returns how many tickets were matched.
CREATE FUNCTION @extschema@.msp_match_psa_tickets(client_id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	n bigint;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.load'), hashtext(client_id::text));
	UPDATE @extschema@.psa_tickets t
	   SET person_id = coalesce(
			   (SELECT c.person_id FROM @extschema@.psa_contacts c
				 WHERE c.client_id = client_id AND c.psa = t.psa AND lower(c.contact) = t.contact),
			   (SELECT a.person_id FROM @extschema@.accounts a
				 WHERE a.client_id = client_id AND a.realm = 'm365' AND a.kind = 'individual' AND lower(a.name) = t.contact),
			   (SELECT min(i.person_id) FROM @extschema@.person_identities i
				 WHERE i.client_id = client_id AND lower(i.email) = t.contact))
	 WHERE t.client_id = client_id AND t.person_id IS NULL AND t.contact IS NOT NULL;
	PERFORM setval(pg_get_serial_sequence('@extschema@.support_contacts', 'contact_id'), m.id)
	   FROM (SELECT max(s.contact_id) AS id FROM @extschema@.support_contacts s WHERE s.client_id = client_id) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.support_contacts', 'contact_id')), 0);
	WITH t AS (
		UPDATE @extschema@.psa_tickets t
		   SET contact_id = nextval(pg_get_serial_sequence('@extschema@.support_contacts', 'contact_id'))
		 WHERE t.client_id = client_id AND t.person_id IS NOT NULL AND t.contact_id IS NULL
		RETURNING t.contact_id, t.person_id, t.at, t.channel),
	ins AS (
		INSERT INTO @extschema@.support_contacts (client_id, contact_id, person_id, at, channel)
		SELECT client_id, t.contact_id, t.person_id, t.at, t.channel FROM t
		RETURNING 1)
	SELECT count(*) INTO n FROM ins;
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
--   halo         id, dateoccurred, client_id/client_name, user_id, team
-- A time without a zone is UTC (the APIs write UTC).
CREATE FUNCTION @extschema@.msp_load_psa_tickets(client_id bigint, psa text, source text DEFAULT NULL,
												 OUT loaded bigint, OUT duplicate bigint, OUT skipped bigint,
												 OUT rejected bigint, OUT unmatched bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_variable
BEGIN
	IF psa IS NULL OR psa NOT IN ('connectwise', 'autotask', 'halo') THEN
		RAISE EXCEPTION 'unknown PSA %', coalesce(quote_literal(psa), 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The ticket loader reads the API JSON of ConnectWise PSA, Autotask and HaloPSA.',
				  HINT = 'Pass psa => ''connectwise'', ''autotask'' or ''halo''.';
	END IF;
	source := coalesce(source, psa);
	PERFORM @extschema@.msp_load_begin(client_id);
	PERFORM @extschema@.msp_stage_json(client_id, '@extschema@.psa_ticket_staging');
	CREATE TEMP TABLE msp_tix ON COMMIT DROP AS
	SELECT j.rec, j.line_no, j.ord, j.raw, j.doc, f.*, NULL::text AS class, NULL::timestamptz AS at
	  FROM pg_temp.msp_json j
	  LEFT JOIN LATERAL (
			SELECT j.doc->>'id' AS id,
				   CASE psa WHEN 'connectwise' THEN coalesce(j.doc->'_info'->>'dateEntered', j.doc->>'dateEntered')
							WHEN 'autotask' THEN j.doc->>'createDate'
							ELSE j.doc->>'dateoccurred' END AS at_text,
				   CASE psa WHEN 'connectwise' THEN ARRAY[j.doc->'company'->>'identifier', j.doc->'company'->>'name',
														  j.doc->'company'->>'id']
							WHEN 'autotask' THEN ARRAY[j.doc->>'companyID']
							ELSE ARRAY[j.doc->>'client_name', j.doc->>'client_id'] END AS company,
				   lower(btrim(CASE psa WHEN 'connectwise'
										THEN coalesce(nullif(btrim(j.doc->>'contactEmailAddress'), ''), j.doc->'contact'->>'id')
										WHEN 'autotask' THEN j.doc->>'contactID'
										ELSE j.doc->>'user_id' END)) AS contact,
				   CASE psa WHEN 'connectwise' THEN j.doc->'board'->>'name'
							WHEN 'autotask' THEN j.doc->>'queueID'
							ELSE j.doc->>'team' END AS board,
				   coalesce(lower(CASE psa WHEN 'connectwise' THEN j.doc->'source'->>'name' END), 'ticket') AS channel
			 WHERE jsonb_typeof(j.doc) = 'object') f ON true;
	UPDATE pg_temp.msp_tix t
	   SET class = CASE
			   WHEN t.doc IS NULL THEN 'reject:not valid JSON'
			   WHEN jsonb_typeof(t.doc) <> 'object' THEN 'reject:not a JSON object'
			   WHEN coalesce(btrim(t.id), '') = '' THEN 'reject:no id'
			   WHEN coalesce(btrim(t.at_text), '') = '' THEN 'reject:no date entered'
			   WHEN length(t.id) > 255 OR length(t.contact) > 255 OR length(t.board) > 255 OR length(t.channel) > 255
					OR EXISTS (SELECT 1 FROM unnest(t.company) c WHERE length(c) > 255) THEN 'reject:field too long'
			   ELSE (SELECT CASE o WHEN 'own' THEN 'ticket' WHEN 'other' THEN 'skip'
							  ELSE 'reject:unknown ' || psa || ' company '
								   || coalesce((SELECT c FROM unnest(t.company) c WHERE c IS NOT NULL LIMIT 1), '(none)') END
					   FROM @extschema@.msp_company_owner(client_id, psa, t.company) o)
		   END;
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_tix SET at = at_text::timestamptz
		 WHERE class = 'ticket' AND rec BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_tix SET class = 'reject:invalid date entered' WHERE rec = $2 AND class = 'ticket'
	$reject$, client_id, (SELECT min(rec) FROM pg_temp.msp_tix), (SELECT max(rec) FROM pg_temp.msp_tix));
	UPDATE pg_temp.msp_tix
	   SET class = 'reject:invalid date entered' || coalesce(': ' || @extschema@.msp_implausible_time(at_text, at), '')
	 WHERE class = 'ticket' AND (at IS NULL OR @extschema@.msp_implausible_time(at_text, at) IS NOT NULL);

	-- a ticket loads once per client and PSA (first record of a load wins)
	WITH ins AS (
		INSERT INTO @extschema@.psa_tickets (client_id, psa, ticket_id, at, company, contact, board, channel)
		SELECT DISTINCT ON (btrim(t.id)) client_id, psa, btrim(t.id), t.at,
			   (SELECT c FROM unnest(t.company) c WHERE c IS NOT NULL LIMIT 1), t.contact, t.board, t.channel
		  FROM pg_temp.msp_tix t WHERE t.class = 'ticket'
		 ORDER BY btrim(t.id), t.line_no, t.ord
		ON CONFLICT ON CONSTRAINT psa_tickets_pkey DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	duplicate := (SELECT count(*) FROM pg_temp.msp_tix t WHERE t.class = 'ticket') - loaded;
	PERFORM @extschema@.msp_match_psa_tickets(client_id);
	SELECT count(*) INTO unmatched FROM @extschema@.psa_tickets t
	 WHERE t.client_id = client_id AND t.psa = psa AND t.person_id IS NULL;

	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT t.line_no, t.raw, substr(t.class, 8) AS reason FROM pg_temp.msp_tix t WHERE t.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_tix t WHERE t.class = 'skip';
	DELETE FROM @extschema@.psa_ticket_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_tix, pg_temp.msp_json;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_psa_tickets(bigint, text, text) IS
	'loads a client''s staged PSA tickets (psa: connectwise, autotask or halo); matched contacts become support contacts, unknown ones stay in psa_tickets (psa_unknown_contacts); unmatched counts the PSA''s tickets still without a person';

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
					 (SELECT p.product
						FROM (SELECT lc.sku AS product, lc.seats AS bought, 0 AS held
								FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
									   WHERE x.client_id = client_id AND x.as_of < upper(period)
									   ORDER BY x.sku, x.as_of DESC, x.source) lc
							  UNION ALL
							  SELECT x.product, 0, 1 FROM m365_license_assignments x
							   WHERE x.client_id = client_id AND x.as_of = snap) p
					   GROUP BY p.product ORDER BY sum(p.bought) DESC, sum(p.held) DESC, p.product LIMIT 1));
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
					 (SELECT p.product
						FROM (SELECT lc.sku AS product, lc.seats AS bought, 0 AS held
								FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
									   WHERE x.client_id = client_id AND x.as_of < upper(period)
									   ORDER BY x.sku, x.as_of DESC, x.source) lc
							  UNION ALL
							  SELECT x.product, 0, 1 FROM m365_license_assignments x
							   WHERE x.client_id = client_id AND x.as_of = snap) p
					   GROUP BY p.product ORDER BY sum(p.bought) DESC, sum(p.held) DESC, p.product LIMIT 1));
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

CREATE OR REPLACE FUNCTION @extschema@.msp_reconcile_licenses(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (category text, sku text, subject text, quantity numeric, amount numeric, note text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	fin invoices;
	active_ids bigint[];
	active integer;
	billed numeric;
	seats numeric;
	seat_cost numeric;
	snapshot boolean;
BEGIN
	period := msp_period(client_id, period);
	-- with a licence snapshot (src/licensing.sql) seats are known per
	-- account: msp_license_gaps names them instead of the account checks
	snapshot := EXISTS (SELECT 1 FROM m365_license_assignments x WHERE x.client_id = client_id AND x.as_of < upper(period));
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id AND contracts.effective @> (upper(period) - 1);
	active_ids := ARRAY(SELECT DISTINCT u.person_id FROM msp_billable_users(client_id, period) u
						 WHERE u.home_client_id = client_id);
	active := (SELECT count(DISTINCT (u.home_client_id, u.person_id)) FROM msp_billable_users(client_id, period) u);
	-- people billed: a preview bills everyone active; once finalized, those in
	-- the evidence of the invoice or of an adjustment to it
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

	-- seats held per SKU (latest count before the period ends, per source)
	RETURN QUERY
	SELECT 'seats_held', lc.sku, NULL::text, lc.seats::numeric, lc.seats * lc.unit_cost,
		   format('%s seats held; %s people active; %s users billed.', lc.seats, active, billed)
	  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
			 WHERE x.client_id = client_id AND x.as_of < upper(period)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc
	 ORDER BY lc.sku;
	SELECT sum(lc.seats), max(lc.unit_cost) INTO seats, seat_cost
	  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
			 WHERE x.client_id = client_id AND x.as_of < upper(period)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc;

	-- people who work without a Microsoft 365 account
	RETURN QUERY
	SELECT 'active_unlicensed', NULL::text, a.pseudonym, 1::numeric, seat_cost,
		   'Active in the period but holds no Microsoft 365 account: license them (or record the account).'
	  FROM people a
	 WHERE a.client_id = client_id AND a.person_id = ANY (active_ids) AND NOT snapshot
	   AND NOT EXISTS (SELECT 1 FROM accounts x WHERE x.client_id = client_id AND x.person_id = a.person_id
						  AND x.realm = 'm365')
	 ORDER BY a.pseudonym;
	-- licensed people who did not work: seats to reclaim
	RETURN QUERY
	SELECT 'licensed_inactive', NULL::text, l.label, 1::numeric, seat_cost,
		   'Holds a Microsoft 365 account but was not active in the period: a seat to reclaim.'
	  FROM accounts x JOIN account_labels l USING (client_id, account_id)
	 WHERE x.client_id = client_id AND x.realm = 'm365' AND x.kind = 'individual'
	   AND NOT x.person_id = ANY (active_ids) AND NOT snapshot
	 ORDER BY l.label;
	IF seats IS NOT NULL AND active > seats THEN
		RETURN QUERY SELECT 'seat_shortfall', NULL::text, NULL::text, (active - seats)::numeric,
							(active - seats) * seat_cost,
							format('%s people active but only %s seats held.', active, seats);
	END IF;
	IF billed < active AND k.model IN ('per_user', 'per_user_plus_support') THEN
		RETURN QUERY SELECT 'unbilled_users', NULL::text, NULL::text, active - billed,
							msp_round((active - billed) * k.price_per_user, c.minor_unit),
							format('%s people active, %s billed.', active, billed);
	END IF;
	RETURN QUERY SELECT * FROM msp_license_gaps(client_id, period);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_reconcile_licenses(bigint, daterange) IS
	'three-way license reconciliation: people active by logon, seats held per SKU, quantities billed, and the money at stake; with a licence snapshot, the gaps of msp_license_gaps by name and product';

CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications, '
						-- licensing (src/licensing.sql): mappings and the loaded snapshots
						'@extschema@.license_policies, @extschema@.partner_companies, @extschema@.psa_contacts, '
						'@extschema@.m365_sku_counts, @extschema@.m365_license_assignments, @extschema@.pax8_subscriptions';
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging, '
					'@extschema@.m365_graph_staging, @extschema@.m365_users_csv_staging, @extschema@.m365_activity_staging, '
					'@extschema@.pax8_staging, @extschema@.psa_ticket_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq, @extschema@.m365_graph_staging_line_no_seq, '
						 '@extschema@.m365_users_csv_staging_line_no_seq, @extschema@.m365_activity_staging_line_no_seq, '
						 '@extschema@.pax8_staging_line_no_seq, @extschema@.psa_ticket_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_load_m365_graph(bigint, date, text), '
					'@extschema@.msp_load_m365_users_csv(bigint, date, text), '
					'@extschema@.msp_load_m365_activity(bigint, text), '
					'@extschema@.msp_load_pax8_subscriptions(bigint, date, text), '
					'@extschema@.msp_load_psa_tickets(bigint, text, text), '
					'@extschema@.msp_match_psa_tickets(bigint)';
	-- licence names are not per client: those who load maintain them (BI
	-- needs none, and would read their column statistics)
	product_names text := '@extschema@.license_product_names';
	-- PSA tickets without the contact (an e-mail or PSA id) for those who see no names
	ticket_cols text := 'client_id, psa, ticket_id, at, company, board, channel, person_id, contact_id';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE 'GRANT SELECT, DELETE ON @extschema@.psa_tickets TO mspbill_admin';
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s, @extschema@.logons_logon_id_seq TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.psa_tickets TO mspbill_billing, mspbill_bi', ticket_cols);
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_admin, mspbill_billing', product_names);
	EXECUTE 'GRANT SELECT ON @extschema@.psa_unknown_contacts TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
-- for DBAs only: it creates roles and grants
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';

REVOKE EXECUTE ON FUNCTION @extschema@.msp_load_m365_graph(bigint, date, text),
	@extschema@.msp_load_m365_users_csv(bigint, date, text),
	@extschema@.msp_load_m365_activity(bigint, text),
	@extschema@.msp_load_pax8_subscriptions(bigint, date, text),
	@extschema@.msp_load_psa_tickets(bigint, text, text),
	@extschema@.msp_match_psa_tickets(bigint),
	@extschema@.msp_stage_csv(bigint, regclass, text),
	@extschema@.msp_stage_json(bigint, regclass),
	@extschema@.msp_ensure_m365_accounts(bigint, text[]),
	@extschema@.msp_store_assignments(bigint, date, text),
	@extschema@.msp_store_rejects(bigint, text)
	FROM PUBLIC;
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['license_policies', 'partner_companies', 'psa_contacts', 'm365_sku_counts',
							 'm365_license_assignments', 'pax8_subscriptions', 'psa_tickets']
	LOOP
		EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])))', t);
		EXECUTE format('COMMENT ON POLICY client_rows ON @extschema@.%I IS %L', t,
					   'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)');
	END LOOP;
END
$$;



-- monthend (issue 21): month-end as one call, CALL msp_finalize_period(period),
-- with its run records (finalize_runs, finalize_run_clients,
-- finalize_progress) and the definer functions that write them, as in
-- src/monthend.sql; msp_install_roles grants them to mspbill_admin and
-- mspbill_billing (run SELECT mspbill.msp_install_roles(); after the update).
CREATE TABLE @extschema@.finalize_runs (
	run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	period daterange NOT NULL,
	override text[] NOT NULL DEFAULT '{}',
	-- the clients the run takes, in the order it takes them
	client_ids bigint[] NOT NULL,
	started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	started_by name NOT NULL DEFAULT session_user,
	backend_pid integer NOT NULL DEFAULT pg_backend_pid(),
	finished_at timestamptz
);
COMMENT ON TABLE @extschema@.finalize_runs IS
	'month-end runs (msp_finalize_period): the period, the override, the clients taken, who ran it and when it finished';

CREATE TABLE @extschema@.finalize_run_clients (
	client_id bigint NOT NULL,
	run_id bigint NOT NULL REFERENCES @extschema@.finalize_runs,
	outcome text NOT NULL
		CONSTRAINT finalize_run_clients_outcome_known
		CHECK (outcome IN ('finalized', 'already_finalized', 'refused', 'failed')),
	invoice_id bigint,
	total numeric,
	-- refused: the gates that had findings
	gates text[],
	sqlstate char(5),
	message text,
	detail text,
	hint text,
	at timestamptz NOT NULL DEFAULT clock_timestamp(),
	PRIMARY KEY (client_id, run_id),
	CONSTRAINT finalize_run_clients_invoice_iff_done
		CHECK ((outcome IN ('finalized', 'already_finalized')) = (invoice_id IS NOT NULL))
);
-- the progress view counts one run's clients
CREATE INDEX finalize_run_clients_run_idx ON @extschema@.finalize_run_clients (run_id, outcome);
COMMENT ON TABLE @extschema@.finalize_run_clients IS
	'what a month-end run did with each client: finalized (invoice_id), already finalized, refused by the gates (gates, hint) or failed (the error)';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.finalize_runs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.finalize_runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.finalize_run_clients', '');

ALTER TABLE @extschema@.finalize_run_clients ENABLE ROW LEVEL SECURITY;
CREATE POLICY client_rows ON @extschema@.finalize_run_clients
	USING ((SELECT @extschema@.msp_sees_all_clients())
		   OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])));
COMMENT ON POLICY client_rows ON @extschema@.finalize_run_clients IS
	'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)';

-- Progress of every run, readable from any session while it runs (each
-- client's row is committed as it is done).  Granted to the roles that may
-- run month-end, who see every client.
CREATE VIEW @extschema@.finalize_progress WITH (security_barrier) AS
SELECT r.run_id, r.period, r.started_by, r.started_at, r.finished_at,
	   CASE WHEN r.finished_at IS NOT NULL THEN 'finished'
			WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
						  WHERE a.pid OPERATOR(pg_catalog.=) r.backend_pid
							AND a.backend_start OPERATOR(pg_catalog.<=) r.started_at) THEN 'running'
			ELSE 'interrupted' END AS state,
	   pg_catalog.cardinality(r.client_ids) AS clients,
	   pg_catalog.count(c.client_id) AS done,
	   pg_catalog.count(*) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'finalized') AS finalized,
	   pg_catalog.count(*) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'already_finalized') AS already_finalized,
	   pg_catalog.count(*) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'refused') AS refused,
	   pg_catalog.count(*) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'failed') AS failed,
	   pg_catalog.sum(c.total) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'finalized') AS finalized_total
  FROM @extschema@.finalize_runs r
  LEFT JOIN @extschema@.finalize_run_clients c ON c.run_id OPERATOR(pg_catalog.=) r.run_id
 GROUP BY r.run_id;
COMMENT ON VIEW @extschema@.finalize_progress IS
	'month-end runs as they go: clients done, finalized, already finalized, refused, failed; state running, finished or interrupted';

-- The overridable gates, as msp_finalize_invoice knows them.
CREATE FUNCTION @extschema@.msp_finalize_run_begin(period daterange, override text[] DEFAULT '{}',
												   only_clients bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	ids bigint[];
	unknown text[];
BEGIN
	-- checked once here rather than refused for every client alike
	IF period IS NULL OR isempty(period) OR lower_inf(period) OR upper_inf(period)
	   OR lower(period) <> date_trunc('month', lower(period))::date
	   OR upper(period) <> (date_trunc('month', lower(period)) + interval '1 month')::date THEN
		RAISE EXCEPTION 'billing period % is not a calendar month', coalesce(period::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Month-end finalizes one calendar month for every client.',
				  HINT = 'Pass the month, e.g. CALL mspbill.msp_finalize_period(daterange(''2026-10-01'', ''2026-11-01''));';
	END IF;
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	-- every client with a contract in the period; clients named explicitly
	-- are taken as named (one without a contract fails, with the reason)
	IF only_clients IS NULL THEN
		ids := ARRAY(SELECT DISTINCT k.client_id FROM contracts k WHERE k.effective && period ORDER BY 1);
	ELSE
		ids := ARRAY(SELECT DISTINCT x FROM unnest(only_clients) x WHERE x IS NOT NULL ORDER BY 1);
	END IF;
	INSERT INTO @extschema@.finalize_runs (period, override, client_ids)
	VALUES (period, coalesce(override, '{}'), ids)
	RETURNING run_id INTO id;
	RETURN id;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_begin(daterange, text[], bigint[]) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_begin(daterange, text[], bigint[]) IS
	'month-end internal: checks the period and override once, records a run and the clients it takes; returns the run id';

-- One client of a run: finalized in a subtransaction, the outcome recorded
-- either way.  The advisory lock is msp_finalize_invoice's, so that
-- "already finalized" is decided under it.  The lock is taken after this
-- transaction's snapshot, so an invoice another session commits meanwhile
-- is not seen and the insert conflicts with it: then 'retry' is returned
-- and nothing recorded, and the caller runs the client again in a new
-- transaction, which sees that invoice (may_retry false: a second conflict
-- is a failure, not a loop).
CREATE FUNCTION @extschema@.msp_finalize_run_client(client_id bigint, run_id bigint, may_retry boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	r finalize_runs;
	prior bigint;
	id bigint;
	result text;
	st text;
	msg text;
	det text;
	hin text;
	con text;
	failing text[];
BEGIN
	SELECT * INTO r FROM finalize_runs f WHERE f.run_id = run_id;
	IF NOT FOUND OR r.finished_at IS NOT NULL OR r.started_by <> session_user
	   OR NOT client_id = ANY (r.client_ids) THEN
		RAISE EXCEPTION 'client % is not pending in an open month-end run % of yours', client_id, run_id
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Run month-end with CALL mspbill.msp_finalize_period(period);';
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || r.period::text));
	prior := (msp_finalized_invoice(client_id, r.period)).invoice_id;
	BEGIN
		id := msp_finalize_invoice(client_id, r.period, r.override);
		result := CASE WHEN prior IS NULL THEN 'finalized' ELSE 'already_finalized' END;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
								hin = PG_EXCEPTION_HINT, con = CONSTRAINT_NAME;
		IF may_retry AND con IN ('invoices_one_per_period', 'invoices_no_overlap') THEN
			-- another session finalized it after this transaction's snapshot
			RETURN 'retry';
		ELSIF st = '55000' OR (st = '23514' AND coalesce(con, '') = '') THEN
			-- the gates (a check constraint's violation names the constraint)
			result := 'refused';
			failing := CASE WHEN st = '55000' THEN '{period_not_over}'::text[]
							ELSE ARRAY(SELECT DISTINCT q.gate FROM msp_data_quality(client_id, r.period) q
										WHERE NOT q.gate = ANY (r.override) ORDER BY 1) END;
		ELSE
			result := 'failed';
		END IF;
	END;
	INSERT INTO @extschema@.finalize_run_clients (client_id, run_id, outcome, invoice_id, total, gates, sqlstate,
												  message, detail, hint)
	VALUES (client_id, run_id, result, id,
			(SELECT i.total FROM invoices i WHERE i.client_id = client_id AND i.invoice_id = id),
			failing, st, msg, nullif(det, ''), nullif(hin, ''));
	RETURN result;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_client(bigint, bigint, boolean) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_client(bigint, bigint, boolean) IS
	'month-end internal: finalizes one client of a run in a subtransaction and records the outcome (finalized, already_finalized, refused, failed)';

CREATE FUNCTION @extschema@.msp_finalize_run_end(run_id bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	UPDATE @extschema@.finalize_runs f SET finished_at = clock_timestamp()
	 WHERE f.run_id = run_id AND f.started_by = session_user AND f.finished_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'month-end run % is not an open run of yours', run_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_end(bigint) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_end(bigint) IS
	'month-end internal: marks a run finished';

CREATE PROCEDURE @extschema@.msp_finalize_period(period daterange, override text[] DEFAULT '{}',
												  only_clients bigint[] DEFAULT NULL,
												  INOUT run_id bigint DEFAULT NULL,
												  INOUT finalized integer DEFAULT NULL,
												  INOUT already_finalized integer DEFAULT NULL,
												  INOUT refused integer DEFAULT NULL,
												  INOUT failed integer DEFAULT NULL)
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
DECLARE
	ids pg_catalog.int8[];
	cid pg_catalog.int8;
	outcome pg_catalog.text;
	done pg_catalog.int4 := 0;
BEGIN
	finalized := 0;
	already_finalized := 0;
	refused := 0;
	failed := 0;
	run_id := @extschema@.msp_finalize_run_begin(period, override, only_clients);
	ids := (SELECT r.client_ids FROM @extschema@.finalize_runs r WHERE r.run_id OPERATOR(pg_catalog.=) run_id);
	RAISE NOTICE 'month-end run % for %: % clients', run_id, period, pg_catalog.cardinality(ids);
	FOREACH cid IN ARRAY ids LOOP
		-- the run row, then each client, committed as soon as done; the
		-- next statement after COMMIT must be SET TRANSACTION
		FOR attempt IN 1..2 LOOP
			COMMIT;
			SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
			outcome := @extschema@.msp_finalize_run_client(cid, run_id, attempt OPERATOR(pg_catalog.=) 1);
			EXIT WHEN outcome OPERATOR(pg_catalog.<>) 'retry';
		END LOOP;
		done := done OPERATOR(pg_catalog.+) 1;
		CASE outcome
			WHEN 'finalized' THEN finalized := finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'already_finalized' THEN already_finalized := already_finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'refused' THEN refused := refused OPERATOR(pg_catalog.+) 1;
			ELSE failed := failed OPERATOR(pg_catalog.+) 1;
		END CASE;
		IF done OPERATOR(pg_catalog.%) 100 OPERATOR(pg_catalog.=) 0 THEN
			RAISE NOTICE 'month-end run %: % of % clients done (% finalized, % already finalized, % refused, % failed)',
				run_id, done, pg_catalog.cardinality(ids), finalized, already_finalized, refused, failed;
		END IF;
	END LOOP;
	COMMIT;
	PERFORM @extschema@.msp_finalize_run_end(run_id);
	COMMIT;
	RAISE NOTICE 'month-end run % for % done: % finalized, % already finalized, % refused, % failed',
		run_id, period, finalized, already_finalized, refused, failed
		USING DETAIL = 'Each client''s outcome, with the gates or the error: SELECT * FROM mspbill.finalize_run_clients WHERE run_id = ' || run_id || ';';
END
$$;
REVOKE EXECUTE ON PROCEDURE @extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer) FROM PUBLIC;
COMMENT ON PROCEDURE @extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer) IS
	'month-end: finalizes every client''s invoice for a period (clients with a contract in it, or only_clients), one transaction per client, committed as it goes; returns the run id and how many were finalized, already finalized, refused and failed';

CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications';
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_finalize_run_begin(daterange, text[], bigint[]), '
					'@extschema@.msp_finalize_run_client(bigint, bigint, boolean), '
					'@extschema@.msp_finalize_run_end(bigint)';
	-- month-end (src/monthend.sql): a procedure, granted ON PROCEDURE
	month_end text := '@extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer)';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE format('REVOKE ALL ON PROCEDURE %s FROM %s', month_end, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s, @extschema@.logons_logon_id_seq TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);
	-- month-end: run it, and watch its runs (every client's outcome)
	EXECUTE format('GRANT EXECUTE ON PROCEDURE %s TO mspbill_admin, mspbill_billing', month_end);
	EXECUTE 'GRANT SELECT ON @extschema@.finalize_runs, @extschema@.finalize_run_clients, @extschema@.finalize_progress '
			'TO mspbill_admin, mspbill_billing';

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
-- for DBAs only: it creates roles and grants
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';

-- monthend: msp_finalize_invoice runs the gates once, not two or three times
CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	unknown text[];
	today date;
	stamp timestamptz;
	findings jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	-- an unfinished month is not a data-quality question: its logons are
	-- still coming, so no override finalizes it
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	-- the gates run once: they read the period's logons several times over
	findings := coalesce((SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q), '[]');
	IF jsonb_path_exists(findings, '$[*] ? (@.gate == "period_not_over")') THEN
		today := (now() AT TIME ZONE (SELECT c.time_zone FROM clients c WHERE c.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q->>'gate' FROM jsonb_array_elements(findings) q
					  WHERE NOT q->>'gate' = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period, failing);
	END IF;

	inv := msp_compute_invoice(client_id, period);
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency,
			coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]'),
			coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM msp_price_lines(client_id, period, NULL) l;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override,
				'findings', (SELECT jsonb_agg(q) FROM jsonb_array_elements(findings) q
							  WHERE q->>'gate' = ANY (override))));
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines and evidence and returns its id; finalizing again returns the same id';

-- lead: month-end retries a client whose invoice number (the counter row)
-- another finalization took after its snapshot
CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_run_client(client_id bigint, run_id bigint, may_retry boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	r finalize_runs;
	prior bigint;
	id bigint;
	result text;
	st text;
	msg text;
	det text;
	hin text;
	con text;
	failing text[];
BEGIN
	SELECT * INTO r FROM finalize_runs f WHERE f.run_id = run_id;
	IF NOT FOUND OR r.finished_at IS NOT NULL OR r.started_by <> session_user
	   OR NOT client_id = ANY (r.client_ids) THEN
		RAISE EXCEPTION 'client % is not pending in an open month-end run % of yours', client_id, run_id
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Run month-end with CALL mspbill.msp_finalize_period(period);';
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || r.period::text));
	prior := (msp_finalized_invoice(client_id, r.period)).invoice_id;
	BEGIN
		id := msp_finalize_invoice(client_id, r.period, r.override);
		result := CASE WHEN prior IS NULL THEN 'finalized' ELSE 'already_finalized' END;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
								hin = PG_EXCEPTION_HINT, con = CONSTRAINT_NAME;
		IF may_retry AND (con IN ('invoices_one_per_period', 'invoices_no_overlap') OR st IN ('40001', '40P01')) THEN
			-- another session finalized it, or took the next invoice number
			-- (the counter row), after this transaction's snapshot
			RETURN 'retry';
		ELSIF st = '55000' OR (st = '23514' AND coalesce(con, '') = '') THEN
			-- the gates (a check constraint's violation names the constraint)
			result := 'refused';
			failing := CASE WHEN st = '55000' THEN '{period_not_over}'::text[]
							ELSE ARRAY(SELECT DISTINCT q.gate FROM msp_data_quality(client_id, r.period) q
										WHERE NOT q.gate = ANY (r.override) ORDER BY 1) END;
		ELSE
			result := 'failed';
		END IF;
	END;
	INSERT INTO @extschema@.finalize_run_clients (client_id, run_id, outcome, invoice_id, total, gates, sqlstate,
												  message, detail, hint)
	VALUES (client_id, run_id, result, id,
			(SELECT i.total FROM invoices i WHERE i.client_id = client_id AND i.invoice_id = id),
			failing, st, msg, nullif(det, ''), nullif(hin, ''));
	RETURN result;
END
$$;

CREATE OR REPLACE PROCEDURE @extschema@.msp_finalize_period(period daterange, override text[] DEFAULT '{}',
												  only_clients bigint[] DEFAULT NULL,
												  INOUT run_id bigint DEFAULT NULL,
												  INOUT finalized integer DEFAULT NULL,
												  INOUT already_finalized integer DEFAULT NULL,
												  INOUT refused integer DEFAULT NULL,
												  INOUT failed integer DEFAULT NULL)
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
DECLARE
	ids pg_catalog.int8[];
	cid pg_catalog.int8;
	outcome pg_catalog.text;
	done pg_catalog.int4 := 0;
BEGIN
	finalized := 0;
	already_finalized := 0;
	refused := 0;
	failed := 0;
	run_id := @extschema@.msp_finalize_run_begin(period, override, only_clients);
	ids := (SELECT r.client_ids FROM @extschema@.finalize_runs r WHERE r.run_id OPERATOR(pg_catalog.=) run_id);
	RAISE NOTICE 'month-end run % for %: % clients', run_id, period, pg_catalog.cardinality(ids);
	FOREACH cid IN ARRAY ids LOOP
		-- the run row, then each client, committed as soon as done; the
		-- next statement after COMMIT must be SET TRANSACTION
		FOR attempt IN 1..5 LOOP
			COMMIT;
			SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
			outcome := @extschema@.msp_finalize_run_client(cid, run_id, attempt OPERATOR(pg_catalog.<) 5);
			EXIT WHEN outcome OPERATOR(pg_catalog.<>) 'retry';
		END LOOP;
		done := done OPERATOR(pg_catalog.+) 1;
		CASE outcome
			WHEN 'finalized' THEN finalized := finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'already_finalized' THEN already_finalized := already_finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'refused' THEN refused := refused OPERATOR(pg_catalog.+) 1;
			ELSE failed := failed OPERATOR(pg_catalog.+) 1;
		END CASE;
		IF done OPERATOR(pg_catalog.%) 100 OPERATOR(pg_catalog.=) 0 THEN
			RAISE NOTICE 'month-end run %: % of % clients done (% finalized, % already finalized, % refused, % failed)',
				run_id, done, pg_catalog.cardinality(ids), finalized, already_finalized, refused, failed;
		END IF;
	END LOOP;
	COMMIT;
	PERFORM @extschema@.msp_finalize_run_end(run_id);
	COMMIT;
	RAISE NOTICE 'month-end run % for % done: % finalized, % already finalized, % refused, % failed',
		run_id, period, finalized, already_finalized, refused, failed
		USING DETAIL = 'Each client''s outcome, with the gates or the error: SELECT * FROM mspbill.finalize_run_clients WHERE run_id = ' || run_id || ';';
END
$$;



-- issue 17 (Citus, second part): sister clients in a table of their own
-- (kept by a trigger on one node, a foreign key on Citus), so that an
-- invoice finds them without reading every client's people; the month's
-- batch msp_invoices() (per shard on the workers); contract lines' pool
-- shares and people read outside queries on tables; msp_distribute() for
-- the tables of documents, numbering and licensing.  Run
-- msp_install_roles() again afterwards (grants on sister_clients).
CREATE TABLE @extschema@.sister_clients (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	bill_to_client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	PRIMARY KEY (client_id, bill_to_client_id)
);
CREATE INDEX sister_clients_bill_to_idx ON @extschema@.sister_clients (bill_to_client_id);
COMMENT ON TABLE @extschema@.sister_clients IS
	'pairs of clients where bill_to_client_id pays for some of client_id''s people (people.bill_to_client_id); kept by a trigger on one node, declared first on Citus';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.sister_clients',
	'WHERE NOT EXISTS (SELECT FROM @extschema@.people p WHERE p.client_id = sister_clients.client_id AND p.bill_to_client_id = sister_clients.bill_to_client_id)');
-- the pairs people name today
INSERT INTO @extschema@.sister_clients (client_id, bill_to_client_id)
SELECT DISTINCT p.client_id, p.bill_to_client_id FROM @extschema@.people p WHERE p.bill_to_client_id IS NOT NULL;
ALTER TABLE @extschema@.sister_clients ENABLE ROW LEVEL SECURITY;
CREATE POLICY client_rows ON @extschema@.sister_clients USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])));
COMMENT ON POLICY client_rows ON @extschema@.sister_clients IS
	'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)';

CREATE FUNCTION @extschema@.msp_note_sister_client() RETURNS trigger
LANGUAGE plpgsql
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO sister_clients (client_id, bill_to_client_id)
	VALUES (NEW.client_id, NEW.bill_to_client_id)
	ON CONFLICT DO NOTHING;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_note_sister_client() IS
	'trigger: records in sister_clients the pair of clients a person''s bill_to_client_id names';
CREATE TRIGGER note_sister_client AFTER INSERT OR UPDATE OF client_id, bill_to_client_id ON @extschema@.people
	FOR EACH ROW WHEN (NEW.bill_to_client_id IS NOT NULL)
	EXECUTE FUNCTION @extschema@.msp_note_sister_client();

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_users(client_id bigint, contract_id bigint, segment daterange,
											   with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	payer bigint := client_id;
	k record;
	t0 timestamptz;
	t1 timestamptz;
	home bigint;
	-- decided here, by this session: on Citus a sister client's labels are
	-- read on another node, whose session does not carry the caller's
	-- mspbill.pseudonymous (set by the finalizing functions)
	names boolean := msp_sees_names();
BEGIN
	SELECT x.count_realms, x.min_active_days, x.support_rule, x.shared_billing, x.attribution_window,
		   x.default_session, c.time_zone
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = payer AND c.client_id = payer AND x.contract_id = msp_segment_users.contract_id;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;
	-- the payer first, then the sister clients whose people it pays for
	-- (sister_clients: a small table, on Citus a reference table read on
	-- this node, where people of every client would be every shard)
	FOREACH home IN ARRAY ARRAY[payer] || ARRAY(SELECT s.client_id FROM sister_clients s
												 WHERE s.bill_to_client_id = payer AND s.client_id <> payer
												 ORDER BY 1)
	LOOP
		RETURN QUERY
		WITH eligible AS (
			SELECT p.* FROM people p
			 WHERE p.client_id = home
			   AND ((home = payer AND p.bill_to_client_id IS NULL) OR p.bill_to_client_id = payer)
			   AND NOT p.is_technician AND NOT p.do_not_bill
			   AND (p.active IS NULL OR p.active && segment)),
		-- presence logons in the counted realms, and application logons
		-- attributed through a shared session on the same device
		evidence AS (
			SELECT e.person_id, l.at, a.account_id, true AS by_logon
			  FROM eligible e
			  JOIN accounts a ON a.client_id = home AND a.person_id = e.person_id
							 AND a.kind = 'individual' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
			  JOIN logons l ON l.client_id = home AND l.account_id = a.account_id
						   AND l.at >= t0 AND l.at < t1 AND l.presence
			 WHERE e.active IS NULL OR e.active @> (l.at AT TIME ZONE k.time_zone)::date
			UNION ALL
			SELECT e.person_id, il.at, ia.account_id, false
			  FROM eligible e
			  JOIN accounts ia ON ia.client_id = home AND ia.person_id = e.person_id
							  AND ia.kind = 'individual' AND NOT ia.is_machine AND ia.realm = 'app'
			  JOIN logons il ON il.client_id = home AND il.account_id = ia.account_id
							AND il.at >= t0 AND il.at < t1 AND il.presence
			 WHERE k.shared_billing = 'attribute'
			   AND (e.active IS NULL OR e.active @> (il.at AT TIME ZONE k.time_zone)::date)
			   AND EXISTS (SELECT 1
							 FROM logons sl
							 JOIN accounts sa ON sa.client_id = home AND sa.account_id = sl.account_id
											 AND sa.kind = 'shared' AND NOT sa.is_machine
											 AND sa.realm = ANY (k.count_realms)
							WHERE sl.client_id = home AND sl.device_id = il.device_id
							  AND sl.at >= t0 AND sl.at < t1 AND sl.presence
							  AND il.at >= sl.at - k.attribution_window
							  AND il.at <= coalesce(sl.ended, sl.at + k.default_session) + k.attribution_window)),
		seen AS (
			SELECT ev.person_id, min(ev.at) AS first_seen, max(ev.at) AS last_seen,
				   count(DISTINCT (ev.at AT TIME ZONE k.time_zone)::date)::integer AS days_active,
				   bool_or(ev.by_logon) AS by_logon, array_agg(DISTINCT ev.account_id) AS account_ids
			  FROM evidence ev
			 GROUP BY ev.person_id),
		support AS (
			SELECT e.person_id, count(*)::integer AS contacts, min(s.at) AS first_at, max(s.at) AS last_at
			  FROM eligible e
			  JOIN support_contacts s ON s.client_id = home AND s.person_id = e.person_id
									 AND s.at >= t0 AND s.at < t1
			 WHERE e.active IS NULL OR e.active @> (s.at AT TIME ZONE k.time_zone)::date
			 GROUP BY e.person_id)
		SELECT e.person_id, e.pseudonym,
			   CASE
				   WHEN s.days_active >= k.min_active_days AND sp.contacts > 0 AND k.support_rule <> 'none'
					   THEN CASE WHEN s.by_logon THEN 'logon+support' ELSE 'shared-attributed+support' END
				   WHEN s.days_active >= k.min_active_days
					   THEN CASE WHEN s.by_logon THEN 'logon' ELSE 'shared-attributed' END
				   ELSE 'support'
			   END,
			   least(s.first_seen, sp.first_at), greatest(s.last_seen, sp.last_at),
			   coalesce(s.days_active, 0), coalesce(sp.contacts, 0),
			   CASE WHEN with_evidence
					THEN ARRAY(SELECT x.label FROM (
								SELECT CASE WHEN l.kind IN ('shared', 'service') OR names THEN l.label
											ELSE l.realm || ' account ' || l.account_id END AS label
								  FROM account_labels l
								 WHERE l.client_id = home AND l.account_id = ANY (s.account_ids)) x
								ORDER BY x.label) END,
			   home
		  FROM eligible e
		  LEFT JOIN seen s ON s.person_id = e.person_id
		  LEFT JOIN support sp ON sp.person_id = e.person_id
		 WHERE CASE k.support_rule
				   WHEN 'none' THEN coalesce(s.days_active, 0) >= k.min_active_days
				   WHEN 'sufficient' THEN coalesce(s.days_active, 0) >= k.min_active_days OR sp.contacts > 0
				   ELSE coalesce(s.days_active, 0) >= k.min_active_days AND sp.contacts > 0
			   END
		 ORDER BY e.pseudonym;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_users(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment of a period (sister clients'' people it pays for included), with the rule and evidence';

CREATE OR REPLACE FUNCTION @extschema@.msp_compute_invoice(client_id bigint, period daterange DEFAULT NULL)
RETURNS @extschema@.invoice
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	seg record;
	q segment_quantities;
	line invoice_line;
	inv invoice;
	models text[] := '{}';
	segments integer := 0;
BEGIN
	period := msp_period(client_id, period);
	PERFORM msp_check_currency(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	inv := (c.client_id, c.name, period, NULL, 0, 0, 0, 0, 0, c.currency)::invoice;
	FOR seg IN SELECT * FROM msp_contract_segments(client_id, period) LOOP
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id
			AND contracts.contract_id = seg.contract_id;
		q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period);
		segments := segments + 1;
		IF NOT k.model = ANY (models) THEN
			models := models || k.model;
		END IF;
		-- a seat billed by two contracts of the month is one seat
		inv.seats := greatest(inv.seats, q.seat_count);
		FOR line IN SELECT * FROM msp_segment_lines(c, k, seg.segment, period, q, k.model) LOOP
			inv.total := inv.total + line.amount;
			IF line.basis <> 'minimum' THEN
				inv.subtotal := inv.subtotal + line.amount;
			END IF;
		END LOOP;
	END LOOP;
	-- one contract all month (the usual case): its people are the period's,
	-- counted already; across contracts a person counted by two is one
	inv.users := CASE WHEN segments = 1 THEN q.user_count ELSE msp_period_people(client_id, period) END;
	inv.devices := msp_period_devices(client_id, period);
	inv.model := array_to_string(models, '+');
	-- adjustments of earlier invoices carried by this one
	inv.total := inv.total + coalesce((SELECT sum(amount) FROM msp_adjustment_lines(client_id, period)), 0);
	inv.subtotal := msp_round(inv.subtotal, c.minor_unit);
	inv.total := msp_round(inv.total, c.minor_unit);
	RETURN inv;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_compute_invoice(bigint, daterange) IS
	'the invoice of a client for a period as today''s data prices it, finalized or not';

CREATE OR REPLACE FUNCTION @extschema@.msp_line_items(c @extschema@.clients, k @extschema@.contracts,
											segment daterange, period daterange,
											q @extschema@.segment_quantities, lines @extschema@.line_terms[])
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	t line_terms;
	b record;
	cp record;
	n integer := 0;
	seg_days integer := upper(segment) - lower(segment);
	period_days integer := upper(period) - lower(period);
	prorate boolean;
	covered integer;
	units numeric;
	unit_days numeric;
	m numeric;
	md numeric;
	bands integer;
	line_total numeric;
	amount numeric;
	floor_fee numeric;
	discounted daterange;
	dd integer;
	users_loaded boolean := false;
	user_count integer;
	user_segment_days numeric;
	share numeric;
	homes bigint[];
	ids bigint[];
	home bigint;
	n_home integer;
	days_home numeric;
	label text := CASE WHEN segment = period THEN ''
					   ELSE format(' (%s to %s)', lower(segment), upper(segment) - 1) END;
BEGIN
	FOR t IN SELECT * FROM unnest(lines) x ORDER BY x.line_no LOOP
		-- a preset whose model price is missing bills nothing, as the model does
		CONTINUE WHEN t.source <> 'cost_pool' AND t.unit_price IS NULL;
		-- a sum of readings is already the segment's: never prorated again
		prorate := t.prorate AND NOT (t.source = 'meter' AND t.meter_rule = 'sum');
		covered := CASE WHEN prorate THEN seg_days ELSE period_days END;
		line_total := 0;

		IF t.source = 'cost_pool' THEN
			-- one line per pool, rounded per line (as cost-plus bills)
			-- (each share computed outside the query that lists the pools:
			-- on Citus no function that reads tables runs inside a query on
			-- a shard)
			FOR cp IN
				SELECT x.pool_id, x.description, x.category
				  FROM cost_pools x
				 WHERE x.client_id = c.client_id AND x.period && segment
				   AND (t.pool_category IS NULL OR x.category = t.pool_category)
				 ORDER BY x.pool_id
			LOOP
				share := msp_pool_share(c.client_id, cp.pool_id, period, segment);
				amount := msp_round(share * (1 + t.markup), c.minor_unit);
				n := n + 1;
				RETURN NEXT (n, k.contract_id,
							 format('%s: %s (cost %s, markup %s%%)%s', t.description, cp.description, share,
									trim_scale(round(t.markup * 100, 2)), label),
							 1::numeric, amount, amount, 'cost')::invoice_line;
				line_total := line_total + amount;
			END LOOP;
		ELSE
			IF t.source = 'users' THEN
				IF NOT users_loaded THEN
					-- the people the contract's policy counts, and the days
					-- of the segment each is active
					-- (read in each person's own client, client_id = that
					-- client, so that Citus reads one shard per client)
					SELECT array_agg(u.home_client_id), array_agg(u.person_id) INTO homes, ids
					  FROM msp_segment_users(c.client_id, k.contract_id, segment, false) u;
					user_count := 0;
					user_segment_days := 0;
					FOREACH home IN ARRAY ARRAY(SELECT DISTINCT h FROM unnest(homes) h ORDER BY 1) LOOP
						SELECT count(*)::integer,
							   coalesce(sum(upper(coalesce(p.active, segment) * segment)
											- lower(coalesce(p.active, segment) * segment)), 0)
						  INTO n_home, days_home
						  FROM people p
						 WHERE p.client_id = home
						   AND p.person_id = ANY (ARRAY(SELECT x.id FROM unnest(homes, ids) x(h, id) WHERE x.h = home));
						user_count := user_count + n_home;
						user_segment_days := user_segment_days + days_home;
					END LOOP;
					users_loaded := true;
				END IF;
				units := user_count;
				unit_days := CASE WHEN prorate THEN user_segment_days ELSE user_count * period_days END;
			ELSIF t.source = 'seats' THEN
				units := q.seat_count;
				unit_days := q.seat_count * covered;
			ELSIF t.source = 'devices' THEN
				SELECT count(*),
					   coalesce(sum(CASE WHEN prorate
										 THEN upper(coalesce(dv.active, segment) * segment)
											  - lower(coalesce(dv.active, segment) * segment)
										 ELSE period_days END), 0)
				  INTO units, unit_days
				  FROM devices dv
				 WHERE dv.client_id = c.client_id AND (dv.active IS NULL OR dv.active && segment)
				   AND (t.device_kind IS NULL OR dv.kind = t.device_kind);
			ELSIF t.source = 'licenses' THEN
				-- each SKU's latest count on or before the segment's last day
				SELECT coalesce(sum(x.seats), 0) INTO units
				  FROM (SELECT DISTINCT ON (lc.sku) lc.seats
						  FROM license_counts lc
						 WHERE lc.client_id = c.client_id AND lc.as_of < upper(segment)
						   AND (t.sku IS NULL OR lc.sku = t.sku)
						 ORDER BY lc.sku, lc.as_of DESC, lc.source) x;
				unit_days := units * covered;
			ELSIF t.source = 'meter' THEN
				IF t.meter_rule = 'last' THEN
					SELECT r.quantity INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter AND r.day < upper(segment)
					 ORDER BY r.day DESC LIMIT 1;
				ELSIF t.meter_rule = 'peak' THEN
					SELECT max(r.quantity) INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter
					   AND r.day >= lower(segment) AND r.day < upper(segment);
				ELSE
					SELECT sum(r.quantity) INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter
					   AND r.day >= lower(segment) AND r.day < upper(segment);
				END IF;
				units := coalesce(units, 0);
				unit_days := units * covered;
			ELSE
				-- fixed: one unit for the days covered
				units := 1;
				unit_days := covered;
			END IF;

			-- the minimum raises the count (for the tier) and the days
			m := greatest(units, t.minimum_quantity);
			md := greatest(unit_days, t.minimum_quantity * covered);
			-- no seat at all is no seats line, as the per-user models bill it
			m := CASE WHEN t.source = 'seats' AND m = 0 THEN NULL ELSE m END;
			SELECT count(*) INTO bands
			  FROM msp_line_bands(m, t.unit_price, t.tier_mode, t.tier_from, t.tier_price);
			FOR b IN
				SELECT x.first_unit, x.units, x.unit_price, x.first_unit + x.units - 1 AS last_unit,
					   CASE WHEN m > 0 THEN x.units * md ELSE 0 END AS num,
					   CASE WHEN m > 0 THEN m * period_days ELSE 1 END AS den
				  FROM msp_line_bands(m, t.unit_price, t.tier_mode, t.tier_from, t.tier_price) x
				 ORDER BY x.first_unit
			LOOP
				amount := msp_round(b.num * b.unit_price / b.den, c.minor_unit);
				n := n + 1;
				RETURN NEXT (n, k.contract_id,
							 CASE WHEN t.source = 'fixed' THEN t.description
								  ELSE format('%s: %s', t.description, trim_scale(round(units, 4))) END
							 || CASE WHEN m > units THEN format(', minimum %s', trim_scale(t.minimum_quantity)) ELSE '' END
							 || CASE WHEN bands > 1 THEN format(', units %s to %s', trim_scale(b.first_unit),
															   trim_scale(ceil(b.last_unit))) ELSE '' END
							 || label,
							 b.num / b.den, b.unit_price, amount,
							 CASE t.source WHEN 'users' THEN 'user' WHEN 'seats' THEN 'seat' WHEN 'devices' THEN 'device'
										   WHEN 'licenses' THEN 'license' ELSE t.source END)::invoice_line;
				line_total := line_total + amount;
			END LOOP;
		END IF;

		-- the line's own minimum fee, for the days it covers
		floor_fee := msp_round(t.minimum_fee * covered / period_days, c.minor_unit);
		IF line_total < floor_fee THEN
			amount := floor_fee - line_total;
			n := n + 1;
			RETURN NEXT (n, k.contract_id, format('%s: minimum fee top-up%s', t.description, label),
						 1::numeric, amount, amount, 'minimum')::invoice_line;
			line_total := floor_fee;
		END IF;

		-- the discount, for the days of the segment inside its range
		IF t.discount_percent IS NOT NULL OR t.discount_amount IS NOT NULL THEN
			discounted := segment * coalesce(t.discount_period, segment);
			dd := upper(discounted) - lower(discounted);
			IF dd > 0 AND line_total > 0 THEN
				IF t.discount_percent IS NOT NULL THEN
					amount := msp_round(line_total * t.discount_percent * dd / (100 * seg_days), c.minor_unit);
				ELSE
					-- a month's amount: the days discounted of the month, or
					-- whole without proration
					amount := msp_round(CASE WHEN prorate THEN t.discount_amount * dd / period_days
											 ELSE t.discount_amount END, c.minor_unit);
				END IF;
				amount := least(amount, line_total);
				IF amount > 0 THEN
					n := n + 1;
					RETURN NEXT (n, k.contract_id,
								 format('%s: %s off%s', t.description,
										CASE WHEN t.discount_percent IS NOT NULL
											 THEN trim_scale(t.discount_percent) || '%'
											 ELSE trim_scale(t.discount_amount)::text END,
										CASE WHEN discounted = segment THEN label
											 ELSE format(' (%s to %s)', lower(discounted), upper(discounted) - 1) END),
								 1::numeric, -amount, -amount, 'discount')::invoice_line;
				END IF;
			END IF;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_line_items(@extschema@.clients, @extschema@.contracts, daterange, daterange, @extschema@.segment_quantities, @extschema@.line_terms[]) IS
	'the invoice lines a set of line terms bills in one contract segment: per line its bands, minimum fee top-up and discount';

CREATE OR REPLACE FUNCTION @extschema@.msp_distributed_functions()
RETURNS TABLE (fn regprocedure, force_delegation boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT x.fn::regprocedure, x.force
	  FROM (VALUES
		('@extschema@.msp_invoice(bigint, daterange)', false),
		('@extschema@.msp_compute_invoice(bigint, daterange)', false),
		('@extschema@.msp_invoice_lines(bigint, daterange)', false),
		('@extschema@.msp_billable_users(bigint, daterange)', false),
		('@extschema@.msp_compare_models(bigint, daterange)', false),
		('@extschema@.msp_cost_allocation(bigint, daterange)', false),
		('@extschema@.msp_invoice_drift(bigint, daterange)', false),
		('@extschema@.msp_finalize_invoice(bigint, daterange, text[])', false),
		('@extschema@.msp_issue_adjustment(bigint, daterange, text)', false),
		('@extschema@.msp_data_quality(bigint, daterange, integer)', true),
		('@extschema@.msp_pii_audit(bigint, daterange, interval)', true),
		('@extschema@.msp_pii_audit_summary(bigint, daterange)', true),
		('@extschema@.msp_shard_invoices(bigint, daterange)', false)) x(fn, force);
END;
COMMENT ON FUNCTION @extschema@.msp_distributed_functions() IS
	'the per-client functions msp_distribute() registers with Citus, and whether calls in a transaction block are delegated too';

CREATE OR REPLACE FUNCTION @extschema@.msp_distribute(shard_count integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- the small shared tables: invoice_numbering is the MSP's one number
	-- series, whose row each finalization locks wherever it runs (Citus
	-- writes a reference table on every node in one transaction and
	-- serializes its writers cluster-wide), export_codes the MSP's books,
	-- license_product_names the licences' spellings, partner_companies the
	-- vendors' company names (unique across clients), sister_clients the
	-- pairs of clients whose invoices read each other's people (so that an
	-- invoice finds them on its own node)
	ref_tables text[] := '{clients,bi_client_access,invoice_numbering,export_codes,license_product_names,partner_companies,sister_clients}';
	-- the first distributed table names the co-location group of all
	anchor regclass := '@extschema@.contracts'::regclass;
	todo regclass[];
	t regclass;
	progress boolean;
	n_ref integer := 0;
	n_dist integer := 0;
	n_fn integer := 0;
	f record;
	s record;
	is_coord boolean;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'Citus is not installed in this database'
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() distributes mspbill''s tables on a Citus cluster; on one server there is nothing to do.',
				  HINT = 'On the coordinator (citus in shared_preload_libraries): CREATE EXTENSION citus; add the workers with citus_add_node(); then SELECT mspbill.msp_distribute();';
	END IF;
	EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO is_coord;
	IF NOT is_coord THEN
		RAISE EXCEPTION 'msp_distribute() runs on the Citus coordinator only'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'This node is not the coordinator of its cluster.',
				  HINT = 'Connect to the coordinator (or register it with citus_set_coordinator_host()) and call it there.';
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'msp_distribute() must be run by a superuser'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'It distributes tables and sets the sequences of every node.',
				  HINT = 'Connect as the superuser that created the extension.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gist') THEN
		RAISE EXCEPTION 'msp_distribute() needs the extension btree_gist'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'On Citus, the one-contract-per-day and one-invoice-per-period exclusion constraints must name client_id itself, which needs btree_gist''s equality for bigint.',
				  HINT = 'CREATE EXTENSION btree_gist; on the coordinator (Citus creates it on the workers), then call msp_distribute() again.';
	END IF;

	-- Every table it will distribute has a client_id: checked before
	-- anything changes, since the statements run on the workers
	-- (run_command_on_workers) commit there even if this call fails later
	FOR t IN
		SELECT c.oid::regclass FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
		   AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
		   AND c.relname <> ALL (ref_tables)
		   AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'client_id' AND NOT a.attisdropped)
	LOOP
		RAISE EXCEPTION 'table % has no client_id to distribute it by', t
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() changed nothing.',
				  HINT = 'Every mspbill table is keyed by client_id; a table added by hand must be distributed (or dropped) by hand first.';
	END LOOP;

	-- 1. Policies: a function call instead of the initplans
	FOR s IN
		SELECT p.polrelid::regclass AS rel, p.polname
		  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace
		   AND p.polname IN ('client_rows', 'own_rows')
		   AND NOT @extschema@.msp_is_distributed(p.polrelid)
	LOOP
		IF s.polname = 'own_rows' THEN
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY own_rows ON %s USING (@extschema@.msp_sees_all_clients() OR @extschema@.msp_has_role(role_name))', s.rel));
		ELSE
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY client_rows ON %s USING (%s)', s.rel, @extschema@.msp_client_policy(true)));
		END IF;
	END LOOP;

	-- 2. Exclusion constraints that name client_id itself (btree_gist)
	IF NOT @extschema@.msp_is_distributed('@extschema@.contracts') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.contracts DROP CONSTRAINT contracts_no_overlap, '
								 'ADD CONSTRAINT contracts_no_overlap EXCLUDE USING gist (client_id WITH =, effective WITH &&)');
	END IF;
	IF NOT @extschema@.msp_is_distributed('@extschema@.invoices') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.invoices DROP CONSTRAINT invoices_no_overlap, '
								 'ADD CONSTRAINT invoices_no_overlap EXCLUDE USING gist (client_id WITH =, period WITH &&) WHERE (kind = ''invoice'')');
	END IF;

	-- 3. Triggers: Citus distributes no table that has any.  Finalized rows
	-- stay facts through privileges (only the owner may write them) and,
	-- for the owner itself, restrictive policies that refuse UPDATE and
	-- DELETE to everyone but a superuser (who bypasses row-level security,
	-- as the triggers let a superuser through).
	-- (the tables whose triggers refuse changes, as they are before the
	-- triggers go: invoices, items, audit log, documents, PSA syncs)
	FOR t IN
		SELECT DISTINCT tg.tgrelid::regclass FROM pg_trigger tg
		 WHERE tg.tgfoid = '@extschema@.msp_refuse_change()'::regprocedure AND NOT tg.tgisinternal
		   AND NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = tg.tgrelid AND polname = 'finalized_no_update')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_update ON %s AS RESTRICTIVE FOR UPDATE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_delete ON %s AS RESTRICTIVE FOR DELETE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t));
	END LOOP;
	FOR s IN
		SELECT tg.tgrelid::regclass AS rel, tg.tgname
		  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND NOT tg.tgisinternal
		   AND tg.tgparentid = 0
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('DROP TRIGGER %I ON %s', s.tgname, s.rel));
	END LOOP;

	-- Foreign keys that set a column NULL when their row goes (a PSA
	-- ticket's person): Citus refuses SET NULL on a key that includes
	-- client_id, so on Citus such a delete is refused instead (clear the
	-- column first)
	FOR s IN
		SELECT k.conrelid::regclass AS rel, k.conname, pg_get_constraintdef(k.oid) AS def
		  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND k.contype = 'f' AND k.confdeltype IN ('n', 'd')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
													s.rel, s.conname, s.conname,
													regexp_replace(s.def, ' ON DELETE SET (NULL|DEFAULT)( \([^)]*\))?', '')));
	END LOOP;

	-- Sister clients: every pair people name now, then a foreign key in
	-- place of the trigger that kept the table (dropped above)
	IF NOT @extschema@.msp_is_distributed('@extschema@.people') THEN
		INSERT INTO @extschema@.sister_clients (client_id, bill_to_client_id)
		SELECT DISTINCT p.client_id, p.bill_to_client_id FROM @extschema@.people p
		 WHERE p.bill_to_client_id IS NOT NULL
		ON CONFLICT DO NOTHING;
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.people ADD CONSTRAINT people_sister_client_declared '
								 'FOREIGN KEY (client_id, bill_to_client_id) REFERENCES @extschema@.sister_clients');
	END IF;

	-- 4. The small shared tables on every node (the client-keyed tables
	-- that reference clients are distributed next: Citus must not turn
	-- them into local tables of its metadata meanwhile)
	PERFORM set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
	FOREACH t IN ARRAY (SELECT array_agg(format('@extschema@.%I', x)::regclass) FROM unnest(ref_tables) x) LOOP
		IF NOT @extschema@.msp_is_distributed(t) THEN
			-- Citus copies the rows to every node in one COPY per node; the
			-- time zone check's exception block (a subtransaction) would
			-- interrupt it on the coordinator's own copy.  The rows passed
			-- the check already; it is put back once the table is copied.
			IF t = '@extschema@.clients'::regclass THEN
				PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.clients DROP CONSTRAINT clients_time_zone_known');
			END IF;
			EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING t;
			IF t = '@extschema@.clients'::regclass THEN
				ALTER TABLE @extschema@.clients ADD CONSTRAINT clients_time_zone_known
					CHECK (@extschema@.msp_valid_time_zone(time_zone));
			END IF;
			n_ref := n_ref + 1;
		END IF;
	END LOOP;

	-- 5. Every other table of the schema by client_id, co-located, each
	-- after the tables its foreign keys name
	todo := ARRAY(SELECT c.oid::regclass FROM pg_class c
				   WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
					 AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
				   ORDER BY c.oid <> anchor, c.relname);
	LOOP
		progress := false;
		FOREACH t IN ARRAY todo LOOP
			CONTINUE WHEN @extschema@.msp_is_distributed(t);
			CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint k
								   WHERE k.conrelid = t AND k.contype = 'f' AND k.confrelid <> t
									 AND NOT @extschema@.msp_is_distributed(k.confrelid));
			IF t = anchor THEN
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => ''none'', shard_count => $2)'
					USING t, coalesce(shard_count, current_setting('citus.shard_count')::integer);
			ELSE
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => $2)'
					USING t, anchor::text;
			END IF;
			n_dist := n_dist + 1;
			progress := true;
		END LOOP;
		EXIT WHEN NOT progress;
	END LOOP;

	-- 6. Sequences: each node numbers from its own range (its group id in
	-- the top bits, as Citus does for the sequences it owns), so that ids
	-- written on workers (delegated finalizations, loads) never collide
	FOR s IN
		SELECT c.oid::regclass AS seq FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind = 'S'
	LOOP
		EXECUTE format($cmd$SELECT pg_catalog.run_command_on_workers(%L)$cmd$,
					   format($w$SELECT pg_catalog.setval(%L, greatest(last_value, (SELECT groupid::bigint << 48 FROM pg_catalog.pg_dist_local_group)), true) FROM %s$w$,
							  s.seq, s.seq));
	END LOOP;

	-- 7. Per-client functions run on the worker that holds the client
	FOR f IN SELECT * FROM @extschema@.msp_distributed_functions() LOOP
		EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''$1''::text, colocate_with => $2, force_delegation => $3)'
			USING f.fn, anchor::text, f.force_delegation;
		n_fn := n_fn + 1;
	END LOOP;

	RETURN format('%s reference tables, %s distributed tables, %s delegated functions', n_ref, n_dist, n_fn);
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_distribute(integer) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_distribute(integer) IS
	'on a Citus coordinator: makes clients and bi_client_access reference tables, distributes every other table by client_id (co-located), and delegates the per-client functions to the worker that holds the client';

CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.sister_clients, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications, '
						'@extschema@.invoice_terms, @extschema@.tax_rates, @extschema@.psa_mappings, @extschema@.export_codes, '
						'@extschema@.contract_lines, @extschema@.contract_line_tiers, @extschema@.meter_readings, '
						-- licensing (src/licensing.sql): mappings and the loaded snapshots
						'@extschema@.license_policies, @extschema@.partner_companies, @extschema@.psa_contacts, '
						'@extschema@.m365_sku_counts, @extschema@.m365_license_assignments, @extschema@.pax8_subscriptions';
	-- read by every role that reads invoices, written only by the definers
	-- (the number series: see below)
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items, @extschema@.invoice_documents, '
						  '@extschema@.invoice_line_documents, @extschema@.psa_syncs';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging, '
					'@extschema@.m365_graph_staging, @extschema@.m365_users_csv_staging, @extschema@.m365_activity_staging, '
					'@extschema@.pax8_staging, @extschema@.psa_ticket_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq, @extschema@.m365_graph_staging_line_no_seq, '
						 '@extschema@.m365_users_csv_staging_line_no_seq, @extschema@.m365_activity_staging_line_no_seq, '
						 '@extschema@.pax8_staging_line_no_seq, @extschema@.psa_ticket_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_psa_sync(bigint, daterange), '
					'@extschema@.msp_load_m365_graph(bigint, date, text), '
					'@extschema@.msp_load_m365_users_csv(bigint, date, text), '
					'@extschema@.msp_load_m365_activity(bigint, text), '
					'@extschema@.msp_load_pax8_subscriptions(bigint, date, text), '
					'@extschema@.msp_load_psa_tickets(bigint, text, text), '
					'@extschema@.msp_match_psa_tickets(bigint)';
	-- licence names are not per client: those who load maintain them (BI
	-- needs none, and would read their column statistics)
	product_names text := '@extschema@.license_product_names';
	-- PSA tickets without the contact (an e-mail or PSA id) for those who see no names
	ticket_cols text := 'client_id, psa, ticket_id, at, company, board, channel, person_id, contact_id';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE 'GRANT SELECT, DELETE ON @extschema@.psa_tickets TO mspbill_admin';
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s, @extschema@.logons_logon_id_seq TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);

	-- the number series: chosen before the first invoice (prefix, digits,
	-- the number another system stopped at), never set back afterwards
	EXECUTE 'GRANT SELECT, INSERT (series, prefix, digits, last_number), UPDATE (prefix, digits) '
			'ON @extschema@.invoice_numbering TO mspbill_admin, mspbill_billing';

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.psa_tickets TO mspbill_billing, mspbill_bi', ticket_cols);
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_admin, mspbill_billing', product_names);
	EXECUTE 'GRANT SELECT ON @extschema@.psa_unknown_contacts TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
-- for DBAs only: it creates roles and grants
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';

CREATE FUNCTION @extschema@.msp_shard_invoices(client_id bigint, period daterange) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	ids bigint[];
	id bigint;
	out jsonb := '[]';
BEGIN
	IF @extschema@.msp_is_distributed('@extschema@.contracts') THEN
		EXECUTE 'SELECT array_agg(c.client_id ORDER BY c.client_id) FROM @extschema@.clients c
				  WHERE pg_catalog.get_shard_id_for_distribution_column(''@extschema@.contracts'', c.client_id)
						= pg_catalog.get_shard_id_for_distribution_column(''@extschema@.contracts'', $1)'
			INTO ids USING client_id;
	ELSE
		-- one node, one shard per client as far as this function goes:
		-- a client the reader may not see is refused by msp_invoice
		ids := ARRAY[client_id];
	END IF;
	FOREACH id IN ARRAY coalesce(ids, '{}') LOOP
		out := out || jsonb_build_array(to_jsonb(msp_invoice(id, period)));
	END LOOP;
	RETURN out;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_shard_invoices(bigint, daterange) IS
	'the invoices of the clients in client_id''s shard (without Citus: its own), as a JSON array; msp_invoices() calls it once per shard';

CREATE FUNCTION @extschema@.msp_invoices(period daterange DEFAULT NULL)
RETURNS SETOF @extschema@.invoice
-- (PARALLEL RESTRICTED: on Citus it opens connections to the workers)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	id bigint;
	r record;
	parts jsonb := '[]';
BEGIN
	IF NOT msp_is_distributed('@extschema@.contracts') THEN
		FOR id IN SELECT c.client_id FROM clients c ORDER BY 1 LOOP
			RETURN NEXT msp_invoice(id, period);
		END LOOP;
		RETURN;
	END IF;
	-- one call per shard, over a connection per shard to the worker that
	-- holds it, all at once (master_run_on_worker, which Citus's own
	-- run_command_on_shards uses); each names one client of its shard
	FOR r IN EXECUTE
		'SELECT w.success, w.result
		   FROM (SELECT array_agg(p.nodename) AS nodes, array_agg(p.nodeport) AS ports,
						array_agg(format(''SELECT @extschema@.msp_shard_invoices(%s, %L)'', s.client_id, $1)) AS commands
				   FROM (SELECT min(c.client_id) AS client_id,
								pg_catalog.get_shard_id_for_distribution_column(''@extschema@.contracts'', c.client_id) AS shardid
						   FROM @extschema@.clients c GROUP BY 2) s
				   JOIN pg_catalog.pg_dist_shard_placement p ON p.shardid = s.shardid) x,
				pg_catalog.master_run_on_worker(x.nodes, x.ports, x.commands, true) w'
		USING period
	LOOP
		IF NOT r.success THEN
			RAISE EXCEPTION '%', r.result
				USING ERRCODE = 'data_exception',
					  DETAIL = 'A worker could not price the invoices of one shard of clients.',
					  HINT = 'Price the client it names alone (SELECT * FROM mspbill.msp_invoice(client_id, period)) to see the whole error.';
		END IF;
		parts := parts || r.result::jsonb;
	END LOOP;
	RETURN QUERY SELECT i.* FROM jsonb_populate_recordset(NULL::invoice, parts) i ORDER BY i.client_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoices(daterange) IS
	'every client''s invoice for a period (default: each client''s last full month), as msp_invoice gives it; on Citus computed on the workers in parallel';




-- logsources (issue 19 items 6-10, issue 21 items 3-4): logons as they really arrive.

-- pending_logoffs holds the logoffs loaded before their logon.
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

-- The indexes of logons, each for a query that needs it: the primary key
-- (client_id, at, logon_id) becomes a plain index on (client_id, at) (no
-- query looks a logon up by its id); the BRIN index on at served no
-- query; the duplicate key indexes only rows that have an event id.
ALTER TABLE @extschema@.logons DROP CONSTRAINT logons_pkey;
DROP INDEX @extschema@.logons_at_brin;
DROP INDEX @extschema@.logons_source_event_key;
CREATE INDEX logons_client_at_idx ON @extschema@.logons (client_id, at);
CREATE UNIQUE INDEX logons_source_event_key ON @extschema@.logons (client_id, source, source_event_id, at)
	WHERE source_event_id IS NOT NULL;

-- msp_load_normalized leaves conflicts to the unique index (a rejected
-- record) instead of ON CONFLICT.
-- Shared last step of every loader: the normalized events of one load, in
-- pg_temp.msp_load_events, become accounts (kind unknown until mapped),
-- devices and logons.  Returns (loaded, duplicate).
-- The source's event id is unique per client, whatever the time: of the
-- events of one load with the same id the first by line loads, and an
-- event whose id is already in logons (this client, this source; found
-- through the leading columns of logons_source_event_key) is a duplicate,
-- even with another time.  The unique index cannot say so itself: logons
-- is partitioned by time, so its key must include at.  Loads of a client
-- take turns (msp_load_begin), so this check-then-insert cannot race; a
-- row written meanwhile by hand with the same key and time makes the
-- insert fail, and the guarded caller rejects that record.
CREATE OR REPLACE FUNCTION @extschema@.msp_load_normalized(for_client bigint, load_source text,
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

	INSERT INTO @extschema@.accounts (client_id, realm, name, kind, application)
	SELECT for_client, n.realm, n.account_name, 'unknown', n.application
	  FROM (SELECT DISTINCT e.realm, e.account_name, e.application FROM pg_temp.msp_load_events e) n
	 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.accounts a
						WHERE a.client_id = for_client AND a.realm = n.realm
						  AND lower(a.name) = lower(n.account_name)
						  AND coalesce(a.application, '') = coalesce(n.application, ''))
	 ORDER BY n.realm, n.account_name;

	-- a device found in an export is billable from the day it was first seen
	INSERT INTO @extschema@.devices (client_id, name, kind, active)
	SELECT for_client, n.device_name, 'other',
		   daterange((n.first_at AT TIME ZONE (SELECT c.time_zone FROM @extschema@.clients c WHERE c.client_id = for_client))::date, NULL)
	  FROM (SELECT e.device_name, min(e.at) AS first_at FROM pg_temp.msp_load_events e
			 WHERE e.device_name IS NOT NULL AND e.create_device GROUP BY e.device_name) n
	 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.devices d WHERE d.client_id = for_client
						  AND upper(d.name) = upper(n.device_name))
	 ORDER BY n.device_name;

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
		 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.logons l
							WHERE l.client_id = for_client AND l.source = load_source
							  AND l.source_event_id = e.source_event_id)
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	DROP TABLE pg_temp.msp_account_map, pg_temp.msp_device_map;
	duplicate := (SELECT count(*) FROM pg_temp.msp_load_events) - loaded;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_normalized(bigint, text) IS
	'internal: accounts, devices and logons from the normalized events of one load';

-- msp_load_windows_events reads the event's own time, loads linked logons
-- once, makes unlocks instants and reports the held logoffs (a new OUT
-- column, so it is dropped and created again; msp_install_roles() grants
-- it again).
DROP FUNCTION @extschema@.msp_load_windows_events(bigint, text);
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
AS $$
#variable_conflict use_variable
DECLARE
	lo bigint;
	hi bigint;
	zone text;
BEGIN
	-- a NULL source would make every event id unique (NULLs are distinct)
	source := coalesce(source, 'windows');
	PERFORM @extschema@.msp_load_begin(client_id);
	SELECT c.time_zone INTO zone FROM @extschema@.clients c WHERE c.client_id = client_id;
	-- the first and last line by the index (an aggregate would read every line)
	lo := (SELECT s.line_no FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id ORDER BY s.line_no LIMIT 1);
	hi := (SELECT s.line_no FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id ORDER BY s.line_no DESC LIMIT 1);
	CREATE TEMP TABLE msp_win_class (
		line_no bigint PRIMARY KEY,
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
	-- One pass over the stage keeps only the fields a logon needs, NXLog's
	-- top-level ones or Winlogbeat's (winlog.*), without building a jsonb of
	-- every (mostly irrelevant, often large) record.
	PERFORM @extschema@.msp_load_guarded($step$
		INSERT INTO pg_temp.msp_win_class (line_no, event_id, at_field, at_text, host, username, domain, logon_type,
										   logon_id, linked_id, record, class)
		SELECT e.line_no, e.event_id, e.at_field, e.at_text, e.host, e.username, e.domain, e.logon_type, e.logon_id,
			   e.linked_id, e.record,
			   CASE
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
			   END
		  FROM (SELECT s.line_no, f IS NULL AS bad_json,
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
					   coalesce(f[11], wl.winlog->>'record_id', md5(s.raw)) AS record
				  FROM @extschema@.windows_event_staging s,
					   LATERAL @extschema@.msp_json_fields(s.raw, '{EventID,EventTime,TimeCreated,@timestamp,Hostname,TargetUserName,TargetDomainName,LogonType,TargetLogonId,TargetLinkedLogonId,RecordNumber,winlog}') AS f,
					   -- a function in FROM runs once per row (a subquery would be pulled up)
					   LATERAL unnest(ARRAY[f[12]::jsonb]) AS wl(winlog)
				 WHERE s.client_id = $1 AND s.line_no BETWEEN $2 AND $3) e
	$step$, $reject$
		INSERT INTO pg_temp.msp_win_class (line_no, class) VALUES ($2, 'reject:unreadable record: ' || $3)
	$reject$, client_id, lo, hi);
	-- times: the batch at once, per record only where one is malformed.
	-- An EventTime without a zone is the client's local time, any other
	-- field's is UTC.  Plain ISO date and time has no zone, one ending in Z
	-- or an offset has its own (both decided without a call per row); any
	-- other is read in UTC and in UTC+14 (msp_timestamptz_plus14), which
	-- agree exactly when PostgreSQL finds a zone in it.
	PERFORM @extschema@.msp_load_guarded(format($step$
		UPDATE pg_temp.msp_win_class
		   SET at = CASE WHEN at_field <> 'EventTime' THEN at_text::timestamptz
						 WHEN at_text ~ '^\s*\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?\s*$'
						 THEN at_text::timestamp AT TIME ZONE %L
						 WHEN at_text ~ '\d:\d\d(:\d\d(\.\d+)?)?\s*(Z|[+-]\d\d(:?\d\d)?)$'
							  OR at_text::timestamptz = @extschema@.msp_timestamptz_plus14(at_text)
						 THEN at_text::timestamptz
						 ELSE at_text::timestamp AT TIME ZONE %L END
		 WHERE class IN ('logon', 'logoff', 'linked') AND line_no BETWEEN $2 AND $3
	$step$, zone, zone), $reject$
		UPDATE pg_temp.msp_win_class SET class = 'reject:invalid ' || at_field WHERE line_no = $2
	$reject$, client_id, lo, hi);
	UPDATE pg_temp.msp_win_class
	   SET class = 'reject:invalid ' || at_field || coalesce(': ' || @extschema@.msp_implausible_time(at_text, at), '')
	 WHERE class IN ('logon', 'logoff', 'linked') AND (at IS NULL OR @extschema@.msp_implausible_time(at_text, at) IS NOT NULL);

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
	WITH hold AS (
		INSERT INTO @extschema@.pending_logoffs AS p (client_id, session_key, at)
		SELECT DISTINCT client_id, s.session_key, s.at
		  FROM pg_temp.msp_win_session s
		 WHERE s.kind = 'logoff' AND s.line_no IS NOT NULL AND NOT s.consumed
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.logons l
							WHERE l.client_id = client_id AND l.session_key = s.session_key AND l.at <= s.at)
		ON CONFLICT DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO held FROM hold;
	-- paired: the logoffs of this load that found their session (in this
	-- load or an earlier one), and the held ones that found it now
	WITH used AS (
		DELETE FROM @extschema@.pending_logoffs p
		 USING pg_temp.msp_win_session s
		 WHERE p.client_id = client_id AND s.line_no IS NULL AND s.consumed
		   AND p.session_key = s.session_key AND p.at = s.at
		RETURNING 1)
	SELECT count(*) INTO paired FROM used;
	paired := paired + (SELECT count(*) FROM pg_temp.msp_win_class c WHERE c.class = 'logoff') - held;
	-- a logoff a month older than the newest event loaded finds no logon any more
	DELETE FROM @extschema@.pending_logoffs p
	 WHERE p.client_id = client_id
	   AND p.at < (SELECT max(c.at) FROM pg_temp.msp_win_class c WHERE c.class IN ('logon', 'logoff', 'linked')) - interval '1 month';

	INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, c.line_no, s.raw, substr(c.class, 8)
	  FROM pg_temp.msp_win_class c JOIN @extschema@.windows_event_staging s ON s.client_id = client_id AND s.line_no = c.line_no
	 WHERE c.class LIKE 'reject:%';
	GET DIAGNOSTICS rejected = ROW_COUNT;
	SELECT count(*) INTO skipped FROM pg_temp.msp_win_class c WHERE c.class IN ('skip', 'linked');
	DELETE FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_win_class, pg_temp.msp_win_session;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_windows_events(bigint, text) IS
	'loads a client''s staged Windows Security events: interactive (2), unlock (7, an instant), remote interactive (10) and cached (11) logons count, linked pairs once; logoffs close sessions in any load order (held until their logon comes); the rest is skipped or rejected';
REVOKE EXECUTE ON FUNCTION @extschema@.msp_load_windows_events(bigint, text) FROM PUBLIC;

-- Entra ID sign-ins as JSON lines or saved Graph responses.
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
CREATE OR REPLACE FUNCTION @extschema@.msp_load_entra_signins(client_id bigint, source text DEFAULT 'entra',
												   OUT loaded bigint, OUT duplicate bigint,
												   OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_variable
DECLARE
	n bigint;
BEGIN
	source := coalesce(source, 'entra');
	PERFORM @extschema@.msp_load_begin(client_id);
	CREATE TEMP TABLE msp_entra_rec ON COMMIT DROP AS
	SELECT r.rec, l.line_nos[r.first_line] AS line_no, r.record, r.is_json
	  FROM (SELECT array_agg(s.line_no ORDER BY s.line_no) AS line_nos, array_agg(s.raw ORDER BY s.line_no) AS raws
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
	PERFORM @extschema@.msp_load_guarded($step$
		INSERT INTO pg_temp.msp_entra_class (line_no, id, upn, created, device, class)
		SELECT e.rec, e.doc->>'id', e.doc->>'userPrincipalName', e.doc->>'createdDateTime',
			   e.doc->'deviceDetail'->>'displayName',
			   CASE
				   WHEN jsonb_typeof(e.doc) <> 'object' THEN 'reject:not a signIn object'
				   WHEN e.doc->>'id' IS NULL THEN 'reject:no id'
				   WHEN coalesce(btrim(e.doc->>'userPrincipalName', E' \t\r\n'), '') = '' THEN 'reject:no userPrincipalName'
				   WHEN e.doc->>'createdDateTime' IS NULL THEN 'reject:no valid createdDateTime'
				   -- names and keys go into btree indexes, which cap a row's size
				   WHEN length(e.doc->>'id') > 255 OR length(e.doc->>'userPrincipalName') > 255
						OR length(e.doc->'deviceDetail'->>'displayName') > 255 THEN 'reject:field too long'
				   WHEN coalesce(e.doc->'status'->>'errorCode', '0') <> '0' THEN 'skip'
				   WHEN e.doc->>'isInteractive' = 'false' THEN 'skip'
				   ELSE 'signin'
			   END
		  FROM (SELECT r.rec, r.record::jsonb AS doc FROM pg_temp.msp_entra_rec r
				 WHERE r.is_json AND r.rec BETWEEN $2 AND $3) e
	$step$, $reject$
		INSERT INTO pg_temp.msp_entra_class (line_no, class)
		VALUES ($2, CASE WHEN $4 = '22P02' THEN 'reject:not valid JSON' ELSE 'reject:unreadable record: ' || $3 END)
	$reject$, client_id, 1, n);
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_entra_class SET at = created::timestamptz
		 WHERE class NOT LIKE 'reject:%' AND line_no BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_entra_class SET class = 'reject:no valid createdDateTime' WHERE line_no = $2
	$reject$, client_id, 1, n);
	UPDATE pg_temp.msp_entra_class
	   SET class = 'reject:no valid createdDateTime' || coalesce(': ' || @extschema@.msp_implausible_time(created, at), '')
	 WHERE class NOT LIKE 'reject:%' AND (at IS NULL OR @extschema@.msp_implausible_time(created, at) IS NOT NULL);

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

-- The EMR loader finds its stage's first and last line by the index and
-- decides plain ISO times by their form.
CREATE OR REPLACE FUNCTION @extschema@.msp_load_emr_audit(client_id bigint, source text DEFAULT 'emr',
											   OUT loaded bigint, OUT duplicate bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_variable
DECLARE
	lo bigint;
	hi bigint;
BEGIN
	source := coalesce(source, 'emr');
	PERFORM @extschema@.msp_load_begin(client_id);
	-- the first and last line by the index (an aggregate would read every line)
	lo := (SELECT s.line_no FROM @extschema@.emr_audit_staging s WHERE s.client_id = client_id ORDER BY s.line_no LIMIT 1);
	hi := (SELECT s.line_no FROM @extschema@.emr_audit_staging s WHERE s.client_id = client_id ORDER BY s.line_no DESC LIMIT 1);
	CREATE TEMP TABLE msp_emr ON COMMIT DROP AS
	SELECT s.line_no, s.user_name, s.workstation, s.event_time, s.action, s.event_id, s.application, c.time_zone,
		   CASE
			   WHEN coalesce(btrim(s.user_name, E' \t\r\n'), '') = '' THEN 'no user'
			   WHEN coalesce(s.event_time, '') = '' THEN 'no time'
			   -- names and keys go into btree indexes, which cap a row's size
			   WHEN length(s.user_name) > 255 OR length(s.workstation) > 255 OR length(s.event_id) > 255
					OR length(s.application) > 255 THEN 'field too long'
		   END AS reason,
		   NULL::timestamptz AS at
	  FROM @extschema@.emr_audit_staging s JOIN @extschema@.clients c USING (client_id)
	 WHERE s.client_id = client_id;
	ALTER TABLE pg_temp.msp_emr ADD PRIMARY KEY (line_no);
	-- A time with a zone (an offset, Z or z, a zone name or abbreviation)
	-- is that instant; a time without one is the client's local time.
	-- Whether it has one is PostgreSQL's reading, not a pattern: read in
	-- UTC (this function's zone) and in UTC+14, a time with its own zone is
	-- the same instant.  A zone PostgreSQL cannot read is an invalid time.
	-- Plain ISO date and time (no zone) and ISO ending in Z or an offset
	-- are decided by their form, without that call per row.
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_emr
		   SET at = CASE WHEN event_time ~ '^\s*\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?\s*$'
						 THEN event_time::timestamp AT TIME ZONE time_zone
						 WHEN event_time ~ '\d:\d\d(:\d\d(\.\d+)?)?\s*(Z|[+-]\d\d(:?\d\d)?)$'
							  OR event_time::timestamptz = @extschema@.msp_timestamptz_plus14(event_time)
						 THEN event_time::timestamptz
						 ELSE event_time::timestamp AT TIME ZONE time_zone END
		 WHERE reason IS NULL AND line_no BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_emr SET reason = 'invalid time' WHERE line_no = $2
	$reject$, client_id, lo, hi);
	UPDATE pg_temp.msp_emr SET reason = 'invalid time' || coalesce(': ' || @extschema@.msp_implausible_time(event_time, at), '')
	 WHERE reason IS NULL AND (at IS NULL OR @extschema@.msp_implausible_time(event_time, at) IS NOT NULL);

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


-- issue 19 (licspeed): the licensing loaders at speed: CSV records split once in C
-- (msp_csv_records), columns found once per header (msp_csv_column replaces
-- msp_csv_field), JSON records scanned once (msp_stage_json takes the keys),
-- each distinct product, company and contact looked up once, jit off
DROP FUNCTION @extschema@.msp_csv_field(text[], text[], text[]);
DROP FUNCTION @extschema@.msp_stage_json(bigint, regclass);

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
CREATE OR REPLACE FUNCTION @extschema@.msp_stage_csv(for_client bigint, stage regclass, key_column text) RETURNS bigint
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
	-- JSON lines (every line starts a document) need no joining of lines
	EXECUTE format($q$
		SELECT NOT EXISTS (SELECT 1 FROM %s s WHERE s.client_id = $1 AND btrim(s.raw, E' \t\r\n') <> ''
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
			  FROM x, LATERAL (SELECT @extschema@.msp_json_fields(ltrim(x.raw, E'\ufeff'), $2) AS f OFFSET 0) y)
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
			  FROM %s s WHERE s.client_id = $1 AND btrim(s.raw, E' \t\r\n') <> '')$x$, stage)
		ELSE
		-- a line that starts a document and is followed by another start
		-- (or by nothing) is one; only the other lines are joined
		format($x$l AS (
			SELECT s.line_no, s.raw, s.raw ~ '^\ufeff?[\[{]' AS starts
			  FROM %s s WHERE s.client_id = $1 AND btrim(s.raw, E' \t\r\n') <> ''),
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

REVOKE EXECUTE ON FUNCTION @extschema@.msp_stage_json(bigint, regclass, text[]) FROM PUBLIC;

-- Microsoft 365 accounts for the UPNs of a load that are not accounts yet
-- (kind unknown until mapped, as the Entra loader creates them), with
-- ids from the identity column moved past hand-chosen ones.
CREATE OR REPLACE FUNCTION @extschema@.msp_ensure_m365_accounts(for_client bigint, upns text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	PERFORM setval(pg_get_serial_sequence('@extschema@.accounts', 'account_id'), m.id)
	   FROM (SELECT max(a.account_id) AS id FROM @extschema@.accounts a WHERE a.client_id = for_client) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.accounts', 'account_id')), 0);
	-- in name order: the name index takes them page by page
	INSERT INTO @extschema@.accounts (client_id, realm, name, kind)
	SELECT for_client, 'm365', n.upn, 'unknown'
	  FROM (SELECT DISTINCT lower(u) AS upn FROM unnest(upns) u) n
	 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.accounts a WHERE a.client_id = for_client AND a.realm = 'm365'
						  AND lower(a.name) = n.upn AND a.application IS NULL)
	 ORDER BY n.upn;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_ensure_m365_accounts(bigint, text[]) IS
	'internal: creates the Microsoft 365 accounts (kind unknown) of UPNs not yet known';

-- Licence assignments from pg_temp.msp_assign (line_no, upn, product,
-- enabled): accounts first, then the day's rows.  Returns (loaded, duplicate).
CREATE OR REPLACE FUNCTION @extschema@.msp_store_assignments(for_client bigint, day date, load_source text,
												  OUT loaded bigint, OUT duplicate bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	PERFORM @extschema@.msp_ensure_m365_accounts(for_client, ARRAY(SELECT DISTINCT x.upn FROM pg_temp.msp_assign x));
	WITH ins AS (
		INSERT INTO @extschema@.m365_license_assignments (client_id, as_of, account_id, product, account_enabled, source)
		SELECT DISTINCT ON (a.account_id, x.product) for_client, day, a.account_id, x.product, x.enabled, load_source
		  FROM pg_temp.msp_assign x
		  JOIN @extschema@.accounts a ON a.client_id = for_client AND a.realm = 'm365' AND a.application IS NULL
									 AND lower(a.name) = x.upn
		 ORDER BY a.account_id, x.product, x.line_no
		ON CONFLICT ON CONSTRAINT m365_license_assignments_pkey DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	duplicate := (SELECT count(*) FROM pg_temp.msp_assign) - loaded;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_store_assignments(bigint, date, text) IS
	'internal: a load''s licence assignments (pg_temp.msp_assign) as accounts and the day''s m365_license_assignments';

-- Graph JSON: subscribedSku objects (skuId, skuPartNumber,
-- prepaidUnits.enabled, consumedUnits) and user objects
-- (userPrincipalName, accountEnabled, assignedLicenses[].skuId), in any
-- mix, as JSON lines or saved responses.  A snapshot of the day as_of.
-- Each record is scanned once for its fields (a member whose value is
-- null counts as absent); only a user's assignedLicenses array is read as
-- jsonb.  jit is off: these one-pass statements over large stages would
-- spend longer compiling than running.
CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_graph(client_id bigint, as_of date DEFAULT NULL, source text DEFAULT 'graph',
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
CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_users_csv(client_id bigint, as_of date DEFAULT NULL,
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
CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_activity(client_id bigint, source text DEFAULT 'm365_activity',
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

	-- activity accounts take the kind and person of the UPN's m365 account
	INSERT INTO @extschema@.accounts (client_id, realm, name, kind, person_id)
	SELECT DISTINCT ON (a.upn) client_id, 'm365_activity', a.upn, coalesce(m.kind, 'unknown'), m.person_id
	  FROM pg_temp.msp_act a
	  LEFT JOIN @extschema@.accounts m ON m.client_id = client_id AND m.realm = 'm365' AND lower(m.name) = a.upn
	 WHERE a.class = 'activity'
	   AND NOT EXISTS (SELECT 1 FROM @extschema@.accounts x WHERE x.client_id = client_id AND x.realm = 'm365_activity'
						  AND lower(x.name) = a.upn)
	 ORDER BY a.upn;

	INSERT INTO pg_temp.msp_load_events (line_no, realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT a.line_no, 'm365_activity', NULL, a.upn, NULL, false, d.at, NULL, a.upn || '|' || d.product || '|' || d.day, NULL
	  FROM pg_temp.msp_act a JOIN pg_temp.msp_act_days d USING (line_no)
	 WHERE a.class = 'activity';
	SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized_guarded(client_id, source, $reject$
		UPDATE pg_temp.msp_act SET class = 'reject:unloadable record: ' || $3 WHERE line_no = $2
	$reject$);

	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT a.line_no, a.raw, substr(a.class, 8) AS reason FROM pg_temp.msp_act a WHERE a.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_act a WHERE a.class = 'skip';
	DELETE FROM @extschema@.m365_activity_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_act, pg_temp.msp_act_days, pg_temp.msp_act_cols, pg_temp.msp_csv, pg_temp.msp_csv_headers;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_m365_activity(bigint, text) IS
	'loads a client''s staged Microsoft 365 active user detail report: each product''s last activity date becomes a logon of realm m365_activity at noon in the client''s zone (counted only where count_realms names it; loaded counts days per product)';

-- Pax8 subscriptions: the portal's CSV export or the partner API's
-- subscription JSON (id, companyId, productId, quantity, partnerCost,
-- price, billingTerm, status, startDate, endDate).  A snapshot of the day
-- as_of; the Active subscriptions become the day's license_counts (source
-- pax8): seats the sum of quantities, unit cost their weighted mean.  Each
-- record is read once; each distinct company and product is looked up once.
CREATE OR REPLACE FUNCTION @extschema@.msp_load_pax8_subscriptions(client_id bigint, as_of date DEFAULT NULL,
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
	up AS (
		INSERT INTO @extschema@.pax8_subscriptions AS x (client_id, as_of, subscription_id, company, product, quantity,
														 unit_cost, unit_price, billing_term, status, start_date,
														 end_date, source)
		SELECT client_id, day, s.key, coalesce(s.company[1], s.company[2]), pr.name,
			   btrim(s.quantity)::numeric::integer, nullif(replace(btrim(s.cost), '$', ''), '')::numeric,
			   nullif(replace(btrim(s.price), '$', ''), '')::numeric, s.term, s.status, s.start_date, s.end_date, source
		  FROM sub s JOIN prod pr USING (product)
		ON CONFLICT ON CONSTRAINT pax8_subscriptions_pkey DO UPDATE
		   SET company = excluded.company, product = excluded.product, quantity = excluded.quantity,
			   unit_cost = excluded.unit_cost, unit_price = excluded.unit_price, billing_term = excluded.billing_term,
			   status = excluded.status, start_date = excluded.start_date, end_date = excluded.end_date,
			   source = excluded.source
		 WHERE (x.company, x.product, x.quantity, x.unit_cost, x.unit_price, x.billing_term, x.status, x.start_date, x.end_date)
			   IS DISTINCT FROM (excluded.company, excluded.product, excluded.quantity, excluded.unit_cost,
								 excluded.unit_price, excluded.billing_term, excluded.status, excluded.start_date,
								 excluded.end_date)
		RETURNING 1)
	SELECT count(*) INTO loaded FROM up;
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
CREATE OR REPLACE FUNCTION @extschema@.msp_match_psa_tickets(client_id bigint) RETURNS bigint
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
	WITH t AS (
		UPDATE @extschema@.psa_tickets t
		   SET contact_id = nextval(pg_get_serial_sequence('@extschema@.support_contacts', 'contact_id'))
		 WHERE t.client_id = client_id AND t.person_id IS NOT NULL AND t.contact_id IS NULL
		RETURNING t.contact_id, t.person_id, t.at, t.channel),
	ins AS (
		INSERT INTO @extschema@.support_contacts (client_id, contact_id, person_id, at, channel)
		SELECT client_id, t.contact_id, t.person_id, t.at, t.channel FROM t
		RETURNING 1)
	SELECT count(*) INTO n FROM ins;
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
--   halo         id, dateoccurred, client_id/client_name, user_id, team
-- A time without a zone is UTC (the APIs write UTC).  Each record is read
-- once (its nested objects' members by msp_json_fields too), each
-- distinct company looked up once.
CREATE OR REPLACE FUNCTION @extschema@.msp_load_psa_tickets(client_id bigint, psa text, source text DEFAULT NULL,
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
	IF psa IS NULL OR psa NOT IN ('connectwise', 'autotask', 'halo') THEN
		RAISE EXCEPTION 'unknown PSA %', coalesce(quote_literal(psa), 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The ticket loader reads the API JSON of ConnectWise PSA, Autotask and HaloPSA.',
				  HINT = 'Pass psa => ''connectwise'', ''autotask'' or ''halo''.';
	END IF;
	source := coalesce(source, psa);
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
		-- materialized, so that msp_implausible_time gets columns and inlines
		timed AS MATERIALIZED (
			SELECT c.*, CASE WHEN c.class = 'ticket' THEN c.at_text::timestamptz END AS at FROM classed c)
		SELECT x.rec, x.line_no, x.ord,
			   CASE WHEN k.class LIKE 'reject:%%' THEN coalesce(x.raw, (SELECT s.raw FROM @extschema@.psa_ticket_staging s
																	 WHERE s.client_id = $1 AND s.line_no = x.line_no)) END,
			   x.id, x.at_text, x.company, x.contact, x.board, x.channel, k.class, x.at
		  FROM timed x,
			   LATERAL (SELECT CASE WHEN x.class = 'ticket' AND @extschema@.msp_implausible_time(x.at_text, x.at) IS NOT NULL
									THEN 'reject:invalid date entered: ' || @extschema@.msp_implausible_time(x.at_text, x.at)
									ELSE x.class END AS class) k
	$step$, psa), $reject$
		INSERT INTO pg_temp.msp_tix (rec, line_no, ord, raw, class)
		SELECT j.rec, j.line_no, j.ord,
			   coalesce(j.raw, (SELECT s.raw FROM @extschema@.psa_ticket_staging s WHERE s.client_id = $1 AND s.line_no = j.line_no)),
			   'reject:invalid date entered'
		  FROM pg_temp.msp_json j WHERE j.rec = $2
	$reject$, client_id, (SELECT min(j.rec) FROM pg_temp.msp_json j), (SELECT max(j.rec) FROM pg_temp.msp_json j));
	DROP TABLE pg_temp.msp_json;

	-- a ticket loads once per client and PSA (first record of a load wins)
	WITH ins AS (
		INSERT INTO @extschema@.psa_tickets (client_id, psa, ticket_id, at, company, contact, board, channel)
		SELECT DISTINCT ON (btrim(t.id)) client_id, psa, btrim(t.id), t.at,
			   coalesce(t.company[1], t.company[2], t.company[3]), t.contact, t.board, t.channel
		  FROM pg_temp.msp_tix t WHERE t.class = 'ticket'
		 ORDER BY btrim(t.id), t.line_no, t.ord
		ON CONFLICT ON CONSTRAINT psa_tickets_pkey DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
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
	'loads a client''s staged PSA tickets (psa: connectwise, autotask or halo); matched contacts become support contacts, unknown ones stay in psa_tickets (psa_unknown_contacts); unmatched counts the PSA''s tickets still without a person';


-- docfix: what an outside tester found in invoice documents, tax, PSA and
-- loaders naming.  The number series keeps its prefix and digits once it
-- has given a number (a trigger), and only mspbill_admin may change it;
-- a discount is taxed at the rate of the line it discounts; tax_rates and
-- psa_mappings take known kinds only; the "period not over" error names
-- today; adjustment lines name the invoice number; 'halopsa' everywhere
-- (the loader still takes 'halo'); exports of every client refuse a
-- period that is not a calendar month.  Run msp_install_roles() again
-- afterwards: it takes INSERT and UPDATE on invoice_numbering from
-- mspbill_billing (a REVOKE here would be recorded as the table's initial
-- privileges, unlike a fresh install's).
DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM @extschema@.tax_rates WHERE basis NOT IN ('user', 'seat', 'device', 'license', 'cost', 'fixed', 'meter', 'minimum', 'adjustment'))
	   OR EXISTS (SELECT 1 FROM @extschema@.psa_mappings WHERE basis NOT IN ('user', 'seat', 'device', 'license', 'cost', 'fixed', 'meter', 'minimum', 'adjustment')) THEN
		RAISE EXCEPTION 'tax_rates or psa_mappings name a kind of line that no invoice has'
			USING ERRCODE = 'check_violation',
				  DETAIL = 'Kinds are user, seat, device, license, cost, fixed, meter, minimum and adjustment; a discount is taxed as the line it discounts.',
				  HINT = 'Correct or delete those rows, then update the extension again.';
	END IF;
END
$$;
ALTER TABLE @extschema@.tax_rates DROP CONSTRAINT tax_rates_basis_not_empty;
ALTER TABLE @extschema@.tax_rates ADD CONSTRAINT tax_rates_basis_known
	CHECK (basis IN ('user', 'seat', 'device', 'license', 'cost', 'fixed', 'meter', 'minimum', 'adjustment'));
ALTER TABLE @extschema@.psa_mappings DROP CONSTRAINT psa_mappings_basis_not_empty;
ALTER TABLE @extschema@.psa_mappings ADD CONSTRAINT psa_mappings_basis_known
	CHECK (basis IN ('user', 'seat', 'device', 'license', 'cost', 'fixed', 'meter', 'minimum', 'adjustment'));

-- one spelling of HaloPSA: the rows 0.2.0 stored as 'halo'
ALTER TABLE @extschema@.partner_companies DROP CONSTRAINT partner_companies_vendor_known;
UPDATE @extschema@.partner_companies SET vendor = 'halopsa' WHERE vendor = 'halo';
ALTER TABLE @extschema@.partner_companies ADD CONSTRAINT partner_companies_vendor_known
	CHECK (vendor IN ('pax8', 'connectwise', 'autotask', 'halopsa'));
ALTER TABLE @extschema@.psa_contacts DROP CONSTRAINT psa_contacts_psa_known;
UPDATE @extschema@.psa_contacts SET psa = 'halopsa' WHERE psa = 'halo';
ALTER TABLE @extschema@.psa_contacts ADD CONSTRAINT psa_contacts_psa_known
	CHECK (psa IN ('connectwise', 'autotask', 'halopsa'));
UPDATE @extschema@.psa_tickets SET psa = 'halopsa' WHERE psa = 'halo';

CREATE OR REPLACE FUNCTION @extschema@.msp_invoice_numbering_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF OLD.last_number > 0 AND (NEW.prefix IS DISTINCT FROM OLD.prefix OR NEW.digits IS DISTINCT FROM OLD.digits) THEN
		RAISE EXCEPTION 'the invoice number series cannot change its prefix or digits'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('Numbers up to %s have been given; a new prefix or width could print one of them again.',
								  @extschema@.msp_invoice_number_text(OLD.prefix, OLD.last_number, OLD.digits)),
				  HINT = 'Choose the prefix and digits before the first invoice is finalized.';
	END IF;
	IF NEW.last_number < OLD.last_number THEN
		RAISE EXCEPTION 'the invoice number series cannot be set back'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The last number given is %s; %s would be given again.', OLD.last_number, NEW.last_number + 1),
				  HINT = 'Numbers only go forward.';
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoice_numbering_guard() IS
	'trigger: refuses a new prefix or digits once the number series has given a number, and setting the counter back';

CREATE TRIGGER keep_series BEFORE UPDATE ON @extschema@.invoice_numbering
	FOR EACH ROW EXECUTE FUNCTION @extschema@.msp_invoice_numbering_guard();

CREATE OR REPLACE FUNCTION @extschema@.msp_tax_lines(client_id bigint, lines @extschema@.invoice_line[])
RETURNS TABLE (line_no integer, tax_name text, tax_rate numeric, tax numeric)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	t invoice_terms := msp_invoice_terms(client_id);
	minor numeric := (SELECT c.minor_unit FROM clients c WHERE c.client_id = client_id);
BEGIN
	RETURN QUERY
	WITH k AS (
		-- a discount lowers the line it follows (msp_line_items emits it
		-- right after its contract line's lines), so it is taxed at that
		-- line's rate: the nearest earlier line of its contract, a
		-- minimum top-up only when the line had nothing else
		SELECT x.line_no, x.amount,
			   CASE WHEN x.basis = 'discount'
					THEN (SELECT y.basis FROM unnest(lines) y
						   WHERE y.contract_id = x.contract_id AND y.line_no < x.line_no AND y.basis <> 'discount'
						   ORDER BY y.basis = 'minimum', y.line_no DESC LIMIT 1)
					ELSE x.basis END AS basis
		  FROM unnest(lines) x),
	l AS (
		SELECT k.line_no AS n, k.amount, coalesce(r.tax_name, t.tax_name) AS name,
			   coalesce(r.tax_rate, t.tax_rate) AS rate
		  FROM k
		  LEFT JOIN tax_rates r ON r.client_id = client_id AND r.basis = k.basis),
	run AS (
		SELECT l.*, sum(l.amount) OVER (PARTITION BY l.name, l.rate ORDER BY l.n) AS upto FROM l)
	SELECT run.n, run.name, run.rate,
		   CASE WHEN t.tax_rounding = 'line' THEN msp_round(run.amount * run.rate, minor)
				ELSE msp_round(run.upto * run.rate, minor) - msp_round((run.upto - run.amount) * run.rate, minor) END
	  FROM run
	 ORDER BY run.n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_tax_lines(bigint, @extschema@.invoice_line[]) IS
	'the tax name, rate and amount of each invoice line, rounded per line or per invoice as the client''s invoice terms say';

CREATE OR REPLACE FUNCTION @extschema@.msp_adjustment_lines(client_id bigint, period daterange)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- PL/pgSQL, so that Citus plans the read on the client's shard
	RETURN QUERY
	-- the adjusted invoice by the number the client holds (its id when it
	-- was sent unnumbered, before 0.3.0)
	SELECT (row_number() OVER (ORDER BY a.invoice_id))::integer, NULL::bigint,
		   format('Adjustment %s to invoice %s for %s to %s: %s', a.invoice_id,
				  coalesce(d.invoice_number, a.adjusts_invoice_id::text),
				  lower(a.period), upper(a.period) - 1, a.reason),
		   1::numeric, a.total, a.total, 'adjustment'::text
	  FROM invoices a
	  LEFT JOIN invoice_documents d ON d.client_id = client_id AND d.invoice_id = a.adjusts_invoice_id
	 WHERE a.client_id = client_id AND a.kind = 'adjustment' AND a.apply_period = period
	 ORDER BY a.invoice_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_adjustment_lines(bigint, daterange) IS
	'adjustment notes carried by the invoice of a period, one line each';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	unknown text[];
	today date;
	stamp timestamptz;
	c clients;
	terms record;
	lines invoice_line[];
	evidence jsonb;
	number text;
	invoice_day date;
	tax numeric;
	findings jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	-- an unfinished month is not a data-quality question: its logons are
	-- still coming, so no override finalizes it
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	-- the gates run once: they read the period's logons several times over
	findings := coalesce((SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q), '[]');
	IF jsonb_path_exists(findings, '$[*] ? (@.gate == "period_not_over")') THEN
		-- (not alias c: the variable c would shadow it, and today be NULL)
		today := (now() AT TIME ZONE (SELECT cl.time_zone FROM clients cl WHERE cl.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q->>'gate' FROM jsonb_array_elements(findings) q
					  WHERE NOT q->>'gate' = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period, failing);
	END IF;

	inv := msp_compute_invoice(client_id, period);
	lines := ARRAY(SELECT l FROM msp_price_lines(client_id, period, NULL) l);
	evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	SELECT * INTO terms FROM msp_invoice_terms(client_id);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	-- the number last: its counter row stays locked until this transaction
	-- ends, so other finalizations wait here (not through the pricing), and
	-- a rollback gives the number back: no gaps, no duplicates
	INSERT INTO @extschema@.invoice_numbering AS n (series, last_number) VALUES ('invoice', 1)
	ON CONFLICT (series) DO UPDATE SET last_number = n.last_number + 1
	RETURNING msp_invoice_number_text(n.prefix, n.last_number, n.digits) INTO number;
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	invoice_day := (stamp AT TIME ZONE c.time_zone)::date;
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	tax := (SELECT coalesce(sum(t.tax), 0) FROM msp_tax_lines(client_id, lines) t);
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM unnest(lines) l;
	-- the document: number, dates, terms and PO as the client has them
	-- today, and each line's tax and explanation (src/billing/documents.sql)
	INSERT INTO @extschema@.invoice_documents (client_id, invoice_id, invoice_number, invoice_date, due_date,
							   payment_terms_days, po_reference, tax)
	VALUES (client_id, id, number, invoice_day, invoice_day + terms.payment_terms_days, terms.payment_terms_days,
			terms.po_reference, tax);
	INSERT INTO @extschema@.invoice_line_documents (client_id, invoice_id, line_no, tax_name, tax_rate, tax,
									explanation, evidence)
	SELECT client_id, id, t.line_no, t.tax_name, t.tax_rate, t.tax, x.explanation, x.evidence
	  FROM msp_tax_lines(client_id, lines) t
	  JOIN msp_explain_lines(client_id, period, lines, evidence) x ON x.line_no = t.line_no;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		-- the findings read once above (computed before the INSERT: Citus
		-- takes no subquery in INSERT ... VALUES)
		evidence := (SELECT jsonb_agg(q) FROM jsonb_array_elements(findings) q WHERE q->>'gate' = ANY (override));
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override, 'findings', evidence));
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines, evidence, number, dates, terms and tax and returns its id; finalizing again returns the same id';

CREATE OR REPLACE FUNCTION @extschema@.msp_load_psa_tickets(client_id bigint, psa text, source text DEFAULT NULL,
												 OUT loaded bigint, OUT duplicate bigint, OUT skipped bigint,
												 OUT rejected bigint, OUT unmatched bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
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
	PERFORM @extschema@.msp_load_begin(client_id);
	PERFORM @extschema@.msp_stage_json(client_id, '@extschema@.psa_ticket_staging');
	CREATE TEMP TABLE msp_tix ON COMMIT DROP AS
	SELECT j.rec, j.line_no, j.ord, j.raw, j.doc, f.*, NULL::text AS class, NULL::timestamptz AS at
	  FROM pg_temp.msp_json j
	  LEFT JOIN LATERAL (
			SELECT j.doc->>'id' AS id,
				   CASE psa WHEN 'connectwise' THEN coalesce(j.doc->'_info'->>'dateEntered', j.doc->>'dateEntered')
							WHEN 'autotask' THEN j.doc->>'createDate'
							ELSE j.doc->>'dateoccurred' END AS at_text,
				   CASE psa WHEN 'connectwise' THEN ARRAY[j.doc->'company'->>'identifier', j.doc->'company'->>'name',
														  j.doc->'company'->>'id']
							WHEN 'autotask' THEN ARRAY[j.doc->>'companyID']
							ELSE ARRAY[j.doc->>'client_name', j.doc->>'client_id'] END AS company,
				   lower(btrim(CASE psa WHEN 'connectwise'
										THEN coalesce(nullif(btrim(j.doc->>'contactEmailAddress'), ''), j.doc->'contact'->>'id')
										WHEN 'autotask' THEN j.doc->>'contactID'
										ELSE j.doc->>'user_id' END)) AS contact,
				   CASE psa WHEN 'connectwise' THEN j.doc->'board'->>'name'
							WHEN 'autotask' THEN j.doc->>'queueID'
							ELSE j.doc->>'team' END AS board,
				   coalesce(lower(CASE psa WHEN 'connectwise' THEN j.doc->'source'->>'name' END), 'ticket') AS channel
			 WHERE jsonb_typeof(j.doc) = 'object') f ON true;
	UPDATE pg_temp.msp_tix t
	   SET class = CASE
			   WHEN t.doc IS NULL THEN 'reject:not valid JSON'
			   WHEN jsonb_typeof(t.doc) <> 'object' THEN 'reject:not a JSON object'
			   WHEN coalesce(btrim(t.id), '') = '' THEN 'reject:no id'
			   WHEN coalesce(btrim(t.at_text), '') = '' THEN 'reject:no date entered'
			   WHEN length(t.id) > 255 OR length(t.contact) > 255 OR length(t.board) > 255 OR length(t.channel) > 255
					OR EXISTS (SELECT 1 FROM unnest(t.company) c WHERE length(c) > 255) THEN 'reject:field too long'
			   ELSE (SELECT CASE o WHEN 'own' THEN 'ticket' WHEN 'other' THEN 'skip'
							  ELSE 'reject:unknown ' || psa || ' company '
								   || coalesce((SELECT c FROM unnest(t.company) c WHERE c IS NOT NULL LIMIT 1), '(none)') END
					   FROM @extschema@.msp_company_owner(client_id, psa, t.company) o)
		   END;
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_tix SET at = at_text::timestamptz
		 WHERE class = 'ticket' AND rec BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_tix SET class = 'reject:invalid date entered' WHERE rec = $2 AND class = 'ticket'
	$reject$, client_id, (SELECT min(rec) FROM pg_temp.msp_tix), (SELECT max(rec) FROM pg_temp.msp_tix));
	UPDATE pg_temp.msp_tix
	   SET class = 'reject:invalid date entered' || coalesce(': ' || @extschema@.msp_implausible_time(at_text, at), '')
	 WHERE class = 'ticket' AND (at IS NULL OR @extschema@.msp_implausible_time(at_text, at) IS NOT NULL);

	-- a ticket loads once per client and PSA (first record of a load wins)
	WITH ins AS (
		INSERT INTO @extschema@.psa_tickets (client_id, psa, ticket_id, at, company, contact, board, channel)
		SELECT DISTINCT ON (btrim(t.id)) client_id, psa, btrim(t.id), t.at,
			   (SELECT c FROM unnest(t.company) c WHERE c IS NOT NULL LIMIT 1), t.contact, t.board, t.channel
		  FROM pg_temp.msp_tix t WHERE t.class = 'ticket'
		 ORDER BY btrim(t.id), t.line_no, t.ord
		ON CONFLICT ON CONSTRAINT psa_tickets_pkey DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	duplicate := (SELECT count(*) FROM pg_temp.msp_tix t WHERE t.class = 'ticket') - loaded;
	PERFORM @extschema@.msp_match_psa_tickets(client_id);
	SELECT count(*) INTO unmatched FROM @extschema@.psa_tickets t
	 WHERE t.client_id = client_id AND t.psa = psa AND t.person_id IS NULL;

	CREATE TEMP TABLE msp_rej ON COMMIT DROP AS
	SELECT t.line_no, t.raw, substr(t.class, 8) AS reason FROM pg_temp.msp_tix t WHERE t.class LIKE 'reject:%';
	rejected := @extschema@.msp_store_rejects(client_id, source);
	SELECT count(*) INTO skipped FROM pg_temp.msp_tix t WHERE t.class = 'skip';
	DELETE FROM @extschema@.psa_ticket_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_tix, pg_temp.msp_json;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_psa_tickets(bigint, text, text) IS
	'loads a client''s staged PSA tickets (psa: connectwise, autotask or halopsa, alias halo); matched contacts become support contacts, unknown ones stay in psa_tickets (psa_unknown_contacts); unmatched counts the PSA''s tickets still without a person';

CREATE OR REPLACE FUNCTION @extschema@.msp_require_month(period daterange) RETURNS daterange
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF period IS NULL OR isempty(period) OR lower_inf(period) OR upper_inf(period)
	   OR lower(period) <> date_trunc('month', lower(period))::date
	   OR upper(period) <> (lower(period) + interval '1 month')::date THEN
		RAISE EXCEPTION 'export period % is not a calendar month', coalesce(period::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Invoices are per calendar month; an export of every client reads one month.',
				  HINT = 'Pass one month, such as daterange(''2026-10-01'', ''2026-11-01''), and export a quarter month by month.';
	END IF;
	RETURN period;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_require_month(daterange) IS
	'internal: the period when it is one calendar month, else an error (the exports of every client)';

CREATE OR REPLACE FUNCTION @extschema@.msp_export_xero(period daterange)
RETURNS TABLE ("ContactName" text, "InvoiceNumber" text, "Reference" text, "InvoiceDate" text,
			   "DueDate" text, "InventoryItemCode" text, "Description" text, "Quantity" text,
			   "UnitAmount" text, "LineAmount" text, "AccountCode" text, "TaxType" text, "TaxAmount" text,
			   "Currency" text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	id bigint;
BEGIN
	PERFORM msp_require_month(msp_export_xero.period);
	FOR id IN SELECT i.client_id FROM invoices i
			   JOIN invoice_documents d ON d.client_id = i.client_id AND d.invoice_id = i.invoice_id
			   WHERE i.kind = 'invoice' AND i.period = msp_export_xero.period
			   ORDER BY d.invoice_number LOOP
		RETURN QUERY SELECT * FROM msp_export_xero(id, msp_export_xero.period);
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_xero(daterange) IS
	'every numbered invoice of a period the caller may read, as Xero''s sales invoice import CSV';

CREATE OR REPLACE FUNCTION @extschema@.msp_export_quickbooks(period daterange)
RETURNS TABLE ("InvoiceNo" text, "Customer" text, "InvoiceDate" text, "DueDate" text, "Terms" text,
			   "Memo" text, "Item(Product/Service)" text, "ItemDescription" text, "ItemQuantity" text,
			   "ItemRate" text, "ItemAmount" text, "ItemTaxCode" text, "ItemTaxAmount" text, "Currency" text,
			   "Service Date" text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	id bigint;
BEGIN
	PERFORM msp_require_month(msp_export_quickbooks.period);
	FOR id IN SELECT i.client_id FROM invoices i
			   JOIN invoice_documents d ON d.client_id = i.client_id AND d.invoice_id = i.invoice_id
			   WHERE i.kind = 'invoice' AND i.period = msp_export_quickbooks.period
			   ORDER BY d.invoice_number LOOP
		RETURN QUERY SELECT * FROM msp_export_quickbooks(id, msp_export_quickbooks.period);
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_quickbooks(daterange) IS
	'every numbered invoice of a period the caller may read, as QuickBooks Online''s invoice import CSV';

CREATE OR REPLACE FUNCTION @extschema@.msp_export_json(period daterange)
RETURNS TABLE (client_id bigint, invoice_number text, document jsonb)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	PERFORM msp_require_month(msp_export_json.period);
	FOR r IN SELECT i.client_id, d.invoice_number FROM invoices i
			  JOIN invoice_documents d ON d.client_id = i.client_id AND d.invoice_id = i.invoice_id
			  WHERE i.kind = 'invoice' AND i.period = msp_export_json.period
			  ORDER BY d.invoice_number LOOP
		client_id := r.client_id;
		invoice_number := r.invoice_number;
		document := msp_invoice_json(r.client_id, msp_export_json.period);
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_json(daterange) IS
	'every numbered invoice of a period the caller may read, one JSON document each';

CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.sister_clients, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications, '
						'@extschema@.invoice_terms, @extschema@.tax_rates, @extschema@.psa_mappings, @extschema@.export_codes, '
						'@extschema@.contract_lines, @extschema@.contract_line_tiers, @extschema@.meter_readings, '
						-- licensing (src/licensing.sql): mappings and the loaded snapshots
						'@extschema@.license_policies, @extschema@.partner_companies, @extschema@.psa_contacts, '
						'@extschema@.m365_sku_counts, @extschema@.m365_license_assignments, @extschema@.pax8_subscriptions';
	-- read by every role that reads invoices, written only by the definers
	-- (the number series: see below)
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items, @extschema@.invoice_documents, '
						  '@extschema@.invoice_line_documents, @extschema@.psa_syncs';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging, '
					'@extschema@.m365_graph_staging, @extschema@.m365_users_csv_staging, @extschema@.m365_activity_staging, '
					'@extschema@.pax8_staging, @extschema@.psa_ticket_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq, @extschema@.m365_graph_staging_line_no_seq, '
						 '@extschema@.m365_users_csv_staging_line_no_seq, @extschema@.m365_activity_staging_line_no_seq, '
						 '@extschema@.pax8_staging_line_no_seq, @extschema@.psa_ticket_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_psa_sync(bigint, daterange), '
					'@extschema@.msp_load_m365_graph(bigint, date, text), '
					'@extschema@.msp_load_m365_users_csv(bigint, date, text), '
					'@extschema@.msp_load_m365_activity(bigint, text), '
					'@extschema@.msp_load_pax8_subscriptions(bigint, date, text), '
					'@extschema@.msp_load_psa_tickets(bigint, text, text), '
					'@extschema@.msp_match_psa_tickets(bigint), '
					'@extschema@.msp_finalize_run_begin(daterange, text[], bigint[]), '
					'@extschema@.msp_finalize_run_client(bigint, bigint, boolean), '
					'@extschema@.msp_finalize_run_end(bigint)';
	-- licence names are not per client: those who load maintain them (BI
	-- needs none, and would read their column statistics)
	product_names text := '@extschema@.license_product_names';
	-- PSA tickets without the contact (an e-mail or PSA id) for those who see no names
	ticket_cols text := 'client_id, psa, ticket_id, at, company, board, channel, person_id, contact_id';
	-- month-end (src/monthend.sql): a procedure, granted ON PROCEDURE
	month_end text := '@extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer)';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE format('REVOKE ALL ON PROCEDURE %s FROM %s', month_end, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE 'GRANT SELECT, DELETE ON @extschema@.psa_tickets TO mspbill_admin';
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s, @extschema@.logons_logon_id_seq TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);
	-- month-end: run it, and watch its runs (every client's outcome)
	EXECUTE format('GRANT EXECUTE ON PROCEDURE %s TO mspbill_admin, mspbill_billing', month_end);
	EXECUTE 'GRANT SELECT ON @extschema@.finalize_runs, @extschema@.finalize_run_clients, @extschema@.finalize_progress '
			'TO mspbill_admin, mspbill_billing';

	-- the number series: chosen by the admin before the first invoice
	-- (prefix, digits, the number another system stopped at), never set
	-- back afterwards; billing only reads it (finalization, a definer,
	-- takes the numbers)
	EXECUTE 'GRANT SELECT, INSERT (series, prefix, digits, last_number), UPDATE (prefix, digits) '
			'ON @extschema@.invoice_numbering TO mspbill_admin';
	EXECUTE 'GRANT SELECT ON @extschema@.invoice_numbering TO mspbill_billing';

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.psa_tickets TO mspbill_billing, mspbill_bi', ticket_cols);
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_admin, mspbill_billing', product_names);
	EXECUTE 'GRANT SELECT ON @extschema@.psa_unknown_contacts TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
-- for DBAs only: it creates roles and grants
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';

ALTER FUNCTION @extschema@.msp_export_xero(daterange) CALLED ON NULL INPUT;
ALTER FUNCTION @extschema@.msp_export_quickbooks(daterange) CALLED ON NULL INPUT;
ALTER FUNCTION @extschema@.msp_export_json(daterange) CALLED ON NULL INPUT;


-- speed (issue 21): each segment's people counted once per invoice (the
-- quantities carry who they are and the days contract lines prorate by),
-- and the summary and lines of an invoice priced together
-- (msp_price_invoice), so that finalizing prices once
ALTER TYPE @extschema@.segment_quantities ADD ATTRIBUTE user_segment_days numeric,
	ADD ATTRIBUTE user_homes bigint[], ADD ATTRIBUTE user_ids bigint[];
COMMENT ON TYPE @extschema@.segment_quantities IS
	'what one contract segment bills: counts (people, seats, devices, licence seats), the days they cover (a unit covering the whole period counts period_days), costs, the days the segment covers (period_days without proration), the days of the segment its people are active (prorated or not, for contract lines that prorate), and who they are (home client and person, pairwise)';
CREATE OR REPLACE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange)
RETURNS @extschema@.segment_quantities
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	k record;
	q segment_quantities;
	t0 timestamptz;
	t1 timestamptz;
	home bigint;
	ids bigint[];
	homes bigint[];
	days numeric;
	n integer;
	pool record;
	share numeric;
BEGIN
	SELECT x.prorate, x.shared_billing, x.count_realms, x.default_session, c.time_zone,
		   upper(period) - lower(period) AS period_days,
		   CASE WHEN x.prorate THEN upper(segment) - lower(segment)
				ELSE upper(period) - lower(period) END AS covered_days
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = msp_segment_quantities.client_id AND c.client_id = msp_segment_quantities.client_id
	   AND x.contract_id = msp_segment_quantities.contract_id;
	-- no quantities for a contract that does not exist or that the caller
	-- may not see
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;

	-- people: the days each billed person's active range covers, read in
	-- the person's own client
	q.user_days := 0;
	q.user_count := 0;
	q.user_segment_days := 0;
	SELECT array_agg(b.home_client_id), array_agg(b.person_id) INTO homes, ids
	  FROM msp_segment_users(client_id, contract_id, segment, false) b;
	-- (the days of the segment each is active are kept too: contract lines
	-- that prorate read them from here instead of counting the people again)
	FOREACH home IN ARRAY ARRAY(SELECT DISTINCT h FROM unnest(homes) h ORDER BY 1) LOOP
		SELECT coalesce(sum(upper(coalesce(p.active, segment) * segment)
							- lower(coalesce(p.active, segment) * segment)), 0),
			   count(*)::integer
		  INTO days, n
		  FROM people p
		 WHERE p.client_id = home
		   AND p.person_id = ANY (ARRAY(SELECT x.id FROM unnest(homes, ids) x(h, id) WHERE x.h = home));
		q.user_segment_days := q.user_segment_days + days;
		q.user_count := q.user_count + n;
	END LOOP;
	q.user_days := CASE WHEN k.prorate THEN q.user_segment_days ELSE q.user_count * k.period_days END;
	-- who: an invoice of two contracts counts a person billed by both once
	q.user_homes := coalesce(homes, '{}');
	q.user_ids := coalesce(ids, '{}');

	-- shared seats: one per shared account with presence logons, or its
	-- peak of concurrent sessions
	IF k.shared_billing IN ('seat', 'peak') THEN
		SELECT coalesce(sum(CASE WHEN k.shared_billing = 'peak' THEN greatest(sh.peak, 1) ELSE 1 END), 0)::integer
		  INTO q.seat_count
		  FROM (SELECT a.account_id,
					   peak_concurrency(tstzrange(l.at, coalesce(l.ended, l.at + k.default_session))) AS peak
				  FROM logons l
				  JOIN accounts a ON a.client_id = msp_segment_quantities.client_id AND a.account_id = l.account_id
								 AND a.kind = 'shared' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
				 WHERE l.client_id = msp_segment_quantities.client_id AND l.at >= t0 AND l.at < t1 AND l.presence
				 GROUP BY a.account_id) sh;
	ELSE
		q.seat_count := 0;
	END IF;

	SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN k.period_days
							 ELSE upper(coalesce(dv.active, segment) * segment)
								  - lower(coalesce(dv.active, segment) * segment) END), 0),
		   count(*)::integer
	  INTO q.device_days, q.device_count
	  FROM devices dv
	 WHERE dv.client_id = msp_segment_quantities.client_id AND (dv.active IS NULL OR dv.active && segment);

	SELECT coalesce(sum(lc.seats), 0)::integer INTO q.license_count
	  FROM (SELECT DISTINCT ON (x.sku) x.seats
			  FROM license_counts x
			 WHERE x.client_id = msp_segment_quantities.client_id AND x.as_of < upper(segment)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc;

	-- each pool's share, computed outside the query that lists the pools
	q.cost := 0;
	q.support_cost := 0;
	FOR pool IN
		SELECT cp.pool_id, cp.category FROM cost_pools cp
		 WHERE cp.client_id = msp_segment_quantities.client_id AND cp.period && segment
		 ORDER BY cp.pool_id
	LOOP
		share := msp_pool_share(client_id, pool.pool_id, period, segment);
		q.cost := q.cost + share;
		IF pool.category = 'support' THEN
			q.support_cost := q.support_cost + share;
		END IF;
	END LOOP;

	q.seat_days := q.seat_count * k.covered_days;
	q.license_days := q.license_count * k.covered_days;
	q.covered_days := k.covered_days;
	q.period_days := k.period_days;
	RETURN q;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange) IS
	'billable counts and prorated quantities of one contract segment';

CREATE OR REPLACE FUNCTION @extschema@.msp_line_items(c @extschema@.clients, k @extschema@.contracts,
											segment daterange, period daterange,
											q @extschema@.segment_quantities, lines @extschema@.line_terms[])
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	t line_terms;
	b record;
	cp record;
	n integer := 0;
	seg_days integer := upper(segment) - lower(segment);
	period_days integer := upper(period) - lower(period);
	prorate boolean;
	covered integer;
	units numeric;
	unit_days numeric;
	m numeric;
	md numeric;
	bands integer;
	line_total numeric;
	amount numeric;
	floor_fee numeric;
	discounted daterange;
	dd integer;
	user_count integer;
	user_segment_days numeric;
	share numeric;
	label text := CASE WHEN segment = period THEN ''
					   ELSE format(' (%s to %s)', lower(segment), upper(segment) - 1) END;
BEGIN
	FOR t IN SELECT * FROM unnest(lines) x ORDER BY x.line_no LOOP
		-- a preset whose model price is missing bills nothing, as the model does
		CONTINUE WHEN t.source <> 'cost_pool' AND t.unit_price IS NULL;
		-- a sum of readings is already the segment's: never prorated again
		prorate := t.prorate AND NOT (t.source = 'meter' AND t.meter_rule = 'sum');
		covered := CASE WHEN prorate THEN seg_days ELSE period_days END;
		line_total := 0;

		IF t.source = 'cost_pool' THEN
			-- one line per pool, rounded per line (as cost-plus bills)
			-- (each share computed outside the query that lists the pools:
			-- on Citus no function that reads tables runs inside a query on
			-- a shard)
			FOR cp IN
				SELECT x.pool_id, x.description, x.category
				  FROM cost_pools x
				 WHERE x.client_id = c.client_id AND x.period && segment
				   AND (t.pool_category IS NULL OR x.category = t.pool_category)
				 ORDER BY x.pool_id
			LOOP
				share := msp_pool_share(c.client_id, cp.pool_id, period, segment);
				amount := msp_round(share * (1 + t.markup), c.minor_unit);
				n := n + 1;
				RETURN NEXT (n, k.contract_id,
							 format('%s: %s (cost %s, markup %s%%)%s', t.description, cp.description, share,
									trim_scale(round(t.markup * 100, 2)), label),
							 1::numeric, amount, amount, 'cost')::invoice_line;
				line_total := line_total + amount;
			END LOOP;
		ELSE
			IF t.source = 'users' THEN
				-- the people the contract's policy counts and the days of the
				-- segment each is active, counted once by msp_segment_quantities
				user_count := q.user_count;
				user_segment_days := q.user_segment_days;
				units := user_count;
				unit_days := CASE WHEN prorate THEN user_segment_days ELSE user_count * period_days END;
			ELSIF t.source = 'seats' THEN
				units := q.seat_count;
				unit_days := q.seat_count * covered;
			ELSIF t.source = 'devices' THEN
				SELECT count(*),
					   coalesce(sum(CASE WHEN prorate
										 THEN upper(coalesce(dv.active, segment) * segment)
											  - lower(coalesce(dv.active, segment) * segment)
										 ELSE period_days END), 0)
				  INTO units, unit_days
				  FROM devices dv
				 WHERE dv.client_id = c.client_id AND (dv.active IS NULL OR dv.active && segment)
				   AND (t.device_kind IS NULL OR dv.kind = t.device_kind);
			ELSIF t.source = 'licenses' THEN
				-- each SKU's latest count on or before the segment's last day
				SELECT coalesce(sum(x.seats), 0) INTO units
				  FROM (SELECT DISTINCT ON (lc.sku) lc.seats
						  FROM license_counts lc
						 WHERE lc.client_id = c.client_id AND lc.as_of < upper(segment)
						   AND (t.sku IS NULL OR lc.sku = t.sku)
						 ORDER BY lc.sku, lc.as_of DESC, lc.source) x;
				unit_days := units * covered;
			ELSIF t.source = 'meter' THEN
				IF t.meter_rule = 'last' THEN
					SELECT r.quantity INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter AND r.day < upper(segment)
					 ORDER BY r.day DESC LIMIT 1;
				ELSIF t.meter_rule = 'peak' THEN
					SELECT max(r.quantity) INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter
					   AND r.day >= lower(segment) AND r.day < upper(segment);
				ELSE
					SELECT sum(r.quantity) INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter
					   AND r.day >= lower(segment) AND r.day < upper(segment);
				END IF;
				units := coalesce(units, 0);
				unit_days := units * covered;
			ELSE
				-- fixed: one unit for the days covered
				units := 1;
				unit_days := covered;
			END IF;

			-- the minimum raises the count (for the tier) and the days
			m := greatest(units, t.minimum_quantity);
			md := greatest(unit_days, t.minimum_quantity * covered);
			-- no seat at all is no seats line, as the per-user models bill it
			m := CASE WHEN t.source = 'seats' AND m = 0 THEN NULL ELSE m END;
			SELECT count(*) INTO bands
			  FROM msp_line_bands(m, t.unit_price, t.tier_mode, t.tier_from, t.tier_price);
			FOR b IN
				SELECT x.first_unit, x.units, x.unit_price, x.first_unit + x.units - 1 AS last_unit,
					   CASE WHEN m > 0 THEN x.units * md ELSE 0 END AS num,
					   CASE WHEN m > 0 THEN m * period_days ELSE 1 END AS den
				  FROM msp_line_bands(m, t.unit_price, t.tier_mode, t.tier_from, t.tier_price) x
				 ORDER BY x.first_unit
			LOOP
				amount := msp_round(b.num * b.unit_price / b.den, c.minor_unit);
				n := n + 1;
				RETURN NEXT (n, k.contract_id,
							 CASE WHEN t.source = 'fixed' THEN t.description
								  ELSE format('%s: %s', t.description, trim_scale(round(units, 4))) END
							 || CASE WHEN m > units THEN format(', minimum %s', trim_scale(t.minimum_quantity)) ELSE '' END
							 || CASE WHEN bands > 1 THEN format(', units %s to %s', trim_scale(b.first_unit),
															   trim_scale(ceil(b.last_unit))) ELSE '' END
							 || label,
							 b.num / b.den, b.unit_price, amount,
							 CASE t.source WHEN 'users' THEN 'user' WHEN 'seats' THEN 'seat' WHEN 'devices' THEN 'device'
										   WHEN 'licenses' THEN 'license' ELSE t.source END)::invoice_line;
				line_total := line_total + amount;
			END LOOP;
		END IF;

		-- the line's own minimum fee, for the days it covers
		floor_fee := msp_round(t.minimum_fee * covered / period_days, c.minor_unit);
		IF line_total < floor_fee THEN
			amount := floor_fee - line_total;
			n := n + 1;
			RETURN NEXT (n, k.contract_id, format('%s: minimum fee top-up%s', t.description, label),
						 1::numeric, amount, amount, 'minimum')::invoice_line;
			line_total := floor_fee;
		END IF;

		-- the discount, for the days of the segment inside its range
		IF t.discount_percent IS NOT NULL OR t.discount_amount IS NOT NULL THEN
			discounted := segment * coalesce(t.discount_period, segment);
			dd := upper(discounted) - lower(discounted);
			IF dd > 0 AND line_total > 0 THEN
				IF t.discount_percent IS NOT NULL THEN
					amount := msp_round(line_total * t.discount_percent * dd / (100 * seg_days), c.minor_unit);
				ELSE
					-- a month's amount: the days discounted of the month, or
					-- whole without proration
					amount := msp_round(CASE WHEN prorate THEN t.discount_amount * dd / period_days
											 ELSE t.discount_amount END, c.minor_unit);
				END IF;
				amount := least(amount, line_total);
				IF amount > 0 THEN
					n := n + 1;
					RETURN NEXT (n, k.contract_id,
								 format('%s: %s off%s', t.description,
										CASE WHEN t.discount_percent IS NOT NULL
											 THEN trim_scale(t.discount_percent) || '%'
											 ELSE trim_scale(t.discount_amount)::text END,
										CASE WHEN discounted = segment THEN label
											 ELSE format(' (%s to %s)', lower(discounted), upper(discounted) - 1) END),
								 1::numeric, -amount, -amount, 'discount')::invoice_line;
				END IF;
			END IF;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_line_items(@extschema@.clients, @extschema@.contracts, daterange, daterange, @extschema@.segment_quantities, @extschema@.line_terms[]) IS
	'the invoice lines a set of line terms bills in one contract segment: per line its bands, minimum fee top-up and discount';

CREATE FUNCTION @extschema@.msp_price_invoice(client_id bigint, period daterange,
											   OUT summary @extschema@.invoice,
											   OUT lines @extschema@.invoice_line[])
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	seg record;
	q segment_quantities;
	line invoice_line;
	inv invoice;
	models text[] := '{}';
	homes bigint[] := '{}';
	ids bigint[] := '{}';
	n integer := 0;
BEGIN
	period := msp_period(client_id, period);
	PERFORM msp_check_currency(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	inv := (c.client_id, c.name, period, NULL, 0, 0, 0, 0, 0, c.currency)::invoice;
	lines := '{}';
	FOR seg IN SELECT * FROM msp_contract_segments(client_id, period) LOOP
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id
			AND contracts.contract_id = seg.contract_id;
		q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period);
		IF NOT k.model = ANY (models) THEN
			models := models || k.model;
		END IF;
		-- a seat billed by two contracts of the month is one seat
		inv.seats := greatest(inv.seats, q.seat_count);
		homes := homes || q.user_homes;
		ids := ids || q.user_ids;
		FOR line IN SELECT * FROM msp_segment_lines(c, k, seg.segment, period, q, k.model) LOOP
			inv.total := inv.total + line.amount;
			IF line.basis <> 'minimum' THEN
				inv.subtotal := inv.subtotal + line.amount;
			END IF;
			n := n + 1;
			line.line_no := n;
			-- shown and stored alike: four decimals at most
			line.quantity := trim_scale(round(line.quantity, 4));
			lines := lines || line;
		END LOOP;
	END LOOP;
	-- the period's people: each segment's, a person counted by two
	-- contracts once (as msp_period_people counts them, without counting
	-- them again)
	inv.users := (SELECT count(DISTINCT (x.h, x.id))::integer FROM unnest(homes, ids) x(h, id));
	inv.devices := msp_period_devices(client_id, period);
	inv.model := array_to_string(models, '+');
	-- adjustments of earlier invoices carried by this one
	FOR line IN SELECT * FROM msp_adjustment_lines(client_id, period) LOOP
		inv.total := inv.total + line.amount;
		n := n + 1;
		line.line_no := n;
		lines := lines || line;
	END LOOP;
	inv.subtotal := msp_round(inv.subtotal, c.minor_unit);
	inv.total := msp_round(inv.total, c.minor_unit);
	summary := inv;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_price_invoice(bigint, daterange) IS
	'the invoice of a client for a period as today''s data prices it and its lines (as msp_price_lines gives them), each segment priced once';

CREATE OR REPLACE FUNCTION @extschema@.msp_compute_invoice(client_id bigint, period daterange DEFAULT NULL)
RETURNS @extschema@.invoice
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- (the period first: msp_price_invoice is STRICT, NULL is the last full month)
	period := msp_period(client_id, period);
	-- (a scalar subquery: (f()).summary in a query would call f once per field)
	RETURN (SELECT p.summary FROM msp_price_invoice(client_id, period) p);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_compute_invoice(bigint, daterange) IS
	'the invoice of a client for a period as today''s data prices it, finalized or not';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	unknown text[];
	today date;
	stamp timestamptz;
	c clients;
	terms record;
	lines invoice_line[];
	priced record;
	evidence jsonb;
	number text;
	invoice_day date;
	tax numeric;
	findings jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	-- an unfinished month is not a data-quality question: its logons are
	-- still coming, so no override finalizes it
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	-- the gates run once: they read the period's logons several times over
	findings := coalesce((SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q), '[]');
	IF jsonb_path_exists(findings, '$[*] ? (@.gate == "period_not_over")') THEN
		today := (now() AT TIME ZONE (SELECT c.time_zone FROM clients c WHERE c.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q->>'gate' FROM jsonb_array_elements(findings) q
					  WHERE NOT q->>'gate' = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period, failing);
	END IF;

	-- the summary and its lines from one pricing
	SELECT * INTO priced FROM msp_price_invoice(client_id, period) p;
	inv := priced.summary;
	lines := priced.lines;
	evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	SELECT * INTO terms FROM msp_invoice_terms(client_id);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	-- the number last: its counter row stays locked until this transaction
	-- ends, so other finalizations wait here (not through the pricing), and
	-- a rollback gives the number back: no gaps, no duplicates
	INSERT INTO @extschema@.invoice_numbering AS n (series, last_number) VALUES ('invoice', 1)
	ON CONFLICT (series) DO UPDATE SET last_number = n.last_number + 1
	RETURNING msp_invoice_number_text(n.prefix, n.last_number, n.digits) INTO number;
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	invoice_day := (stamp AT TIME ZONE c.time_zone)::date;
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	tax := (SELECT coalesce(sum(t.tax), 0) FROM msp_tax_lines(client_id, lines) t);
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM unnest(lines) l;
	-- the document: number, dates, terms and PO as the client has them
	-- today, and each line's tax and explanation (src/billing/documents.sql)
	INSERT INTO @extschema@.invoice_documents (client_id, invoice_id, invoice_number, invoice_date, due_date,
							   payment_terms_days, po_reference, tax)
	VALUES (client_id, id, number, invoice_day, invoice_day + terms.payment_terms_days, terms.payment_terms_days,
			terms.po_reference, tax);
	INSERT INTO @extschema@.invoice_line_documents (client_id, invoice_id, line_no, tax_name, tax_rate, tax,
									explanation, evidence)
	SELECT client_id, id, t.line_no, t.tax_name, t.tax_rate, t.tax, x.explanation, x.evidence
	  FROM msp_tax_lines(client_id, lines) t
	  JOIN msp_explain_lines(client_id, period, lines, evidence) x ON x.line_no = t.line_no;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		-- the findings read once above (computed before the INSERT: Citus
		-- takes no subquery in INSERT ... VALUES)
		evidence := (SELECT jsonb_agg(q) FROM jsonb_array_elements(findings) q WHERE q->>'gate' = ANY (override));
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override, 'findings', evidence));
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines, evidence, number, dates, terms and tax and returns its id; finalizing again returns the same id';



-- issue 17 (Citus, third part): the client-scoped roles on Citus.  The
-- policies' msp_visible_clients() and msp_report_clients() read this node's
-- copy of bi_client_access (msp_client_access_table), not the Citus table
-- (a query on it inside a shard query is refused); msp_report_invoices()
-- takes the login's clients before its query; msp_distribute() makes
-- finalize_runs a reference table.
-- The table to read the client mappings from: bi_client_access itself, or
-- on Citus this node's copy of it (a reference table has one on every
-- node).  The policies of distributed tables run inside the queries on
-- their shards, where Citus refuses any query on a table it manages
-- (nested distributed execution); the local copy is a plain table to it.
CREATE FUNCTION @extschema@.msp_client_access_table() RETURNS regclass
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	placement regclass;
BEGIN
	IF to_regclass('pg_catalog.pg_dist_shard') IS NOT NULL THEN
		EXECUTE $q$SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', n.nspname, c.relname || '_' || s.shardid))
					 FROM pg_catalog.pg_dist_shard s
					 JOIN pg_catalog.pg_class c ON c.oid = s.logicalrelid
					 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
					WHERE s.logicalrelid = '@extschema@.bi_client_access'::pg_catalog.regclass$q$
			INTO placement;
	END IF;
	RETURN coalesce(placement, '@extschema@.bi_client_access'::regclass);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_client_access_table() IS
	'bi_client_access, or on Citus this node''s copy of the reference table (readable inside queries on shards)';

CREATE OR REPLACE FUNCTION @extschema@.msp_visible_clients() RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ids bigint[];
BEGIN
	EXECUTE format('SELECT ARRAY(SELECT b.client_id FROM %s b JOIN pg_catalog.pg_roles r ON r.rolname = b.role_name
							  WHERE pg_catalog.pg_has_role(r.oid, ''MEMBER''))', @extschema@.msp_client_access_table())
		INTO ids;
	RETURN ids;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_visible_clients() IS 'the clients mapped to the current user''s roles';

-- (PL/pgSQL reading msp_client_access_table(): on Citus a query on
-- bi_client_access would be a distributed one, and Citus re-plans a
-- RETURN-style SQL body as text, which fails)

CREATE OR REPLACE FUNCTION @extschema@.msp_report_clients() RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	ids bigint[];
BEGIN
	EXECUTE format('SELECT ARRAY(SELECT b.client_id FROM %s b
								   JOIN pg_catalog.pg_roles r ON r.rolname = b.role_name
								  WHERE pg_catalog.pg_has_role(session_user, r.oid, ''MEMBER'')
								  ORDER BY b.client_id)', @extschema@.msp_client_access_table())
		INTO ids;
	RETURN ids;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_clients() IS
	'the clients mapped in bi_client_access to the session''s login or a role it belongs to';

CREATE OR REPLACE FUNCTION @extschema@.msp_report_invoices()
RETURNS TABLE (client_id bigint, invoice_id bigint, kind text, period daterange, adjusts_invoice_id bigint,
			   apply_period daterange, reason text, model text, users integer, seats integer, devices integer,
			   subtotal numeric, total numeric, currency char(3), evidence jsonb, finalized_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	-- the login's clients, taken here: on Citus a call left in the query
	-- would run on the workers, where the session is the definer's
	ids bigint[] := @extschema@.msp_report_clients();
BEGIN
	RETURN QUERY
	SELECT i.client_id, i.invoice_id, i.kind, i.period, i.adjusts_invoice_id, i.apply_period, i.reason, i.model,
		   i.users, i.seats, i.devices, i.subtotal, i.total, i.currency, i.evidence, i.finalized_at
	  FROM @extschema@.invoices i
	 WHERE i.client_id = ANY (ids)
	 ORDER BY i.client_id, i.invoice_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_invoices() IS
	'for mspbill_report: the finalized invoices and adjustment notes of the clients mapped to the login';

-- Distribute the schema on a Citus coordinator.  Idempotent: what is
-- distributed already is left as it is.
CREATE OR REPLACE FUNCTION @extschema@.msp_distribute(shard_count integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- the small shared tables: invoice_numbering is the MSP's one number
	-- series, whose row each finalization locks wherever it runs (Citus
	-- writes a reference table on every node in one transaction and
	-- serializes its writers cluster-wide), export_codes the MSP's books,
	-- license_product_names the licences' spellings, partner_companies the
	-- vendors' company names (unique across clients), sister_clients the
	-- pairs of clients whose invoices read each other's people (so that an
	-- invoice finds them on its own node), finalize_runs the month-end runs
	-- (one row per run for all clients; each client's outcome row is
	-- distributed with the client)
	ref_tables text[] := '{clients,bi_client_access,invoice_numbering,export_codes,license_product_names,partner_companies,sister_clients,finalize_runs}';
	-- the first distributed table names the co-location group of all
	anchor regclass := '@extschema@.contracts'::regclass;
	todo regclass[];
	t regclass;
	progress boolean;
	n_ref integer := 0;
	n_dist integer := 0;
	n_fn integer := 0;
	f record;
	s record;
	is_coord boolean;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'Citus is not installed in this database'
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() distributes mspbill''s tables on a Citus cluster; on one server there is nothing to do.',
				  HINT = 'On the coordinator (citus in shared_preload_libraries): CREATE EXTENSION citus; add the workers with citus_add_node(); then SELECT mspbill.msp_distribute();';
	END IF;
	EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO is_coord;
	IF NOT is_coord THEN
		RAISE EXCEPTION 'msp_distribute() runs on the Citus coordinator only'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'This node is not the coordinator of its cluster.',
				  HINT = 'Connect to the coordinator (or register it with citus_set_coordinator_host()) and call it there.';
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'msp_distribute() must be run by a superuser'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'It distributes tables and sets the sequences of every node.',
				  HINT = 'Connect as the superuser that created the extension.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gist') THEN
		RAISE EXCEPTION 'msp_distribute() needs the extension btree_gist'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'On Citus, the one-contract-per-day and one-invoice-per-period exclusion constraints must name client_id itself, which needs btree_gist''s equality for bigint.',
				  HINT = 'CREATE EXTENSION btree_gist; on the coordinator (Citus creates it on the workers), then call msp_distribute() again.';
	END IF;

	-- Every table it will distribute has a client_id: checked before
	-- anything changes, since the statements run on the workers
	-- (run_command_on_workers) commit there even if this call fails later
	FOR t IN
		SELECT c.oid::regclass FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
		   AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
		   AND c.relname <> ALL (ref_tables)
		   AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'client_id' AND NOT a.attisdropped)
	LOOP
		RAISE EXCEPTION 'table % has no client_id to distribute it by', t
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() changed nothing.',
				  HINT = 'Every mspbill table is keyed by client_id; a table added by hand must be distributed (or dropped) by hand first.';
	END LOOP;

	-- 1. Policies: a function call instead of the initplans
	FOR s IN
		SELECT p.polrelid::regclass AS rel, p.polname
		  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace
		   AND p.polname IN ('client_rows', 'own_rows')
		   AND NOT @extschema@.msp_is_distributed(p.polrelid)
	LOOP
		IF s.polname = 'own_rows' THEN
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY own_rows ON %s USING (@extschema@.msp_sees_all_clients() OR @extschema@.msp_has_role(role_name))', s.rel));
		ELSE
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY client_rows ON %s USING (%s)', s.rel, @extschema@.msp_client_policy(true)));
		END IF;
	END LOOP;

	-- 2. Exclusion constraints that name client_id itself (btree_gist)
	IF NOT @extschema@.msp_is_distributed('@extschema@.contracts') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.contracts DROP CONSTRAINT contracts_no_overlap, '
								 'ADD CONSTRAINT contracts_no_overlap EXCLUDE USING gist (client_id WITH =, effective WITH &&)');
	END IF;
	IF NOT @extschema@.msp_is_distributed('@extschema@.invoices') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.invoices DROP CONSTRAINT invoices_no_overlap, '
								 'ADD CONSTRAINT invoices_no_overlap EXCLUDE USING gist (client_id WITH =, period WITH &&) WHERE (kind = ''invoice'')');
	END IF;

	-- 3. Triggers: Citus distributes no table that has any.  Finalized rows
	-- stay facts through privileges (only the owner may write them) and,
	-- for the owner itself, restrictive policies that refuse UPDATE and
	-- DELETE to everyone but a superuser (who bypasses row-level security,
	-- as the triggers let a superuser through).
	-- (the tables whose triggers refuse changes, as they are before the
	-- triggers go: invoices, items, audit log, documents, PSA syncs)
	FOR t IN
		SELECT DISTINCT tg.tgrelid::regclass FROM pg_trigger tg
		 WHERE tg.tgfoid = '@extschema@.msp_refuse_change()'::regprocedure AND NOT tg.tgisinternal
		   AND NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = tg.tgrelid AND polname = 'finalized_no_update')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_update ON %s AS RESTRICTIVE FOR UPDATE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_delete ON %s AS RESTRICTIVE FOR DELETE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t));
	END LOOP;
	FOR s IN
		SELECT tg.tgrelid::regclass AS rel, tg.tgname
		  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND NOT tg.tgisinternal
		   AND tg.tgparentid = 0
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('DROP TRIGGER %I ON %s', s.tgname, s.rel));
	END LOOP;

	-- Foreign keys that set a column NULL when their row goes (a PSA
	-- ticket's person): Citus refuses SET NULL on a key that includes
	-- client_id, so on Citus such a delete is refused instead (clear the
	-- column first)
	FOR s IN
		SELECT k.conrelid::regclass AS rel, k.conname, pg_get_constraintdef(k.oid) AS def
		  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND k.contype = 'f' AND k.confdeltype IN ('n', 'd')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
													s.rel, s.conname, s.conname,
													regexp_replace(s.def, ' ON DELETE SET (NULL|DEFAULT)( \([^)]*\))?', '')));
	END LOOP;

	-- Sister clients: every pair people name now, then a foreign key in
	-- place of the trigger that kept the table (dropped above)
	IF NOT @extschema@.msp_is_distributed('@extschema@.people') THEN
		INSERT INTO @extschema@.sister_clients (client_id, bill_to_client_id)
		SELECT DISTINCT p.client_id, p.bill_to_client_id FROM @extschema@.people p
		 WHERE p.bill_to_client_id IS NOT NULL
		ON CONFLICT DO NOTHING;
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.people ADD CONSTRAINT people_sister_client_declared '
								 'FOREIGN KEY (client_id, bill_to_client_id) REFERENCES @extschema@.sister_clients');
	END IF;

	-- 4. The small shared tables on every node (the client-keyed tables
	-- that reference clients are distributed next: Citus must not turn
	-- them into local tables of its metadata meanwhile)
	PERFORM set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
	FOREACH t IN ARRAY (SELECT array_agg(format('@extschema@.%I', x)::regclass) FROM unnest(ref_tables) x) LOOP
		IF NOT @extschema@.msp_is_distributed(t) THEN
			-- Citus copies the rows to every node in one COPY per node; the
			-- time zone check's exception block (a subtransaction) would
			-- interrupt it on the coordinator's own copy.  The rows passed
			-- the check already; it is put back once the table is copied.
			IF t = '@extschema@.clients'::regclass THEN
				PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.clients DROP CONSTRAINT clients_time_zone_known');
			END IF;
			EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING t;
			IF t = '@extschema@.clients'::regclass THEN
				ALTER TABLE @extschema@.clients ADD CONSTRAINT clients_time_zone_known
					CHECK (@extschema@.msp_valid_time_zone(time_zone));
			END IF;
			n_ref := n_ref + 1;
		END IF;
	END LOOP;

	-- 5. Every other table of the schema by client_id, co-located, each
	-- after the tables its foreign keys name
	todo := ARRAY(SELECT c.oid::regclass FROM pg_class c
				   WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
					 AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
				   ORDER BY c.oid <> anchor, c.relname);
	LOOP
		progress := false;
		FOREACH t IN ARRAY todo LOOP
			CONTINUE WHEN @extschema@.msp_is_distributed(t);
			CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint k
								   WHERE k.conrelid = t AND k.contype = 'f' AND k.confrelid <> t
									 AND NOT @extschema@.msp_is_distributed(k.confrelid));
			IF t = anchor THEN
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => ''none'', shard_count => $2)'
					USING t, coalesce(shard_count, current_setting('citus.shard_count')::integer);
			ELSE
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => $2)'
					USING t, anchor::text;
			END IF;
			n_dist := n_dist + 1;
			progress := true;
		END LOOP;
		EXIT WHEN NOT progress;
	END LOOP;

	-- 6. Sequences: each node numbers from its own range (its group id in
	-- the top bits, as Citus does for the sequences it owns), so that ids
	-- written on workers (delegated finalizations, loads) never collide
	FOR s IN
		SELECT c.oid::regclass AS seq FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind = 'S'
	LOOP
		EXECUTE format($cmd$SELECT pg_catalog.run_command_on_workers(%L)$cmd$,
					   format($w$SELECT pg_catalog.setval(%L, greatest(last_value, (SELECT groupid::bigint << 48 FROM pg_catalog.pg_dist_local_group)), true) FROM %s$w$,
							  s.seq, s.seq));
	END LOOP;

	-- 7. Per-client functions run on the worker that holds the client
	FOR f IN SELECT * FROM @extschema@.msp_distributed_functions() LOOP
		EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''$1''::text, colocate_with => $2, force_delegation => $3)'
			USING f.fn, anchor::text, f.force_delegation;
		n_fn := n_fn + 1;
	END LOOP;

	RETURN format('%s reference tables, %s distributed tables, %s delegated functions', n_ref, n_dist, n_fn);
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_distribute(integer) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_distribute(integer) IS
	'on a Citus coordinator: makes clients and bi_client_access reference tables, distributes every other table by client_id (co-located), and delegates the per-client functions to the worker that holds the client';


-- lead: one band engine: a contract's tiers priced by msp_line_bands, as a
-- contract line's are
CREATE OR REPLACE FUNCTION @extschema@.msp_line_bands(quantity numeric, flat_price numeric, tier_mode text,
											tier_from numeric[], tier_price numeric[])
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH t AS (
		SELECT greatest(x.f - 1, 0) AS lo, x.p AS unit_price
		  FROM unnest(tier_from, tier_price) x(f, p)),
	bands AS (
		SELECT 0::numeric AS lo, (SELECT min(t.lo) FROM t) AS hi, flat_price AS unit_price
		UNION ALL
		SELECT t.lo, lead(t.lo) OVER (ORDER BY t.lo), t.unit_price FROM t),
	nonempty AS (SELECT * FROM bands b WHERE b.hi IS NULL OR b.hi > b.lo),
	last_unit AS (
		SELECT n.* FROM nonempty n
		 WHERE greatest(ceil(quantity), 1) > n.lo AND (n.hi IS NULL OR greatest(ceil(quantity), 1) <= n.hi)
		 ORDER BY n.lo DESC LIMIT 1)
	SELECT l.lo + 1, quantity, l.unit_price
	  FROM last_unit l
	 WHERE tier_mode = 'volume' OR quantity <= 0
	UNION ALL
	SELECT n.lo + 1, least(quantity, coalesce(n.hi, quantity)) - n.lo, n.unit_price
	  FROM nonempty n
	 WHERE tier_mode = 'graduated' AND quantity > n.lo
	 ORDER BY 1;
END;
COMMENT ON FUNCTION @extschema@.msp_line_bands(numeric, numeric, text, numeric[], numeric[]) IS
	'the price bands a quantity fills under tiers given as arrays (volume: one band; graduated: each band reached)';

CREATE OR REPLACE FUNCTION @extschema@.msp_tier_bands(client_id bigint, contract_id bigint,
											quantity numeric, flat_price numeric)
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	mode text;
	froms numeric[];
	prices numeric[];
BEGIN
	SELECT coalesce(k.tier_mode, 'volume') INTO mode FROM contracts k
	 WHERE k.client_id = msp_tier_bands.client_id AND k.contract_id = msp_tier_bands.contract_id;
	-- no bands for a contract that does not exist or that the caller may
	-- not see (row-level security): nothing is priced for it
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT array_agg(x.from_quantity), array_agg(x.unit_price) INTO froms, prices
	  FROM contract_tiers x
	 WHERE x.client_id = msp_tier_bands.client_id AND x.contract_id = msp_tier_bands.contract_id;
	RETURN QUERY SELECT * FROM msp_line_bands(quantity, flat_price, mode, coalesce(froms, '{}'), coalesce(prices, '{}'));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_tier_bands(bigint, bigint, numeric, numeric) IS
	'the price bands a count of units fills under the contract''s tiers (volume: one band; graduated: each band reached)';


-- lead: the licence rule's product chosen in one place (msp_license_main_product)
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

CREATE OR REPLACE FUNCTION @extschema@.msp_license_gaps(client_id bigint, period daterange DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION @extschema@.msp_license_sync(client_id bigint, period daterange DEFAULT NULL)
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



-- licload (issue 19, Performance): the licensing loaders with fewer passes
-- over a load: licence assignments in one statement (msp_ensure_m365_accounts
-- folded into msp_store_assignments), plain inserts past anti-joins instead
-- of ON CONFLICT, a ticket time checked once, blank JSON lines told by a
-- regular expression, the activity report writing its own logons.
DROP FUNCTION @extschema@.msp_ensure_m365_accounts(bigint, text[]);
CREATE OR REPLACE FUNCTION @extschema@.msp_stage_json(for_client bigint, stage regclass, keys text[]) RETURNS bigint
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
CREATE OR REPLACE FUNCTION @extschema@.msp_store_assignments(for_client bigint, day date, load_source text,
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
	WITH u AS MATERIALIZED (
		SELECT n.upn, a.account_id
		  FROM (SELECT DISTINCT x.upn FROM pg_temp.msp_assign x) n
		  LEFT JOIN @extschema@.accounts a ON a.client_id = for_client AND a.realm = 'm365' AND a.application IS NULL
										  AND lower(a.name) = n.upn),
	-- in name order: the name index takes them page by page
	created AS (
		INSERT INTO @extschema@.accounts (client_id, realm, name, kind)
		SELECT for_client, 'm365', u.upn, 'unknown' FROM u WHERE u.account_id IS NULL ORDER BY u.upn
		RETURNING name AS upn, account_id),
	ids AS (
		SELECT u.upn, u.account_id FROM u WHERE u.account_id IS NOT NULL
		UNION ALL
		SELECT c.upn, c.account_id FROM created c),
	ins AS (
		INSERT INTO @extschema@.m365_license_assignments (client_id, as_of, account_id, product, account_enabled, source)
		SELECT DISTINCT ON (i.account_id, x.product) for_client, day, i.account_id, x.product, x.enabled, load_source
		  FROM pg_temp.msp_assign x
		  JOIN ids i ON i.upn = x.upn
		 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.m365_license_assignments m
							WHERE m.client_id = for_client AND m.as_of = day AND m.account_id = i.account_id
							  AND m.product = x.product)
		 ORDER BY i.account_id, x.product, x.line_no
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	duplicate := (SELECT count(*) FROM pg_temp.msp_assign) - loaded;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_store_assignments(bigint, date, text) IS
	'internal: a load''s licence assignments (pg_temp.msp_assign) as accounts and the day''s m365_license_assignments';
CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_activity(client_id bigint, source text DEFAULT 'm365_activity',
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
	-- each UPN's activity account, the new ones' ids as their insert
	-- returns them (new ids move past hand-chosen ones first)
	PERFORM setval(pg_get_serial_sequence('@extschema@.accounts', 'account_id'), m.id)
	   FROM (SELECT max(a.account_id) AS id FROM @extschema@.accounts a WHERE a.client_id = client_id) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.accounts', 'account_id')), 0);
	CREATE TEMP TABLE msp_act_accounts (upn text, account_id bigint) ON COMMIT DROP;
	WITH u AS MATERIALIZED (
		SELECT n.upn, x.account_id
		  FROM (SELECT DISTINCT a.upn FROM pg_temp.msp_act a WHERE a.class = 'activity') n
		  LEFT JOIN @extschema@.accounts x ON x.client_id = client_id AND x.realm = 'm365_activity' AND x.application IS NULL
										  AND lower(x.name) = n.upn),
	created AS (
		INSERT INTO @extschema@.accounts (client_id, realm, name, kind, person_id)
		SELECT client_id, 'm365_activity', u.upn, coalesce(m.kind, 'unknown'), m.person_id
		  FROM u
		  LEFT JOIN @extschema@.accounts m ON m.client_id = client_id AND m.realm = 'm365' AND m.application IS NULL
										  AND lower(m.name) = u.upn
		 WHERE u.account_id IS NULL
		 ORDER BY u.upn
		RETURNING name, account_id)
	INSERT INTO pg_temp.msp_act_accounts (upn, account_id)
	SELECT u.upn, u.account_id FROM u WHERE u.account_id IS NOT NULL
	UNION ALL
	SELECT c.name, c.account_id FROM created c;

	-- the logons, one per product-day (its event id, the first by line),
	-- those already loaded left out as the shared last step
	-- (msp_load_normalized) leaves them out.  Straight from the records:
	-- the accounts are known and there is no device nor session, so the
	-- shared step's passes over accounts and devices would find nothing
	-- new.  Should a record make the insert fail, the shared guarded step
	-- runs instead, and finds it.
	BEGIN
		WITH e AS (
			SELECT DISTINCT ON (x.event_id) x.*
			  FROM (SELECT a.line_no, a.upn, d.at, a.upn || '|' || d.product || '|' || d.day AS event_id
					  FROM pg_temp.msp_act a JOIN pg_temp.msp_act_days d USING (line_no)
					 WHERE a.class = 'activity') x
			 ORDER BY x.event_id, x.line_no),
		ins AS (
			INSERT INTO @extschema@.logons (client_id, account_id, device_id, at, ended, presence, source, source_event_id,
											session_key)
			SELECT client_id, i.account_id, NULL, e.at, NULL, true, source, e.event_id, NULL
			  FROM e JOIN pg_temp.msp_act_accounts i ON i.upn = e.upn
			 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.logons l
								WHERE l.client_id = client_id AND l.source = source AND l.source_event_id = e.event_id)
			RETURNING 1)
		SELECT count(*) INTO loaded FROM ins;
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
CREATE OR REPLACE FUNCTION @extschema@.msp_load_pax8_subscriptions(client_id bigint, as_of date DEFAULT NULL,
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
CREATE OR REPLACE FUNCTION @extschema@.msp_load_psa_tickets(client_id bigint, psa text, source text DEFAULT NULL,
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
			   CASE WHEN k.class LIKE 'reject:%%' THEN coalesce(x.raw, (SELECT s.raw FROM @extschema@.psa_ticket_staging s
																	 WHERE s.client_id = $1 AND s.line_no = x.line_no)) END,
			   x.id, x.at_text, x.company, x.contact, x.board, x.channel, k.class, x.at
		  FROM timed x,
			   LATERAL (SELECT CASE WHEN x.class = 'ticket' THEN @extschema@.msp_implausible_time(x.at_text, x.at) END AS why
						OFFSET 0) w,
			   LATERAL (SELECT CASE WHEN w.why IS NOT NULL THEN 'reject:invalid date entered: ' || w.why
									ELSE x.class END AS class) k
	$step$, psa), $reject$
		INSERT INTO pg_temp.msp_tix (rec, line_no, ord, raw, class)
		SELECT j.rec, j.line_no, j.ord,
			   coalesce(j.raw, (SELECT s.raw FROM @extschema@.psa_ticket_staging s WHERE s.client_id = $1 AND s.line_no = j.line_no)),
			   'reject:invalid date entered'
		  FROM pg_temp.msp_json j WHERE j.rec = $2
	$reject$, client_id, (SELECT min(j.rec) FROM pg_temp.msp_json j), (SELECT max(j.rec) FROM pg_temp.msp_json j));
	DROP TABLE pg_temp.msp_json;

	-- a ticket loads once per client and PSA (first record of a load
	-- wins); tickets already loaded are left out by an anti-join (a plain
	-- insert costs half of ON CONFLICT's speculative one; loads of a client
	-- take turns, so no other load can race it, and a row written meanwhile
	-- by hand fails the load, whole)
	WITH ins AS (
		INSERT INTO @extschema@.psa_tickets (client_id, psa, ticket_id, at, company, contact, board, channel)
		SELECT DISTINCT ON (btrim(t.id)) client_id, psa, btrim(t.id), t.at,
			   coalesce(t.company[1], t.company[2], t.company[3]), t.contact, t.board, t.channel
		  FROM pg_temp.msp_tix t
		 WHERE t.class = 'ticket'
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.psa_tickets x
							WHERE x.client_id = client_id AND x.psa = psa AND x.ticket_id = btrim(t.id))
		 ORDER BY btrim(t.id), t.line_no, t.ord
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
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

-- Logon loaders at the rate logs arrive (issue 21, goals 3 and 4): the event-id
-- index holds a 64-bit hash of source and event id seeded with the client
-- (the check compares the texts on the rows it finds); duplicates are
-- found by a statement of their own, planned afresh; the Windows loader
-- reads, classifies and times each record in one pass; loads sort in
-- memory.  Rows stored by 0.1.0 and 0.2.0 stay as they are; only the
-- index is rebuilt.
DROP INDEX @extschema@.logons_source_event_key;
CREATE INDEX logons_source_event_key ON @extschema@.logons
	(hashtextextended(source || ':' || source_event_id, client_id))
	WHERE source_event_id IS NOT NULL;

CREATE OR REPLACE FUNCTION @extschema@.msp_load_normalized(for_client bigint, load_source text,
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

	INSERT INTO @extschema@.accounts (client_id, realm, name, kind, application)
	SELECT for_client, n.realm, n.account_name, 'unknown', n.application
	  FROM (SELECT DISTINCT e.realm, e.account_name, e.application FROM pg_temp.msp_load_events e) n
	 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.accounts a
						WHERE a.client_id = for_client AND a.realm = n.realm
						  AND lower(a.name) = lower(n.account_name)
						  AND coalesce(a.application, '') = coalesce(n.application, ''))
	 ORDER BY n.realm, n.account_name;

	-- a device found in an export is billable from the day it was first seen
	INSERT INTO @extschema@.devices (client_id, name, kind, active)
	SELECT for_client, n.device_name, 'other',
		   daterange((n.first_at AT TIME ZONE (SELECT c.time_zone FROM @extschema@.clients c WHERE c.client_id = for_client))::date, NULL)
	  FROM (SELECT e.device_name, min(e.at) AS first_at FROM pg_temp.msp_load_events e
			 WHERE e.device_name IS NOT NULL AND e.create_device GROUP BY e.device_name) n
	 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.devices d WHERE d.client_id = for_client
						  AND upper(d.name) = upper(n.device_name))
	 ORDER BY n.device_name;

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
	duplicate := (SELECT count(*) FROM pg_temp.msp_load_events);
	EXECUTE $dup$
		DELETE FROM pg_temp.msp_load_events e
		 WHERE EXISTS (SELECT 1 FROM @extschema@.logons l
						WHERE l.client_id = $1
						  AND hashtextextended(l.source || ':' || l.source_event_id, l.client_id)
							  = hashtextextended($2 || ':' || e.source_event_id, $1)
						  AND l.source = $2 AND l.source_event_id = e.source_event_id)
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_windows_events(client_id bigint, source text DEFAULT 'windows',
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
		SELECT s.line_no, f IS NULL AS bad_json,
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
			   coalesce(f[11], wl.winlog->>'record_id', md5(s.raw)) AS record
		  FROM @extschema@.windows_event_staging s,
			   LATERAL @extschema@.msp_json_fields(s.raw, '{EventID,EventTime,TimeCreated,@timestamp,Hostname,TargetUserName,TargetDomainName,LogonType,TargetLogonId,TargetLinkedLogonId,RecordNumber,winlog}') AS f,
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
	WITH hold AS (
		INSERT INTO @extschema@.pending_logoffs AS p (client_id, session_key, at)
		SELECT DISTINCT client_id, s.session_key, s.at
		  FROM pg_temp.msp_win_session s
		 WHERE s.kind = 'logoff' AND s.line_no IS NOT NULL AND NOT s.consumed
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.logons l
							WHERE l.client_id = client_id AND l.session_key = s.session_key AND l.at <= s.at)
		ON CONFLICT DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO held FROM hold;
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_entra_signins(client_id bigint, source text DEFAULT 'entra',
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
	PERFORM @extschema@.msp_load_begin(client_id);
	CREATE TEMP TABLE msp_entra_rec ON COMMIT DROP AS
	SELECT r.rec, l.line_nos[r.first_line] AS line_no, r.record, r.is_json
	  FROM (SELECT array_agg(s.line_no ORDER BY s.line_no) AS line_nos, array_agg(s.raw ORDER BY s.line_no) AS raws
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_emr_audit(client_id bigint, source text DEFAULT 'emr',
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



-- stagelock (outside test): a load holds its stage still (LOCK TABLE ... SHARE ROW EXCLUSIVE), so that
-- a COPY committed while it runs is not emptied unread
CREATE OR REPLACE FUNCTION @extschema@.msp_load_windows_events(client_id bigint, source text DEFAULT 'windows',
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
		SELECT s.line_no, f IS NULL AS bad_json,
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
			   coalesce(f[11], wl.winlog->>'record_id', md5(s.raw)) AS record
		  FROM @extschema@.windows_event_staging s,
			   LATERAL @extschema@.msp_json_fields(s.raw, '{EventID,EventTime,TimeCreated,@timestamp,Hostname,TargetUserName,TargetDomainName,LogonType,TargetLogonId,TargetLinkedLogonId,RecordNumber,winlog}') AS f,
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
	WITH hold AS (
		INSERT INTO @extschema@.pending_logoffs AS p (client_id, session_key, at)
		SELECT DISTINCT client_id, s.session_key, s.at
		  FROM pg_temp.msp_win_session s
		 WHERE s.kind = 'logoff' AND s.line_no IS NOT NULL AND NOT s.consumed
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.logons l
							WHERE l.client_id = client_id AND l.session_key = s.session_key AND l.at <= s.at)
		ON CONFLICT DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO held FROM hold;
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_entra_signins(client_id bigint, source text DEFAULT 'entra',
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
	  FROM (SELECT array_agg(s.line_no ORDER BY s.line_no) AS line_nos, array_agg(s.raw ORDER BY s.line_no) AS raws
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_emr_audit(client_id bigint, source text DEFAULT 'emr',
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_graph(client_id bigint, as_of date DEFAULT NULL, source text DEFAULT 'graph',
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_users_csv(client_id bigint, as_of date DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_activity(client_id bigint, source text DEFAULT 'm365_activity',
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
	-- each UPN's activity account, the new ones' ids as their insert
	-- returns them (new ids move past hand-chosen ones first)
	PERFORM setval(pg_get_serial_sequence('@extschema@.accounts', 'account_id'), m.id)
	   FROM (SELECT max(a.account_id) AS id FROM @extschema@.accounts a WHERE a.client_id = client_id) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.accounts', 'account_id')), 0);
	CREATE TEMP TABLE msp_act_accounts (upn text, account_id bigint) ON COMMIT DROP;
	WITH u AS MATERIALIZED (
		SELECT n.upn, x.account_id
		  FROM (SELECT DISTINCT a.upn FROM pg_temp.msp_act a WHERE a.class = 'activity') n
		  LEFT JOIN @extschema@.accounts x ON x.client_id = client_id AND x.realm = 'm365_activity' AND x.application IS NULL
										  AND lower(x.name) = n.upn),
	created AS (
		INSERT INTO @extschema@.accounts (client_id, realm, name, kind, person_id)
		SELECT client_id, 'm365_activity', u.upn, coalesce(m.kind, 'unknown'), m.person_id
		  FROM u
		  LEFT JOIN @extschema@.accounts m ON m.client_id = client_id AND m.realm = 'm365' AND m.application IS NULL
										  AND lower(m.name) = u.upn
		 WHERE u.account_id IS NULL
		 ORDER BY u.upn
		RETURNING name, account_id)
	INSERT INTO pg_temp.msp_act_accounts (upn, account_id)
	SELECT u.upn, u.account_id FROM u WHERE u.account_id IS NOT NULL
	UNION ALL
	SELECT c.name, c.account_id FROM created c;

	-- the logons, one per product-day (its event id, the first by line),
	-- those already loaded left out as the shared last step
	-- (msp_load_normalized) leaves them out.  Straight from the records:
	-- the accounts are known and there is no device nor session, so the
	-- shared step's passes over accounts and devices would find nothing
	-- new.  Should a record make the insert fail, the shared guarded step
	-- runs instead, and finds it.
	BEGIN
		WITH e AS (
			SELECT DISTINCT ON (x.event_id) x.*
			  FROM (SELECT a.line_no, a.upn, d.at, a.upn || '|' || d.product || '|' || d.day AS event_id
					  FROM pg_temp.msp_act a JOIN pg_temp.msp_act_days d USING (line_no)
					 WHERE a.class = 'activity') x
			 ORDER BY x.event_id, x.line_no),
		ins AS (
			INSERT INTO @extschema@.logons (client_id, account_id, device_id, at, ended, presence, source, source_event_id,
											session_key)
			SELECT client_id, i.account_id, NULL, e.at, NULL, true, source, e.event_id, NULL
			  FROM e JOIN pg_temp.msp_act_accounts i ON i.upn = e.upn
			 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.logons l
								WHERE l.client_id = client_id AND l.source = source AND l.source_event_id = e.event_id)
			RETURNING 1)
		SELECT count(*) INTO loaded FROM ins;
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_pax8_subscriptions(client_id bigint, as_of date DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_psa_tickets(client_id bigint, psa text, source text DEFAULT NULL,
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
			   CASE WHEN k.class LIKE 'reject:%%' THEN coalesce(x.raw, (SELECT s.raw FROM @extschema@.psa_ticket_staging s
																	 WHERE s.client_id = $1 AND s.line_no = x.line_no)) END,
			   x.id, x.at_text, x.company, x.contact, x.board, x.channel, k.class, x.at
		  FROM timed x,
			   LATERAL (SELECT CASE WHEN x.class = 'ticket' THEN @extschema@.msp_implausible_time(x.at_text, x.at) END AS why
						OFFSET 0) w,
			   LATERAL (SELECT CASE WHEN w.why IS NOT NULL THEN 'reject:invalid date entered: ' || w.why
									ELSE x.class END AS class) k
	$step$, psa), $reject$
		INSERT INTO pg_temp.msp_tix (rec, line_no, ord, raw, class)
		SELECT j.rec, j.line_no, j.ord,
			   coalesce(j.raw, (SELECT s.raw FROM @extschema@.psa_ticket_staging s WHERE s.client_id = $1 AND s.line_no = j.line_no)),
			   'reject:invalid date entered'
		  FROM pg_temp.msp_json j WHERE j.rec = $2
	$reject$, client_id, (SELECT min(j.rec) FROM pg_temp.msp_json j), (SELECT max(j.rec) FROM pg_temp.msp_json j));
	DROP TABLE pg_temp.msp_json;

	-- a ticket loads once per client and PSA (first record of a load
	-- wins); tickets already loaded are left out by an anti-join (a plain
	-- insert costs half of ON CONFLICT's speculative one; loads of a client
	-- take turns, so no other load can race it, and a row written meanwhile
	-- by hand fails the load, whole)
	WITH ins AS (
		INSERT INTO @extschema@.psa_tickets (client_id, psa, ticket_id, at, company, contact, board, channel)
		SELECT DISTINCT ON (btrim(t.id)) client_id, psa, btrim(t.id), t.at,
			   coalesce(t.company[1], t.company[2], t.company[3]), t.contact, t.board, t.channel
		  FROM pg_temp.msp_tix t
		 WHERE t.class = 'ticket'
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.psa_tickets x
							WHERE x.client_id = client_id AND x.psa = psa AND x.ticket_id = btrim(t.id))
		 ORDER BY btrim(t.id), t.line_no, t.ord
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
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



-- citus4: account_labels and kpi_billable_users on Citus; the workers get
-- the grants on views and functions (msp_on_workers, msp_grants_to_workers,
-- msp_account_name; msp_distribute and msp_install_roles call them)
CREATE FUNCTION @extschema@.msp_on_workers(commands text[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	block text;
BEGIN
	-- (one statement: run_command_on_workers runs only the first of several)
	block := format('DO %L', 'BEGIN PERFORM pg_catalog.set_config(''citus.enable_ddl_propagation'', ''off'', true); '
							 || (SELECT string_agg(format('EXECUTE %L;', c), ' ') FROM unnest(commands) c) || ' END');
	FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)' USING block LOOP
		IF NOT r.success THEN
			RAISE EXCEPTION 'worker %:% refused: %', r.nodename, r.nodeport, r.result
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = format('Nothing of the %s statements changed there; the first was: %s', cardinality(commands), commands[1]),
					  HINT = 'Every worker needs the same mspbill version as the coordinator, and the mspbill roles (msp_install_roles() on the coordinator creates them there).';
		END IF;
	END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_on_workers(text[]) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_on_workers(text[]) IS
	'runs statements on every Citus worker (not here) in one transaction each, DDL propagation off; an error names the worker that refused';

CREATE FUNCTION @extschema@.msp_account_name(client_id bigint, account_id bigint) RETURNS text
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	caller name := coalesce(nullif(current_setting('role'), 'none'), session_user);
	super boolean;
	mapped boolean;
	tbl regclass;
	nm text;
	k text;
BEGIN
	SELECT r.rolsuper INTO super FROM pg_catalog.pg_roles r WHERE r.rolname = caller;
	EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s b JOIN pg_catalog.pg_roles r ON r.rolname = b.role_name
								   WHERE b.client_id = $1 AND pg_catalog.pg_has_role($2, r.oid, ''MEMBER''))',
				   @extschema@.msp_client_access_table())
		INTO mapped USING client_id, caller;
	IF NOT (super OR mapped
			OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
						WHERE r.rolname IN ('mspbill_admin', 'mspbill_billing')
						  AND pg_catalog.pg_has_role(caller, r.oid, 'MEMBER'))) THEN
		RETURN NULL;
	END IF;
	IF @extschema@.msp_is_distributed('@extschema@.accounts') THEN
		EXECUTE $q$SELECT pg_catalog.to_regclass(pg_catalog.format('@extschema@.%I', 'accounts_' || pg_catalog.get_shard_id_for_distribution_column('@extschema@.accounts', $1)))$q$
			INTO tbl USING client_id;
	END IF;
	-- (not on this node, or no Citus: the table itself)
	EXECUTE format('SELECT a.name, a.kind FROM %s a WHERE a.client_id = $1 AND a.account_id = $2',
				   coalesce(tbl, '@extschema@.accounts'::regclass))
		INTO nm, k USING client_id, account_id;
	IF k IN ('shared', 'service')
	   OR (coalesce(current_setting('mspbill.pseudonymous', true), '') <> 'on'
		   AND (super OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
								  WHERE r.rolname = 'mspbill_pii' AND pg_catalog.pg_has_role(caller, r.oid, 'MEMBER')))) THEN
		RETURN nm;
	END IF;
	RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_account_name(bigint, bigint) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_account_name(bigint, bigint) IS
	'the real name of an account for account_labels on Citus, read from this node''s shard, if the session''s login may see it; NULL otherwise';

CREATE FUNCTION @extschema@.msp_grants_to_workers() RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	roles text;
	cmds text[] := '{}';
	r record;
	distributed oid[];
BEGIN
	IF NOT @extschema@.msp_is_distributed('@extschema@.accounts') THEN
		RETURN 0;
	END IF;
	SELECT string_agg(quote_ident(rolname), ', ' ORDER BY rolname) INTO roles FROM pg_catalog.pg_roles
	 WHERE rolname IN ('mspbill_admin', 'mspbill_billing', 'mspbill_bi', 'mspbill_pii', 'mspbill_report');
	IF roles IS NULL THEN
		RETURN 0;
	END IF;
	-- the delegated functions are Citus's objects: it carries their grants
	-- itself, in the caller's transaction (here on the workers' same rows,
	-- over other connections, it would wait for that transaction forever)
	EXECUTE 'SELECT array_agg(objid) FROM pg_catalog.pg_dist_object WHERE classid = ''pg_catalog.pg_proc''::regclass'
		INTO distributed;
	distributed := coalesce(distributed, '{}');
	FOR r IN
		SELECT format('%s %s', CASE c.relkind WHEN 'v' THEN 'TABLE' END, c.oid::regclass) AS obj, c.relacl AS acl, c.relowner AS owner
		  FROM pg_catalog.pg_class c WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind = 'v'
		UNION ALL
		SELECT format('%s %s', CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.oid::regprocedure), p.proacl, p.proowner
		  FROM pg_catalog.pg_proc p WHERE p.pronamespace = '@extschema@'::regnamespace AND p.prokind IN ('f', 'p')
		   AND NOT p.oid = ANY (distributed)
	LOOP
		cmds := cmds || format('REVOKE ALL ON %s FROM %s', r.obj, roles);
		cmds := cmds || ARRAY(SELECT format('GRANT %s ON %s TO %I', x.privilege_type, r.obj, g.rolname)
								FROM aclexplode(r.acl) x JOIN pg_catalog.pg_roles g ON g.oid = x.grantee
							   WHERE x.grantee <> r.owner AND g.rolname IN ('mspbill_admin', 'mspbill_billing', 'mspbill_bi', 'mspbill_pii', 'mspbill_report'));
	END LOOP;
	PERFORM @extschema@.msp_on_workers(cmds);
	RETURN cardinality(cmds);
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_grants_to_workers() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_grants_to_workers() IS
	'on a Citus coordinator: gives the workers the mspbill roles'' grants on the extension''s views and functions as they are here; returns the statements run';

CREATE OR REPLACE FUNCTION @extschema@.msp_distribute(shard_count integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- the small shared tables: invoice_numbering is the MSP's one number
	-- series, whose row each finalization locks wherever it runs (Citus
	-- writes a reference table on every node in one transaction and
	-- serializes its writers cluster-wide), export_codes the MSP's books,
	-- license_product_names the licences' spellings, partner_companies the
	-- vendors' company names (unique across clients), sister_clients the
	-- pairs of clients whose invoices read each other's people (so that an
	-- invoice finds them on its own node), finalize_runs the month-end runs
	-- (one row a run, its clients' outcomes distributed beside them)
	ref_tables text[] := '{clients,bi_client_access,invoice_numbering,export_codes,license_product_names,partner_companies,sister_clients,finalize_runs}';
	-- the first distributed table names the co-location group of all
	anchor regclass := '@extschema@.contracts'::regclass;
	todo regclass[];
	t regclass;
	progress boolean;
	n_ref integer := 0;
	n_dist integer := 0;
	n_fn integer := 0;
	f record;
	s record;
	is_coord boolean;
	labels_view text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'Citus is not installed in this database'
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() distributes mspbill''s tables on a Citus cluster; on one server there is nothing to do.',
				  HINT = 'On the coordinator (citus in shared_preload_libraries): CREATE EXTENSION citus; add the workers with citus_add_node(); then SELECT mspbill.msp_distribute();';
	END IF;
	EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO is_coord;
	IF NOT is_coord THEN
		RAISE EXCEPTION 'msp_distribute() runs on the Citus coordinator only'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'This node is not the coordinator of its cluster.',
				  HINT = 'Connect to the coordinator (or register it with citus_set_coordinator_host()) and call it there.';
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'msp_distribute() must be run by a superuser'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'It distributes tables and sets the sequences of every node.',
				  HINT = 'Connect as the superuser that created the extension.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gist') THEN
		RAISE EXCEPTION 'msp_distribute() needs the extension btree_gist'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'On Citus, the one-contract-per-day and one-invoice-per-period exclusion constraints must name client_id itself, which needs btree_gist''s equality for bigint.',
				  HINT = 'CREATE EXTENSION btree_gist; on the coordinator (Citus creates it on the workers), then call msp_distribute() again.';
	END IF;

	-- Every table it will distribute has a client_id: checked before
	-- anything changes, since the statements run on the workers
	-- (run_command_on_workers) commit there even if this call fails later
	FOR t IN
		SELECT c.oid::regclass FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
		   AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
		   AND c.relname <> ALL (ref_tables)
		   AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'client_id' AND NOT a.attisdropped)
	LOOP
		RAISE EXCEPTION 'table % has no client_id to distribute it by', t
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() changed nothing.',
				  HINT = 'Every mspbill table is keyed by client_id; a table added by hand must be distributed (or dropped) by hand first.';
	END LOOP;

	-- 1. Policies: a function call instead of the initplans
	FOR s IN
		SELECT p.polrelid::regclass AS rel, p.polname
		  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace
		   AND p.polname IN ('client_rows', 'own_rows')
		   AND NOT @extschema@.msp_is_distributed(p.polrelid)
	LOOP
		IF s.polname = 'own_rows' THEN
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY own_rows ON %s USING (@extschema@.msp_sees_all_clients() OR @extschema@.msp_has_role(role_name))', s.rel));
		ELSE
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY client_rows ON %s USING (%s)', s.rel, @extschema@.msp_client_policy(true)));
		END IF;
	END LOOP;

	-- 2. Exclusion constraints that name client_id itself (btree_gist)
	IF NOT @extschema@.msp_is_distributed('@extschema@.contracts') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.contracts DROP CONSTRAINT contracts_no_overlap, '
								 'ADD CONSTRAINT contracts_no_overlap EXCLUDE USING gist (client_id WITH =, effective WITH &&)');
	END IF;
	IF NOT @extschema@.msp_is_distributed('@extschema@.invoices') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.invoices DROP CONSTRAINT invoices_no_overlap, '
								 'ADD CONSTRAINT invoices_no_overlap EXCLUDE USING gist (client_id WITH =, period WITH &&) WHERE (kind = ''invoice'')');
	END IF;

	-- 3. Triggers: Citus distributes no table that has any.  Finalized rows
	-- stay facts through privileges (only the owner may write them) and,
	-- for the owner itself, restrictive policies that refuse UPDATE and
	-- DELETE to everyone but a superuser (who bypasses row-level security,
	-- as the triggers let a superuser through).
	-- (the tables whose triggers refuse changes, as they are before the
	-- triggers go: invoices, items, audit log, documents, PSA syncs)
	FOR t IN
		SELECT DISTINCT tg.tgrelid::regclass FROM pg_trigger tg
		 WHERE tg.tgfoid = '@extschema@.msp_refuse_change()'::regprocedure AND NOT tg.tgisinternal
		   AND NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = tg.tgrelid AND polname = 'finalized_no_update')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_update ON %s AS RESTRICTIVE FOR UPDATE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_delete ON %s AS RESTRICTIVE FOR DELETE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t));
	END LOOP;
	FOR s IN
		SELECT tg.tgrelid::regclass AS rel, tg.tgname
		  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND NOT tg.tgisinternal
		   AND tg.tgparentid = 0
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('DROP TRIGGER %I ON %s', s.tgname, s.rel));
	END LOOP;

	-- Foreign keys that set a column NULL when their row goes (a PSA
	-- ticket's person): Citus refuses SET NULL on a key that includes
	-- client_id, so on Citus such a delete is refused instead (clear the
	-- column first)
	FOR s IN
		SELECT k.conrelid::regclass AS rel, k.conname, pg_get_constraintdef(k.oid) AS def
		  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND k.contype = 'f' AND k.confdeltype IN ('n', 'd')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
													s.rel, s.conname, s.conname,
													regexp_replace(s.def, ' ON DELETE SET (NULL|DEFAULT)( \([^)]*\))?', '')));
	END LOOP;

	-- Sister clients: every pair people name now, then a foreign key in
	-- place of the trigger that kept the table (dropped above)
	IF NOT @extschema@.msp_is_distributed('@extschema@.people') THEN
		INSERT INTO @extschema@.sister_clients (client_id, bill_to_client_id)
		SELECT DISTINCT p.client_id, p.bill_to_client_id FROM @extschema@.people p
		 WHERE p.bill_to_client_id IS NOT NULL
		ON CONFLICT DO NOTHING;
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.people ADD CONSTRAINT people_sister_client_declared '
								 'FOREIGN KEY (client_id, bill_to_client_id) REFERENCES @extschema@.sister_clients');
	END IF;

	-- 4. The small shared tables on every node (the client-keyed tables
	-- that reference clients are distributed next: Citus must not turn
	-- them into local tables of its metadata meanwhile)
	PERFORM set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
	FOREACH t IN ARRAY (SELECT array_agg(format('@extschema@.%I', x)::regclass) FROM unnest(ref_tables) x) LOOP
		IF NOT @extschema@.msp_is_distributed(t) THEN
			-- Citus copies the rows to every node in one COPY per node; the
			-- time zone check's exception block (a subtransaction) would
			-- interrupt it on the coordinator's own copy.  The rows passed
			-- the check already; it is put back once the table is copied.
			IF t = '@extschema@.clients'::regclass THEN
				PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.clients DROP CONSTRAINT clients_time_zone_known');
			END IF;
			EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING t;
			IF t = '@extschema@.clients'::regclass THEN
				ALTER TABLE @extschema@.clients ADD CONSTRAINT clients_time_zone_known
					CHECK (@extschema@.msp_valid_time_zone(time_zone));
			END IF;
			n_ref := n_ref + 1;
		END IF;
	END LOOP;

	-- 5. Every other table of the schema by client_id, co-located, each
	-- after the tables its foreign keys name
	todo := ARRAY(SELECT c.oid::regclass FROM pg_class c
				   WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
					 AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
				   ORDER BY c.oid <> anchor, c.relname);
	LOOP
		progress := false;
		FOREACH t IN ARRAY todo LOOP
			CONTINUE WHEN @extschema@.msp_is_distributed(t);
			CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint k
								   WHERE k.conrelid = t AND k.contype = 'f' AND k.confrelid <> t
									 AND NOT @extschema@.msp_is_distributed(k.confrelid));
			IF t = anchor THEN
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => ''none'', shard_count => $2)'
					USING t, coalesce(shard_count, current_setting('citus.shard_count')::integer);
			ELSE
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => $2)'
					USING t, anchor::text;
			END IF;
			n_dist := n_dist + 1;
			progress := true;
		END LOOP;
		EXIT WHEN NOT progress;
	END LOOP;

	-- 6. Sequences: each node numbers from its own range (its group id in
	-- the top bits, as Citus does for the sequences it owns), so that ids
	-- written on workers (delegated finalizations, loads) never collide
	FOR s IN
		SELECT c.oid::regclass AS seq FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind = 'S'
	LOOP
		EXECUTE format($cmd$SELECT pg_catalog.run_command_on_workers(%L)$cmd$,
					   format($w$SELECT pg_catalog.setval(%L, greatest(last_value, (SELECT groupid::bigint << 48 FROM pg_catalog.pg_dist_local_group)), true) FROM %s$w$,
							  s.seq, s.seq));
	END LOOP;

	-- 7. account_labels: the same rows and labels, the names through
	-- msp_account_name (called only where a name may show), since Citus
	-- reads the shards as the session user, whom the view's owner rights do
	-- not reach (the label rule as in src/billing/tables.sql)
	labels_view := (
		'CREATE OR REPLACE VIEW @extschema@.account_labels WITH (security_barrier) AS '
		'SELECT a.client_id, a.account_id, a.realm, a.kind, '
		'coalesce(CASE WHEN a.kind IN (''shared'', ''service'') OR @extschema@.msp_sees_names() '
		'THEN @extschema@.msp_account_name(a.client_id, a.account_id) END, '
		'a.realm || '' account '' || a.account_id) AS label '
		'FROM @extschema@.accounts a WHERE @extschema@.msp_can_see_client(a.client_id)');
	EXECUTE labels_view;
	PERFORM @extschema@.msp_on_workers(ARRAY[labels_view]);

	-- 8. Per-client functions run on the worker that holds the client
	FOR f IN SELECT * FROM @extschema@.msp_distributed_functions() LOOP
		EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''$1''::text, colocate_with => $2, force_delegation => $3)'
			USING f.fn, anchor::text, f.force_delegation;
		n_fn := n_fn + 1;
	END LOOP;

	-- 9. The workers get the grants on views and functions (a delegated
	-- call reads account_labels there as its caller)
	PERFORM @extschema@.msp_grants_to_workers();

	RETURN format('%s reference tables, %s distributed tables, %s delegated functions', n_ref, n_dist, n_fn);
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_distribute(integer) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_distribute(integer) IS
	'on a Citus coordinator: makes clients and bi_client_access reference tables, distributes every other table by client_id (co-located), and delegates the per-client functions to the worker that holds the client';

CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.sister_clients, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications, '
						'@extschema@.invoice_terms, @extschema@.tax_rates, @extschema@.psa_mappings, @extschema@.export_codes, '
						'@extschema@.contract_lines, @extschema@.contract_line_tiers, @extschema@.meter_readings, '
						-- licensing (src/licensing.sql): mappings and the loaded snapshots
						'@extschema@.license_policies, @extschema@.partner_companies, @extschema@.psa_contacts, '
						'@extschema@.m365_sku_counts, @extschema@.m365_license_assignments, @extschema@.pax8_subscriptions';
	-- read by every role that reads invoices, written only by the definers
	-- (the number series: see below)
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items, @extschema@.invoice_documents, '
						  '@extschema@.invoice_line_documents, @extschema@.psa_syncs';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging, '
					'@extschema@.m365_graph_staging, @extschema@.m365_users_csv_staging, @extschema@.m365_activity_staging, '
					'@extschema@.pax8_staging, @extschema@.psa_ticket_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq, @extschema@.m365_graph_staging_line_no_seq, '
						 '@extschema@.m365_users_csv_staging_line_no_seq, @extschema@.m365_activity_staging_line_no_seq, '
						 '@extschema@.pax8_staging_line_no_seq, @extschema@.psa_ticket_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_psa_sync(bigint, daterange), '
					'@extschema@.msp_load_m365_graph(bigint, date, text), '
					'@extschema@.msp_load_m365_users_csv(bigint, date, text), '
					'@extschema@.msp_load_m365_activity(bigint, text), '
					'@extschema@.msp_load_pax8_subscriptions(bigint, date, text), '
					'@extschema@.msp_load_psa_tickets(bigint, text, text), '
					'@extschema@.msp_match_psa_tickets(bigint), '
					'@extschema@.msp_finalize_run_begin(daterange, text[], bigint[]), '
					'@extschema@.msp_finalize_run_client(bigint, bigint, boolean), '
					'@extschema@.msp_finalize_run_end(bigint)';
	-- licence names are not per client: those who load maintain them (BI
	-- needs none, and would read their column statistics)
	product_names text := '@extschema@.license_product_names';
	-- PSA tickets without the contact (an e-mail or PSA id) for those who see no names
	ticket_cols text := 'client_id, psa, ticket_id, at, company, board, channel, person_id, contact_id';
	-- month-end (src/monthend.sql): a procedure, granted ON PROCEDURE
	month_end text := '@extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer)';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE format('REVOKE ALL ON PROCEDURE %s FROM %s', month_end, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE 'GRANT SELECT, DELETE ON @extschema@.psa_tickets TO mspbill_admin';
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s, @extschema@.logons_logon_id_seq TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);
	-- month-end: run it, and watch its runs (every client's outcome)
	EXECUTE format('GRANT EXECUTE ON PROCEDURE %s TO mspbill_admin, mspbill_billing', month_end);
	EXECUTE 'GRANT SELECT ON @extschema@.finalize_runs, @extschema@.finalize_run_clients, @extschema@.finalize_progress '
			'TO mspbill_admin, mspbill_billing';

	-- the number series: chosen by the admin before the first invoice
	-- (prefix, digits, the number another system stopped at), never set
	-- back afterwards; billing only reads it (finalization, a definer,
	-- takes the numbers)
	EXECUTE 'GRANT SELECT, INSERT (series, prefix, digits, last_number), UPDATE (prefix, digits) '
			'ON @extschema@.invoice_numbering TO mspbill_admin';
	EXECUTE 'GRANT SELECT ON @extschema@.invoice_numbering TO mspbill_billing';

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.psa_tickets TO mspbill_billing, mspbill_bi', ticket_cols);
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_admin, mspbill_billing', product_names);
	EXECUTE 'GRANT SELECT ON @extschema@.psa_unknown_contacts TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';
	-- (what account_labels calls on Citus; it checks the login itself)
	EXECUTE 'GRANT EXECUTE ON FUNCTION @extschema@.msp_account_name(bigint, bigint) TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	-- on Citus the workers get the grants on views and functions too
	-- (Citus carries those on tables only)
	PERFORM @extschema@.msp_grants_to_workers();
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';

CREATE OR REPLACE VIEW @extschema@.kpi_billable_users WITH (security_barrier) AS
SELECT p.client_id, rc.client_name, lower(p.period) AS month, p.status,
	   p.users AS billable_users, prev.users AS previous_billable_users, p.users - prev.users AS change,
	   CASE WHEN prev.client_id IS NOT NULL THEN coalesce(ch.joined_count, 0) END AS joined_count,
	   CASE WHEN prev.client_id IS NOT NULL THEN coalesce(ch.left_count, 0) END AS left_count,
	   CASE WHEN prev.client_id IS NOT NULL THEN coalesce(ch.joined, '{}') END AS joined,
	   CASE WHEN prev.client_id IS NOT NULL THEN coalesce(ch.departed, '{}') END AS departed,
	   @extschema@.userset_to_array(p.billable) AS billable_person_ids,
	   p.total, p.currency
  FROM @extschema@.period_invoices p
  JOIN @extschema@.reporting_clients rc ON rc.client_id = p.client_id
  LEFT JOIN @extschema@.period_invoices prev
	ON prev.client_id = p.client_id
   AND prev.period = daterange((lower(p.period) - interval '1 month')::date, lower(p.period))
  LEFT JOIN (
	SELECT x.client_id, x.month,
		   (count(*) FILTER (WHERE x.is_now AND NOT x.was_before))::integer AS joined_count,
		   (count(*) FILTER (WHERE x.was_before AND NOT x.is_now))::integer AS left_count,
		   array_agg(x.label ORDER BY x.label) FILTER (WHERE x.is_now AND NOT x.was_before) AS joined,
		   array_agg(x.label ORDER BY x.label) FILTER (WHERE x.was_before AND NOT x.is_now) AS departed
	  FROM (SELECT m.client_id, m.month, m.home_client_id, m.person_id,
				   max(coalesce(m.label, pe.pseudonym, 'person ' || m.person_id)) AS label,
				   bool_or(m.is_now) AS is_now, bool_or(NOT m.is_now) AS was_before
			  FROM (SELECT n.client_id, lower(n.period) AS month, n.client_id AS home_client_id,
						   @extschema@.userset_members(n.billable) AS person_id, NULL::text AS label, true AS is_now
					  FROM @extschema@.period_invoices n
					UNION ALL
					SELECT s.client_id, s.month, (s.e ->> 'home_client_id')::bigint, (s.e ->> 'person_id')::bigint,
						   format('%s (client %s)', s.e ->> 'pseudonym', s.e ->> 'home_client_id'), true
					  FROM (SELECT n.client_id, lower(n.period) AS month, jsonb_array_elements(n.sister_billable) AS e
							  FROM @extschema@.period_invoices n) s
					UNION ALL
					SELECT b.client_id, upper(b.period), b.client_id,
						   @extschema@.userset_members(b.billable), NULL::text, false
					  FROM @extschema@.period_invoices b
					 WHERE lower(b.period) = (upper(b.period) - interval '1 month')::date
					UNION ALL
					SELECT s.client_id, s.month, (s.e ->> 'home_client_id')::bigint, (s.e ->> 'person_id')::bigint,
						   format('%s (client %s)', s.e ->> 'pseudonym', s.e ->> 'home_client_id'), false
					  FROM (SELECT b.client_id, upper(b.period) AS month, jsonb_array_elements(b.sister_billable) AS e
							  FROM @extschema@.period_invoices b
							 WHERE lower(b.period) = (upper(b.period) - interval '1 month')::date) s) m
			  LEFT JOIN @extschema@.people pe
				ON pe.client_id = m.client_id AND pe.person_id = m.person_id AND m.label IS NULL
			 GROUP BY m.client_id, m.month, m.home_client_id, m.person_id) x
	 GROUP BY x.client_id, x.month) ch
	ON ch.client_id = p.client_id AND ch.month = lower(p.period)
 WHERE p.status <> 'unpriced';


-- outfix (outside test): a Windows or Entra file's byte-order mark is read past, blank lines
-- are skipped; held counts the logoffs still waiting when loaded again
CREATE OR REPLACE FUNCTION @extschema@.msp_load_windows_events(client_id bigint, source text DEFAULT 'windows',
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
	-- (loaded again) were waiting already
	WITH waiting AS (
		SELECT s.session_key, s.at
		  FROM pg_temp.msp_win_session s
		 WHERE s.kind = 'logoff' AND s.line_no IS NOT NULL AND NOT s.consumed
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.logons l
							WHERE l.client_id = client_id AND l.session_key = s.session_key AND l.at <= s.at)),
	hold AS (
		INSERT INTO @extschema@.pending_logoffs AS p (client_id, session_key, at)
		SELECT DISTINCT client_id, w.session_key, w.at FROM waiting w
		ON CONFLICT DO NOTHING)
	SELECT count(*) INTO held FROM waiting;
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_entra_signins(client_id bigint, source text DEFAULT 'entra',
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



-- Storage of logons (issue 21, goal 4: bytes per logon row).  logons loses
-- logon_id (a sequence's number no query looked a logon up by; the privacy
-- audit numbers its shared sessions itself now) and its sequence; the
-- account index becomes partial on presence instead of including it
-- (every query that reads it says l.presence; an entry is 8 bytes
-- smaller).  Rows of 0.1.0 and 0.2.0 stay; a dropped column costs stored
-- rows nothing more, and partitions added later do not have it.
ALTER TABLE @extschema@.logons DROP COLUMN logon_id;
-- out of the extension first: that also takes it off the extension's
-- dumped tables (a plain DROP leaves its oid there)
ALTER EXTENSION mspbill DROP SEQUENCE @extschema@.logons_logon_id_seq;
DROP SEQUENCE @extschema@.logons_logon_id_seq;
DROP INDEX @extschema@.logons_account_idx;
CREATE INDEX logons_account_idx ON @extschema@.logons (client_id, account_id, at) WHERE presence;

CREATE OR REPLACE FUNCTION @extschema@.msp_pii_audit(client_id bigint, period daterange DEFAULT NULL,
										  window_size interval DEFAULT '15 minutes')
RETURNS TABLE (device text, account text, application text, session_start timestamptz,
			   session_end timestamptz, uses integer, sessions bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	z record;
	sess interval;
BEGIN
	-- nothing, rather than an error, for a client the reader may not see
	IF NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = msp_pii_audit.client_id) THEN
		RETURN;
	END IF;
	period := msp_period(client_id, period);
	SELECT c.time_zone, (lower(period)::timestamp AT TIME ZONE c.time_zone) AS t0,
		   (upper(period)::timestamp AT TIME ZONE c.time_zone) AS t1
	  INTO z FROM clients c WHERE c.client_id = msp_pii_audit.client_id;
	SELECT k.default_session INTO sess FROM contracts k
	 WHERE k.client_id = msp_pii_audit.client_id AND k.effective @> (upper(period) - 1);
	sess := coalesce(sess, interval '1 hour');
	RETURN QUERY
	WITH shared_sessions AS MATERIALIZED (
		-- numbered here (the CTE is read twice, so it is materialized once)
		SELECT row_number() OVER () AS session_no, l.device_id, l.account_id, l.at AS s0,
			   coalesce(l.ended, l.at + sess) AS s1
		  FROM logons l
		  JOIN accounts a ON a.client_id = msp_pii_audit.client_id AND a.account_id = l.account_id
		 WHERE l.client_id = msp_pii_audit.client_id AND l.at >= z.t0 AND l.at < z.t1
		   AND a.kind = 'shared' AND a.realm = 'os' AND l.presence AND l.device_id IS NOT NULL),
	uses AS (
		SELECT s.session_no, ua.application, count(*)::integer AS uses,
			   bool_or(ua.kind = 'individual') AS individual_login
		  FROM shared_sessions s
		  JOIN logons u ON u.client_id = msp_pii_audit.client_id AND u.device_id = s.device_id
					   AND u.at >= s.s0 - window_size AND u.at <= s.s1 + window_size
		  JOIN accounts ua ON ua.client_id = msp_pii_audit.client_id AND ua.account_id = u.account_id AND ua.realm = 'app'
		  JOIN applications ap ON ap.client_id = msp_pii_audit.client_id AND ap.name = ua.application AND ap.holds_pii
		 GROUP BY s.session_no, ua.application)
	SELECT d.name, al.label, x.application, s.s0, s.s1, x.uses,
		   count(*) OVER (PARTITION BY d.name, al.label, x.application)
	  FROM uses x
	  JOIN shared_sessions s USING (session_no)
	  JOIN devices d ON d.client_id = msp_pii_audit.client_id AND d.device_id = s.device_id
	  JOIN account_labels al ON al.client_id = msp_pii_audit.client_id AND al.account_id = s.account_id
	 WHERE NOT x.individual_login
	 ORDER BY d.name, s.s0;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_pii_audit(bigint, daterange, interval) IS
	'HIPAA check: shared-account sessions in which a PII application was used without an individual application login';

CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.sister_clients, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications, '
						'@extschema@.invoice_terms, @extschema@.tax_rates, @extschema@.psa_mappings, @extschema@.export_codes, '
						'@extschema@.contract_lines, @extschema@.contract_line_tiers, @extschema@.meter_readings, '
						-- licensing (src/licensing.sql): mappings and the loaded snapshots
						'@extschema@.license_policies, @extschema@.partner_companies, @extschema@.psa_contacts, '
						'@extschema@.m365_sku_counts, @extschema@.m365_license_assignments, @extschema@.pax8_subscriptions';
	-- read by every role that reads invoices, written only by the definers
	-- (the number series: see below)
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items, @extschema@.invoice_documents, '
						  '@extschema@.invoice_line_documents, @extschema@.psa_syncs';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging, '
					'@extschema@.m365_graph_staging, @extschema@.m365_users_csv_staging, @extschema@.m365_activity_staging, '
					'@extschema@.pax8_staging, @extschema@.psa_ticket_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq, @extschema@.m365_graph_staging_line_no_seq, '
						 '@extschema@.m365_users_csv_staging_line_no_seq, @extschema@.m365_activity_staging_line_no_seq, '
						 '@extschema@.pax8_staging_line_no_seq, @extschema@.psa_ticket_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_psa_sync(bigint, daterange), '
					'@extschema@.msp_load_m365_graph(bigint, date, text), '
					'@extschema@.msp_load_m365_users_csv(bigint, date, text), '
					'@extschema@.msp_load_m365_activity(bigint, text), '
					'@extschema@.msp_load_pax8_subscriptions(bigint, date, text), '
					'@extschema@.msp_load_psa_tickets(bigint, text, text), '
					'@extschema@.msp_match_psa_tickets(bigint), '
					'@extschema@.msp_finalize_run_begin(daterange, text[], bigint[]), '
					'@extschema@.msp_finalize_run_client(bigint, bigint, boolean), '
					'@extschema@.msp_finalize_run_end(bigint)';
	-- licence names are not per client: those who load maintain them (BI
	-- needs none, and would read their column statistics)
	product_names text := '@extschema@.license_product_names';
	-- PSA tickets without the contact (an e-mail or PSA id) for those who see no names
	ticket_cols text := 'client_id, psa, ticket_id, at, company, board, channel, person_id, contact_id';
	-- month-end (src/monthend.sql): a procedure, granted ON PROCEDURE
	month_end text := '@extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer)';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE format('REVOKE ALL ON PROCEDURE %s FROM %s', month_end, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE 'GRANT SELECT, DELETE ON @extschema@.psa_tickets TO mspbill_admin';
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);
	-- month-end: run it, and watch its runs (every client's outcome)
	EXECUTE format('GRANT EXECUTE ON PROCEDURE %s TO mspbill_admin, mspbill_billing', month_end);
	EXECUTE 'GRANT SELECT ON @extschema@.finalize_runs, @extschema@.finalize_run_clients, @extschema@.finalize_progress '
			'TO mspbill_admin, mspbill_billing';

	-- the number series: chosen by the admin before the first invoice
	-- (prefix, digits, the number another system stopped at), never set
	-- back afterwards; billing only reads it (finalization, a definer,
	-- takes the numbers)
	EXECUTE 'GRANT SELECT, INSERT (series, prefix, digits, last_number), UPDATE (prefix, digits) '
			'ON @extschema@.invoice_numbering TO mspbill_admin';
	EXECUTE 'GRANT SELECT ON @extschema@.invoice_numbering TO mspbill_billing';

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.psa_tickets TO mspbill_billing, mspbill_bi', ticket_cols);
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_admin, mspbill_billing', product_names);
	EXECUTE 'GRANT SELECT ON @extschema@.psa_unknown_contacts TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
-- for DBAs only: it creates roles and grants
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';

-- The daily rollup reads each day's logons by (client_id, at) before it
-- joins their accounts: the account index now holds presence logons only.
CREATE OR REPLACE FUNCTION @extschema@.msp_daily_activity_of(client_ids bigint[], days date[])
RETURNS SETOF @extschema@.daily_activity
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT p.client_id, p.day,
		   userset_agg(a.person_id) FILTER (WHERE l.presence AND a.kind = 'individual' AND NOT a.is_machine),
		   userset_agg(l.device_id),
		   userset_agg(l.account_id) FILTER (WHERE l.presence AND a.kind = 'shared' AND NOT a.is_machine),
		   (count(*) FILTER (WHERE l.presence AND a.kind = 'shared' AND NOT a.is_machine))::integer,
		   count(*)
	  FROM (SELECT DISTINCT u.client_id, u.day FROM unnest(client_ids, days) u(client_id, day)) p
	  JOIN clients c ON c.client_id = p.client_id
	  CROSS JOIN LATERAL (SELECT g.client_id, g.account_id, g.device_id, g.presence
							FROM logons g
						   WHERE g.client_id = p.client_id
							 AND g.at >= ((p.day::timestamp - interval '3 hours') AT TIME ZONE c.time_zone)
							 AND g.at < (((p.day + 1)::timestamp + interval '3 hours') AT TIME ZONE c.time_zone)
							 AND msp_local_day(g.at, c.time_zone) = p.day
						  OFFSET 0) l
	  JOIN accounts a ON a.client_id = l.client_id AND a.account_id = l.account_id
	 GROUP BY p.client_id, p.day;
END;
COMMENT ON FUNCTION @extschema@.msp_daily_activity_of(bigint[], date[]) IS
	'the daily_activity rows of the given (client, day) pairs, computed from the logons';

-- batch: issue 21, the month's billable people of every client in one
-- set-based pass of the one billing rule text (msp_segment_people_query),
-- priced by msp_compute_invoices and msp_invoices, and used by month-end
-- (msp_finalize_run_prepare, checked per client by msp_people_sources)

CREATE FUNCTION @extschema@.msp_segment_people_query(for_one_client boolean)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
RETURN regexp_replace(regexp_replace(regexp_replace(replace($rule$
WITH g AS NOT MATERIALIZED ({SEGMENTS}),
eligible AS (
	SELECT g.*, p.person_id, p.pseudonym, p.active
	  FROM g JOIN people p ON p.client_id = {HOME:g}
	 WHERE ((g.home = g.payer AND p.bill_to_client_id IS NULL) OR p.bill_to_client_id = g.payer)
	   AND NOT p.is_technician AND NOT p.do_not_bill
	   AND (p.active IS NULL OR p.active && g.segment)),
-- their accounts that may carry evidence, first (a logon is found by its
-- account, whichever client: the plan is the same for one and for all):
-- counted, in the counted realms; app, an application account whose
-- logons count when attributed through a shared session
person_accounts AS (
	SELECT e.payer, e.contract_id, e.home, e.person_id, e.time_zone, e.t0, e.t1, e.active, e.count_realms,
		   e.shared_billing, e.attribution_window, e.default_session, a.account_id,
		   a.realm = ANY (e.count_realms) AS counted, a.realm = 'app' AS app
	  FROM eligible e
	  JOIN accounts a ON a.client_id = {HOME:e} AND a.person_id = e.person_id
					 AND a.kind = 'individual' AND NOT a.is_machine
					 AND (a.realm = ANY (e.count_realms) OR (a.realm = 'app' AND e.shared_billing = 'attribute'))),
-- presence logons in the counted realms, and application logons
-- attributed through a shared session on the same device
evidence AS (
	SELECT e.payer, e.contract_id, e.home, e.person_id, e.time_zone, l.at, e.account_id, true AS by_logon
	  FROM person_accounts e
	  JOIN logons l ON l.client_id = {HOME:e} AND l.account_id = e.account_id
				   AND l.at >= e.t0 AND l.at < e.t1 AND l.at >= {LO} AND l.at < {HI} AND l.presence
	 WHERE e.counted AND (e.active IS NULL OR e.active @> (l.at AT TIME ZONE e.time_zone)::date)
	UNION ALL
	SELECT e.payer, e.contract_id, e.home, e.person_id, e.time_zone, il.at, e.account_id, false
	  FROM person_accounts e
	  JOIN logons il ON il.client_id = {HOME:e} AND il.account_id = e.account_id
					AND il.at >= e.t0 AND il.at < e.t1 AND il.at >= {LO} AND il.at < {HI} AND il.presence
	 WHERE e.app AND e.shared_billing = 'attribute'
	   AND (e.active IS NULL OR e.active @> (il.at AT TIME ZONE e.time_zone)::date)
	   AND EXISTS (SELECT 1
					 FROM logons sl
					 JOIN accounts sa ON sa.client_id = {HOME:e} AND sa.account_id = sl.account_id
									 AND sa.kind = 'shared' AND NOT sa.is_machine
									 AND sa.realm = ANY (e.count_realms)
					WHERE sl.client_id = {HOME:e} AND sl.device_id = il.device_id
					  AND sl.at >= e.t0 AND sl.at < e.t1 AND sl.at >= {LO} AND sl.at < {HI} AND sl.presence
					  AND il.at >= sl.at - e.attribution_window
					  AND il.at <= coalesce(sl.ended, sl.at + e.default_session) + e.attribution_window)),
seen AS (
	SELECT ev.payer, ev.contract_id, ev.home, ev.person_id, min(ev.at) AS first_seen, max(ev.at) AS last_seen,
		   count(DISTINCT (ev.at AT TIME ZONE ev.time_zone)::date)::integer AS days_active,
		   bool_or(ev.by_logon) AS by_logon, array_agg(DISTINCT ev.account_id) AS account_ids
	  FROM evidence ev
	 GROUP BY ev.payer, ev.contract_id, ev.home, ev.person_id),
support AS (
	SELECT e.payer, e.contract_id, e.home, e.person_id, count(*)::integer AS contacts,
		   min(s.at) AS first_at, max(s.at) AS last_at
	  FROM eligible e
	  JOIN support_contacts s ON s.client_id = {HOME:e} AND s.person_id = e.person_id
							 AND s.at >= e.t0 AND s.at < e.t1
	 WHERE e.active IS NULL OR e.active @> (s.at AT TIME ZONE e.time_zone)::date
	 GROUP BY e.payer, e.contract_id, e.home, e.person_id)
SELECT e.payer AS payer_id, e.contract_id, e.segment, e.home AS home_client_id, e.person_id, e.pseudonym,
	   CASE
		   WHEN s.days_active >= e.min_active_days AND sp.contacts > 0 AND e.support_rule <> 'none'
			   THEN CASE WHEN s.by_logon THEN 'logon+support' ELSE 'shared-attributed+support' END
		   WHEN s.days_active >= e.min_active_days
			   THEN CASE WHEN s.by_logon THEN 'logon' ELSE 'shared-attributed' END
		   ELSE 'support'
	   END AS rule,
	   least(s.first_seen, sp.first_at) AS first_seen, greatest(s.last_seen, sp.last_at) AS last_seen,
	   coalesce(s.days_active, 0) AS days_active, coalesce(sp.contacts, 0) AS support_contacts,
	   CASE WHEN e.with_evidence
			THEN ARRAY(SELECT x.label FROM (
						SELECT CASE WHEN l.kind IN ('shared', 'service') OR e.names THEN l.label
									ELSE l.realm || ' account ' || l.account_id END AS label
						  FROM account_labels l
						 WHERE l.client_id = {HOME:e} AND l.account_id = ANY (s.account_ids)) x
						ORDER BY x.label) END AS accounts,
	   -- the days of the segment the person is active (contract lines and
	   -- quantities that prorate read them)
	   upper(coalesce(e.active, e.segment) * e.segment) - lower(coalesce(e.active, e.segment) * e.segment) AS segment_days
  FROM eligible e
  LEFT JOIN seen s ON s.payer = e.payer AND s.contract_id = e.contract_id AND s.home = e.home AND s.person_id = e.person_id
  LEFT JOIN support sp ON sp.payer = e.payer AND sp.contract_id = e.contract_id AND sp.home = e.home
					  AND sp.person_id = e.person_id
 WHERE CASE e.support_rule
		   WHEN 'none' THEN coalesce(s.days_active, 0) >= e.min_active_days
		   WHEN 'sufficient' THEN coalesce(s.days_active, 0) >= e.min_active_days OR sp.contacts > 0
		   ELSE coalesce(s.days_active, 0) >= e.min_active_days AND sp.contacts > 0
	   END
 ORDER BY e.payer, e.contract_id, e.pseudonym, e.home
$rule$, '{SEGMENTS}',
	CASE WHEN for_one_client
		 THEN 'SELECT $1::bigint AS home, $2::bigint AS payer, $3::bigint AS contract_id, $4::daterange AS segment, '
			  '$5::timestamptz AS t0, $6::timestamptz AS t1, $7::text[] AS count_realms, $8::integer AS min_active_days, '
			  '$9::text AS support_rule, $10::text AS shared_billing, $11::interval AS attribution_window, '
			  '$12::interval AS default_session, $13::text AS time_zone, $14::boolean AS with_evidence, $15::boolean AS names'
		 ELSE 'SELECT s.home, s.payer, s.contract_id, s.segment, '
			  'lower(s.segment)::timestamp AT TIME ZONE c.time_zone AS t0, '
			  'upper(s.segment)::timestamp AT TIME ZONE c.time_zone AS t1, x.count_realms, x.min_active_days, '
			  'x.support_rule, x.shared_billing, x.attribution_window, x.default_session, c.time_zone, '
			  '$5::boolean AS with_evidence, $6::boolean AS names '
			  'FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::daterange[]) s(home, payer, contract_id, segment) '
			  'JOIN contracts x ON x.client_id = s.payer AND x.contract_id = s.contract_id '
			  'JOIN clients c ON c.client_id = s.payer' END),
	'\{HOME:([a-z]+)\}', CASE WHEN for_one_client THEN '$1' ELSE '\1.home' END, 'g'),
	'\{LO\}', CASE WHEN for_one_client THEN '$5' ELSE '$7' END, 'g'),
	'\{HI\}', CASE WHEN for_one_client THEN '$6' ELSE '$8' END, 'g');
COMMENT ON FUNCTION @extschema@.msp_segment_people_query(boolean) IS
	'the billing rule as one query text: for one client''s segment (parameters, every table filtered by client_id = $1) or for every segment of every client at once';

CREATE FUNCTION @extschema@.msp_segment_people(client_id bigint, contract_id bigint, segment daterange,
												with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint, segment_days integer)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	payer bigint := client_id;
	k record;
	t0 timestamptz;
	t1 timestamptz;
	home bigint;
	q text := 'SELECT u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen, u.days_active, u.support_contacts, '
			  'u.accounts, u.home_client_id, u.segment_days FROM (' || msp_segment_people_query(true) || ') u';
	-- decided here, by this session: on Citus a sister client's labels are
	-- read on another node, whose session does not carry the caller's
	-- mspbill.pseudonymous (set by the finalizing functions)
	names boolean := msp_sees_names();
BEGIN
	SELECT x.count_realms, x.min_active_days, x.support_rule, x.shared_billing, x.attribution_window,
		   x.default_session, c.time_zone
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = payer AND c.client_id = payer AND x.contract_id = msp_segment_people.contract_id;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;
	-- the payer first, then the sister clients whose people it pays for
	-- (sister_clients: a small table, on Citus a reference table read on
	-- this node, where people of every client would be every shard)
	FOREACH home IN ARRAY ARRAY[payer] || ARRAY(SELECT s.client_id FROM sister_clients s
												 WHERE s.bill_to_client_id = payer AND s.client_id <> payer
												 ORDER BY 1)
	LOOP
		RETURN QUERY EXECUTE q
			USING home, payer, contract_id, segment, t0, t1, k.count_realms, k.min_active_days, k.support_rule,
				  k.shared_billing, k.attribution_window, k.default_session, k.time_zone, with_evidence, names;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_people(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment (msp_segment_users), with the days of the segment each is active';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_users(client_id bigint, contract_id bigint, segment daterange,
											   with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	RETURN QUERY
	SELECT u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen, u.days_active, u.support_contacts,
		   u.accounts, u.home_client_id
	  FROM msp_segment_people(client_id, contract_id, segment, with_evidence) u;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_users(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment of a period (sister clients'' people it pays for included), with the rule and evidence';

CREATE FUNCTION @extschema@.msp_period_people_all(period daterange DEFAULT NULL, client_ids bigint[] DEFAULT NULL,
												   with_evidence boolean DEFAULT false)
RETURNS TABLE (client_id bigint, contract_id bigint, segment daterange, person_id bigint, pseudonym text,
			   rule text, first_seen timestamptz, last_seen timestamptz, days_active integer,
			   support_contacts integer, accounts text[], home_client_id bigint, segment_days integer)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
SET enable_nestloop = off
AS $$
#variable_conflict use_variable
DECLARE
	homes bigint[];
	payers bigint[];
	contracts_ bigint[];
	segments daterange[];
	lo timestamptz;
	hi timestamptz;
BEGIN
	-- every (home, payer, contract, segment): the payer's contract segments
	-- of its period, for itself and for each sister client it pays for
	SELECT array_agg(h.home), array_agg(s.client_id), array_agg(s.contract_id), array_agg(s.segment),
		   min(lower(s.segment)::timestamp AT TIME ZONE s.time_zone),
		   max(upper(s.segment)::timestamp AT TIME ZONE s.time_zone)
	  INTO homes, payers, contracts_, segments, lo, hi
	  FROM (SELECT c.client_id, c.time_zone, k.contract_id, k.effective * msp_period(c.client_id, period) AS segment
			  FROM clients c
			  JOIN contracts k ON k.client_id = c.client_id AND k.effective && msp_period(c.client_id, period)
			 WHERE client_ids IS NULL OR c.client_id = ANY (client_ids)) s,
		   LATERAL (SELECT s.client_id
					UNION
					SELECT sc.client_id FROM sister_clients sc WHERE sc.bill_to_client_id = s.client_id) h(home);
	IF homes IS NULL THEN
		RETURN;
	END IF;
	RETURN QUERY EXECUTE
		'SELECT u.payer_id, u.contract_id, u.segment, u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen, '
		'u.days_active, u.support_contacts, u.accounts, u.home_client_id, u.segment_days FROM ('
		|| msp_segment_people_query(false) || ') u'
		USING homes, payers, contracts_, segments, with_evidence, msp_sees_names(), lo, hi;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period_people_all(daterange, bigint[], boolean) IS
	'every client''s billable people of a period (each contract segment''s, with the days of it each is active) in one set-based statement of the billing rule';

CREATE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange,
													user_homes bigint[], user_ids bigint[], user_days integer[])
RETURNS @extschema@.segment_quantities
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	k record;
	q segment_quantities;
	t0 timestamptz;
	t1 timestamptz;
	pool record;
	share numeric;
BEGIN
	SELECT x.prorate, x.shared_billing, x.count_realms, x.default_session, c.time_zone,
		   upper(period) - lower(period) AS period_days,
		   CASE WHEN x.prorate THEN upper(segment) - lower(segment)
				ELSE upper(period) - lower(period) END AS covered_days
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = msp_segment_quantities.client_id AND c.client_id = msp_segment_quantities.client_id
	   AND x.contract_id = msp_segment_quantities.contract_id;
	-- no quantities for a contract that does not exist or that the caller
	-- may not see
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;

	-- people: the days of the segment each billed person is active (kept
	-- too: contract lines that prorate read them from here instead of
	-- counting the people again)
	q.user_count := coalesce(cardinality(user_ids), 0);
	q.user_segment_days := coalesce((SELECT sum(d) FROM unnest(user_days) d), 0);
	q.user_days := CASE WHEN k.prorate THEN q.user_segment_days ELSE q.user_count * k.period_days END;
	-- who: an invoice of two contracts counts a person billed by both once
	q.user_homes := coalesce(user_homes, '{}');
	q.user_ids := coalesce(user_ids, '{}');

	-- shared seats: one per shared account with presence logons, or its
	-- peak of concurrent sessions
	IF k.shared_billing IN ('seat', 'peak') THEN
		SELECT coalesce(sum(CASE WHEN k.shared_billing = 'peak' THEN greatest(sh.peak, 1) ELSE 1 END), 0)::integer
		  INTO q.seat_count
		  FROM (SELECT a.account_id,
					   peak_concurrency(tstzrange(l.at, coalesce(l.ended, l.at + k.default_session))) AS peak
				  FROM logons l
				  JOIN accounts a ON a.client_id = msp_segment_quantities.client_id AND a.account_id = l.account_id
								 AND a.kind = 'shared' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
				 WHERE l.client_id = msp_segment_quantities.client_id AND l.at >= t0 AND l.at < t1 AND l.presence
				 GROUP BY a.account_id) sh;
	ELSE
		q.seat_count := 0;
	END IF;

	SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN k.period_days
							 ELSE upper(coalesce(dv.active, segment) * segment)
								  - lower(coalesce(dv.active, segment) * segment) END), 0),
		   count(*)::integer
	  INTO q.device_days, q.device_count
	  FROM devices dv
	 WHERE dv.client_id = msp_segment_quantities.client_id AND (dv.active IS NULL OR dv.active && segment);

	SELECT coalesce(sum(lc.seats), 0)::integer INTO q.license_count
	  FROM (SELECT DISTINCT ON (x.sku) x.seats
			  FROM license_counts x
			 WHERE x.client_id = msp_segment_quantities.client_id AND x.as_of < upper(segment)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc;

	-- each pool's share, computed outside the query that lists the pools
	q.cost := 0;
	q.support_cost := 0;
	FOR pool IN
		SELECT cp.pool_id, cp.category FROM cost_pools cp
		 WHERE cp.client_id = msp_segment_quantities.client_id AND cp.period && segment
		 ORDER BY cp.pool_id
	LOOP
		share := msp_pool_share(client_id, pool.pool_id, period, segment);
		q.cost := q.cost + share;
		IF pool.category = 'support' THEN
			q.support_cost := q.support_cost + share;
		END IF;
	END LOOP;

	q.seat_days := q.seat_count * k.covered_days;
	q.license_days := q.license_count * k.covered_days;
	q.covered_days := k.covered_days;
	q.period_days := k.period_days;
	RETURN q;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange, bigint[], bigint[], integer[]) IS
	'billable counts and prorated quantities of one contract segment, its people given';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange)
RETURNS @extschema@.segment_quantities
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	homes bigint[];
	ids bigint[];
	days integer[];
BEGIN
	SELECT array_agg(b.home_client_id), array_agg(b.person_id), array_agg(b.segment_days) INTO homes, ids, days
	  FROM msp_segment_people(client_id, contract_id, segment, false) b;
	RETURN msp_segment_quantities(client_id, contract_id, segment, period, coalesce(homes, '{}'), coalesce(ids, '{}'),
								  coalesce(days, '{}'));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange) IS
	'billable counts and prorated quantities of one contract segment';

CREATE FUNCTION @extschema@.msp_price_invoice(client_id bigint, period daterange, people jsonb,
											   OUT summary @extschema@.invoice,
											   OUT lines @extschema@.invoice_line[])
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	seg record;
	q segment_quantities;
	line invoice_line;
	inv invoice;
	models text[] := '{}';
	homes bigint[] := '{}';
	ids bigint[] := '{}';
	n integer := 0;
BEGIN
	period := msp_period(client_id, period);
	PERFORM msp_check_currency(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	inv := (c.client_id, c.name, period, NULL, 0, 0, 0, 0, 0, c.currency)::invoice;
	lines := '{}';
	FOR seg IN SELECT * FROM msp_contract_segments(client_id, period) LOOP
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id
			AND contracts.contract_id = seg.contract_id;
		IF people IS NULL THEN
			q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period);
		ELSE
			q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period,
										ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(people->(seg.contract_id::text)->'h') x),
										ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(people->(seg.contract_id::text)->'p') x),
										ARRAY(SELECT x::integer FROM jsonb_array_elements_text(people->(seg.contract_id::text)->'d') x));
		END IF;
		IF NOT k.model = ANY (models) THEN
			models := models || k.model;
		END IF;
		-- a seat billed by two contracts of the month is one seat
		inv.seats := greatest(inv.seats, q.seat_count);
		homes := homes || q.user_homes;
		ids := ids || q.user_ids;
		FOR line IN SELECT * FROM msp_segment_lines(c, k, seg.segment, period, q, k.model) LOOP
			inv.total := inv.total + line.amount;
			IF line.basis <> 'minimum' THEN
				inv.subtotal := inv.subtotal + line.amount;
			END IF;
			n := n + 1;
			line.line_no := n;
			-- shown and stored alike: four decimals at most
			line.quantity := trim_scale(round(line.quantity, 4));
			lines := lines || line;
		END LOOP;
	END LOOP;
	-- the period's people: each segment's, a person counted by two
	-- contracts once (as msp_period_people counts them, without counting
	-- them again)
	inv.users := (SELECT count(DISTINCT (x.h, x.id))::integer FROM unnest(homes, ids) x(h, id));
	inv.devices := msp_period_devices(client_id, period);
	inv.model := array_to_string(models, '+');
	-- adjustments of earlier invoices carried by this one
	FOR line IN SELECT * FROM msp_adjustment_lines(client_id, period) LOOP
		inv.total := inv.total + line.amount;
		n := n + 1;
		line.line_no := n;
		lines := lines || line;
	END LOOP;
	inv.subtotal := msp_round(inv.subtotal, c.minor_unit);
	inv.total := msp_round(inv.total, c.minor_unit);
	summary := inv;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_price_invoice(bigint, daterange, jsonb) IS
	'the invoice of a client for a period as today''s data prices it and its lines, each segment priced once, from people counted for every client at once (or, NULL, for this one)';

CREATE OR REPLACE FUNCTION @extschema@.msp_price_invoice(client_id bigint, period daterange,
											   OUT summary @extschema@.invoice,
											   OUT lines @extschema@.invoice_line[])
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	priced record;
BEGIN
	SELECT * INTO priced FROM msp_price_invoice(client_id, period, NULL) p;
	summary := priced.summary;
	lines := priced.lines;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_price_invoice(bigint, daterange) IS
	'the invoice of a client for a period as today''s data prices it and its lines (as msp_price_lines gives them), each segment priced once';

CREATE FUNCTION @extschema@.msp_period_people_by_client(period daterange DEFAULT NULL, client_ids bigint[] DEFAULT NULL)
RETURNS TABLE (client_id bigint, people jsonb)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	RETURN QUERY
	SELECT c.client_id, coalesce(x.people, '{}')
	  FROM clients c
	  LEFT JOIN (SELECT y.client_id, jsonb_object_agg(y.contract_id::text, y.who) AS people
				   FROM (SELECT u.client_id, u.contract_id,
								jsonb_build_object('h', array_agg(u.home_client_id), 'p', array_agg(u.person_id),
												   'd', array_agg(u.segment_days)) AS who
						   FROM msp_period_people_all(period, client_ids, false) u
						  GROUP BY u.client_id, u.contract_id) y
				  GROUP BY y.client_id) x ON x.client_id = c.client_id
	 WHERE client_ids IS NULL OR c.client_id = ANY (client_ids)
	 ORDER BY c.client_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period_people_by_client(daterange, bigint[]) IS
	'every client''s people of a period, counted for all clients at once, as msp_price_invoice takes them';

CREATE FUNCTION @extschema@.msp_compute_invoices(period daterange DEFAULT NULL, client_ids bigint[] DEFAULT NULL)
RETURNS SETOF @extschema@.invoice
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	r record;
BEGIN
	-- on Citus the people of every client are not one statement: each
	-- client is computed on its own (msp_invoices runs them on the workers)
	IF msp_is_distributed('@extschema@.contracts') THEN
		FOR r IN SELECT c.client_id FROM clients c WHERE client_ids IS NULL OR c.client_id = ANY (client_ids)
				  ORDER BY 1 LOOP
			RETURN NEXT msp_compute_invoice(r.client_id, period);
		END LOOP;
		RETURN;
	END IF;
	FOR r IN SELECT * FROM msp_period_people_by_client(period, client_ids) LOOP
		RETURN NEXT (SELECT p.summary FROM msp_price_invoice(r.client_id, msp_period(r.client_id, period), r.people) p);
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_compute_invoices(daterange, bigint[]) IS
	'every client''s invoice for a period as today''s data prices it (msp_compute_invoice for each), the people counted for all clients in one set-based pass';

CREATE OR REPLACE FUNCTION @extschema@.msp_invoices(period daterange DEFAULT NULL)
RETURNS SETOF @extschema@.invoice
-- (PARALLEL RESTRICTED: on Citus it opens connections to the workers)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	parts jsonb := '[]';
BEGIN
	IF NOT msp_is_distributed('@extschema@.contracts') THEN
		-- the finalized ones as stored; the others priced from one
		-- set-based count of every client's people
		FOR r IN SELECT * FROM msp_period_people_by_client(period) LOOP
			IF (msp_finalized_invoice(r.client_id, msp_period(r.client_id, period))).invoice_id IS NOT NULL THEN
				RETURN NEXT msp_invoice(r.client_id, period);
			ELSE
				RETURN NEXT (SELECT p.summary FROM msp_price_invoice(r.client_id, msp_period(r.client_id, period), r.people) p);
			END IF;
		END LOOP;
		RETURN;
	END IF;
	-- one call per shard, over a connection per shard to the worker that
	-- holds it, all at once (master_run_on_worker, which Citus's own
	-- run_command_on_shards uses); each names one client of its shard
	FOR r IN EXECUTE
		'SELECT w.success, w.result
		   FROM (SELECT array_agg(p.nodename) AS nodes, array_agg(p.nodeport) AS ports,
						array_agg(format(''SELECT @extschema@.msp_shard_invoices(%s, %L)'', s.client_id, $1)) AS commands
				   FROM (SELECT min(c.client_id) AS client_id,
								pg_catalog.get_shard_id_for_distribution_column(''@extschema@.contracts'', c.client_id) AS shardid
						   FROM @extschema@.clients c GROUP BY 2) s
				   JOIN pg_catalog.pg_dist_shard_placement p ON p.shardid = s.shardid) x,
				pg_catalog.master_run_on_worker(x.nodes, x.ports, x.commands, true) w'
		USING period
	LOOP
		IF NOT r.success THEN
			RAISE EXCEPTION '%', r.result
				USING ERRCODE = 'data_exception',
					  DETAIL = 'A worker could not price the invoices of one shard of clients.',
					  HINT = 'Price the client it names alone (SELECT * FROM mspbill.msp_invoice(client_id, period)) to see the whole error.';
		END IF;
		parts := parts || r.result::jsonb;
	END LOOP;
	RETURN QUERY SELECT i.* FROM jsonb_populate_recordset(NULL::invoice, parts) i ORDER BY i.client_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoices(daterange) IS
	'every client''s invoice for a period (default: each client''s last full month), as msp_invoice gives it; on Citus computed on the workers in parallel';

CREATE FUNCTION @extschema@.msp_finalize_invoice_with(client_id bigint, period daterange, override text[],
													  people jsonb, evidence jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	unknown text[];
	today date;
	stamp timestamptz;
	c clients;
	terms record;
	lines invoice_line[];
	priced record;
	number text;
	invoice_day date;
	tax numeric;
	findings jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	-- an unfinished month is not a data-quality question: its logons are
	-- still coming, so no override finalizes it
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	-- the gates run once: they read the period's logons several times over
	findings := coalesce((SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q), '[]');
	IF jsonb_path_exists(findings, '$[*] ? (@.gate == "period_not_over")') THEN
		-- (not alias c: the variable c would shadow it, and today be NULL)
		today := (now() AT TIME ZONE (SELECT cl.time_zone FROM clients cl WHERE cl.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q->>'gate' FROM jsonb_array_elements(findings) q
					  WHERE NOT q->>'gate' = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period, failing);
	END IF;

	-- the summary and its lines from one pricing
	SELECT * INTO priced FROM msp_price_invoice(client_id, period, people) p;
	inv := priced.summary;
	lines := priced.lines;
	IF people IS NULL OR evidence IS NULL THEN
		evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	END IF;
	SELECT * INTO terms FROM msp_invoice_terms(client_id);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	-- the number last: its counter row stays locked until this transaction
	-- ends, so other finalizations wait here (not through the pricing), and
	-- a rollback gives the number back: no gaps, no duplicates
	INSERT INTO @extschema@.invoice_numbering AS n (series, last_number) VALUES ('invoice', 1)
	ON CONFLICT (series) DO UPDATE SET last_number = n.last_number + 1
	RETURNING msp_invoice_number_text(n.prefix, n.last_number, n.digits) INTO number;
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	invoice_day := (stamp AT TIME ZONE c.time_zone)::date;
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	tax := (SELECT coalesce(sum(t.tax), 0) FROM msp_tax_lines(client_id, lines) t);
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM unnest(lines) l;
	-- the document: number, dates, terms and PO as the client has them
	-- today, and each line's tax and explanation (src/billing/documents.sql)
	INSERT INTO @extschema@.invoice_documents (client_id, invoice_id, invoice_number, invoice_date, due_date,
							   payment_terms_days, po_reference, tax)
	VALUES (client_id, id, number, invoice_day, invoice_day + terms.payment_terms_days, terms.payment_terms_days,
			terms.po_reference, tax);
	INSERT INTO @extschema@.invoice_line_documents (client_id, invoice_id, line_no, tax_name, tax_rate, tax,
									explanation, evidence)
	SELECT client_id, id, t.line_no, t.tax_name, t.tax_rate, t.tax, x.explanation, x.evidence
	  FROM msp_tax_lines(client_id, lines) t
	  JOIN msp_explain_lines(client_id, period, lines, evidence) x ON x.line_no = t.line_no;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		-- the findings read once above (computed before the INSERT: Citus
		-- takes no subquery in INSERT ... VALUES)
		evidence := (SELECT jsonb_agg(q) FROM jsonb_array_elements(findings) q WHERE q->>'gate' = ANY (override));
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override, 'findings', evidence));
	END IF;
	RETURN id;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_invoice_with(bigint, daterange, text[], jsonb, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice_with(bigint, daterange, text[], jsonb, jsonb) IS
	'finalization internal: msp_finalize_invoice with the people and evidence month-end counted for every client at once (NULL: counted here)';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
BEGIN
	RETURN @extschema@.msp_finalize_invoice_with(client_id, period, override, NULL, NULL);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines, evidence, number, dates, terms and tax and returns its id; finalizing again returns the same id';

ALTER TABLE @extschema@.finalize_run_clients ADD COLUMN people_from text
	CONSTRAINT finalize_run_clients_people_from_known CHECK (people_from IN ('batch', 'recounted'));

CREATE TABLE @extschema@.finalize_run_people (
	run_id bigint NOT NULL REFERENCES @extschema@.finalize_runs,
	client_id bigint NOT NULL,
	-- as msp_price_invoice takes them
	people jsonb NOT NULL,
	-- msp_billable_users' rows, as msp_finalize_invoice stores them
	evidence jsonb NOT NULL,
	sources jsonb NOT NULL,
	snapshot pg_snapshot NOT NULL,
	PRIMARY KEY (run_id, client_id)
);
COMMENT ON TABLE @extschema@.finalize_run_people IS
	'month-end internal: each client''s people counted at the start of a run for every client at once, with the snapshot and the rows they were read from';
ALTER TABLE @extschema@.finalize_run_people ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON @extschema@.finalize_run_people FROM PUBLIC;

CREATE FUNCTION @extschema@.msp_xmin_seen(x xid, since pg_snapshot, now_xmax bigint)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
	WHEN since IS NULL THEN true
	WHEN x::text::bigint OPERATOR(pg_catalog.<) 3 THEN true
	ELSE coalesce(pg_catalog.pg_visible_in_snapshot(
			 (NULLIF(GREATEST(((now_xmax OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.<<) 32)
							  OPERATOR(pg_catalog.+) x::text::bigint
							  OPERATOR(pg_catalog.-) CASE WHEN x::text::bigint OPERATOR(pg_catalog.>=)
															   (now_xmax OPERATOR(pg_catalog.&) 4294967295)
														  THEN 4294967296 ELSE 0 END, -1), -1))::text::xid8,
			 since), false)
END;
COMMENT ON FUNCTION @extschema@.msp_xmin_seen(xid, pg_snapshot, bigint) IS
	'month-end internal: whether a row version (its xmin) was committed as of a snapshot (NULL snapshot: true)';

CREATE FUNCTION @extschema@.msp_people_sources(client_id bigint, period daterange, since pg_snapshot)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	payer bigint := client_id;
	now_xmax bigint := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
	tz text;
	t0 timestamptz;
	t1 timestamptz;
	home bigint;
	n bigint;
	fresh bigint;
	out jsonb := '{}';
BEGIN
	SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax)), min(x.time_zone)
	  INTO n, fresh, tz FROM clients x WHERE x.client_id = payer;
	out := out || jsonb_build_object('clients', ARRAY[n, fresh]);
	t0 := lower(period)::timestamp AT TIME ZONE tz;
	t1 := upper(period)::timestamp AT TIME ZONE tz;
	SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
	  INTO n, fresh FROM contracts x WHERE x.client_id = payer;
	out := out || jsonb_build_object('contracts', ARRAY[n, fresh]);
	SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
	  INTO n, fresh FROM sister_clients x WHERE x.bill_to_client_id = payer;
	out := out || jsonb_build_object('sister_clients', ARRAY[n, fresh]);
	FOREACH home IN ARRAY ARRAY[payer] || ARRAY(SELECT s.client_id FROM sister_clients s
												 WHERE s.bill_to_client_id = payer AND s.client_id <> payer
												 ORDER BY 1)
	LOOP
		SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
		  INTO n, fresh FROM people x WHERE x.client_id = home;
		out := out || jsonb_build_object('people ' || home, ARRAY[n, fresh]);
		SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
		  INTO n, fresh FROM accounts x WHERE x.client_id = home;
		out := out || jsonb_build_object('accounts ' || home, ARRAY[n, fresh]);
		SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
		  INTO n, fresh FROM logons x WHERE x.client_id = home AND x.at >= t0 AND x.at < t1;
		out := out || jsonb_build_object('logons ' || home, ARRAY[n, fresh]);
		SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
		  INTO n, fresh FROM support_contacts x WHERE x.client_id = home AND x.at >= t0 AND x.at < t1;
		out := out || jsonb_build_object('support_contacts ' || home, ARRAY[n, fresh]);
	END LOOP;
	RETURN out;
END
$$;
-- (reads xmin, which the roles' column grants do not cover: month-end's
-- definer functions call it as the owner)
REVOKE EXECUTE ON FUNCTION @extschema@.msp_people_sources(bigint, daterange, pg_snapshot) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_people_sources(bigint, daterange, pg_snapshot) IS
	'month-end internal: the rows one client''s billable people of a period are read from, counted per table and home client, and how many are new since a snapshot';

CREATE FUNCTION @extschema@.msp_finalize_run_prepare(run_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	r finalize_runs;
	n integer;
BEGIN
	SELECT * INTO r FROM finalize_runs f WHERE f.run_id = run_id;
	IF NOT FOUND OR r.finished_at IS NOT NULL OR r.started_by <> session_user THEN
		RAISE EXCEPTION 'month-end run % is not an open run of yours', run_id
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Run month-end with CALL mspbill.msp_finalize_period(period);';
	END IF;
	IF msp_is_distributed('@extschema@.contracts') THEN
		RETURN 0;
	END IF;
	INSERT INTO @extschema@.finalize_run_people (run_id, client_id, people, evidence, sources, snapshot)
	WITH u AS MATERIALIZED (
		SELECT * FROM msp_period_people_all(r.period, r.client_ids, true)),
	p AS (
		SELECT y.client_id, jsonb_object_agg(y.contract_id::text, y.who) AS people
		  FROM (SELECT u.client_id, u.contract_id,
					   jsonb_build_object('h', array_agg(u.home_client_id), 'p', array_agg(u.person_id),
										  'd', array_agg(u.segment_days)) AS who
				  FROM u GROUP BY u.client_id, u.contract_id) y
		 GROUP BY y.client_id),
	-- msp_billable_users' columns and order
	e AS (
		SELECT u.client_id,
			   jsonb_agg(jsonb_build_object('contract_id', u.contract_id, 'person_id', u.person_id,
											'pseudonym', u.pseudonym, 'rule', u.rule, 'first_seen', u.first_seen,
											'last_seen', u.last_seen, 'days_active', u.days_active,
											'support_contacts', u.support_contacts, 'accounts', u.accounts,
											'home_client_id', u.home_client_id)
						 ORDER BY lower(u.segment), u.pseudonym, u.home_client_id) AS evidence
		  FROM u GROUP BY u.client_id)
	SELECT run_id, c.id, coalesce(p.people, '{}'), coalesce(e.evidence, '[]'),
		   msp_people_sources(c.id, msp_period(c.id, r.period), NULL), pg_current_snapshot()
	  FROM unnest(r.client_ids) c(id)
	  JOIN clients k ON k.client_id = c.id
	  LEFT JOIN p ON p.client_id = c.id
	  LEFT JOIN e ON e.client_id = c.id;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_prepare(bigint) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_prepare(bigint) IS
	'month-end internal: counts the billable people of every client of a run at once and records them with their snapshot; returns how many clients';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_run_begin(period daterange, override text[] DEFAULT '{}',
												   only_clients bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	ids bigint[];
	unknown text[];
BEGIN
	-- checked once here rather than refused for every client alike
	IF period IS NULL OR isempty(period) OR lower_inf(period) OR upper_inf(period)
	   OR lower(period) <> date_trunc('month', lower(period))::date
	   OR upper(period) <> (date_trunc('month', lower(period)) + interval '1 month')::date THEN
		RAISE EXCEPTION 'billing period % is not a calendar month', coalesce(period::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Month-end finalizes one calendar month for every client.',
				  HINT = 'Pass the month, e.g. CALL mspbill.msp_finalize_period(daterange(''2026-10-01'', ''2026-11-01''));';
	END IF;
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	-- every client with a contract in the period; clients named explicitly
	-- are taken as named (one without a contract fails, with the reason)
	IF only_clients IS NULL THEN
		ids := ARRAY(SELECT DISTINCT k.client_id FROM contracts k WHERE k.effective && period ORDER BY 1);
	ELSE
		ids := ARRAY(SELECT DISTINCT x FROM unnest(only_clients) x WHERE x IS NOT NULL ORDER BY 1);
	END IF;
	INSERT INTO @extschema@.finalize_runs (period, override, client_ids)
	VALUES (period, coalesce(override, '{}'), ids)
	RETURNING run_id INTO id;
	-- every client's people at once, committed with the run; each client's
	-- transaction uses them if its data did not change since
	PERFORM @extschema@.msp_finalize_run_prepare(id);
	RETURN id;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_begin(daterange, text[], bigint[]) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_begin(daterange, text[], bigint[]) IS
	'month-end internal: checks the period and override once, records a run and the clients it takes, counts their people at once; returns the run id';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_run_client(client_id bigint, run_id bigint, may_retry boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	r finalize_runs;
	prior bigint;
	id bigint;
	result text;
	st text;
	msg text;
	det text;
	hin text;
	con text;
	failing text[];
	b finalize_run_people;
	source text;
BEGIN
	SELECT * INTO r FROM finalize_runs f WHERE f.run_id = run_id;
	IF NOT FOUND OR r.finished_at IS NOT NULL OR r.started_by <> session_user
	   OR NOT client_id = ANY (r.client_ids) THEN
		RAISE EXCEPTION 'client % is not pending in an open month-end run % of yours', client_id, run_id
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Run month-end with CALL mspbill.msp_finalize_period(period);';
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || r.period::text));
	prior := (msp_finalized_invoice(client_id, r.period)).invoice_id;
	BEGIN
		-- the people counted for every client at the start of the run hold
		-- if what they were read from is the same in this transaction's
		-- snapshot; else they are counted again here
		SELECT * INTO b FROM finalize_run_people p WHERE p.run_id = run_id AND p.client_id = client_id;
		IF prior IS NULL AND b.run_id IS NOT NULL
		   AND msp_people_sources(client_id, r.period, b.snapshot) = b.sources THEN
			id := msp_finalize_invoice_with(client_id, r.period, r.override, b.people, b.evidence);
			source := 'batch';
		ELSE
			id := msp_finalize_invoice_with(client_id, r.period, r.override, NULL, NULL);
			source := CASE WHEN prior IS NULL THEN 'recounted' END;
		END IF;
		result := CASE WHEN prior IS NULL THEN 'finalized' ELSE 'already_finalized' END;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
								hin = PG_EXCEPTION_HINT, con = CONSTRAINT_NAME;
		IF may_retry AND (con IN ('invoices_one_per_period', 'invoices_no_overlap') OR st IN ('40001', '40P01')) THEN
			-- another session finalized it, or took the next invoice number
			-- (the counter row), after this transaction's snapshot
			RETURN 'retry';
		ELSIF st = '55000' OR (st = '23514' AND coalesce(con, '') = '') THEN
			-- the gates (a check constraint's violation names the constraint)
			result := 'refused';
			failing := CASE WHEN st = '55000' THEN '{period_not_over}'::text[]
							ELSE ARRAY(SELECT DISTINCT q.gate FROM msp_data_quality(client_id, r.period) q
										WHERE NOT q.gate = ANY (r.override) ORDER BY 1) END;
		ELSE
			result := 'failed';
		END IF;
	END;
	INSERT INTO @extschema@.finalize_run_clients (client_id, run_id, outcome, invoice_id, total, gates, sqlstate,
												  message, detail, hint, people_from)
	VALUES (client_id, run_id, result, id,
			(SELECT i.total FROM invoices i WHERE i.client_id = client_id AND i.invoice_id = id),
			failing, st, msg, nullif(det, ''), nullif(hin, ''), CASE WHEN result = 'finalized' THEN source END);
	RETURN result;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_client(bigint, bigint, boolean) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_client(bigint, bigint, boolean) IS
	'month-end internal: finalizes one client of a run in a subtransaction and records the outcome (finalized, already_finalized, refused, failed)';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_run_end(run_id bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	UPDATE @extschema@.finalize_runs f SET finished_at = clock_timestamp()
	 WHERE f.run_id = run_id AND f.started_by = session_user AND f.finished_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'month-end run % is not an open run of yours', run_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	DELETE FROM @extschema@.finalize_run_people p WHERE p.run_id = run_id;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_end(bigint) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_end(bigint) IS
	'month-end internal: marks a run finished';

CREATE OR REPLACE PROCEDURE @extschema@.msp_finalize_period(period daterange, override text[] DEFAULT '{}',
												  only_clients bigint[] DEFAULT NULL,
												  INOUT run_id bigint DEFAULT NULL,
												  INOUT finalized integer DEFAULT NULL,
												  INOUT already_finalized integer DEFAULT NULL,
												  INOUT refused integer DEFAULT NULL,
												  INOUT failed integer DEFAULT NULL)
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
DECLARE
	ids pg_catalog.int8[];
	cid pg_catalog.int8;
	outcome pg_catalog.text;
	done pg_catalog.int4 := 0;
BEGIN
	finalized := 0;
	already_finalized := 0;
	refused := 0;
	failed := 0;
	run_id := @extschema@.msp_finalize_run_begin(period, override, only_clients);
	ids := (SELECT r.client_ids FROM @extschema@.finalize_runs r WHERE r.run_id OPERATOR(pg_catalog.=) run_id);
	RAISE NOTICE 'month-end run % for %: % clients', run_id, period, pg_catalog.cardinality(ids);
	FOREACH cid IN ARRAY ids LOOP
		-- the run row, then each client, committed as soon as done; the
		-- next statement after COMMIT must be SET TRANSACTION
		FOR attempt IN 1..5 LOOP
			COMMIT;
			SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
			outcome := @extschema@.msp_finalize_run_client(cid, run_id, attempt OPERATOR(pg_catalog.<) 5);
			EXIT WHEN outcome OPERATOR(pg_catalog.<>) 'retry';
		END LOOP;
		done := done OPERATOR(pg_catalog.+) 1;
		CASE outcome
			WHEN 'finalized' THEN finalized := finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'already_finalized' THEN already_finalized := already_finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'refused' THEN refused := refused OPERATOR(pg_catalog.+) 1;
			ELSE failed := failed OPERATOR(pg_catalog.+) 1;
		END CASE;
		IF done OPERATOR(pg_catalog.%) 100 OPERATOR(pg_catalog.=) 0 THEN
			RAISE NOTICE 'month-end run %: % of % clients done (% finalized, % already finalized, % refused, % failed)',
				run_id, done, pg_catalog.cardinality(ids), finalized, already_finalized, refused, failed;
		END IF;
	END LOOP;
	COMMIT;
	PERFORM @extschema@.msp_finalize_run_end(run_id);
	COMMIT;
	RAISE NOTICE 'month-end run % for % done: % finalized, % already finalized, % refused, % failed',
		run_id, period, finalized, already_finalized, refused, failed
		USING DETAIL = 'Each client''s outcome, with the gates or the error: SELECT * FROM mspbill.finalize_run_clients WHERE run_id = ' || run_id || ';';
END
$$;
REVOKE EXECUTE ON PROCEDURE @extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer) FROM PUBLIC;
COMMENT ON PROCEDURE @extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer) IS
	'month-end: finalizes every client''s invoice for a period (clients with a contract in it, or only_clients), one transaction per client, committed as it goes; returns the run id and how many were finalized, already finalized, refused and failed';



-- citusload (issue 17): every loader on a distributed database as the
-- billing role.  The statements Citus refused are done in steps (the
-- load's rows into a temporary table, less the client's rows by DELETE
-- ... USING, then inserted; ids drawn in a temporary table), and the
-- RETURN-style SQL functions the loaders call become PL/pgSQL.

CREATE OR REPLACE FUNCTION @extschema@.msp_load_normalized(for_client bigint, load_source text,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_windows_events(client_id bigint, source text DEFAULT 'windows',
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

CREATE OR REPLACE FUNCTION @extschema@.msp_license_product(licence text) RETURNS text
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

CREATE OR REPLACE FUNCTION @extschema@.msp_snapshot_day(for_client bigint, as_of date) RETURNS date
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	RETURN coalesce(as_of, (SELECT (now() AT TIME ZONE c.time_zone)::date FROM @extschema@.clients c
							  WHERE c.client_id = for_client));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_snapshot_day(bigint, date) IS
	'internal: the day a licence snapshot is of (the given day, else today in the client''s time zone)';

CREATE OR REPLACE FUNCTION @extschema@.msp_store_assignments(for_client bigint, day date, load_source text,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_activity(client_id bigint, source text DEFAULT 'm365_activity',
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

CREATE OR REPLACE FUNCTION @extschema@.msp_company_owner(for_client bigint, for_vendor text, companies text[]) RETURNS text
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

CREATE OR REPLACE FUNCTION @extschema@.msp_match_psa_tickets(client_id bigint) RETURNS bigint
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_psa_tickets(client_id bigint, psa text, source text DEFAULT NULL,
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


-- lead: month-end counts a row as old only below its snapshot's xmin; reconciliation
-- amounts in the minor unit
CREATE OR REPLACE FUNCTION @extschema@.msp_xmin_seen(x xid, since pg_snapshot, now_xmax bigint)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
	WHEN since IS NULL THEN true
	WHEN x::text::bigint OPERATOR(pg_catalog.<) 3 THEN true
	ELSE coalesce(NULLIF(GREATEST(((now_xmax OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.<<) 32)
								  OPERATOR(pg_catalog.+) x::text::bigint
								  OPERATOR(pg_catalog.-) CASE WHEN x::text::bigint OPERATOR(pg_catalog.>=)
																   (now_xmax OPERATOR(pg_catalog.&) 4294967295)
															  THEN 4294967296 ELSE 0 END, -1), -1)
				  OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmin(since)::text::bigint, false)
END;
COMMENT ON FUNCTION @extschema@.msp_xmin_seen(xid, pg_snapshot, bigint) IS
	'month-end internal: whether a row version (its xmin) was committed as of a snapshot (NULL snapshot: true)';

CREATE OR REPLACE FUNCTION @extschema@.msp_reconcile_licenses(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (category text, sku text, subject text, quantity numeric, amount numeric, note text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	fin invoices;
	active_ids bigint[];
	active integer;
	billed numeric;
	seats numeric;
	seat_cost numeric;
	snapshot boolean;
BEGIN
	period := msp_period(client_id, period);
	-- with a licence snapshot (src/licensing.sql) seats are known per
	-- account: msp_license_gaps names them instead of the account checks
	snapshot := EXISTS (SELECT 1 FROM m365_license_assignments x WHERE x.client_id = client_id AND x.as_of < upper(period));
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id AND contracts.effective @> (upper(period) - 1);
	active_ids := ARRAY(SELECT DISTINCT u.person_id FROM msp_billable_users(client_id, period) u
						 WHERE u.home_client_id = client_id);
	active := (SELECT count(DISTINCT (u.home_client_id, u.person_id)) FROM msp_billable_users(client_id, period) u);
	-- people billed: a preview bills everyone active; once finalized, those in
	-- the evidence of the invoice or of an adjustment to it
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

	-- seats held per SKU (latest count before the period ends, per source)
	RETURN QUERY
	SELECT 'seats_held', lc.sku, NULL::text, lc.seats::numeric, msp_round(lc.seats * lc.unit_cost, c.minor_unit),
		   format('%s seats held; %s people active; %s users billed.', lc.seats, active, billed)
	  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
			 WHERE x.client_id = client_id AND x.as_of < upper(period)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc
	 ORDER BY lc.sku;
	SELECT sum(lc.seats), max(lc.unit_cost) INTO seats, seat_cost
	  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
			 WHERE x.client_id = client_id AND x.as_of < upper(period)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc;

	-- people who work without a Microsoft 365 account
	RETURN QUERY
	SELECT 'active_unlicensed', NULL::text, a.pseudonym, 1::numeric, msp_round(seat_cost, c.minor_unit),
		   'Active in the period but holds no Microsoft 365 account: license them (or record the account).'
	  FROM people a
	 WHERE a.client_id = client_id AND a.person_id = ANY (active_ids) AND NOT snapshot
	   AND NOT EXISTS (SELECT 1 FROM accounts x WHERE x.client_id = client_id AND x.person_id = a.person_id
						  AND x.realm = 'm365')
	 ORDER BY a.pseudonym;
	-- licensed people who did not work: seats to reclaim
	RETURN QUERY
	SELECT 'licensed_inactive', NULL::text, l.label, 1::numeric, msp_round(seat_cost, c.minor_unit),
		   'Holds a Microsoft 365 account but was not active in the period: a seat to reclaim.'
	  FROM accounts x JOIN account_labels l USING (client_id, account_id)
	 WHERE x.client_id = client_id AND x.realm = 'm365' AND x.kind = 'individual'
	   AND NOT x.person_id = ANY (active_ids) AND NOT snapshot
	 ORDER BY l.label;
	IF seats IS NOT NULL AND active > seats THEN
		RETURN QUERY SELECT 'seat_shortfall', NULL::text, NULL::text, (active - seats)::numeric,
							msp_round((active - seats) * seat_cost, c.minor_unit),
							format('%s people active but only %s seats held.', active, seats);
	END IF;
	IF billed < active AND k.model IN ('per_user', 'per_user_plus_support') THEN
		RETURN QUERY SELECT 'unbilled_users', NULL::text, NULL::text, active - billed,
							msp_round((active - billed) * k.price_per_user, c.minor_unit),
							format('%s people active, %s billed.', active, billed);
	END IF;
	RETURN QUERY SELECT * FROM msp_license_gaps(client_id, period);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_reconcile_licenses(bigint, daterange) IS
	'three-way license reconciliation: people active by logon, seats held per SKU, quantities billed, and the money at stake; with a licence snapshot, the gaps of msp_license_gaps by name and product';



-- lead: a licence snapshot's day is range-checked like a logon's time (outside test)
CREATE OR REPLACE FUNCTION @extschema@.msp_snapshot_day(for_client bigint, as_of date) RETURNS date
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



-- lead: a refusal's hint keeps the gates already overridden (outside test)
CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice_with(client_id bigint, period daterange, override text[],
													  people jsonb, evidence jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	unknown text[];
	today date;
	stamp timestamptz;
	c clients;
	terms record;
	lines invoice_line[];
	priced record;
	number text;
	invoice_day date;
	tax numeric;
	findings jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	-- an unfinished month is not a data-quality question: its logons are
	-- still coming, so no override finalizes it
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	-- the gates run once: they read the period's logons several times over
	findings := coalesce((SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q), '[]');
	IF jsonb_path_exists(findings, '$[*] ? (@.gate == "period_not_over")') THEN
		-- (not alias c: the variable c would shadow it, and today be NULL)
		today := (now() AT TIME ZONE (SELECT cl.time_zone FROM clients cl WHERE cl.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q->>'gate' FROM jsonb_array_elements(findings) q
					  WHERE NOT q->>'gate' = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  -- the overrides already given too: the hint is the whole call
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period,
								ARRAY(SELECT DISTINCT g FROM unnest(coalesce(override, '{}') || failing) g ORDER BY 1));
	END IF;

	-- the summary and its lines from one pricing
	SELECT * INTO priced FROM msp_price_invoice(client_id, period, people) p;
	inv := priced.summary;
	lines := priced.lines;
	IF people IS NULL OR evidence IS NULL THEN
		evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	END IF;
	SELECT * INTO terms FROM msp_invoice_terms(client_id);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	-- the number last: its counter row stays locked until this transaction
	-- ends, so other finalizations wait here (not through the pricing), and
	-- a rollback gives the number back: no gaps, no duplicates
	INSERT INTO @extschema@.invoice_numbering AS n (series, last_number) VALUES ('invoice', 1)
	ON CONFLICT (series) DO UPDATE SET last_number = n.last_number + 1
	RETURNING msp_invoice_number_text(n.prefix, n.last_number, n.digits) INTO number;
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	invoice_day := (stamp AT TIME ZONE c.time_zone)::date;
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	tax := (SELECT coalesce(sum(t.tax), 0) FROM msp_tax_lines(client_id, lines) t);
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM unnest(lines) l;
	-- the document: number, dates, terms and PO as the client has them
	-- today, and each line's tax and explanation (src/billing/documents.sql)
	INSERT INTO @extschema@.invoice_documents (client_id, invoice_id, invoice_number, invoice_date, due_date,
							   payment_terms_days, po_reference, tax)
	VALUES (client_id, id, number, invoice_day, invoice_day + terms.payment_terms_days, terms.payment_terms_days,
			terms.po_reference, tax);
	INSERT INTO @extschema@.invoice_line_documents (client_id, invoice_id, line_no, tax_name, tax_rate, tax,
									explanation, evidence)
	SELECT client_id, id, t.line_no, t.tax_name, t.tax_rate, t.tax, x.explanation, x.evidence
	  FROM msp_tax_lines(client_id, lines) t
	  JOIN msp_explain_lines(client_id, period, lines, evidence) x ON x.line_no = t.line_no;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		-- the findings read once above (computed before the INSERT: Citus
		-- takes no subquery in INSERT ... VALUES)
		evidence := (SELECT jsonb_agg(q) FROM jsonb_array_elements(findings) q WHERE q->>'gate' = ANY (override));
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override, 'findings', evidence));
	END IF;
	RETURN id;
END
$$;



-- lead: the override checks in one place (msp_check_overrides), for finalizing one client and month-end
CREATE OR REPLACE FUNCTION @extschema@.msp_check_overrides(override text[]) RETURNS void
-- (STRICT: no overrides, nothing to refuse)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	unknown text[];
BEGIN
	IF 'period_not_over' = ANY (override) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(override)
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_check_overrides(text[]) IS
	'internal: refuses overrides that are not data-quality gates (period_not_over, unknown names)';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice_with(client_id bigint, period daterange, override text[],
													  people jsonb, evidence jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	today date;
	stamp timestamptz;
	c clients;
	terms record;
	lines invoice_line[];
	priced record;
	number text;
	invoice_day date;
	tax numeric;
	findings jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	PERFORM msp_check_overrides(override);
	-- the gates run once: they read the period's logons several times over
	findings := coalesce((SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q), '[]');
	IF jsonb_path_exists(findings, '$[*] ? (@.gate == "period_not_over")') THEN
		-- (not alias c: the variable c would shadow it, and today be NULL)
		today := (now() AT TIME ZONE (SELECT cl.time_zone FROM clients cl WHERE cl.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q->>'gate' FROM jsonb_array_elements(findings) q
					  WHERE NOT q->>'gate' = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  -- the overrides already given too: the hint is the whole call
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period,
								ARRAY(SELECT DISTINCT g FROM unnest(coalesce(override, '{}') || failing) g ORDER BY 1));
	END IF;

	-- the summary and its lines from one pricing
	SELECT * INTO priced FROM msp_price_invoice(client_id, period, people) p;
	inv := priced.summary;
	lines := priced.lines;
	IF people IS NULL OR evidence IS NULL THEN
		evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	END IF;
	SELECT * INTO terms FROM msp_invoice_terms(client_id);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	-- the number last: its counter row stays locked until this transaction
	-- ends, so other finalizations wait here (not through the pricing), and
	-- a rollback gives the number back: no gaps, no duplicates
	INSERT INTO @extschema@.invoice_numbering AS n (series, last_number) VALUES ('invoice', 1)
	ON CONFLICT (series) DO UPDATE SET last_number = n.last_number + 1
	RETURNING msp_invoice_number_text(n.prefix, n.last_number, n.digits) INTO number;
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	invoice_day := (stamp AT TIME ZONE c.time_zone)::date;
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	tax := (SELECT coalesce(sum(t.tax), 0) FROM msp_tax_lines(client_id, lines) t);
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM unnest(lines) l;
	-- the document: number, dates, terms and PO as the client has them
	-- today, and each line's tax and explanation (src/billing/documents.sql)
	INSERT INTO @extschema@.invoice_documents (client_id, invoice_id, invoice_number, invoice_date, due_date,
							   payment_terms_days, po_reference, tax)
	VALUES (client_id, id, number, invoice_day, invoice_day + terms.payment_terms_days, terms.payment_terms_days,
			terms.po_reference, tax);
	INSERT INTO @extschema@.invoice_line_documents (client_id, invoice_id, line_no, tax_name, tax_rate, tax,
									explanation, evidence)
	SELECT client_id, id, t.line_no, t.tax_name, t.tax_rate, t.tax, x.explanation, x.evidence
	  FROM msp_tax_lines(client_id, lines) t
	  JOIN msp_explain_lines(client_id, period, lines, evidence) x ON x.line_no = t.line_no;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		-- the findings read once above (computed before the INSERT: Citus
		-- takes no subquery in INSERT ... VALUES)
		evidence := (SELECT jsonb_agg(q) FROM jsonb_array_elements(findings) q WHERE q->>'gate' = ANY (override));
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override, 'findings', evidence));
	END IF;
	RETURN id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_run_begin(period daterange, override text[] DEFAULT '{}',
												   only_clients bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	ids bigint[];
BEGIN
	-- checked once here rather than refused for every client alike
	IF period IS NULL OR isempty(period) OR lower_inf(period) OR upper_inf(period)
	   OR lower(period) <> date_trunc('month', lower(period))::date
	   OR upper(period) <> (date_trunc('month', lower(period)) + interval '1 month')::date THEN
		RAISE EXCEPTION 'billing period % is not a calendar month', coalesce(period::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Month-end finalizes one calendar month for every client.',
				  HINT = 'Pass the month, e.g. CALL mspbill.msp_finalize_period(daterange(''2026-10-01'', ''2026-11-01''));';
	END IF;
	PERFORM msp_check_overrides(override);
	-- every client with a contract in the period; clients named explicitly
	-- are taken as named (one without a contract fails, with the reason)
	IF only_clients IS NULL THEN
		ids := ARRAY(SELECT DISTINCT k.client_id FROM contracts k WHERE k.effective && period ORDER BY 1);
	ELSE
		ids := ARRAY(SELECT DISTINCT x FROM unnest(only_clients) x WHERE x IS NOT NULL ORDER BY 1);
	END IF;
	INSERT INTO @extschema@.finalize_runs (period, override, client_ids)
	VALUES (period, coalesce(override, '{}'), ids)
	RETURNING run_id INTO id;
	-- every client's people at once, committed with the run; each client's
	-- transaction uses them if its data did not change since
	PERFORM @extschema@.msp_finalize_run_prepare(id);
	RETURN id;
END
$$;


-- merged: functions several sections above redefine, as the release has them
CREATE OR REPLACE FUNCTION @extschema@.msp_adjustment_lines(client_id bigint, period daterange)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- PL/pgSQL, so that Citus plans the read on the client's shard
	RETURN QUERY
	-- the adjusted invoice by the number the client holds (its id when it
	-- was sent unnumbered, before 0.3.0)
	SELECT (row_number() OVER (ORDER BY a.invoice_id))::integer, NULL::bigint,
		   format('Adjustment %s to invoice %s for %s to %s: %s', a.invoice_id,
				  coalesce(d.invoice_number, a.adjusts_invoice_id::text),
				  lower(a.period), upper(a.period) - 1, a.reason),
		   1::numeric, a.total, a.total, 'adjustment'::text
	  FROM invoices a
	  LEFT JOIN invoice_documents d ON d.client_id = client_id AND d.invoice_id = a.adjusts_invoice_id
	 WHERE a.client_id = client_id AND a.kind = 'adjustment' AND a.apply_period = period
	 ORDER BY a.invoice_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_adjustment_lines(bigint, daterange) IS
	'adjustment notes carried by the invoice of a period, one line each';

CREATE OR REPLACE FUNCTION @extschema@.msp_company_owner(for_client bigint, for_vendor text, companies text[]) RETURNS text
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

CREATE OR REPLACE FUNCTION @extschema@.msp_compute_invoice(client_id bigint, period daterange DEFAULT NULL)
RETURNS @extschema@.invoice
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- (the period first: msp_price_invoice is STRICT, NULL is the last full month)
	period := msp_period(client_id, period);
	-- (a scalar subquery: (f()).summary in a query would call f once per field)
	RETURN (SELECT p.summary FROM msp_price_invoice(client_id, period) p);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_compute_invoice(bigint, daterange) IS
	'the invoice of a client for a period as today''s data prices it, finalized or not';

CREATE OR REPLACE FUNCTION @extschema@.msp_distribute(shard_count integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- the small shared tables: invoice_numbering is the MSP's one number
	-- series, whose row each finalization locks wherever it runs (Citus
	-- writes a reference table on every node in one transaction and
	-- serializes its writers cluster-wide), export_codes the MSP's books,
	-- license_product_names the licences' spellings, partner_companies the
	-- vendors' company names (unique across clients), sister_clients the
	-- pairs of clients whose invoices read each other's people (so that an
	-- invoice finds them on its own node), finalize_runs the month-end runs
	-- (one row a run, its clients' outcomes distributed beside them)
	ref_tables text[] := '{clients,bi_client_access,invoice_numbering,export_codes,license_product_names,partner_companies,sister_clients,finalize_runs}';
	-- the first distributed table names the co-location group of all
	anchor regclass := '@extschema@.contracts'::regclass;
	todo regclass[];
	t regclass;
	progress boolean;
	n_ref integer := 0;
	n_dist integer := 0;
	n_fn integer := 0;
	f record;
	s record;
	is_coord boolean;
	labels_view text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'Citus is not installed in this database'
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() distributes mspbill''s tables on a Citus cluster; on one server there is nothing to do.',
				  HINT = 'On the coordinator (citus in shared_preload_libraries): CREATE EXTENSION citus; add the workers with citus_add_node(); then SELECT mspbill.msp_distribute();';
	END IF;
	EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO is_coord;
	IF NOT is_coord THEN
		RAISE EXCEPTION 'msp_distribute() runs on the Citus coordinator only'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'This node is not the coordinator of its cluster.',
				  HINT = 'Connect to the coordinator (or register it with citus_set_coordinator_host()) and call it there.';
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'msp_distribute() must be run by a superuser'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'It distributes tables and sets the sequences of every node.',
				  HINT = 'Connect as the superuser that created the extension.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gist') THEN
		RAISE EXCEPTION 'msp_distribute() needs the extension btree_gist'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'On Citus, the one-contract-per-day and one-invoice-per-period exclusion constraints must name client_id itself, which needs btree_gist''s equality for bigint.',
				  HINT = 'CREATE EXTENSION btree_gist; on the coordinator (Citus creates it on the workers), then call msp_distribute() again.';
	END IF;

	-- Every table it will distribute has a client_id: checked before
	-- anything changes, since the statements run on the workers
	-- (run_command_on_workers) commit there even if this call fails later
	FOR t IN
		SELECT c.oid::regclass FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
		   AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
		   AND c.relname <> ALL (ref_tables)
		   AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'client_id' AND NOT a.attisdropped)
	LOOP
		RAISE EXCEPTION 'table % has no client_id to distribute it by', t
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() changed nothing.',
				  HINT = 'Every mspbill table is keyed by client_id; a table added by hand must be distributed (or dropped) by hand first.';
	END LOOP;

	-- 1. Policies: a function call instead of the initplans
	FOR s IN
		SELECT p.polrelid::regclass AS rel, p.polname
		  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace
		   AND p.polname IN ('client_rows', 'own_rows')
		   AND NOT @extschema@.msp_is_distributed(p.polrelid)
	LOOP
		IF s.polname = 'own_rows' THEN
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY own_rows ON %s USING (@extschema@.msp_sees_all_clients() OR @extschema@.msp_has_role(role_name))', s.rel));
		ELSE
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY client_rows ON %s USING (%s)', s.rel, @extschema@.msp_client_policy(true)));
		END IF;
	END LOOP;

	-- 2. Exclusion constraints that name client_id itself (btree_gist)
	IF NOT @extschema@.msp_is_distributed('@extschema@.contracts') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.contracts DROP CONSTRAINT contracts_no_overlap, '
								 'ADD CONSTRAINT contracts_no_overlap EXCLUDE USING gist (client_id WITH =, effective WITH &&)');
	END IF;
	IF NOT @extschema@.msp_is_distributed('@extschema@.invoices') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.invoices DROP CONSTRAINT invoices_no_overlap, '
								 'ADD CONSTRAINT invoices_no_overlap EXCLUDE USING gist (client_id WITH =, period WITH &&) WHERE (kind = ''invoice'')');
	END IF;

	-- 3. Triggers: Citus distributes no table that has any.  Finalized rows
	-- stay facts through privileges (only the owner may write them) and,
	-- for the owner itself, restrictive policies that refuse UPDATE and
	-- DELETE to everyone but a superuser (who bypasses row-level security,
	-- as the triggers let a superuser through).
	-- (the tables whose triggers refuse changes, as they are before the
	-- triggers go: invoices, items, audit log, documents, PSA syncs)
	FOR t IN
		SELECT DISTINCT tg.tgrelid::regclass FROM pg_trigger tg
		 WHERE tg.tgfoid = '@extschema@.msp_refuse_change()'::regprocedure AND NOT tg.tgisinternal
		   AND NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = tg.tgrelid AND polname = 'finalized_no_update')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_update ON %s AS RESTRICTIVE FOR UPDATE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_delete ON %s AS RESTRICTIVE FOR DELETE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t));
	END LOOP;
	FOR s IN
		SELECT tg.tgrelid::regclass AS rel, tg.tgname
		  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND NOT tg.tgisinternal
		   AND tg.tgparentid = 0
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('DROP TRIGGER %I ON %s', s.tgname, s.rel));
	END LOOP;

	-- Foreign keys that set a column NULL when their row goes (a PSA
	-- ticket's person): Citus refuses SET NULL on a key that includes
	-- client_id, so on Citus such a delete is refused instead (clear the
	-- column first)
	FOR s IN
		SELECT k.conrelid::regclass AS rel, k.conname, pg_get_constraintdef(k.oid) AS def
		  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND k.contype = 'f' AND k.confdeltype IN ('n', 'd')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
													s.rel, s.conname, s.conname,
													regexp_replace(s.def, ' ON DELETE SET (NULL|DEFAULT)( \([^)]*\))?', '')));
	END LOOP;

	-- Sister clients: every pair people name now, then a foreign key in
	-- place of the trigger that kept the table (dropped above)
	IF NOT @extschema@.msp_is_distributed('@extschema@.people') THEN
		INSERT INTO @extschema@.sister_clients (client_id, bill_to_client_id)
		SELECT DISTINCT p.client_id, p.bill_to_client_id FROM @extschema@.people p
		 WHERE p.bill_to_client_id IS NOT NULL
		ON CONFLICT DO NOTHING;
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.people ADD CONSTRAINT people_sister_client_declared '
								 'FOREIGN KEY (client_id, bill_to_client_id) REFERENCES @extschema@.sister_clients');
	END IF;

	-- 4. The small shared tables on every node (the client-keyed tables
	-- that reference clients are distributed next: Citus must not turn
	-- them into local tables of its metadata meanwhile)
	PERFORM set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
	FOREACH t IN ARRAY (SELECT array_agg(format('@extschema@.%I', x)::regclass) FROM unnest(ref_tables) x) LOOP
		IF NOT @extschema@.msp_is_distributed(t) THEN
			-- Citus copies the rows to every node in one COPY per node; the
			-- time zone check's exception block (a subtransaction) would
			-- interrupt it on the coordinator's own copy.  The rows passed
			-- the check already; it is put back once the table is copied.
			IF t = '@extschema@.clients'::regclass THEN
				PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.clients DROP CONSTRAINT clients_time_zone_known');
			END IF;
			EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING t;
			IF t = '@extschema@.clients'::regclass THEN
				ALTER TABLE @extschema@.clients ADD CONSTRAINT clients_time_zone_known
					CHECK (@extschema@.msp_valid_time_zone(time_zone));
			END IF;
			n_ref := n_ref + 1;
		END IF;
	END LOOP;

	-- 5. Every other table of the schema by client_id, co-located, each
	-- after the tables its foreign keys name
	todo := ARRAY(SELECT c.oid::regclass FROM pg_class c
				   WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
					 AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
				   ORDER BY c.oid <> anchor, c.relname);
	LOOP
		progress := false;
		FOREACH t IN ARRAY todo LOOP
			CONTINUE WHEN @extschema@.msp_is_distributed(t);
			CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint k
								   WHERE k.conrelid = t AND k.contype = 'f' AND k.confrelid <> t
									 AND NOT @extschema@.msp_is_distributed(k.confrelid));
			IF t = anchor THEN
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => ''none'', shard_count => $2)'
					USING t, coalesce(shard_count, current_setting('citus.shard_count')::integer);
			ELSE
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => $2)'
					USING t, anchor::text;
			END IF;
			n_dist := n_dist + 1;
			progress := true;
		END LOOP;
		EXIT WHEN NOT progress;
	END LOOP;

	-- 6. Sequences: each node numbers from its own range (its group id in
	-- the top bits, as Citus does for the sequences it owns), so that ids
	-- written on workers (delegated finalizations, loads) never collide
	FOR s IN
		SELECT c.oid::regclass AS seq FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind = 'S'
	LOOP
		EXECUTE format($cmd$SELECT pg_catalog.run_command_on_workers(%L)$cmd$,
					   format($w$SELECT pg_catalog.setval(%L, greatest(last_value, (SELECT groupid::bigint << 48 FROM pg_catalog.pg_dist_local_group)), true) FROM %s$w$,
							  s.seq, s.seq));
	END LOOP;

	-- 7. account_labels: the same rows and labels, the names through
	-- msp_account_name (called only where a name may show), since Citus
	-- reads the shards as the session user, whom the view's owner rights do
	-- not reach (the label rule as in src/billing/tables.sql)
	labels_view := (
		'CREATE OR REPLACE VIEW @extschema@.account_labels WITH (security_barrier) AS '
		'SELECT a.client_id, a.account_id, a.realm, a.kind, '
		'coalesce(CASE WHEN a.kind IN (''shared'', ''service'') OR @extschema@.msp_sees_names() '
		'THEN @extschema@.msp_account_name(a.client_id, a.account_id) END, '
		'a.realm || '' account '' || a.account_id) AS label '
		'FROM @extschema@.accounts a WHERE @extschema@.msp_can_see_client(a.client_id)');
	EXECUTE labels_view;
	PERFORM @extschema@.msp_on_workers(ARRAY[labels_view]);

	-- 8. Per-client functions run on the worker that holds the client
	FOR f IN SELECT * FROM @extschema@.msp_distributed_functions() LOOP
		EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''$1''::text, colocate_with => $2, force_delegation => $3)'
			USING f.fn, anchor::text, f.force_delegation;
		n_fn := n_fn + 1;
	END LOOP;

	-- 9. The workers get the grants on views and functions (a delegated
	-- call reads account_labels there as its caller)
	PERFORM @extschema@.msp_grants_to_workers();

	RETURN format('%s reference tables, %s distributed tables, %s delegated functions', n_ref, n_dist, n_fn);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.msp_distributed_functions()
RETURNS TABLE (fn regprocedure, force_delegation boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT x.fn::regprocedure, x.force
	  FROM (VALUES
		('@extschema@.msp_invoice(bigint, daterange)', false),
		('@extschema@.msp_compute_invoice(bigint, daterange)', false),
		('@extschema@.msp_invoice_lines(bigint, daterange)', false),
		('@extschema@.msp_billable_users(bigint, daterange)', false),
		('@extschema@.msp_compare_models(bigint, daterange)', false),
		('@extschema@.msp_cost_allocation(bigint, daterange)', false),
		('@extschema@.msp_invoice_drift(bigint, daterange)', false),
		('@extschema@.msp_finalize_invoice(bigint, daterange, text[])', false),
		('@extschema@.msp_issue_adjustment(bigint, daterange, text)', false),
		('@extschema@.msp_data_quality(bigint, daterange, integer)', true),
		('@extschema@.msp_pii_audit(bigint, daterange, interval)', true),
		('@extschema@.msp_pii_audit_summary(bigint, daterange)', true),
		('@extschema@.msp_shard_invoices(bigint, daterange)', false)) x(fn, force);
END;
COMMENT ON FUNCTION @extschema@.msp_distributed_functions() IS
	'the per-client functions msp_distribute() registers with Citus, and whether calls in a transaction block are delegated too';

CREATE OR REPLACE FUNCTION @extschema@.msp_export_json(period daterange)
RETURNS TABLE (client_id bigint, invoice_number text, document jsonb)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	PERFORM msp_require_month(msp_export_json.period);
	FOR r IN SELECT i.client_id, d.invoice_number FROM invoices i
			  JOIN invoice_documents d ON d.client_id = i.client_id AND d.invoice_id = i.invoice_id
			  WHERE i.kind = 'invoice' AND i.period = msp_export_json.period
			  ORDER BY d.invoice_number LOOP
		client_id := r.client_id;
		invoice_number := r.invoice_number;
		document := msp_invoice_json(r.client_id, msp_export_json.period);
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_json(daterange) IS
	'every numbered invoice of a period the caller may read, one JSON document each';

CREATE OR REPLACE FUNCTION @extschema@.msp_export_quickbooks(client_id bigint, period daterange)
RETURNS TABLE ("InvoiceNo" text, "Customer" text, "InvoiceDate" text, "DueDate" text, "Terms" text,
			   "Memo" text, "Item(Product/Service)" text, "ItemDescription" text, "ItemQuantity" text,
			   "ItemRate" text, "ItemAmount" text, "ItemTaxCode" text, "ItemTaxAmount" text, "Currency" text,
			   "Service Date" text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	doc invoice_documents;
BEGIN
	period := msp_period(client_id, period);
	doc := msp_require_numbered(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	RETURN QUERY
	SELECT doc.invoice_number, c.name, to_char(doc.invoice_date, 'MM/DD/YYYY'), to_char(doc.due_date, 'MM/DD/YYYY'),
		   msp_payment_terms_text(doc.payment_terms_days), 'PO ' || doc.po_reference,
		   coalesce(e.item_name, 'Managed services'), x.description_out, trim_scale(x.quantity_out)::text,
		   x.unit_price_out::text, it.amount::text, ld.tax_name, ld.tax::text, c.currency::text,
		   to_char(lower(period), 'MM/DD/YYYY')
	  FROM invoice_items it
	  JOIN invoice_line_documents ld ON ld.client_id = it.client_id AND ld.invoice_id = it.invoice_id
									AND ld.line_no = it.line_no
	  LEFT JOIN export_codes e ON e.basis = it.basis
	  CROSS JOIN LATERAL msp_export_line(it.quantity, it.unit_price, it.amount, it.description, c.minor_unit) x
	 WHERE it.client_id = client_id AND ld.client_id = client_id AND it.invoice_id = doc.invoice_id
	 ORDER BY it.line_no;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_quickbooks(bigint, daterange) IS
	'a client''s finalized invoice of a period as rows of QuickBooks Online''s invoice import CSV';

CREATE OR REPLACE FUNCTION @extschema@.msp_export_xero(client_id bigint, period daterange)
RETURNS TABLE ("ContactName" text, "InvoiceNumber" text, "Reference" text, "InvoiceDate" text,
			   "DueDate" text, "InventoryItemCode" text, "Description" text, "Quantity" text,
			   "UnitAmount" text, "LineAmount" text, "AccountCode" text, "TaxType" text, "TaxAmount" text,
			   "Currency" text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	doc invoice_documents;
BEGIN
	period := msp_period(client_id, period);
	doc := msp_require_numbered(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	RETURN QUERY
	SELECT c.name, doc.invoice_number, doc.po_reference, to_char(doc.invoice_date, 'DD/MM/YYYY'),
		   to_char(doc.due_date, 'DD/MM/YYYY'), e.item_name, x.description_out, trim_scale(x.quantity_out)::text,
		   x.unit_price_out::text, it.amount::text, coalesce(e.account_code, '200'), ld.tax_name, ld.tax::text,
		   c.currency::text
	  FROM invoice_items it
	  JOIN invoice_line_documents ld ON ld.client_id = it.client_id AND ld.invoice_id = it.invoice_id
									AND ld.line_no = it.line_no
	  LEFT JOIN export_codes e ON e.basis = it.basis
	  CROSS JOIN LATERAL msp_export_line(it.quantity, it.unit_price, it.amount, it.description, c.minor_unit) x
	 WHERE it.client_id = client_id AND ld.client_id = client_id AND it.invoice_id = doc.invoice_id
	 ORDER BY it.line_no;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_export_xero(bigint, daterange) IS
	'a client''s finalized invoice of a period as rows of Xero''s sales invoice import CSV';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
BEGIN
	RETURN @extschema@.msp_finalize_invoice_with(client_id, period, override, NULL, NULL);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines, evidence, number, dates, terms and tax and returns its id; finalizing again returns the same id';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice_with(client_id bigint, period daterange, override text[],
													  people jsonb, evidence jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	today date;
	stamp timestamptz;
	c clients;
	terms record;
	lines invoice_line[];
	priced record;
	number text;
	invoice_day date;
	tax numeric;
	findings jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	PERFORM msp_check_overrides(override);
	-- the gates run once: they read the period's logons several times over
	findings := coalesce((SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q), '[]');
	IF jsonb_path_exists(findings, '$[*] ? (@.gate == "period_not_over")') THEN
		-- (not alias c: the variable c would shadow it, and today be NULL)
		today := (now() AT TIME ZONE (SELECT cl.time_zone FROM clients cl WHERE cl.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q->>'gate' FROM jsonb_array_elements(findings) q
					  WHERE NOT q->>'gate' = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  -- the overrides already given too: the hint is the whole call
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period,
								ARRAY(SELECT DISTINCT g FROM unnest(coalesce(override, '{}') || failing) g ORDER BY 1));
	END IF;

	-- the summary and its lines from one pricing
	SELECT * INTO priced FROM msp_price_invoice(client_id, period, people) p;
	inv := priced.summary;
	lines := priced.lines;
	IF people IS NULL OR evidence IS NULL THEN
		evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	END IF;
	SELECT * INTO terms FROM msp_invoice_terms(client_id);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	-- the number last: its counter row stays locked until this transaction
	-- ends, so other finalizations wait here (not through the pricing), and
	-- a rollback gives the number back: no gaps, no duplicates
	INSERT INTO @extschema@.invoice_numbering AS n (series, last_number) VALUES ('invoice', 1)
	ON CONFLICT (series) DO UPDATE SET last_number = n.last_number + 1
	RETURNING msp_invoice_number_text(n.prefix, n.last_number, n.digits) INTO number;
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	invoice_day := (stamp AT TIME ZONE c.time_zone)::date;
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	tax := (SELECT coalesce(sum(t.tax), 0) FROM msp_tax_lines(client_id, lines) t);
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM unnest(lines) l;
	-- the document: number, dates, terms and PO as the client has them
	-- today, and each line's tax and explanation (src/billing/documents.sql)
	INSERT INTO @extschema@.invoice_documents (client_id, invoice_id, invoice_number, invoice_date, due_date,
							   payment_terms_days, po_reference, tax)
	VALUES (client_id, id, number, invoice_day, invoice_day + terms.payment_terms_days, terms.payment_terms_days,
			terms.po_reference, tax);
	INSERT INTO @extschema@.invoice_line_documents (client_id, invoice_id, line_no, tax_name, tax_rate, tax,
									explanation, evidence)
	SELECT client_id, id, t.line_no, t.tax_name, t.tax_rate, t.tax, x.explanation, x.evidence
	  FROM msp_tax_lines(client_id, lines) t
	  JOIN msp_explain_lines(client_id, period, lines, evidence) x ON x.line_no = t.line_no;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		-- the findings read once above (computed before the INSERT: Citus
		-- takes no subquery in INSERT ... VALUES)
		evidence := (SELECT jsonb_agg(q) FROM jsonb_array_elements(findings) q WHERE q->>'gate' = ANY (override));
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override, 'findings', evidence));
	END IF;
	RETURN id;
END
$$;

CREATE OR REPLACE PROCEDURE @extschema@.msp_finalize_period(period daterange, override text[] DEFAULT '{}',
												  only_clients bigint[] DEFAULT NULL,
												  INOUT run_id bigint DEFAULT NULL,
												  INOUT finalized integer DEFAULT NULL,
												  INOUT already_finalized integer DEFAULT NULL,
												  INOUT refused integer DEFAULT NULL,
												  INOUT failed integer DEFAULT NULL)
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
DECLARE
	ids pg_catalog.int8[];
	cid pg_catalog.int8;
	outcome pg_catalog.text;
	done pg_catalog.int4 := 0;
BEGIN
	finalized := 0;
	already_finalized := 0;
	refused := 0;
	failed := 0;
	run_id := @extschema@.msp_finalize_run_begin(period, override, only_clients);
	ids := (SELECT r.client_ids FROM @extschema@.finalize_runs r WHERE r.run_id OPERATOR(pg_catalog.=) run_id);
	RAISE NOTICE 'month-end run % for %: % clients', run_id, period, pg_catalog.cardinality(ids);
	FOREACH cid IN ARRAY ids LOOP
		-- the run row, then each client, committed as soon as done; the
		-- next statement after COMMIT must be SET TRANSACTION
		FOR attempt IN 1..5 LOOP
			COMMIT;
			SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
			outcome := @extschema@.msp_finalize_run_client(cid, run_id, attempt OPERATOR(pg_catalog.<) 5);
			EXIT WHEN outcome OPERATOR(pg_catalog.<>) 'retry';
		END LOOP;
		done := done OPERATOR(pg_catalog.+) 1;
		CASE outcome
			WHEN 'finalized' THEN finalized := finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'already_finalized' THEN already_finalized := already_finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'refused' THEN refused := refused OPERATOR(pg_catalog.+) 1;
			ELSE failed := failed OPERATOR(pg_catalog.+) 1;
		END CASE;
		IF done OPERATOR(pg_catalog.%) 100 OPERATOR(pg_catalog.=) 0 THEN
			RAISE NOTICE 'month-end run %: % of % clients done (% finalized, % already finalized, % refused, % failed)',
				run_id, done, pg_catalog.cardinality(ids), finalized, already_finalized, refused, failed;
		END IF;
	END LOOP;
	COMMIT;
	PERFORM @extschema@.msp_finalize_run_end(run_id);
	COMMIT;
	RAISE NOTICE 'month-end run % for % done: % finalized, % already finalized, % refused, % failed',
		run_id, period, finalized, already_finalized, refused, failed
		USING DETAIL = 'Each client''s outcome, with the gates or the error: SELECT * FROM mspbill.finalize_run_clients WHERE run_id = ' || run_id || ';';
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_run_begin(period daterange, override text[] DEFAULT '{}',
												   only_clients bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	ids bigint[];
BEGIN
	-- checked once here rather than refused for every client alike
	IF period IS NULL OR isempty(period) OR lower_inf(period) OR upper_inf(period)
	   OR lower(period) <> date_trunc('month', lower(period))::date
	   OR upper(period) <> (date_trunc('month', lower(period)) + interval '1 month')::date THEN
		RAISE EXCEPTION 'billing period % is not a calendar month', coalesce(period::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Month-end finalizes one calendar month for every client.',
				  HINT = 'Pass the month, e.g. CALL mspbill.msp_finalize_period(daterange(''2026-10-01'', ''2026-11-01''));';
	END IF;
	PERFORM msp_check_overrides(override);
	-- every client with a contract in the period; clients named explicitly
	-- are taken as named (one without a contract fails, with the reason)
	IF only_clients IS NULL THEN
		ids := ARRAY(SELECT DISTINCT k.client_id FROM contracts k WHERE k.effective && period ORDER BY 1);
	ELSE
		ids := ARRAY(SELECT DISTINCT x FROM unnest(only_clients) x WHERE x IS NOT NULL ORDER BY 1);
	END IF;
	INSERT INTO @extschema@.finalize_runs (period, override, client_ids)
	VALUES (period, coalesce(override, '{}'), ids)
	RETURNING run_id INTO id;
	-- every client's people at once, committed with the run; each client's
	-- transaction uses them if its data did not change since
	PERFORM @extschema@.msp_finalize_run_prepare(id);
	RETURN id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_run_client(client_id bigint, run_id bigint, may_retry boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	r finalize_runs;
	prior bigint;
	id bigint;
	result text;
	st text;
	msg text;
	det text;
	hin text;
	con text;
	failing text[];
	b finalize_run_people;
	source text;
BEGIN
	SELECT * INTO r FROM finalize_runs f WHERE f.run_id = run_id;
	IF NOT FOUND OR r.finished_at IS NOT NULL OR r.started_by <> session_user
	   OR NOT client_id = ANY (r.client_ids) THEN
		RAISE EXCEPTION 'client % is not pending in an open month-end run % of yours', client_id, run_id
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Run month-end with CALL mspbill.msp_finalize_period(period);';
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || r.period::text));
	prior := (msp_finalized_invoice(client_id, r.period)).invoice_id;
	BEGIN
		-- the people counted for every client at the start of the run hold
		-- if what they were read from is the same in this transaction's
		-- snapshot; else they are counted again here
		SELECT * INTO b FROM finalize_run_people p WHERE p.run_id = run_id AND p.client_id = client_id;
		IF prior IS NULL AND b.run_id IS NOT NULL
		   AND msp_people_sources(client_id, r.period, b.snapshot) = b.sources THEN
			id := msp_finalize_invoice_with(client_id, r.period, r.override, b.people, b.evidence);
			source := 'batch';
		ELSE
			id := msp_finalize_invoice_with(client_id, r.period, r.override, NULL, NULL);
			source := CASE WHEN prior IS NULL THEN 'recounted' END;
		END IF;
		result := CASE WHEN prior IS NULL THEN 'finalized' ELSE 'already_finalized' END;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
								hin = PG_EXCEPTION_HINT, con = CONSTRAINT_NAME;
		IF may_retry AND (con IN ('invoices_one_per_period', 'invoices_no_overlap') OR st IN ('40001', '40P01')) THEN
			-- another session finalized it, or took the next invoice number
			-- (the counter row), after this transaction's snapshot
			RETURN 'retry';
		ELSIF st = '55000' OR (st = '23514' AND coalesce(con, '') = '') THEN
			-- the gates (a check constraint's violation names the constraint)
			result := 'refused';
			failing := CASE WHEN st = '55000' THEN '{period_not_over}'::text[]
							ELSE ARRAY(SELECT DISTINCT q.gate FROM msp_data_quality(client_id, r.period) q
										WHERE NOT q.gate = ANY (r.override) ORDER BY 1) END;
		ELSE
			result := 'failed';
		END IF;
	END;
	INSERT INTO @extschema@.finalize_run_clients (client_id, run_id, outcome, invoice_id, total, gates, sqlstate,
												  message, detail, hint, people_from)
	VALUES (client_id, run_id, result, id,
			(SELECT i.total FROM invoices i WHERE i.client_id = client_id AND i.invoice_id = id),
			failing, st, msg, nullif(det, ''), nullif(hin, ''), CASE WHEN result = 'finalized' THEN source END);
	RETURN result;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_run_end(run_id bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	UPDATE @extschema@.finalize_runs f SET finished_at = clock_timestamp()
	 WHERE f.run_id = run_id AND f.started_by = session_user AND f.finished_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'month-end run % is not an open run of yours', run_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	DELETE FROM @extschema@.finalize_run_people p WHERE p.run_id = run_id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.sister_clients, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications, '
						'@extschema@.invoice_terms, @extschema@.tax_rates, @extschema@.psa_mappings, @extschema@.export_codes, '
						'@extschema@.contract_lines, @extschema@.contract_line_tiers, @extschema@.meter_readings, '
						-- licensing (src/licensing.sql): mappings and the loaded snapshots
						'@extschema@.license_policies, @extschema@.partner_companies, @extschema@.psa_contacts, '
						'@extschema@.m365_sku_counts, @extschema@.m365_license_assignments, @extschema@.pax8_subscriptions';
	-- read by every role that reads invoices, written only by the definers
	-- (the number series: see below)
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items, @extschema@.invoice_documents, '
						  '@extschema@.invoice_line_documents, @extschema@.psa_syncs';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging, '
					'@extschema@.m365_graph_staging, @extschema@.m365_users_csv_staging, @extschema@.m365_activity_staging, '
					'@extschema@.pax8_staging, @extschema@.psa_ticket_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq, @extschema@.m365_graph_staging_line_no_seq, '
						 '@extschema@.m365_users_csv_staging_line_no_seq, @extschema@.m365_activity_staging_line_no_seq, '
						 '@extschema@.pax8_staging_line_no_seq, @extschema@.psa_ticket_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_psa_sync(bigint, daterange), '
					'@extschema@.msp_load_m365_graph(bigint, date, text), '
					'@extschema@.msp_load_m365_users_csv(bigint, date, text), '
					'@extschema@.msp_load_m365_activity(bigint, text), '
					'@extschema@.msp_load_pax8_subscriptions(bigint, date, text), '
					'@extschema@.msp_load_psa_tickets(bigint, text, text), '
					'@extschema@.msp_match_psa_tickets(bigint), '
					'@extschema@.msp_finalize_run_begin(daterange, text[], bigint[]), '
					'@extschema@.msp_finalize_run_client(bigint, bigint, boolean), '
					'@extschema@.msp_finalize_run_end(bigint)';
	-- licence names are not per client: those who load maintain them (BI
	-- needs none, and would read their column statistics)
	product_names text := '@extschema@.license_product_names';
	-- PSA tickets without the contact (an e-mail or PSA id) for those who see no names
	ticket_cols text := 'client_id, psa, ticket_id, at, company, board, channel, person_id, contact_id';
	-- month-end (src/monthend.sql): a procedure, granted ON PROCEDURE
	month_end text := '@extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer)';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE format('REVOKE ALL ON PROCEDURE %s FROM %s', month_end, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE 'GRANT SELECT, DELETE ON @extschema@.psa_tickets TO mspbill_admin';
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);
	-- month-end: run it, and watch its runs (every client's outcome)
	EXECUTE format('GRANT EXECUTE ON PROCEDURE %s TO mspbill_admin, mspbill_billing', month_end);
	EXECUTE 'GRANT SELECT ON @extschema@.finalize_runs, @extschema@.finalize_run_clients, @extschema@.finalize_progress '
			'TO mspbill_admin, mspbill_billing';

	-- the number series: chosen by the admin before the first invoice
	-- (prefix, digits, the number another system stopped at), never set
	-- back afterwards; billing only reads it (finalization, a definer,
	-- takes the numbers)
	EXECUTE 'GRANT SELECT, INSERT (series, prefix, digits, last_number), UPDATE (prefix, digits) '
			'ON @extschema@.invoice_numbering TO mspbill_admin';
	EXECUTE 'GRANT SELECT ON @extschema@.invoice_numbering TO mspbill_billing';

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.psa_tickets TO mspbill_billing, mspbill_bi', ticket_cols);
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_admin, mspbill_billing', product_names);
	EXECUTE 'GRANT SELECT ON @extschema@.psa_unknown_contacts TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';
	-- (what account_labels calls on Citus; it checks the login itself)
	EXECUTE 'GRANT EXECUTE ON FUNCTION @extschema@.msp_account_name(bigint, bigint) TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	-- on Citus the workers get the grants on views and functions too
	-- (Citus carries those on tables only)
	PERFORM @extschema@.msp_grants_to_workers();
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.msp_invoices(period daterange DEFAULT NULL)
RETURNS SETOF @extschema@.invoice
-- (PARALLEL RESTRICTED: on Citus it opens connections to the workers)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	parts jsonb := '[]';
BEGIN
	IF NOT msp_is_distributed('@extschema@.contracts') THEN
		-- the finalized ones as stored; the others priced from one
		-- set-based count of every client's people
		FOR r IN SELECT * FROM msp_period_people_by_client(period) LOOP
			IF (msp_finalized_invoice(r.client_id, msp_period(r.client_id, period))).invoice_id IS NOT NULL THEN
				RETURN NEXT msp_invoice(r.client_id, period);
			ELSE
				RETURN NEXT (SELECT p.summary FROM msp_price_invoice(r.client_id, msp_period(r.client_id, period), r.people) p);
			END IF;
		END LOOP;
		RETURN;
	END IF;
	-- one call per shard, over a connection per shard to the worker that
	-- holds it, all at once (master_run_on_worker, which Citus's own
	-- run_command_on_shards uses); each names one client of its shard
	FOR r IN EXECUTE
		'SELECT w.success, w.result
		   FROM (SELECT array_agg(p.nodename) AS nodes, array_agg(p.nodeport) AS ports,
						array_agg(format(''SELECT @extschema@.msp_shard_invoices(%s, %L)'', s.client_id, $1)) AS commands
				   FROM (SELECT min(c.client_id) AS client_id,
								pg_catalog.get_shard_id_for_distribution_column(''@extschema@.contracts'', c.client_id) AS shardid
						   FROM @extschema@.clients c GROUP BY 2) s
				   JOIN pg_catalog.pg_dist_shard_placement p ON p.shardid = s.shardid) x,
				pg_catalog.master_run_on_worker(x.nodes, x.ports, x.commands, true) w'
		USING period
	LOOP
		IF NOT r.success THEN
			RAISE EXCEPTION '%', r.result
				USING ERRCODE = 'data_exception',
					  DETAIL = 'A worker could not price the invoices of one shard of clients.',
					  HINT = 'Price the client it names alone (SELECT * FROM mspbill.msp_invoice(client_id, period)) to see the whole error.';
		END IF;
		parts := parts || r.result::jsonb;
	END LOOP;
	RETURN QUERY SELECT i.* FROM jsonb_populate_recordset(NULL::invoice, parts) i ORDER BY i.client_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoices(daterange) IS
	'every client''s invoice for a period (default: each client''s last full month), as msp_invoice gives it; on Citus computed on the workers in parallel';

CREATE OR REPLACE FUNCTION @extschema@.msp_license_gaps(client_id bigint, period daterange DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION @extschema@.msp_license_product(licence text) RETURNS text
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

CREATE OR REPLACE FUNCTION @extschema@.msp_license_sync(client_id bigint, period daterange DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION @extschema@.msp_line_bands(quantity numeric, flat_price numeric, tier_mode text,
											tier_from numeric[], tier_price numeric[])
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH t AS (
		SELECT greatest(x.f - 1, 0) AS lo, x.p AS unit_price
		  FROM unnest(tier_from, tier_price) x(f, p)),
	bands AS (
		SELECT 0::numeric AS lo, (SELECT min(t.lo) FROM t) AS hi, flat_price AS unit_price
		UNION ALL
		SELECT t.lo, lead(t.lo) OVER (ORDER BY t.lo), t.unit_price FROM t),
	nonempty AS (SELECT * FROM bands b WHERE b.hi IS NULL OR b.hi > b.lo),
	last_unit AS (
		SELECT n.* FROM nonempty n
		 WHERE greatest(ceil(quantity), 1) > n.lo AND (n.hi IS NULL OR greatest(ceil(quantity), 1) <= n.hi)
		 ORDER BY n.lo DESC LIMIT 1)
	SELECT l.lo + 1, quantity, l.unit_price
	  FROM last_unit l
	 WHERE tier_mode = 'volume' OR quantity <= 0
	UNION ALL
	SELECT n.lo + 1, least(quantity, coalesce(n.hi, quantity)) - n.lo, n.unit_price
	  FROM nonempty n
	 WHERE tier_mode = 'graduated' AND quantity > n.lo
	 ORDER BY 1;
END;
COMMENT ON FUNCTION @extschema@.msp_line_bands(numeric, numeric, text, numeric[], numeric[]) IS
	'the price bands a quantity fills under tiers given as arrays (volume: one band; graduated: each band reached)';

CREATE OR REPLACE FUNCTION @extschema@.msp_line_items(c @extschema@.clients, k @extschema@.contracts,
											segment daterange, period daterange,
											q @extschema@.segment_quantities, lines @extschema@.line_terms[])
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	t line_terms;
	b record;
	cp record;
	n integer := 0;
	seg_days integer := upper(segment) - lower(segment);
	period_days integer := upper(period) - lower(period);
	prorate boolean;
	covered integer;
	units numeric;
	unit_days numeric;
	m numeric;
	md numeric;
	bands integer;
	line_total numeric;
	amount numeric;
	floor_fee numeric;
	discounted daterange;
	dd integer;
	user_count integer;
	user_segment_days numeric;
	share numeric;
	label text := CASE WHEN segment = period THEN ''
					   ELSE format(' (%s to %s)', lower(segment), upper(segment) - 1) END;
BEGIN
	FOR t IN SELECT * FROM unnest(lines) x ORDER BY x.line_no LOOP
		-- a preset whose model price is missing bills nothing, as the model does
		CONTINUE WHEN t.source <> 'cost_pool' AND t.unit_price IS NULL;
		-- a sum of readings is already the segment's: never prorated again
		prorate := t.prorate AND NOT (t.source = 'meter' AND t.meter_rule = 'sum');
		covered := CASE WHEN prorate THEN seg_days ELSE period_days END;
		line_total := 0;

		IF t.source = 'cost_pool' THEN
			-- one line per pool, rounded per line (as cost-plus bills)
			-- (each share computed outside the query that lists the pools:
			-- on Citus no function that reads tables runs inside a query on
			-- a shard)
			FOR cp IN
				SELECT x.pool_id, x.description, x.category
				  FROM cost_pools x
				 WHERE x.client_id = c.client_id AND x.period && segment
				   AND (t.pool_category IS NULL OR x.category = t.pool_category)
				 ORDER BY x.pool_id
			LOOP
				share := msp_pool_share(c.client_id, cp.pool_id, period, segment);
				amount := msp_round(share * (1 + t.markup), c.minor_unit);
				n := n + 1;
				RETURN NEXT (n, k.contract_id,
							 format('%s: %s (cost %s, markup %s%%)%s', t.description, cp.description, share,
									trim_scale(round(t.markup * 100, 2)), label),
							 1::numeric, amount, amount, 'cost')::invoice_line;
				line_total := line_total + amount;
			END LOOP;
		ELSE
			IF t.source = 'users' THEN
				-- the people the contract's policy counts and the days of the
				-- segment each is active, counted once by msp_segment_quantities
				user_count := q.user_count;
				user_segment_days := q.user_segment_days;
				units := user_count;
				unit_days := CASE WHEN prorate THEN user_segment_days ELSE user_count * period_days END;
			ELSIF t.source = 'seats' THEN
				units := q.seat_count;
				unit_days := q.seat_count * covered;
			ELSIF t.source = 'devices' THEN
				SELECT count(*),
					   coalesce(sum(CASE WHEN prorate
										 THEN upper(coalesce(dv.active, segment) * segment)
											  - lower(coalesce(dv.active, segment) * segment)
										 ELSE period_days END), 0)
				  INTO units, unit_days
				  FROM devices dv
				 WHERE dv.client_id = c.client_id AND (dv.active IS NULL OR dv.active && segment)
				   AND (t.device_kind IS NULL OR dv.kind = t.device_kind);
			ELSIF t.source = 'licenses' THEN
				-- each SKU's latest count on or before the segment's last day
				SELECT coalesce(sum(x.seats), 0) INTO units
				  FROM (SELECT DISTINCT ON (lc.sku) lc.seats
						  FROM license_counts lc
						 WHERE lc.client_id = c.client_id AND lc.as_of < upper(segment)
						   AND (t.sku IS NULL OR lc.sku = t.sku)
						 ORDER BY lc.sku, lc.as_of DESC, lc.source) x;
				unit_days := units * covered;
			ELSIF t.source = 'meter' THEN
				IF t.meter_rule = 'last' THEN
					SELECT r.quantity INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter AND r.day < upper(segment)
					 ORDER BY r.day DESC LIMIT 1;
				ELSIF t.meter_rule = 'peak' THEN
					SELECT max(r.quantity) INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter
					   AND r.day >= lower(segment) AND r.day < upper(segment);
				ELSE
					SELECT sum(r.quantity) INTO units
					  FROM meter_readings r
					 WHERE r.client_id = c.client_id AND r.meter = t.meter
					   AND r.day >= lower(segment) AND r.day < upper(segment);
				END IF;
				units := coalesce(units, 0);
				unit_days := units * covered;
			ELSE
				-- fixed: one unit for the days covered
				units := 1;
				unit_days := covered;
			END IF;

			-- the minimum raises the count (for the tier) and the days
			m := greatest(units, t.minimum_quantity);
			md := greatest(unit_days, t.minimum_quantity * covered);
			-- no seat at all is no seats line, as the per-user models bill it
			m := CASE WHEN t.source = 'seats' AND m = 0 THEN NULL ELSE m END;
			SELECT count(*) INTO bands
			  FROM msp_line_bands(m, t.unit_price, t.tier_mode, t.tier_from, t.tier_price);
			FOR b IN
				SELECT x.first_unit, x.units, x.unit_price, x.first_unit + x.units - 1 AS last_unit,
					   CASE WHEN m > 0 THEN x.units * md ELSE 0 END AS num,
					   CASE WHEN m > 0 THEN m * period_days ELSE 1 END AS den
				  FROM msp_line_bands(m, t.unit_price, t.tier_mode, t.tier_from, t.tier_price) x
				 ORDER BY x.first_unit
			LOOP
				amount := msp_round(b.num * b.unit_price / b.den, c.minor_unit);
				n := n + 1;
				RETURN NEXT (n, k.contract_id,
							 CASE WHEN t.source = 'fixed' THEN t.description
								  ELSE format('%s: %s', t.description, trim_scale(round(units, 4))) END
							 || CASE WHEN m > units THEN format(', minimum %s', trim_scale(t.minimum_quantity)) ELSE '' END
							 || CASE WHEN bands > 1 THEN format(', units %s to %s', trim_scale(b.first_unit),
															   trim_scale(ceil(b.last_unit))) ELSE '' END
							 || label,
							 b.num / b.den, b.unit_price, amount,
							 CASE t.source WHEN 'users' THEN 'user' WHEN 'seats' THEN 'seat' WHEN 'devices' THEN 'device'
										   WHEN 'licenses' THEN 'license' ELSE t.source END)::invoice_line;
				line_total := line_total + amount;
			END LOOP;
		END IF;

		-- the line's own minimum fee, for the days it covers
		floor_fee := msp_round(t.minimum_fee * covered / period_days, c.minor_unit);
		IF line_total < floor_fee THEN
			amount := floor_fee - line_total;
			n := n + 1;
			RETURN NEXT (n, k.contract_id, format('%s: minimum fee top-up%s', t.description, label),
						 1::numeric, amount, amount, 'minimum')::invoice_line;
			line_total := floor_fee;
		END IF;

		-- the discount, for the days of the segment inside its range
		IF t.discount_percent IS NOT NULL OR t.discount_amount IS NOT NULL THEN
			discounted := segment * coalesce(t.discount_period, segment);
			dd := upper(discounted) - lower(discounted);
			IF dd > 0 AND line_total > 0 THEN
				IF t.discount_percent IS NOT NULL THEN
					amount := msp_round(line_total * t.discount_percent * dd / (100 * seg_days), c.minor_unit);
				ELSE
					-- a month's amount: the days discounted of the month, or
					-- whole without proration
					amount := msp_round(CASE WHEN prorate THEN t.discount_amount * dd / period_days
											 ELSE t.discount_amount END, c.minor_unit);
				END IF;
				amount := least(amount, line_total);
				IF amount > 0 THEN
					n := n + 1;
					RETURN NEXT (n, k.contract_id,
								 format('%s: %s off%s', t.description,
										CASE WHEN t.discount_percent IS NOT NULL
											 THEN trim_scale(t.discount_percent) || '%'
											 ELSE trim_scale(t.discount_amount)::text END,
										CASE WHEN discounted = segment THEN label
											 ELSE format(' (%s to %s)', lower(discounted), upper(discounted) - 1) END),
								 1::numeric, -amount, -amount, 'discount')::invoice_line;
				END IF;
			END IF;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_line_items(@extschema@.clients, @extschema@.contracts, daterange, daterange, @extschema@.segment_quantities, @extschema@.line_terms[]) IS
	'the invoice lines a set of line terms bills in one contract segment: per line its bands, minimum fee top-up and discount';

CREATE OR REPLACE FUNCTION @extschema@.msp_load_emr_audit(client_id bigint, source text DEFAULT 'emr',
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_entra_signins(client_id bigint, source text DEFAULT 'entra',
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_activity(client_id bigint, source text DEFAULT 'm365_activity',
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_graph(client_id bigint, as_of date DEFAULT NULL, source text DEFAULT 'graph',
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_m365_users_csv(client_id bigint, as_of date DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_normalized(for_client bigint, load_source text,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_pax8_subscriptions(client_id bigint, as_of date DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_psa_tickets(client_id bigint, psa text, source text DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_load_windows_events(client_id bigint, source text DEFAULT 'windows',
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

CREATE OR REPLACE FUNCTION @extschema@.msp_match_psa_tickets(client_id bigint) RETURNS bigint
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

CREATE OR REPLACE FUNCTION @extschema@.msp_pii_audit(client_id bigint, period daterange DEFAULT NULL,
										  window_size interval DEFAULT '15 minutes')
RETURNS TABLE (device text, account text, application text, session_start timestamptz,
			   session_end timestamptz, uses integer, sessions bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	z record;
	sess interval;
BEGIN
	-- nothing, rather than an error, for a client the reader may not see
	IF NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = msp_pii_audit.client_id) THEN
		RETURN;
	END IF;
	period := msp_period(client_id, period);
	SELECT c.time_zone, (lower(period)::timestamp AT TIME ZONE c.time_zone) AS t0,
		   (upper(period)::timestamp AT TIME ZONE c.time_zone) AS t1
	  INTO z FROM clients c WHERE c.client_id = msp_pii_audit.client_id;
	SELECT k.default_session INTO sess FROM contracts k
	 WHERE k.client_id = msp_pii_audit.client_id AND k.effective @> (upper(period) - 1);
	sess := coalesce(sess, interval '1 hour');
	RETURN QUERY
	WITH shared_sessions AS MATERIALIZED (
		-- numbered here (the CTE is read twice, so it is materialized once)
		SELECT row_number() OVER () AS session_no, l.device_id, l.account_id, l.at AS s0,
			   coalesce(l.ended, l.at + sess) AS s1
		  FROM logons l
		  JOIN accounts a ON a.client_id = msp_pii_audit.client_id AND a.account_id = l.account_id
		 WHERE l.client_id = msp_pii_audit.client_id AND l.at >= z.t0 AND l.at < z.t1
		   AND a.kind = 'shared' AND a.realm = 'os' AND l.presence AND l.device_id IS NOT NULL),
	uses AS (
		SELECT s.session_no, ua.application, count(*)::integer AS uses,
			   bool_or(ua.kind = 'individual') AS individual_login
		  FROM shared_sessions s
		  JOIN logons u ON u.client_id = msp_pii_audit.client_id AND u.device_id = s.device_id
					   AND u.at >= s.s0 - window_size AND u.at <= s.s1 + window_size
		  JOIN accounts ua ON ua.client_id = msp_pii_audit.client_id AND ua.account_id = u.account_id AND ua.realm = 'app'
		  JOIN applications ap ON ap.client_id = msp_pii_audit.client_id AND ap.name = ua.application AND ap.holds_pii
		 GROUP BY s.session_no, ua.application)
	SELECT d.name, al.label, x.application, s.s0, s.s1, x.uses,
		   count(*) OVER (PARTITION BY d.name, al.label, x.application)
	  FROM uses x
	  JOIN shared_sessions s USING (session_no)
	  JOIN devices d ON d.client_id = msp_pii_audit.client_id AND d.device_id = s.device_id
	  JOIN account_labels al ON al.client_id = msp_pii_audit.client_id AND al.account_id = s.account_id
	 WHERE NOT x.individual_login
	 ORDER BY d.name, s.s0;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_pii_audit(bigint, daterange, interval) IS
	'HIPAA check: shared-account sessions in which a PII application was used without an individual application login';

CREATE OR REPLACE FUNCTION @extschema@.msp_price_invoice(client_id bigint, period daterange, people jsonb,
											   OUT summary @extschema@.invoice,
											   OUT lines @extschema@.invoice_line[])
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	seg record;
	q segment_quantities;
	line invoice_line;
	inv invoice;
	models text[] := '{}';
	homes bigint[] := '{}';
	ids bigint[] := '{}';
	n integer := 0;
BEGIN
	period := msp_period(client_id, period);
	PERFORM msp_check_currency(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	inv := (c.client_id, c.name, period, NULL, 0, 0, 0, 0, 0, c.currency)::invoice;
	lines := '{}';
	FOR seg IN SELECT * FROM msp_contract_segments(client_id, period) LOOP
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id
			AND contracts.contract_id = seg.contract_id;
		IF people IS NULL THEN
			q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period);
		ELSE
			q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period,
										ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(people->(seg.contract_id::text)->'h') x),
										ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(people->(seg.contract_id::text)->'p') x),
										ARRAY(SELECT x::integer FROM jsonb_array_elements_text(people->(seg.contract_id::text)->'d') x));
		END IF;
		IF NOT k.model = ANY (models) THEN
			models := models || k.model;
		END IF;
		-- a seat billed by two contracts of the month is one seat
		inv.seats := greatest(inv.seats, q.seat_count);
		homes := homes || q.user_homes;
		ids := ids || q.user_ids;
		FOR line IN SELECT * FROM msp_segment_lines(c, k, seg.segment, period, q, k.model) LOOP
			inv.total := inv.total + line.amount;
			IF line.basis <> 'minimum' THEN
				inv.subtotal := inv.subtotal + line.amount;
			END IF;
			n := n + 1;
			line.line_no := n;
			-- shown and stored alike: four decimals at most
			line.quantity := trim_scale(round(line.quantity, 4));
			lines := lines || line;
		END LOOP;
	END LOOP;
	-- the period's people: each segment's, a person counted by two
	-- contracts once (as msp_period_people counts them, without counting
	-- them again)
	inv.users := (SELECT count(DISTINCT (x.h, x.id))::integer FROM unnest(homes, ids) x(h, id));
	inv.devices := msp_period_devices(client_id, period);
	inv.model := array_to_string(models, '+');
	-- adjustments of earlier invoices carried by this one
	FOR line IN SELECT * FROM msp_adjustment_lines(client_id, period) LOOP
		inv.total := inv.total + line.amount;
		n := n + 1;
		line.line_no := n;
		lines := lines || line;
	END LOOP;
	inv.subtotal := msp_round(inv.subtotal, c.minor_unit);
	inv.total := msp_round(inv.total, c.minor_unit);
	summary := inv;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_price_invoice(bigint, daterange, jsonb) IS
	'the invoice of a client for a period as today''s data prices it and its lines, each segment priced once, from people counted for every client at once (or, NULL, for this one)';

CREATE OR REPLACE FUNCTION @extschema@.msp_reconcile_licenses(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (category text, sku text, subject text, quantity numeric, amount numeric, note text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	fin invoices;
	active_ids bigint[];
	active integer;
	billed numeric;
	seats numeric;
	seat_cost numeric;
	snapshot boolean;
BEGIN
	period := msp_period(client_id, period);
	-- with a licence snapshot (src/licensing.sql) seats are known per
	-- account: msp_license_gaps names them instead of the account checks
	snapshot := EXISTS (SELECT 1 FROM m365_license_assignments x WHERE x.client_id = client_id AND x.as_of < upper(period));
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id AND contracts.effective @> (upper(period) - 1);
	active_ids := ARRAY(SELECT DISTINCT u.person_id FROM msp_billable_users(client_id, period) u
						 WHERE u.home_client_id = client_id);
	active := (SELECT count(DISTINCT (u.home_client_id, u.person_id)) FROM msp_billable_users(client_id, period) u);
	-- people billed: a preview bills everyone active; once finalized, those in
	-- the evidence of the invoice or of an adjustment to it
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

	-- seats held per SKU (latest count before the period ends, per source)
	RETURN QUERY
	SELECT 'seats_held', lc.sku, NULL::text, lc.seats::numeric, msp_round(lc.seats * lc.unit_cost, c.minor_unit),
		   format('%s seats held; %s people active; %s users billed.', lc.seats, active, billed)
	  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
			 WHERE x.client_id = client_id AND x.as_of < upper(period)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc
	 ORDER BY lc.sku;
	SELECT sum(lc.seats), max(lc.unit_cost) INTO seats, seat_cost
	  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
			 WHERE x.client_id = client_id AND x.as_of < upper(period)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc;

	-- people who work without a Microsoft 365 account
	RETURN QUERY
	SELECT 'active_unlicensed', NULL::text, a.pseudonym, 1::numeric, msp_round(seat_cost, c.minor_unit),
		   'Active in the period but holds no Microsoft 365 account: license them (or record the account).'
	  FROM people a
	 WHERE a.client_id = client_id AND a.person_id = ANY (active_ids) AND NOT snapshot
	   AND NOT EXISTS (SELECT 1 FROM accounts x WHERE x.client_id = client_id AND x.person_id = a.person_id
						  AND x.realm = 'm365')
	 ORDER BY a.pseudonym;
	-- licensed people who did not work: seats to reclaim
	RETURN QUERY
	SELECT 'licensed_inactive', NULL::text, l.label, 1::numeric, msp_round(seat_cost, c.minor_unit),
		   'Holds a Microsoft 365 account but was not active in the period: a seat to reclaim.'
	  FROM accounts x JOIN account_labels l USING (client_id, account_id)
	 WHERE x.client_id = client_id AND x.realm = 'm365' AND x.kind = 'individual'
	   AND NOT x.person_id = ANY (active_ids) AND NOT snapshot
	 ORDER BY l.label;
	IF seats IS NOT NULL AND active > seats THEN
		RETURN QUERY SELECT 'seat_shortfall', NULL::text, NULL::text, (active - seats)::numeric,
							msp_round((active - seats) * seat_cost, c.minor_unit),
							format('%s people active but only %s seats held.', active, seats);
	END IF;
	IF billed < active AND k.model IN ('per_user', 'per_user_plus_support') THEN
		RETURN QUERY SELECT 'unbilled_users', NULL::text, NULL::text, active - billed,
							msp_round((active - billed) * k.price_per_user, c.minor_unit),
							format('%s people active, %s billed.', active, billed);
	END IF;
	RETURN QUERY SELECT * FROM msp_license_gaps(client_id, period);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_reconcile_licenses(bigint, daterange) IS
	'three-way license reconciliation: people active by logon, seats held per SKU, quantities billed, and the money at stake; with a licence snapshot, the gaps of msp_license_gaps by name and product';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_lines(c @extschema@.clients, k @extschema@.contracts,
											   segment daterange, period daterange,
											   q @extschema@.segment_quantities, model text)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	line invoice_line;
	n integer := 0;
	total numeric := 0;
	amount numeric;
	floor_fee numeric;
	pool record;
	cost numeric;
	label text := CASE WHEN segment = period THEN ''
					   ELSE format(' (%s to %s)', lower(segment), upper(segment) - 1) END;
BEGIN
	IF model IN ('per_user', 'per_user_plus_support') THEN
		IF k.price_per_user IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.user_count, q.user_days, q, k.price_per_user,
										 format('Users: %s billable', q.user_count), 'user', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
		IF q.seat_count > 0 THEN
			amount := msp_round(q.seat_days * coalesce(k.price_per_seat, k.price_per_user) / q.period_days,
								c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id, format('Shared seats: %s%s', q.seat_count, label),
						 q.seat_days / q.period_days, coalesce(k.price_per_seat, k.price_per_user), amount,
						 'seat')::invoice_line;
			total := total + amount;
		END IF;
		IF model = 'per_user_plus_support' AND q.support_cost > 0 THEN
			amount := msp_round(q.support_cost * (1 + k.markup), c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id,
						 format('Support costs spread over %s users (%s per user)%s', q.user_count,
								CASE WHEN q.user_count > 0 THEN msp_round(amount / q.user_count, c.minor_unit)::text
									 ELSE 'n/a' END, label),
						 1::numeric, amount, amount, 'cost')::invoice_line;
			total := total + amount;
		END IF;
	ELSIF model = 'per_device' THEN
		IF k.price_per_device IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.device_count, q.device_days, q, k.price_per_device,
										 format('Devices: %s managed', q.device_count), 'device', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	ELSIF model = 'per_seat' THEN
		IF k.price_per_seat IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.license_count, q.license_days, q, k.price_per_seat,
										 format('License seats held: %s', q.license_count), 'license', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	ELSIF model = 'cost_plus' THEN
		-- each pool's share computed outside the query that lists the pools
		-- (Citus runs no query on a table from within one)
		FOR pool IN
			SELECT x.pool_id, x.category, x.description FROM cost_pools x
			 WHERE x.client_id = c.client_id AND x.period && segment
			 ORDER BY x.pool_id
		LOOP
			cost := msp_pool_share(c.client_id, pool.pool_id, period, segment);
			amount := msp_round(cost * (1 + k.markup), c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id,
						 format('%s: %s (cost %s, markup %s%%)%s', initcap(pool.category), pool.description,
								cost, round(k.markup * 100, 2), label),
						 1::numeric, amount, amount, 'cost')::invoice_line;
			total := total + amount;
		END LOOP;
	ELSIF model = 'lines' THEN
		-- priced by lines (src/billing/lines.sql): the contract's own, or
		-- the preset its model stands for
		FOR line IN
			SELECT * FROM msp_line_items(c, k, segment, period, q,
										 ARRAY(SELECT e FROM msp_effective_lines(c.client_id, k.contract_id) e))
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	END IF;

	floor_fee := msp_round(k.minimum_fee * q.covered_days / q.period_days, c.minor_unit);
	IF total < floor_fee THEN
		amount := floor_fee - total;
		n := n + 1;
		RETURN NEXT (n, k.contract_id, format('Minimum monthly fee top-up%s', label),
					 1::numeric, amount, amount, 'minimum')::invoice_line;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_lines(@extschema@.clients, @extschema@.contracts, daterange, daterange, @extschema@.segment_quantities, text) IS
	'the priced lines of one contract segment under a model, from its quantities';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange,
													user_homes bigint[], user_ids bigint[], user_days integer[])
RETURNS @extschema@.segment_quantities
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	k record;
	q segment_quantities;
	t0 timestamptz;
	t1 timestamptz;
	pool record;
	share numeric;
BEGIN
	SELECT x.prorate, x.shared_billing, x.count_realms, x.default_session, c.time_zone,
		   upper(period) - lower(period) AS period_days,
		   CASE WHEN x.prorate THEN upper(segment) - lower(segment)
				ELSE upper(period) - lower(period) END AS covered_days
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = msp_segment_quantities.client_id AND c.client_id = msp_segment_quantities.client_id
	   AND x.contract_id = msp_segment_quantities.contract_id;
	-- no quantities for a contract that does not exist or that the caller
	-- may not see
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;

	-- people: the days of the segment each billed person is active (kept
	-- too: contract lines that prorate read them from here instead of
	-- counting the people again)
	q.user_count := coalesce(cardinality(user_ids), 0);
	q.user_segment_days := coalesce((SELECT sum(d) FROM unnest(user_days) d), 0);
	q.user_days := CASE WHEN k.prorate THEN q.user_segment_days ELSE q.user_count * k.period_days END;
	-- who: an invoice of two contracts counts a person billed by both once
	q.user_homes := coalesce(user_homes, '{}');
	q.user_ids := coalesce(user_ids, '{}');

	-- shared seats: one per shared account with presence logons, or its
	-- peak of concurrent sessions
	IF k.shared_billing IN ('seat', 'peak') THEN
		SELECT coalesce(sum(CASE WHEN k.shared_billing = 'peak' THEN greatest(sh.peak, 1) ELSE 1 END), 0)::integer
		  INTO q.seat_count
		  FROM (SELECT a.account_id,
					   peak_concurrency(tstzrange(l.at, coalesce(l.ended, l.at + k.default_session))) AS peak
				  FROM logons l
				  JOIN accounts a ON a.client_id = msp_segment_quantities.client_id AND a.account_id = l.account_id
								 AND a.kind = 'shared' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
				 WHERE l.client_id = msp_segment_quantities.client_id AND l.at >= t0 AND l.at < t1 AND l.presence
				 GROUP BY a.account_id) sh;
	ELSE
		q.seat_count := 0;
	END IF;

	SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN k.period_days
							 ELSE upper(coalesce(dv.active, segment) * segment)
								  - lower(coalesce(dv.active, segment) * segment) END), 0),
		   count(*)::integer
	  INTO q.device_days, q.device_count
	  FROM devices dv
	 WHERE dv.client_id = msp_segment_quantities.client_id AND (dv.active IS NULL OR dv.active && segment);

	SELECT coalesce(sum(lc.seats), 0)::integer INTO q.license_count
	  FROM (SELECT DISTINCT ON (x.sku) x.seats
			  FROM license_counts x
			 WHERE x.client_id = msp_segment_quantities.client_id AND x.as_of < upper(segment)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc;

	-- each pool's share, computed outside the query that lists the pools
	q.cost := 0;
	q.support_cost := 0;
	FOR pool IN
		SELECT cp.pool_id, cp.category FROM cost_pools cp
		 WHERE cp.client_id = msp_segment_quantities.client_id AND cp.period && segment
		 ORDER BY cp.pool_id
	LOOP
		share := msp_pool_share(client_id, pool.pool_id, period, segment);
		q.cost := q.cost + share;
		IF pool.category = 'support' THEN
			q.support_cost := q.support_cost + share;
		END IF;
	END LOOP;

	q.seat_days := q.seat_count * k.covered_days;
	q.license_days := q.license_count * k.covered_days;
	q.covered_days := k.covered_days;
	q.period_days := k.period_days;
	RETURN q;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange, bigint[], bigint[], integer[]) IS
	'billable counts and prorated quantities of one contract segment, its people given';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_users(client_id bigint, contract_id bigint, segment daterange,
											   with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	RETURN QUERY
	SELECT u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen, u.days_active, u.support_contacts,
		   u.accounts, u.home_client_id
	  FROM msp_segment_people(client_id, contract_id, segment, with_evidence) u;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_users(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment of a period (sister clients'' people it pays for included), with the rule and evidence';

CREATE OR REPLACE FUNCTION @extschema@.msp_snapshot_day(for_client bigint, as_of date) RETURNS date
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

CREATE OR REPLACE FUNCTION @extschema@.msp_stage_csv(for_client bigint, stage regclass, key_column text) RETURNS bigint
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

CREATE OR REPLACE FUNCTION @extschema@.msp_stage_json(for_client bigint, stage regclass, keys text[]) RETURNS bigint
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

CREATE OR REPLACE FUNCTION @extschema@.msp_store_assignments(for_client bigint, day date, load_source text,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_tax_lines(client_id bigint, lines @extschema@.invoice_line[])
RETURNS TABLE (line_no integer, tax_name text, tax_rate numeric, tax numeric)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	t invoice_terms := msp_invoice_terms(client_id);
	minor numeric := (SELECT c.minor_unit FROM clients c WHERE c.client_id = client_id);
BEGIN
	RETURN QUERY
	WITH k AS (
		-- a discount lowers the line it follows (msp_line_items emits it
		-- right after its contract line's lines), so it is taxed at that
		-- line's rate: the nearest earlier line of its contract, a
		-- minimum top-up only when the line had nothing else
		SELECT x.line_no, x.amount,
			   CASE WHEN x.basis = 'discount'
					THEN (SELECT y.basis FROM unnest(lines) y
						   WHERE y.contract_id = x.contract_id AND y.line_no < x.line_no AND y.basis <> 'discount'
						   ORDER BY y.basis = 'minimum', y.line_no DESC LIMIT 1)
					ELSE x.basis END AS basis
		  FROM unnest(lines) x),
	l AS (
		SELECT k.line_no AS n, k.amount, coalesce(r.tax_name, t.tax_name) AS name,
			   coalesce(r.tax_rate, t.tax_rate) AS rate
		  FROM k
		  LEFT JOIN tax_rates r ON r.client_id = client_id AND r.basis = k.basis),
	run AS (
		SELECT l.*, sum(l.amount) OVER (PARTITION BY l.name, l.rate ORDER BY l.n) AS upto FROM l)
	SELECT run.n, run.name, run.rate,
		   CASE WHEN t.tax_rounding = 'line' THEN msp_round(run.amount * run.rate, minor)
				ELSE msp_round(run.upto * run.rate, minor) - msp_round((run.upto - run.amount) * run.rate, minor) END
	  FROM run
	 ORDER BY run.n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_tax_lines(bigint, @extschema@.invoice_line[]) IS
	'the tax name, rate and amount of each invoice line, rounded per line or per invoice as the client''s invoice terms say';

CREATE OR REPLACE FUNCTION @extschema@.msp_tier_bands(client_id bigint, contract_id bigint,
											quantity numeric, flat_price numeric)
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	mode text;
	froms numeric[];
	prices numeric[];
BEGIN
	SELECT coalesce(k.tier_mode, 'volume') INTO mode FROM contracts k
	 WHERE k.client_id = msp_tier_bands.client_id AND k.contract_id = msp_tier_bands.contract_id;
	-- no bands for a contract that does not exist or that the caller may
	-- not see (row-level security): nothing is priced for it
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT array_agg(x.from_quantity), array_agg(x.unit_price) INTO froms, prices
	  FROM contract_tiers x
	 WHERE x.client_id = msp_tier_bands.client_id AND x.contract_id = msp_tier_bands.contract_id;
	RETURN QUERY SELECT * FROM msp_line_bands(quantity, flat_price, mode, coalesce(froms, '{}'), coalesce(prices, '{}'));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_tier_bands(bigint, bigint, numeric, numeric) IS
	'the price bands a count of units fills under the contract''s tiers (volume: one band; graduated: each band reached)';

CREATE OR REPLACE FUNCTION @extschema@.msp_xmin_seen(x xid, since pg_snapshot, now_xmax bigint)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
	WHEN since IS NULL THEN true
	WHEN x::text::bigint OPERATOR(pg_catalog.<) 3 THEN true
	ELSE coalesce(NULLIF(GREATEST(((now_xmax OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.<<) 32)
								  OPERATOR(pg_catalog.+) x::text::bigint
								  OPERATOR(pg_catalog.-) CASE WHEN x::text::bigint OPERATOR(pg_catalog.>=)
																   (now_xmax OPERATOR(pg_catalog.&) 4294967295)
															  THEN 4294967296 ELSE 0 END, -1), -1)
				  OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmin(since)::text::bigint, false)
END;
COMMENT ON FUNCTION @extschema@.msp_xmin_seen(xid, pg_snapshot, bigint) IS
	'month-end internal: whether a row version (its xmin) was committed as of a snapshot (NULL snapshot: true)';

