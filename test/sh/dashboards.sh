#!/usr/bin/env bash
# Dashboards: the Observable Framework site in dashboards/ is built against
# the demo database as a BI login mapped to client 1 only, each page is
# rendered in headless Chromium (DOM and screenshot), and the charts must
# have drawn the client's figures: SVG marks, the real amounts, no error
# cell, and nothing of client 2.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
command -v npm >/dev/null || extra_node="nodejs npm"
ensure_deps chromium ${extra_node:-}
find_pg
DB=mspbill_test_dashboards
BI=mspbill_test_dash
work="$TOP/test/out/dashboards"
shots="$work/screenshots"
rm -rf "$work"; mkdir -p "$shots"
q() { "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
pages="billable-users licences margin hipaa"
echo "1..24"

# the demo clinics, with the month before as a copy of the demo month
# (without nurse n3, who joins), three HIPAA violations planted in OR3 (as in
# the privacy suite), the rollups refreshed, and a BI login for client 1
fresh_demo_db "$DB"
q >/dev/null <<'SQL'
SET client_min_messages = warning;
SELECT msp_install_roles();
INSERT INTO logons (client_id, account_id, device_id, at, ended, presence, source, source_event_id)
SELECT client_id, account_id, device_id, at - interval '1 month', ended - interval '1 month', presence, source,
       source_event_id || '-before'
  FROM logons WHERE NOT (client_id = 1 AND account_id = 7);
INSERT INTO applications VALUES (1, 'EMR', true);
INSERT INTO accounts (client_id, account_id, realm, name, kind, application) VALUES (1, 300, 'app', 'emr.or3', 'shared', 'EMR');
CREATE TEMP TABLE planted AS
  SELECT l.at, l.ended FROM logons l WHERE l.client_id = 1 AND l.account_id = 3 ORDER BY l.at LIMIT 6;
DELETE FROM planted WHERE extract(hour FROM at AT TIME ZONE 'America/Chicago') <> 8;
DELETE FROM logons l USING planted p
 WHERE l.client_id = 1 AND l.device_id = 3 AND l.account_id BETWEEN 111 AND 116 AND l.at BETWEEN p.at AND p.ended;
INSERT INTO logons (client_id, account_id, device_id, at) SELECT 1, 300, 3, at + interval '5 minutes' FROM planted;
SELECT msp_refresh_rollups();
SQL
q -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$BI') THEN CREATE ROLE $BI LOGIN; END IF; END \$\$" \
	-c "GRANT mspbill_bi TO $BI" -c "INSERT INTO bi_client_access VALUES ('$BI', 1)" >/dev/null
tap_check "the BI login sees one client" "$("$BINDIR/psql" -X -At -U "$BI" -d "$DB" -c "SELECT string_agg(client_name, ',') FROM mspbill.reporting_clients")" "St. Olaf Hospital"

# npm packages: installed once into dashboards/node_modules (ignored by git),
# again only when package-lock.json changes
dash="$TOP/dashboards"
if [ ! -f "$dash/node_modules/.package-lock.json" ] || [ "$dash/package-lock.json" -nt "$dash/node_modules/.package-lock.json" ]; then
	(cd "$dash" && npm ci --no-audit --no-fund >"$work/npm.log" 2>&1) || { tail -20 "$work/npm.log"; }
fi
tap_check "npm packages installed (pinned by package-lock.json)" "$([ -x "$dash/node_modules/.bin/observable" ] && echo yes)" "yes"

# build from a copy, so that no data-loader cache of another role is reused
site="$work/site"
mkdir -p "$site"
cp -a "$dash/src" "$dash/observablehq.config.js" "$dash/package.json" "$site/"
rm -rf "$site/src/.observablehq"
ln -s "$dash/node_modules" "$site/node_modules"
(cd "$site" && PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER="$BI" PGDATABASE="$DB" PSQL="$BINDIR/psql" \
	npm run build >"$work/build.log" 2>&1)
tap_check "the site builds as the BI login" "$?" "0"
tap_check "the build fetched nothing from a CDN" "$(grep -c 'fetch failed\|ENOTFOUND' "$work/build.log")" "0"
tap_check "every page was built" "$(for p in $pages; do [ -f "$site/dist/$p.html" ] && echo -n "$p "; done)" "billable-users licences margin hipaa "
tap_check "the config was read (its footer, no web fonts)" \
	"$(grep -c "Built from mspbill's KPI views" "$site/dist/margin.html")$(grep -c 'fonts.googleapis' "$site/dist/margin.html")" "10"
tap_check "no data file holds client 2" "$(grep -rl 'Maple' "$site/dist/_file" | wc -l)" "0"
# the check above can fail: the same loader as a role that sees all clients
tap_check "(control: as the superuser the margin loader does list client 2)" \
	"$(cd "$site" && PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres PGDATABASE="$DB" PSQL="$BINDIR/psql" sh src/data/margin.json.sh | grep -q 'Maple Family Dental' && echo yes)" "yes"

# serve the site on loopback (module scripts and fetch need http, not file:)
port=8731
while port_taken "$port"; do port=$((port + 1)); done
/usr/bin/python3 -m http.server "$port" --bind 127.0.0.1 --directory "$site/dist" >"$work/http.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

chrome() { # url, then extra flags
	local url=$1 profile
	shift
	profile=$(mktemp -d)
	timeout 90 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
		--disable-background-networking --disable-component-update --disable-sync --disable-dev-shm-usage \
		--user-data-dir="$profile" --virtual-time-budget=15000 "$@" "$url" 2>>"$work/chromium.log"
	rm -rf "$profile"
}

# what each page must show: a figure of client 1 as the billing functions
# compute it (not read back from the rollups the pages are built from)
total=$(q -c "SELECT (msp_invoice(1)).total")
util=$(q -c "SELECT round((msp_invoice(1)).users::numeric / sum(seats), 4) FROM license_counts WHERE client_id = 1")
audit=$(q -c "SELECT (SELECT count(*) FROM msp_pii_audit(1))
	+ (SELECT count(*) FROM msp_pii_audit(1, daterange((lower(msp_period(1)) - interval '1 month')::date, lower(msp_period(1)))))")
declare -A must=([billable-users]="$total" [licences]="$util" [margin]="$total" [hipaa]="$audit violating sessions")
for p in $pages; do
	url="http://127.0.0.1:$port/$p.html"
	chrome "$url" --dump-dom >"$work/$p.dom.html"
	chrome "$url" --screenshot="$shots/$p.png" --window-size=1280,1400 >/dev/null
	dom="$work/$p.dom.html"
	marks=$(grep -oE '<(rect|path|circle)[^>]*>' "$dom" | wc -l)
	tap_check "$p: the chart drew SVG marks" "$([ "$(grep -c 'aria-label="\(bar\|line\|dot\|rect\)' "$dom")" -gt 0 ] && [ "$marks" -gt 5 ] && echo yes)" "yes"
	tap_check "$p: it shows client 1's figures ($(echo "${must[$p]}"))" "$(grep -c "St. Olaf Hospital" "$dom" | sed 's/^[1-9][0-9]*$/yes/')$(grep -qF "${must[$p]}" "$dom" && echo ' and the figure')" "yes and the figure"
	tap_check "$p: no error and nothing of client 2" "$(grep -c 'observablehq--error\|Maple' "$dom")" "0"
	tap_check "$p: a screenshot was taken" "$([ -s "$shots/$p.png" ] && echo yes)" "yes"
done

kill "$server" 2>/dev/null
drop_db "$DB"
"$BINDIR/psql" -X -q -d postgres -c "DROP OWNED BY $BI" -c "DROP ROLE $BI" >/dev/null 2>&1
