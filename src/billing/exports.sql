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

-- A period for the exports of every client: one calendar month, as
-- invoices are, so that a quarter, a year or NULL is refused rather than
-- matching no invoice and exporting nothing.  (Not STRICT: NULL is
-- refused.)
CREATE FUNCTION @extschema@.msp_require_month(period daterange) RETURNS daterange
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

CREATE FUNCTION @extschema@.msp_export_xero(period daterange)
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
