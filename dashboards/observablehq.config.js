// Framework 1.13 reads observablehq.config.js or .ts only (an .mjs file is
// silently ignored); package.json says "type": "module", so this is ESM.
// Observable Framework: MSP dashboards over mspbill's KPI views.  The data
// loaders in src/data/ run psql at build time with the PG* environment of
// whoever builds, which should be a client-scoped BI role: the views show it
// only its own clients, so the built site holds nothing else.
export default {
  title: "mspbill dashboards",
  root: "src",
  pages: [
    {name: "Billable users", path: "/billable-users"},
    {name: "Licence utilization", path: "/licences"},
    {name: "Margin", path: "/margin"},
    {name: "HIPAA findings", path: "/hipaa"}
  ],
  search: false,
  // no web fonts: the dashboards must render where nothing outside is reachable
  globalStylesheets: [],
  footer: "Built from mspbill's KPI views as a client-scoped BI role."
};
