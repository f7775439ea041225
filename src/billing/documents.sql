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

-- A printed number must never repeat: once the series has given a number
-- (or continues another system's, last_number > 0), a new prefix or
-- digits could print a number given before (INV-1 + 4 and INV- + 14 are
-- both INV-14), so they are fixed from then on.  On Citus, where
-- msp_distribute drops triggers, only the column privileges (mspbill_admin
-- alone may UPDATE prefix, digits) keep the series; see the README.
CREATE FUNCTION @extschema@.msp_invoice_numbering_guard() RETURNS trigger
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
-- license, cost, fixed, meter, minimum, adjustment) that differ
-- from the client's own rate (invoice_terms.tax_rate).
CREATE TABLE @extschema@.tax_rates (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	-- a discount is taxed as the line it discounts, so it has no rate of its own
	basis text NOT NULL CONSTRAINT tax_rates_basis_known
		CHECK (basis IN ('user', 'seat', 'device', 'license', 'cost', 'fixed', 'meter', 'minimum', 'adjustment')),
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
-- client's; a discount's is the rate of the line it discounts.  Rounded per line, each line's tax is rounded to the minor
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
