# Shared by the data loaders: run one query with psql (PSQL, default psql on
# PATH) as the role in the PG* environment and print its rows as a JSON
# array.  Money is selected as text, so it arrives exactly as numeric
# prints it (JSON numbers would become floats in the browser).
query() {
  "${PSQL:-psql}" -X -q -A -t -v ON_ERROR_STOP=1 \
    -c "SELECT coalesce(json_agg(t), '[]') FROM ($1) t"
}
