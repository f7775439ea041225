. "$(dirname "$0")/query.sh"
query "SELECT client_name, month, status, users, revenue::text AS revenue, pool_cost::text AS pool_cost, licence_cost::text AS licence_cost, margin::text AS margin, margin_pct::text AS margin_pct, margin_per_user::text AS margin_per_user, currency
         FROM mspbill.kpi_margin ORDER BY client_name, month"
