. "$(dirname "$0")/query.sh"
query "SELECT client_name, day, people_active, devices_seen, shared_sessions
         FROM mspbill.kpi_daily_activity ORDER BY client_name, day"
