. "$(dirname "$0")/query.sh"
query "SELECT client_name, month, seats_held, people_active, billable_users, seats_to_reclaim, reclaim_value::text AS reclaim_value,
              seat_shortfall, utilization::text AS utilization, licence_cost::text AS licence_cost, currency
         FROM mspbill.kpi_license_utilization ORDER BY client_name, month"
