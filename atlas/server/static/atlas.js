// The edit page's region grid: click or drag to toggle cells; the text field holds rows of 0/1 joined by "/".
(function () {
  const grid = document.getElementById("region-grid");
  const field = document.getElementById("region");
  if (!grid || !field) return;
  const side = parseInt(grid.dataset.side, 10);
  const cells = [];
  let painting = null;
  function write() {
    const rows = [];
    for (let r = 0; r < side; r++) rows.push(cells.slice(r * side, (r + 1) * side).map(c => c.classList.contains("on") ? "1" : "0").join(""));
    field.value = rows.some(row => row.includes("1")) ? rows.join("/") : "";
  }
  function read() {
    const rows = field.value.trim().split("/");
    const drawn = rows.length === side && rows.every(row => /^[01]+$/.test(row) && row.length === side);
    cells.forEach((c, i) => c.classList.toggle("on", drawn && rows[Math.floor(i / side)][i % side] === "1"));
  }
  for (let i = 0; i < side * side; i++) {
    const cell = document.createElement("div");
    cell.dataset.row = Math.floor(i / side);
    cell.dataset.col = i % side;
    cell.addEventListener("mousedown", e => { e.preventDefault(); painting = !cell.classList.contains("on"); cell.classList.toggle("on", painting); write(); });
    cell.addEventListener("mouseenter", () => { if (painting !== null) { cell.classList.toggle("on", painting); write(); } });
    grid.appendChild(cell);
    cells.push(cell);
  }
  document.addEventListener("mouseup", () => { painting = null; });
  field.addEventListener("input", read);
  document.getElementById("clear-region").addEventListener("click", () => { field.value = ""; read(); });
  read();
})();
