// Sortable tables: a click on a column's header sorts the table's rows by it (numbers by value, text in the
// reader's collation), a second click reverses; aria-sort says which column and which way.
(function () {
  function key(cell) {
    if (cell.dataset.value !== undefined) return {num: true, v: parseFloat(cell.dataset.value)};
    return {num: false, v: cell.textContent.trim()};
  }
  function compare(a, b) {
    if (a.v === "" || b.v === "") return (a.v === "") - (b.v === "");  // empty cells (NULL) last
    return a.num && b.num ? a.v - b.v : String(a.v).localeCompare(String(b.v), undefined, {numeric: true});
  }
  document.querySelectorAll("table.sortable").forEach(table => {
    const heads = [...table.querySelectorAll("thead th")];
    heads.forEach((th, index) => {
      th.tabIndex = 0;
      th.style.cursor = "pointer";
      const sort = () => {
        const ascending = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(h => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        const body = table.tBodies[0];
        const rows = [...body.rows];
        rows.sort((r1, r2) => {
          const order = compare(key(r1.cells[index]), key(r2.cells[index]));
          return ascending ? order : -order;
        });
        rows.forEach(r => body.appendChild(r));
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", e => { if (e.key === "Enter") sort(); });
    });
  });
})();
