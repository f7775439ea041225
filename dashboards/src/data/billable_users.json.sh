. "$(dirname "$0")/query.sh"
query "SELECT client_name, month, status, billable_users, change, joined_count, left_count,
              array_to_string(joined, ' ') AS joined, array_to_string(departed, ' ') AS departed, total::text AS total, currency
         FROM mspbill.kpi_billable_users ORDER BY client_name, month"
