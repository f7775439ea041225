// A plain HTML table of CSV rows, values shown as the database printed them
// (money stays exact text).  Plain DOM, so that nothing is fetched from a CDN.
export function table(rows, columns) {
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const c of columns) head.appendChild(document.createElement("th")).textContent = c;
  const body = t.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    for (const c of columns) tr.insertCell().textContent = r[c] ?? "";
  }
  return t;
}
