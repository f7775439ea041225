. "$(dirname "$0")/query.sh"
query "SELECT client_name, day, shared_sessions, violating_sessions, devices, array_to_string(applications, ' ') AS applications
         FROM mspbill.kpi_hipaa_findings ORDER BY client_name, day"
