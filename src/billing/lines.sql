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
