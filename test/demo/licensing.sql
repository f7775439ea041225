-- The daily licence sync (make demo, after clinics.sql): St. Olaf's
-- Microsoft Graph export (subscribedSkus and users), its Pax8 subscriptions
-- (portal CSV) and its ConnectWise PSA tickets, generated here as the
-- exports are written, loaded by the licensing loaders next to the month's
-- logons; then msp_license_sync answers with money.  The hospital licenses
-- its operating rooms (license_policies.licensed_rooms): each room account
-- in use needs a Microsoft 365 licence of its own.
SET search_path = public, mspbill;
CREATE TEMP TABLE demo_snapshot AS SELECT next_month - 1 AS as_of FROM demo_period;
INSERT INTO license_policies (client_id, contract_id, license_product, licensed_rooms)
VALUES (1, 1, 'Microsoft 365 Business Standard', true);
INSERT INTO partner_companies (client_id, vendor, company) VALUES (1, 'pax8', 'St. Olaf Hospital'), (1, 'connectwise', 'STOLAF');

-- Graph: a saved subscribedSkus response, then users as JSON lines
INSERT INTO m365_graph_staging (client_id, raw) VALUES
	(1, '{"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscribedSkus", "value": ['),
	(1, '  {"skuId": "f245ecc8-75af-4f8e-b61f-27d8114de5f3", "skuPartNumber": "O365_BUSINESS_PREMIUM", "consumedUnits": 6,'),
	(1, '   "prepaidUnits": {"enabled": 10, "suspended": 0, "warning": 0, "lockedOut": 0}}'),
	(1, ']}');
INSERT INTO m365_graph_staging (client_id, raw)
SELECT 1, json_build_object('id', 'user-' || u, 'userPrincipalName', u || '@stolaf.example', 'accountEnabled', true,
							'assignedLicenses', json_build_array(json_build_object('skuId', 'f245ecc8-75af-4f8e-b61f-27d8114de5f3',
																				   'disabledPlans', json_build_array())))::text
  FROM unnest(ARRAY['c1', 'c2', 'c3', 'c4', 'n1', 'or1']) u;
-- Pax8: the portal export, with a company St. Olaf's mapping does not know
INSERT INTO pax8_staging (client_id, raw) VALUES
	(1, 'Company,Product,Subscription Id,Quantity,Partner Cost,Price,Billing Term,Status,Start Date,End Date'),
	(1, 'St. Olaf Hospital,Microsoft 365 Business Standard,sub-stolaf-1,10,12.50,16.00,Monthly,Active,2025-01-01,'),
	(1, 'Riverside Vet,Microsoft 365 Business Basic,sub-rv-1,3,6.00,8.00,Monthly,Active,2025-01-01,');
-- ConnectWise PSA: two tickets, one from a contact nobody knows
INSERT INTO psa_ticket_staging (client_id, raw)
SELECT 1, json_build_array(
		json_build_object('id', 7001, 'summary', 'Outlook', 'company', json_build_object('identifier', 'STOLAF'),
						  'contactEmailAddress', 'c1@stolaf.example', 'board', json_build_object('name', 'Help Desk'),
						  'source', json_build_object('name', 'Phone'),
						  '_info', json_build_object('dateEntered', to_char((first_day + 4 + time '14:00') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))),
		json_build_object('id', 7002, 'summary', 'Guest wifi', 'company', json_build_object('identifier', 'STOLAF'),
						  'contactEmailAddress', 'visitor@example.org', 'board', json_build_object('name', 'Help Desk'),
						  '_info', json_build_object('dateEntered', to_char((first_day + 5 + time '09:00') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))))::text
  FROM demo_period;

CREATE TEMP TABLE demo_sync_loads AS
SELECT 'St. Olaf Graph (SKUs, users)' AS export, g.loaded, g.duplicate, g.skipped, g.rejected
  FROM demo_snapshot, msp_load_m365_graph(1, as_of) g
UNION ALL SELECT 'St. Olaf Pax8 subscriptions', p.loaded, p.duplicate, p.skipped, p.rejected
  FROM demo_snapshot, msp_load_pax8_subscriptions(1, as_of) p
UNION ALL SELECT 'St. Olaf ConnectWise tickets', t.loaded, t.duplicate, t.skipped, t.rejected FROM msp_load_psa_tickets(1, 'connectwise') t;
-- the room's Microsoft 365 account is the room's, not a person's
UPDATE accounts SET kind = 'shared' WHERE client_id = 1 AND realm = 'm365' AND name = 'or1@stolaf.example';
